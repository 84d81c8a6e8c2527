"""What the served model does with the requests of one ``execute`` call: one ``batch.step``.

A :class:`StreamTable` holds one ``vosrt.load_batch`` and maps each sequence (correlation id) to
a stream of it: ``START`` opens the stream (a ``START`` for an open one restarts it), ``END``
closes it after its frame and frees its memory, and a stream idle for longer than the sequence
batcher's idle timeout is freed too. :meth:`StreamTable.execute` checks every request on its own
(a bad one gets its error, the others go on), then steps all the good ones in one ``batch.step``.
No Triton import here: :mod:`.triton_model` adapts it to the Python backend.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .contract import IMAGE, LABELS, MASK, OBJECTS, OUTPUTS, PROBABILITIES


@dataclass
class Request:
    """One request as the model receives it. ``image`` ``[H, W, 3]`` uint8, ``mask`` ``[H, W]``
    int32, ``objects`` ``[n]`` int32 (each None when not sent); ``outputs``: the names asked for."""
    sequence: int
    start: bool
    end: bool
    image: np.ndarray | None = None
    mask: np.ndarray | None = None
    objects: np.ndarray | None = None
    outputs: Sequence[str] = OUTPUTS


@dataclass
class Reply:
    """The answer to one request: its outputs (by name), or ``error`` (a message for the client)."""
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    error: str | None = None
    lost: bool = False  # the error is that the sequence has no open stream


class StreamLost(ValueError):
    """A frame for a sequence whose stream is not open (never started, ended, idle, server restarted)."""


class StreamTable:
    """Streams of one model instance, by sequence id, on ``batch`` (a ``vosrt.load_batch``).

    ``idle_seconds``: a stream without a request for this long is freed (the sequence batcher's
    ``max_sequence_idle_microseconds``); ``clock``: seconds, monotonic (tests pass their own)."""

    def __init__(self, batch, idle_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.batch = batch
        self.idle_seconds = idle_seconds
        self.clock = clock
        self.last_seen: dict[int, float] = {}
        self.lock = threading.Lock()

    @property
    def count(self) -> int:
        """Streams open (holding memory)."""
        return len(self.last_seen)

    def free_idle(self) -> list[int]:
        """Free the streams idle for longer than ``idle_seconds``; returns their sequence ids."""
        with self.lock:
            now = self.clock()
            idle = [sequence for sequence, seen in self.last_seen.items() if now - seen > self.idle_seconds]
            for sequence in idle:
                self._close(sequence)
            return idle

    def execute(self, requests: Sequence[Request]) -> list[Reply]:
        """The replies to ``requests`` (one per request, in order): every good frame stepped in one
        ``batch.step``; a bad request gets its error and changes nothing but its own sequence
        (an ``END`` closes it all the same, as the server ends the sequence)."""
        self.free_idle()
        with self.lock:
            replies = [Reply() for _ in requests]
            frames = {}
            for index, request in enumerate(requests):
                try:
                    frame = self._admit(request, frames)
                except ValueError as err:
                    replies[index].error = f"sequence {request.sequence}: {err}"
                    replies[index].lost = isinstance(err, StreamLost)
                    if request.end:
                        self._close(request.sequence)
                    continue
                if frame is not None:
                    frames[index] = frame
            self._step(requests, frames, replies)
            return replies

    def _admit(self, request: Request, frames: dict) -> tuple | None:
        """Check ``request`` against the contract and the open streams -> its frame for
        ``batch.step`` (None for a request that only closes its sequence). ValueError if bad."""
        if any(requests_sequence == request.sequence for requests_sequence, _ in frames.values()):
            raise ValueError("two frames of one sequence in one call")
        unknown = sorted(set(request.outputs) - set(OUTPUTS))
        if unknown:
            raise ValueError(f"unknown outputs {unknown}; the outputs are {', '.join(OUTPUTS)}")
        if request.image is None:
            if not request.end:
                raise ValueError(f"{IMAGE} is missing (only a request with END=1 may come without it, to close "
                                 "the sequence)")
            self._close(request.sequence)
            return None
        _check_array(IMAGE, request.image, np.uint8, 3)
        if request.image.shape[2] != 3:
            raise ValueError(f"{IMAGE} must be [H, W, 3] RGB, got {list(request.image.shape)}")
        if request.mask is not None:
            _check_array(MASK, request.mask, np.int32, 2)
        objects = None
        if request.objects is not None:
            _check_array(OBJECTS, request.objects, np.int32, 1)
            if request.mask is None:
                raise ValueError(f"{OBJECTS} names labels of {MASK}, and no {MASK} was sent")
            objects = [int(v) for v in request.objects]
        if request.start:
            if request.mask is None:
                raise ValueError(f"the first frame of a sequence (START=1) needs {MASK}")
            self._close(request.sequence)  # START on an open sequence restarts it
        elif request.sequence not in self.last_seen:
            raise StreamLost("no stream is open for this sequence: it was never started, it ended, it was idle "
                             f"for more than {self.idle_seconds:g} s, or the server restarted; start it again "
                             f"with START=1 and its first {MASK}")
        return request.sequence, (request.image, request.mask, objects)

    def _step(self, requests: Sequence[Request], frames: dict, replies: list[Reply]) -> None:
        """Step ``frames`` ({request index: (sequence, frame)}) in one ``batch.step``; when a frame
        is refused there (a mask that does not fit, unknown labels, ...), each alone instead, so
        only the bad ones fail (a stream's results do not depend on the others in its call)."""
        if not frames:
            return
        try:
            self._step_together(requests, frames, replies)
        except ValueError:
            for index, frame in frames.items():
                try:
                    self._step_together(requests, {index: frame}, replies)
                except ValueError as err:
                    replies[index].error = f"{err}"
                    if requests[index].end:
                        self._close(requests[index].sequence)

    def _step_together(self, requests: Sequence[Request], frames: dict, replies: list[Reply]) -> None:
        last = [sequence for index, (sequence, _) in frames.items() if requests[index].end]
        probs = self.batch.step(dict(frames.values()), last=last)
        now = self.clock()
        for index, (sequence, _) in frames.items():
            prob = probs[sequence]
            wanted = requests[index].outputs
            if PROBABILITIES in wanted:
                replies[index].outputs[PROBABILITIES] = prob
            if LABELS in wanted:
                replies[index].outputs[LABELS] = self.batch.to_mask(sequence, prob).astype(np.int32)
            self.last_seen[sequence] = now
        for sequence in last:
            self._close(sequence)

    def _close(self, sequence: int) -> None:
        """Free ``sequence``'s stream, if open."""
        if self.last_seen.pop(sequence, None) is not None:
            self.batch.end(sequence)


def _check_array(name: str, value: np.ndarray, dtype: type, rank: int) -> None:
    """ValueError unless ``value`` has ``dtype`` and ``rank`` dimensions, none empty."""
    if value.dtype != dtype or value.ndim != rank or 0 in value.shape:
        raise ValueError(f"{name} must be {np.dtype(dtype).name} with {rank} non-empty dimension(s), got "
                         f"{value.dtype} {list(value.shape)}")
