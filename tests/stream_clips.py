"""Clips and schedules for the multi-stream tests: several streams batched (``vosrt.load_batch``)
against independent sessions."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from helpers import DAVIS, SYNTHETIC_LONG, synthetic_frame, synthetic_mask
from vosrt import io

Clip = list[tuple[np.ndarray, np.ndarray | None, list[int] | None]]


def shapes_clip(frames: int) -> Clip:
    """synthetic-shapes: objects 1 and 2 from frame 0, object 3 joining on frame 5 (its mask holds only it)."""
    masks = {0: (synthetic_mask(0), [1, 2]), 5: (synthetic_mask(15), [3])}
    return [(synthetic_frame(i), *masks.get(i, (None, None))) for i in range(frames)]


def long_clip(frames: int) -> Clip:
    """synthetic-long (the size of synthetic-shapes, so their calls are shared): objects 1 and 2 from
    frame 0, object 3 joining on frame 3 (the true label maps)."""
    def truth(i: int, objects: list[int]) -> np.ndarray:
        labels = np.asarray(Image.open(SYNTHETIC_LONG / "truth" / f"{i:05d}.png")).astype(np.int64)
        return np.where(np.isin(labels, objects), labels, 0)

    masks = {0: (truth(0, [1, 2]), [1, 2]), 3: (truth(3, [3]), [3])}
    return [(np.asarray(Image.open(SYNTHETIC_LONG / "images" / f"{i:05d}.png").convert("RGB")),
             *masks.get(i, (None, None))) for i in range(frames)]


def davis_clip(name: str, frames: int) -> Clip:
    """A DAVIS example: judo's objects join on frames 0, 5, 8 and 13; bike has 4 frames."""
    masks = {p.stem: p for p in (DAVIS / "masks" / name).glob("*.png")}
    clip = []
    for path in io.list_frames(DAVIS / "images" / name)[:frames]:
        image = io.read_rgb(path)
        mask = io.read_label_map(masks[path.stem])[0] if path.stem in masks else None  # the session aligns it
        clip.append((image, mask, None if mask is None else [int(v) for v in np.unique(mask) if v]))
    return clip


def stream_schedule(streams: int, frames: int) -> dict[str, tuple[int, Clip]]:
    """``streams`` streams -> {stream: (the batch step it joins on, its clip)}: different clips,
    joining on different steps, objects joining later, and bike ending after 4 frames. Two streams
    are shapes and long (one frame size: they share calls), four add judo and bike (another size)."""
    plan = {"shapes": (0, shapes_clip(frames)), "long": (2, long_clip(frames)),
            "judo": (1, davis_clip("judo", frames)), "bike": (0, davis_clip("bike", frames))}
    return dict(list(plan.items())[:streams])


def run_independent(load, schedule) -> dict[str, list[np.ndarray]]:
    """Each stream's probabilities from its own session (the last frame with ``end=True``)."""
    outputs = {}
    for stream, (_, clip) in schedule.items():
        session = load()
        outputs[stream] = [session.step(image, mask, objects, end=i == len(clip) - 1)
                           for i, (image, mask, objects) in enumerate(clip)]
    return outputs


def run_batched(batch, schedule) -> dict[str, list[np.ndarray]]:
    """Each stream's probabilities from ``batch`` (a ``BatchSession``), the streams joining on their
    steps, each stream's last frame marked ``last`` and the stream ended after it."""
    outputs = {stream: [] for stream in schedule}
    steps = max(start + len(clip) for start, clip in schedule.values())
    for t in range(steps):
        frames = {stream: clip[t - start] for stream, (start, clip) in schedule.items()
                  if 0 <= t - start < len(clip)}
        ending = [stream for stream, (start, clip) in schedule.items() if t - start == len(clip) - 1]
        for stream, prob in batch.step(frames, last=ending).items():
            outputs[stream].append(prob)
        for stream in ending:
            batch.end(stream)
    assert batch.streams == []
    return outputs


def max_dprob_per_stream(batched, independent) -> dict[str, float]:
    """{stream: max |dprob| over its frames}; the outputs must have the same shapes."""
    for stream in independent:
        assert [p.shape for p in batched[stream]] == [p.shape for p in independent[stream]]
    return {stream: max(float(np.abs(b - i).max()) for b, i in zip(batched[stream], independent[stream]))
            for stream in independent}


# The rounding noise of one session: max |dprob| between 1 and 2 torch threads of independent eager
# sessions on the clips of the parity tests (tests/unit/test_batch.py) (stream_clips.thread_spread over
# stream_schedule(4, 9) for Cutie, stream_schedule(4, 6) for JointFormer; seed-1 weights, the options
# there), measured on the 2-core CI machine: cutie-small 2.7e-5, jointformer 6.7e-4.
THREAD_SPREAD = {"cutie-small": 2.7e-5, "jointformer": 6.7e-4}
NEAR_TIE = 1e-3  # top-2 probabilities closer than this: a label flip there is rounding noise


def label_flips_outside_near_ties(batched, independent) -> dict[str, int]:
    """{stream: pixels over its frames whose label differs, leaving out pixels whose top-2
    probabilities (in either run) are within :data:`NEAR_TIE`}."""
    def near_tie(prob: np.ndarray) -> np.ndarray:
        top2 = np.sort(prob, axis=0)[-2:]
        return top2[1] - top2[0] < NEAR_TIE

    return {stream: sum(int(((b.argmax(0) != i.argmax(0)) & ~near_tie(b) & ~near_tie(i)).sum())
                        for b, i in zip(batched[stream], independent[stream]))
            for stream in independent}


def thread_spread(load, schedule) -> float:
    """Max |dprob| over every stream and frame of ``schedule`` between independent sessions run with 1
    and with 2 torch threads: the rounding noise a stream's results may carry."""
    saved = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            runs.append(run_independent(load, schedule))
    finally:
        torch.set_num_threads(saved)
    return max(max_dprob_per_stream(*runs).values())
