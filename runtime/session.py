"""A video session: frames in, probabilities out, the memory kept between them.

:class:`Session` is the template every model's session follows (the official
``InferenceCore``): validate and prepare the frame, decide whether it is a memory frame
(every ``mem_every`` frames and every frame with a mask, never the last one), run the
model's step, and return the probabilities at the frame's size with the objects in id order.
The step itself (``_step_streams``) is the same for every model and runs several sessions on
one backend at once (:mod:`.streams`), each stage once for all of them where their shapes allow
(:class:`~.stage_batcher.StageBatcher`; a session of one video steps alone): encode each frame, predict
the frames that need it, merge the masks given, register new objects, memorise. A model's session
supplies those hooks (``_encode``, ``_predict``, ``_register_objects``, ``_memorise``) and the
memory it keeps.

Outputs: ``output="numpy"`` (the default) copies the probabilities to the host;
``output="tensor"`` returns them as a tensor on the session's device without waiting for the
device, so a caller can queue the next frame's work while this one runs.
"""
from __future__ import annotations

import contextlib
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from vosrt.models.common import aggregate

from .backends.base import Backend
from .stage_batcher import StageBatcher
from .config import SessionConfig
from .objects import ObjectManager
from .geometry import STRIDE, FrameGeometry
from .preprocess import prepare_image, prepare_mask, restore

if TYPE_CHECKING:
    from .family import ModelFamily

OUTPUTS = ("numpy", "tensor")


@dataclass(frozen=True)
class Frame:
    """One prepared frame: ``image`` ``[1, 3, H', W']`` (padded network input), ``labels``
    ``[H', W']`` int64 and the ``objects`` they give, or None without a mask; ``index``: its
    frame number in the video; ``memorise``: whether it enters memory; ``since_memory``: frames
    since the last memory frame; ``last``: the video's last frame."""

    image: torch.Tensor
    geometry: FrameGeometry
    labels: torch.Tensor | None
    objects: list[int] | None
    index: int
    memorise: bool
    since_memory: int
    last: bool


class Session(ABC):
    """Segments a video frame by frame on a backend. Create one with :func:`vosrt.load`.

    >>> prob = session.step(image, mask, objects=[1, 2])   # first frame: a label map
    >>> prob = session.step(next_image)                    # later frames: propagated
    >>> labels = session.to_mask(prob)
    """

    family: "ModelFamily"  # set by the family that declares this session type

    def __init__(self, backend: Backend, config: SessionConfig, *, amp: bool = False):
        self.backend = backend
        self.config = config
        self.amp = amp
        self.reset()

    def reset(self) -> None:
        """Forget the video: memory, objects and frame counter."""
        self.frame_index = -1
        self._last_memory_index = 0
        self.objects = ObjectManager()
        self._geometry: FrameGeometry | None = None
        self._last_masks: torch.Tensor | None = None  # the last frame's object masks [K, H', W'], memory order
        self._reset_memory()

    @property
    def object_ids(self) -> list[int]:
        """Ids of the tracked objects, sorted: channel i + 1 of ``step``'s output is ``object_ids[i]``."""
        return self.objects.sorted_ids

    def to_mask(self, prob: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """``step`` output -> ``HxW`` uint8 label map (argmax, then channel -> object id): numpy for
        numpy, a tensor on the same device for a tensor (without waiting for the device)."""
        if isinstance(prob, np.ndarray):
            return np.array([0, *self.object_ids], dtype=np.uint8)[np.argmax(prob, axis=0)]
        channel = prob.argmax(dim=0)
        labels = torch.zeros(channel.shape, dtype=torch.uint8, device=channel.device)
        for index, obj in enumerate(self.object_ids, start=1):  # scalars: no host-to-device copy
            labels.masked_fill_(channel == index, obj)
        return labels

    @torch.inference_mode()
    def step(self, image: np.ndarray, mask: np.ndarray | None = None, objects: list[int] | None = None,
             *, end: bool = False, output: str = "numpy") -> np.ndarray | torch.Tensor:
        """Process one frame.

        image: ``HxWx3`` RGB, uint8 or float in [0, 1] (other dtypes, NaN/Inf and floats outside
        [0, 1] are errors, and leave the session as it was). mask: ``HxW`` integer label map (0 =
        background) or None; a mask a few pixels off the frame size is aligned as the official
        code aligns it, with a warning (:func:`vosrt.runtime.geometry.check_mask_size`);
        ``objects``: the labels it gives (default: every label in it; only with a mask);
        objects already tracked but absent from ``objects`` keep being propagated. ``end``:
        the last frame of the video (nothing is memorised). ``output``: ``"numpy"`` or
        ``"tensor"`` (on the session's device, not synchronised; see the module docstring).
        Returns float32 ``[num_objects + 1, H, W]``: background, then objects in id order.
        With ``amp`` the whole step runs under fp16 autocast (the official AMP); the networks
        keep their official fp32 regions inside it.
        """
        check_output_format(output)
        frame = self._prepare(image, mask, objects, end)
        self._begin(frame)
        [prob] = step_sessions([(self, frame)], StageBatcher(self.backend))
        return self._finish(frame, prob, output)

    @torch.inference_mode()
    def remove_objects(self, object_ids: list[int]) -> None:
        """Stop tracking objects: they leave the memory and the output."""
        rows = self.objects.remove(object_ids)
        if self._last_masks is not None:
            self._last_masks = self._last_masks[rows]
        self._keep_rows(rows, object_ids)

    # -- what a model's session implements ------------------------------------------------

    @abstractmethod
    def _reset_memory(self) -> None:
        """Empty memory."""

    @property
    @abstractmethod
    def _has_memory(self) -> bool:
        """Whether anything is in memory to propagate from."""

    @classmethod
    def _encode(cls, steps: Sequence[tuple["Session", Frame]], batcher: StageBatcher) -> list[object]:
        """Per session, what its frame's encoding gives every later hook (``predict``, ``memorise``);
        by default nothing: a model that encodes each frame once whatever happens to it does it here."""
        return [None] * len(steps)

    def _needs_prediction(self, frame: Frame) -> bool:
        """The rule of every model (the official ``InferenceCore``'s): a frame is predicted when there is
        memory to predict from and its mask, if any, does not label every tracked object."""
        covers_all = frame.labels is not None and set(self.objects.ids) <= set(frame.objects)
        return self._has_memory and not covers_all

    @classmethod
    @abstractmethod
    def _predict(cls, streams: list[tuple["Session", Frame, object]], batcher: StageBatcher) -> list[torch.Tensor]:
        """(session, frame, its encoding) for the frames that need a prediction -> per session
        ``[K + 1, H', W']`` probabilities of its tracked objects in memory order."""

    @abstractmethod
    def _register_objects(self, new_objects: list[int]) -> None:
        """Allocate the per-object state of objects a mask starts tracking."""

    def _memorises(self, frame: Frame) -> bool:
        """Whether ``frame`` enters memory (after its prediction)."""
        return frame.memorise

    @classmethod
    @abstractmethod
    def _memorise(cls, streams: list[tuple["Session", Frame, object]], batcher: StageBatcher) -> None:
        """Put each (session, frame, its encoding) into its session's memory, with the frame's object
        masks :attr:`_last_masks`."""

    @abstractmethod
    def _memory_tokens(self, frame_tokens: int) -> int:
        """The most memory tokens one query token can read from, for frames of ``frame_tokens`` tokens."""

    @abstractmethod
    def _keep_rows(self, rows: list[int], removed: list[int]) -> None:
        """Keep the per-object state of ``rows`` (memory order); ``removed`` objects leave the memory."""

    # -- the step -------------------------------------------------------------------------

    @classmethod
    def _step_streams(cls, steps: Sequence[tuple["Session", Frame]], batcher: StageBatcher) -> list[torch.Tensor]:
        """Segment each session's frame and update its memory -> per session ``[K + 1, H', W']``
        probabilities in memory order. The sessions share one backend and config; each stage runs
        through ``batcher``, so sessions whose shapes agree share its calls. Encode, predict the
        frames that need it, merge the masks given, register new objects, memorise."""
        encoded = cls._encode(steps, batcher)
        predicting = [i for i, (s, frame) in enumerate(steps) if s._needs_prediction(frame)]
        prob: list[torch.Tensor | None] = [None] * len(steps)
        for i, p in zip(predicting, cls._predict([(*steps[i], encoded[i]) for i in predicting], batcher)):
            prob[i] = p
        for i, (s, frame) in enumerate(steps):
            if frame.labels is not None:
                prob[i] = s._merge_mask(prob[i], frame.labels, frame.objects)
                s._register_objects(s.objects.add(frame.objects))
            s._last_masks = prob[i][1:].clone()  # not a backend's output buffer: another stream reuses it
        cls._memorise([(s, frame, encoded[i]) for i, (s, frame) in enumerate(steps) if s._memorises(frame)], batcher)
        return prob

    @abstractmethod
    def _memory_tokens(self, frame_tokens: int) -> int:
        """The most memory tokens one query token can read from, for frames of ``frame_tokens`` tokens."""

    @abstractmethod
    def _keep_rows(self, rows: list[int], removed: list[int]) -> None:
        """Keep the per-object state of ``rows`` (memory order); ``removed`` objects leave the memory."""

    # -- shared steps ---------------------------------------------------------------------

    def _prepare(self, image: np.ndarray, mask: np.ndarray | None, objects: list[int] | None, end: bool) -> Frame:
        """Validate and convert a frame (changes nothing: :meth:`_begin` does). The frame size must
        stay the same within a video, and a frame without a mask needs memory to be propagated from."""
        image_t, geometry = prepare_image(image, self.config.max_internal_size, self.backend.device)
        if self._geometry is None:
            self._check_memory_fits(geometry)
        elif geometry != self._geometry:
            raise ValueError(f"frame size changed from {self._geometry.size} to {geometry.size} within a video; "
                             "call reset() before starting another video")
        if mask is None and objects is not None:
            raise ValueError("objects names labels of a mask, and no mask is given: step(image, mask, objects)")
        labels, objects = (None, None) if mask is None else prepare_mask(mask, objects, geometry, self.backend.device)
        if labels is None and not self._has_memory:
            raise ValueError("the first frame needs a mask: pass step(image, mask) with the objects to track")
        index = self.frame_index + 1
        since_memory = index - self._last_memory_index
        memorise = (since_memory >= self.config.mem_every or labels is not None) and not end
        return Frame(image_t, geometry, labels, objects, index, memorise, since_memory, end)

    def _begin(self, frame: Frame) -> None:
        """Count ``frame`` as this video's next frame."""
        self._geometry = frame.geometry
        self.frame_index = frame.index

    def _finish(self, frame: Frame, prob: torch.Tensor, output: str) -> np.ndarray | torch.Tensor:
        """After the step: the memory-frame counter, and the output of ``prob`` (see :meth:`_output`)."""
        if frame.memorise:
            self._last_memory_index = frame.index
        return self._output(prob, frame.geometry, output)

    def _new_state(self, stage: str, tensor: str, objects: int, memory_frames: int = 0) -> torch.Tensor:
        """Zeros shaped as input ``tensor`` of ``stage`` declares it, for this video's frames, one
        stream of ``objects`` objects and a memory of ``memory_frames`` frames (the state a session
        keeps between frames)."""
        sizes = self.family.example_sizes(self.backend.architecture, *self._geometry.padded, objects, memory_frames)
        spec = next(t for t in self.family.stages[stage].inputs if t.name == tensor)
        return torch.zeros(spec.resolve(sizes), device=self.backend.device)

    def _check_memory_fits(self, geometry: FrameGeometry) -> None:
        """ValueError, before anything runs, when the dense memory readout of frames of this size
        (fp32 similarities of every query token with every memory token) exceeds the device's memory."""
        needed = _readout_bytes(self._memory_tokens, geometry)
        available = _device_memory(self.backend.device)
        if needed <= available:
            return
        fitting = [size for size in (1080, 720, 480, 360, 240)
                   if _readout_bytes(self._memory_tokens, FrameGeometry.for_size(geometry.size, size)) <= available / 2]
        hint = f"max_internal_size={fitting[0]} (--max-internal-size {fitting[0]})" if fitting else "max_internal_size"
        raise ValueError(f"a {geometry.size[0]}x{geometry.size[1]} frame (network size {geometry.padded[0]}x"
                         f"{geometry.padded[1]}) needs at least {needed / 1e9:.0f} GB for the memory readout, "
                         f"more than the {available / 1e9:.0f} GB of {self.backend.device.type} memory here: pass "
                         f"{hint} to resize the frames")

    def _merge_mask(self, prob: torch.Tensor | None, labels: torch.Tensor, objects: list[int]) -> torch.Tensor:
        """Combine a label map with the prediction for the tracked objects (if any) -> ``[K' + 1, H, W]``
        in memory order, the ``objects`` not tracked yet appended in order (the caller then adds
        them to :attr:`objects`). Labelled pixels override the prediction."""
        if prob is None:
            known = torch.zeros(len(self.objects), *labels.shape, device=labels.device)
        else:
            known = prob[1:]
            known[:, labels > 0] = 0
        tracked = [o for o in objects if o in self.objects]
        for obj, row in zip(tracked, self.objects.rows(tracked)):
            known[row] = (labels == obj).float()
        added = [(labels == obj).float() for obj in objects if obj not in self.objects]
        masks = torch.cat([known, torch.stack(added)]) if added else known
        return torch.softmax(aggregate(masks, dim=0), dim=0)

    def _output(self, prob: torch.Tensor, geometry: FrameGeometry, output: str) -> np.ndarray | torch.Tensor:
        """Network-size ``[K + 1, H', W']`` in memory order -> frame-size float32 in id order, numpy
        or a new tensor on the device (never a view of a backend's reused output buffer)."""
        prob = restore(prob, geometry)
        prob = torch.stack([prob[channel] for channel in self.objects.output_order()]).float()
        return prob if output == "tensor" else prob.cpu().numpy()


def check_output_format(output: str) -> None:
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(map(repr, OUTPUTS))}, got {output!r}")


def step_sessions(steps: Sequence[tuple[Session, Frame]], batcher: StageBatcher) -> list[torch.Tensor]:
    """Run the prepared frames of sessions of one model on one backend (:meth:`Session._step_streams`),
    under fp16 autocast with ``amp``."""
    session = steps[0][0]
    autocast = (torch.autocast(session.backend.device.type, dtype=torch.float16) if session.amp
                else contextlib.nullcontext())
    with autocast:
        probs = type(session)._step_streams(steps, batcher)
    if session.backend.device.type == "cpu":  # on a GPU the check would wait for the device
        check_finite(probs, steps)
    return probs


def check_finite(probs: Sequence[torch.Tensor], steps: Sequence[tuple[Session, Frame]]) -> None:
    """RuntimeError when a step's probabilities (each ``[K + 1, H', W']``) hold NaN or infinite
    values, which would give an all-background label map without a word: broken weights or
    graphs (a checkpoint is checked at load: :func:`vosrt.weights.check_finite`). One sum per
    output: probabilities lie in [0, 1], so the sum is finite exactly when every value is (a
    fortieth of the time of ``isfinite(prob).all()``: 0.2 ms for 3 x 480 x 854 on one core)."""
    for prob, (_, frame) in zip(probs, steps):
        if not math.isfinite(float(prob.sum())):
            raise RuntimeError(f"the network gave NaN or infinite probabilities on frame {frame.index}: its weights or "
                               "graphs are broken (export again, or check the checkpoint); no label map of it is kept")


def _readout_bytes(memory_tokens, geometry: FrameGeometry) -> int:
    """Bytes of one fp32 similarity of every query token with every memory token."""
    tokens = (geometry.padded[0] // STRIDE) * (geometry.padded[1] // STRIDE)
    return 4 * tokens * memory_tokens(tokens)


def _device_memory(device: torch.device) -> int:
    """Bytes of memory of ``device``: the GPU's, or the machine's for the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
