"""The wire contract between ``vosrt.connect`` (or any Triton client) and the served model.

Inputs (each request carries Triton's batch dimension of 1 in front of these shapes):

- ``IMAGE`` UINT8 ``[H, W, 3]`` RGB (a request without it only closes its sequence: ``END`` = 1);
- ``MASK`` INT32 ``[H, W]`` label map, 0 = background (required with ``START``);
- ``OBJECTS`` INT32 ``[n]``: the objects the mask gives (default: every label in it), only with ``MASK``.

Outputs, each sent only when the client asks for it: ``PROBABILITIES`` FP32 ``[K + 1, H, W]``
(background, then the objects in id order: what ``session.step`` returns) and ``LABELS`` INT32
``[H, W]``. Controls (filled by the server from the request's sequence flags): ``START``, ``END``
(INT32 0/1) and ``CORRID`` (UINT64, the sequence id).
"""
from __future__ import annotations

IMAGE, MASK, OBJECTS = "IMAGE", "MASK", "OBJECTS"
PROBABILITIES, LABELS = "PROBABILITIES", "LABELS"
START, END, CORRID = "START", "END", "CORRID"
OUTPUTS = (PROBABILITIES, LABELS)
