"""Several videos (streams) on one backend: each stage runs once for all streams where it can.

>>> batch = vosrt.load_batch("cutie-small", weights=..., backend="onnxruntime")
>>> outs = batch.step({"cam0": (image0, mask0), "cam1": (image1, mask1)})   # streams join with a mask
>>> outs = batch.step({"cam0": next0, "cam1": next1})                       # {stream: prob}
>>> outs = batch.step({"cam0": last0}, last=["cam0"])                       # cam0's last frame
>>> batch.end("cam0")                                                       # cam0 leaves

Each stream is an ordinary :class:`~.session.Session` (its own memory, objects, frame counter
and frame size) on the batch's shared backend; :meth:`BatchSession.step` prepares every given
frame, then runs the model's step for all of them together (``Session._step_streams``), whose
stage calls go through a :class:`~.stage_batcher.StageBatcher`: inputs of several streams stacked on
the stages' stream axis (``B``, or ``BK`` for per-object rows; :mod:`.stages`), the outputs split
back. So every stream gets exactly what its own session would compute, and streams join, leave,
add and remove objects at any time without rebuilding anything.

What shares a call (streams of different frame sizes never do; TensorRT engines also take at most
the ``--max-streams`` of their profile per call, the rest go to further calls):

* the image encoders (Cutie's ``image_encoder``, JointFormer's ``query_encoder``): every stream
  with a frame of the same padded size;
* the memory reads: Cutie's ``memory_readout`` (and ``memory_usage``) take one bucket of each
  stream with the same object count; JointFormer's ``joint_propagation`` takes the buckets of every
  stream, whatever their object counts (its object rows are independent). A bucket holds its own
  memory, so its tokens are gathered into the call (a copy of the memory read: the memory stays in
  each stream's preallocated buffers between frames). Backends that take any shape read each
  bucket's memory in use, and only reads of the same length share a call (a read extended to a
  longer one would round differently); CUDA graphs read whole buffers, gathered into staging
  buffers kept per shape so the graphs see the same addresses every frame;
* the decoders and the mask/reference encoders: streams with the same object count (the soft
  aggregation, and each object's mask encoding, mix the objects of one stream, so one call
  needs the same ``K`` for every stream: ``BK = B x K``);
* per stream, as in a session: deciding memory frames, merging masks, writing memory.

A stream's memory frames and sensory updates follow its own frame count, so streams that joined
on different frames memorise on different frames: the mask encoders then batch only the streams
that memorise on that call.
"""
from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping
from typing import Union

import numpy as np
import torch

from .backends.base import Backend
from .stage_batcher import StageBatcher
from .config import SessionConfig
from .family import ModelFamily
from .session import Session, check_output_format, step_sessions

# A stream's frame: an image, (image, mask) or (image, mask, objects), as Session.step takes them.
FrameInput = Union[np.ndarray, tuple[np.ndarray, Union[np.ndarray, None]],
                   tuple[np.ndarray, Union[np.ndarray, None], Union[list[int], None]]]


class BatchSession:
    """Streams of one model segmented together on ``backend``. Create one with :func:`vosrt.load_batch`.

    ``max_streams``: most streams per stage call (None: any number)."""

    def __init__(self, family: ModelFamily, backend: Backend, config: SessionConfig, *, amp: bool = False,
                 max_streams: int | None = None):
        self.family = family
        self.backend = backend
        self.config = config
        self.amp = amp
        self.sessions: dict[Hashable, Session] = {}
        self._batcher = StageBatcher(backend, max_streams)

    @property
    def streams(self) -> list[Hashable]:
        """The ids of the streams in the batch, in order of arrival."""
        return list(self.sessions)

    def object_ids(self, stream: Hashable) -> list[int]:
        """Ids of ``stream``'s objects, sorted: channel i + 1 of its probabilities is ``object_ids[i]``."""
        return self._session(stream).object_ids

    def to_mask(self, stream: Hashable, prob: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """``stream``'s probabilities -> its label map (see :meth:`Session.to_mask`)."""
        return self._session(stream).to_mask(prob)

    @torch.inference_mode()
    def step(self, frames: Mapping[Hashable, FrameInput], *, last: Collection[Hashable] = (),
             output: str = "numpy") -> dict[Hashable, np.ndarray | torch.Tensor]:
        """Process one frame of each stream in ``frames``: ``{stream: image}``, ``{stream: (image,
        mask)}`` or ``{stream: (image, mask, objects)}`` as in :meth:`Session.step`. A stream not in
        the batch joins with its first frame, which needs a mask. ``last``: streams whose frame is
        their video's last (nothing is memorised, as ``Session.step(end=True)``; :meth:`end` them
        once done with their outputs). ``output``: as in :meth:`Session.step`. Returns ``{stream:
        prob}``, each what ``Session.step`` returns.

        Every frame is checked before any stream changes: on an error no stream has moved on."""
        check_output_format(output)
        unknown = [stream for stream in last if stream not in frames]
        if unknown:
            raise ValueError(f"last names streams without a frame in this step: {unknown}")
        sessions = {stream: self.sessions.get(stream) or self._new_session() for stream in frames}
        prepared = []
        for stream, given in frames.items():
            image, mask, objects = unpack_frame(stream, given)
            try:
                prepared.append((sessions[stream], sessions[stream]._prepare(image, mask, objects, stream in last)))
            except ValueError as err:
                raise ValueError(f"stream {stream!r}: {err}") from None
        for session, frame in prepared:
            session._begin(frame)
        self.sessions.update(sessions)
        probs = step_sessions(prepared, self._batcher) if prepared else []
        return {stream: session._finish(frame, prob, output)
                for stream, (session, frame), prob in zip(frames, prepared, probs)}

    def end(self, stream: Hashable) -> None:
        """``stream`` leaves the batch (its memory is freed)."""
        self._session(stream)
        del self.sessions[stream]

    @torch.inference_mode()
    def remove_objects(self, stream: Hashable, object_ids: list[int]) -> None:
        """Stop tracking objects of ``stream`` (see :meth:`Session.remove_objects`)."""
        self._session(stream).remove_objects(object_ids)

    def _new_session(self) -> Session:
        return self.family.new_session(self.backend, self.config, amp=self.amp)

    def _session(self, stream: Hashable) -> Session:
        if stream not in self.sessions:
            raise ValueError(f"no stream {stream!r} in the batch; its streams are {self.streams}")
        return self.sessions[stream]


def unpack_frame(stream: Hashable, given) -> tuple:
    """``image``, ``(image, mask)`` or ``(image, mask, objects)`` -> (image, mask, objects)."""
    if isinstance(given, tuple) and len(given) in (2, 3):
        return (*given, None) if len(given) == 2 else given
    if isinstance(given, tuple):
        raise ValueError(f"stream {stream!r}: give an image, (image, mask) or (image, mask, objects), "
                         f"not a tuple of {len(given)}")
    return given, None, None
