"""The official AMP inference: the whole step under fp16 autocast (Cutie's ``eval_vos.py`` with
``amp=True`` wraps every ``InferenceCore.step`` in ``torch.cuda.amp.autocast``)."""
from __future__ import annotations

import torch

from .session import CutieSession


class AmpSession(CutieSession):
    """A :class:`CutieSession` whose every ``step`` runs under CUDA fp16 autocast; the model keeps
    the official fp32 regions inside it. Create it with ``vosrt.load(..., amp=True)``."""

    def step(self, *args, **kwargs):
        with torch.autocast("cuda", dtype=torch.float16):
            return super().step(*args, **kwargs)
