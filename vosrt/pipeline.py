"""``vosrt segment``'s pipeline: frames from a source, masks from PNGs, a session, and the
outputs (palette PNG label maps, an overlay video, or both)."""
from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from PIL import Image
from tqdm import tqdm

from vosrt import io

if TYPE_CHECKING:
    from vosrt.runtime.batch import BatchSession
    from vosrt.runtime.session import Session

DEFAULT_FPS = 24.0
T = TypeVar("T")


@dataclass
class SegmentResult:
    frames: int
    seconds: float
    output: Path | None
    overlay: Path | None
    stopped: bool  # a camera stream ended by Ctrl-C


def segment(make_session: Callable[[], "Session"], source: io.FrameSource, masks: str | Path, *,
            output: str | Path | None = None, overlay: str | Path | None = None, fps: float | None = None,
            max_frames: int | None = None) -> SegmentResult:
    """Segment ``source`` from the label maps in ``masks`` (one PNG for the first frame, or a
    folder of PNGs named like the frames; a later mask may add objects).

    Writes ``output/<frame>.png`` palette label maps and/or the ``overlay`` video at the
    source's size and frame rate (``fps`` when the source has none, else 24). The first frame
    and its mask are checked before the session is made; outputs appear only when the run
    succeeds (a camera stopped with Ctrl-C counts as success).
    """
    _check_outputs(output, overlay)
    video = _Video(source, masks, fps, max_frames)
    session = make_session()
    with _Outputs(output, overlay, video.frame_rate, video.size, video.palette) as outputs, \
            tqdm(total=video.total, unit="frame", desc="segment") as bar:
        start, count, stopped = time.perf_counter(), 0, False
        try:
            for frame, last in video:
                prob = session.step(frame.image, video.mask(frame, bar), end=last)
                outputs.write(frame, session.to_mask(prob))
                count += 1
                bar.update()
                bar.set_postfix(fps=f"{count / (time.perf_counter() - start):.2f}")
        except KeyboardInterrupt:
            if source.length is not None:
                raise
            stopped = True  # Ctrl-C is how a camera stream ends
    return SegmentResult(count, time.perf_counter() - start, outputs.output, outputs.overlay_path, stopped)


def segment_streams(make_batch: Callable[[], "BatchSession"], sources: Sequence[io.FrameSource],
                    masks: Sequence[str | Path], *, outputs: Sequence[str | Path | None],
                    overlays: Sequence[str | Path | None], fps: float | None = None,
                    max_frames: int | None = None) -> list[SegmentResult]:
    """Segment several sources together: each is a stream of ``make_batch()``
    (:func:`vosrt.load_batch`), which takes a frame of every source still running per step. Each
    source gets what :func:`segment` gives it (masks, outputs and frame rates per source, in the
    order of ``sources``); a source that ends leaves the batch, the others go on. Outputs appear
    only when the whole run succeeds (Ctrl-C ends it as it ends a camera in :func:`segment`)."""
    for output, overlay in zip(outputs, overlays):
        _check_outputs(output, overlay)
    videos = [_Video(source, mask, fps, max_frames) for source, mask in zip(sources, masks)]
    batch = make_batch()
    totals = [video.total for video in videos]
    counts = [0] * len(videos)
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(_Outputs(output, overlay, video.frame_rate, video.size, video.palette))
                   for video, output, overlay in zip(videos, outputs, overlays)]
        bar = stack.enter_context(tqdm(total=None if None in totals else sum(totals), unit="frame", desc="segment"))
        start, stopped, running = time.perf_counter(), False, dict(enumerate(videos))
        try:
            while running:
                frames = {stream: item for stream, video in running.items() if (item := next(video, None))}
                for stream in [stream for stream in running if stream not in frames]:  # a live source that stopped
                    batch.end(stream)
                    del running[stream]
                last = [stream for stream, (_, is_last) in frames.items() if is_last]
                probs = batch.step({stream: (frame.image, running[stream].mask(frame, bar))
                                    for stream, (frame, _) in frames.items()}, last=last)
                for stream, (frame, _) in frames.items():
                    writers[stream].write(frame, batch.to_mask(stream, probs[stream]))
                    counts[stream] += 1
                for stream in last:
                    batch.end(stream)
                    del running[stream]
                bar.update(len(frames))
        except KeyboardInterrupt:
            if any(source.length is not None for source in sources):
                raise
            stopped = True
    seconds = time.perf_counter() - start
    return [SegmentResult(count, seconds, writer.output, writer.overlay_path, stopped)
            for count, writer in zip(counts, writers)]


def _check_outputs(output: str | Path | None, overlay: str | Path | None) -> None:
    if output is None and overlay is None:
        raise ValueError("nothing to write: give --output DIR (palette PNGs), --overlay FILE.mp4, or both")


class _Video:
    """A source's frames, each with whether it is the last (an iterator), and its masks. Opening
    it reads the first frame and checks that frame's mask. ``fps``: the frame rate when the source
    has none; at most ``max_frames`` frames."""

    def __init__(self, source: io.FrameSource, masks: str | Path, fps: float | None, max_frames: int | None):
        frames = iter(source)
        first = next(frames)
        self.mask_paths = io.mask_files(masks, first.name)
        if first.name not in self.mask_paths:
            raise ValueError(f"no mask for the first frame {first.name}: expected {first.name}.png in {masks}")
        self._first_mask, self.palette = _read_mask(self.mask_paths[first.name], first.image.shape[:2])
        self.size = first.image.shape[:2]
        self.frame_rate = source.fps or fps or DEFAULT_FPS
        self.total = source.length if max_frames is None else min(source.length or max_frames, max_frames)
        stream = islice(chain([first], frames), max_frames)
        # A file's last frame is known one frame ahead; a live stream is not held back for that.
        self._frames = _flag_last(stream) if source.length is not None else ((f, False) for f in stream)

    def __iter__(self) -> "_Video":
        return self

    def __next__(self) -> tuple[io.Frame, bool]:
        return next(self._frames)

    def mask(self, frame: io.Frame, bar: tqdm) -> np.ndarray | None:
        """The label map given for ``frame`` (the first frame's on the first call), or None."""
        mask, self._first_mask = self._first_mask, None
        return mask if mask is not None else _mask_for(frame, self.mask_paths, bar)


def _mask_for(frame: io.Frame, mask_paths: dict[str, Path], bar: tqdm) -> np.ndarray | None:
    if frame.name not in mask_paths:
        return None
    mask, _ = _read_mask(mask_paths[frame.name], frame.image.shape[:2], bar.write)
    return mask


def _read_mask(path: Path, size: tuple[int, int], note: Callable[[str], None] = print
               ) -> tuple[np.ndarray, list[int] | None]:
    """Label map for a frame of ``size`` (H, W). Masks a pixel or so off the frame size (as in
    some DAVIS annotations) are resized with nearest neighbour, as the official reader does;
    larger mismatches are errors."""
    mask, palette = io.read_label_map(path)
    if mask.shape == size:
        return mask, palette
    if any(abs(m - s) > max(2, s // 100) for m, s in zip(mask.shape, size)):
        raise ValueError(f"mask {path} is {mask.shape[0]}x{mask.shape[1]} but the frame is {size[0]}x{size[1]}")
    note(f"note: resized mask {path.name} from {mask.shape[0]}x{mask.shape[1]} to {size[0]}x{size[1]}")
    resized = Image.fromarray(mask.astype(np.uint8)).resize(size[::-1], Image.NEAREST)
    return np.asarray(resized).astype(np.int64), palette


def _flag_last(items: Iterable[T]) -> Iterator[tuple[T, bool]]:
    """``(item, is_last)`` pairs, one item ahead, so the last frame is known when it comes."""
    items = iter(items)
    previous = next(items, None)
    for item in items:
        yield previous, False
        previous = item
    if previous is not None:
        yield previous, True


class _Outputs:
    """Palette PNGs (staged in a hidden folder, moved into ``output`` on success) and the
    overlay video (see :class:`vosrt.io.OverlayVideoWriter`). On an error nothing is left."""

    def __init__(self, output: str | Path | None, overlay: str | Path | None, fps: float, size: tuple[int, int],
                 palette: list[int] | None):
        self.output = Path(output) if output is not None else None
        self.overlay_path = Path(overlay) if overlay is not None else None
        self.palette = palette
        self._staging: Path | None = None
        if self.output is not None and self.output.exists() and not self.output.is_dir():
            raise FileExistsError(f"--output {self.output} exists and is not a folder")
        self._video = io.OverlayVideoWriter(overlay, fps, size, palette) if overlay is not None else None
        if self.output is not None:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            self._staging = Path(tempfile.mkdtemp(prefix=f".{self.output.name}.partial-", dir=self.output.parent))

    def write(self, frame: io.Frame, labels: np.ndarray) -> None:
        if self._staging is not None:
            io.write_label_map(self._staging / f"{frame.name}.png", labels, self.palette)
        if self._video is not None:
            self._video.write(frame.image, labels)

    def __enter__(self) -> "_Outputs":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        succeeded = exc_type is None
        if self._video is not None:
            self._video.close(keep=succeeded)
        if self._staging is None:
            return
        if succeeded:
            self.output.mkdir(exist_ok=True)
            for path in self._staging.iterdir():
                path.replace(self.output / path.name)
        shutil.rmtree(self._staging, ignore_errors=True)
