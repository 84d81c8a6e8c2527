"""``vosrt segment``'s pipeline: frames from a source, masks from PNGs, a session, and the
outputs (palette PNG label maps, an overlay video, or both)."""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from tqdm import tqdm

from vosrt import inputs, io
from vosrt.runtime import safe_write
from vosrt.runtime.geometry import check_mask_size

if TYPE_CHECKING:
    from vosrt.runtime.streams import BatchSession
    from vosrt.runtime.session import Session

DEFAULT_FPS = 24.0
T = TypeVar("T")


@dataclass
class SegmentResult:
    frames: int
    seconds: float
    output: Path | None
    overlay: Path | None
    stopped: bool  # a camera stream (endless) ended by Ctrl-C or SIGTERM
    others: list[str] = field(default_factory=list)  # files --output held that this run did not write


def check_outputs(source: io.FrameSource, masks: str | Path, output: str | Path | None,
                  overlay: str | Path | None, overwrite: bool) -> None:
    """The output rules of ``vosrt segment`` (:mod:`vosrt.runtime.safe_write`): something to write,
    nothing inside the input or the masks, no protected folder, and a non-empty ``output`` folder
    or an existing ``overlay`` only with ``overwrite``."""
    if output is None and overlay is None:
        raise ValueError("nothing to write: give --output DIR (palette PNGs), --overlay FILE.mp4, or both")
    sources = (("--input", source.location), ("--masks", masks))
    if output is not None:
        inputs.check_not_dangling(output, "--output")
        safe_write.check_folder_to_fill(output, sources, overwrite, "--output")
    if overlay is not None:
        io.OverlayVideoWriter.codecs(Path(overlay))
        inputs.check_not_dangling(overlay, "--overlay")
        safe_write.check_file_to_write(overlay, sources, overwrite, "--overlay")


def check_distinct(output_folders: Sequence[str | Path | None], overlays: Sequence[str | Path | None]) -> None:
    """ValueError when two outputs of one command (``--output`` and ``--overlay`` of every stream)
    are the same path, or one lies inside the other: each would overwrite the other."""
    named = [(flag, Path(path)) for flag, paths in (("--output", output_folders), ("--overlay", overlays))
             for path in paths if path is not None]
    for index, (flag, path) in enumerate(named):
        for other_flag, other in named[index + 1:]:
            a, b = path.resolve(), other.resolve()
            if a == b or a in b.parents or b in a.parents:
                raise ValueError(f"{flag} {inputs.printable(path)} and {other_flag} {inputs.printable(other)} name the "
                                 "same output (or one inside the other): give every stream outputs of its own")


@contextlib.contextmanager
def claimed_outputs(checks: Sequence[tuple[io.FrameSource, str | Path, str | Path | None, str | Path | None]],
                    overwrite: bool) -> Iterator[None]:
    """Check the outputs of each ``(source, masks, output, overlay)`` (:func:`check_outputs`),
    claim them for the block (:func:`vosrt.runtime.safe_write.claimed`: another run naming one of
    them is refused before it starts work), then check them again under the claims."""
    check_distinct([c[2] for c in checks], [c[3] for c in checks])
    for check in checks:
        check_outputs(*check, overwrite)
    with contextlib.ExitStack() as claims:
        for _, _, output, overlay in checks:
            for path, flag in ((output, "--output"), (overlay, "--overlay")):
                if path is not None:
                    claims.enter_context(safe_write.claimed(path, flag))
        for check in checks:
            check_outputs(*check, overwrite)
        yield


def segment(make_session: Callable[[], "Session"], source: io.FrameSource, masks: str | Path, *,
            output: str | Path | None = None, overlay: str | Path | None = None, fps: float | None = None,
            max_frames: int | None = None, overwrite: bool = False) -> SegmentResult:
    """Segment ``source`` from the label maps in ``masks`` (one PNG for the first frame, or a
    folder of PNGs named like the frames; a later mask may add objects).

    Writes ``output/<frame>.png`` palette label maps and/or the ``overlay`` video at the
    source's size and frame rate (``fps`` when the source has none, else 24). The outputs and
    the first frame and its mask are checked before the session is made (:func:`check_outputs`:
    ``overwrite`` lets a run replace the files it writes in a non-empty ``output`` and an
    existing ``overlay``) and claimed for the run (:func:`claimed_outputs`); outputs appear only
    when the run succeeds (a camera stopped with Ctrl-C or SIGTERM counts as success; a finite
    input stopped before its end raises KeyboardInterrupt with ``progress``, how far it got),
    complete and read back.
    """
    with claimed_outputs([(source, masks, output, overlay)], overwrite):
        video = _Video(source, masks, fps, max_frames)
        session = make_session()
        written = _Written()
        with _outputs(output, overlay, video.frame_rate, video.size, video.palette, written, overwrite) as write, \
                tqdm(total=video.total, unit="frame", desc="segment") as bar:
            start, count, stopped = time.perf_counter(), 0, False
            try:
                for frame, last in video:
                    prob = session.step(frame.image, video.mask(frame), end=last)
                    write(frame, session.to_mask(prob))
                    count += 1
                    bar.update()
                    bar.set_postfix(fps=f"{count / (time.perf_counter() - start):.2f}")
            except KeyboardInterrupt as stop:
                if not source.endless:
                    stop.progress = _progress([count], [video.total], [source])
                    raise
                stopped = True  # Ctrl-C (or SIGTERM) is how a camera stream ends
    return SegmentResult(count, time.perf_counter() - start, Path(output) if output is not None else None,
                         Path(overlay) if overlay is not None else None, stopped, written.others)


def segment_streams(make_batch: Callable[[], "BatchSession"], sources: Sequence[io.FrameSource],
                    masks: Sequence[str | Path], *, outputs: Sequence[str | Path | None],
                    overlays: Sequence[str | Path | None], fps: float | None = None, max_frames: int | None = None,
                    overwrite: bool = False) -> list[SegmentResult]:
    """Segment several sources together: each is a stream of ``make_batch()``
    (:func:`vosrt.load_batch`), which takes a frame of every source still running per step. Each
    source gets what :func:`segment` gives it (masks, outputs and frame rates per source, in the
    order of ``sources``; the same output rules); a source that ends leaves the batch, the others
    go on. Two streams never share an output (:func:`check_distinct`). Outputs appear only when
    the whole run succeeds (Ctrl-C ends it as it ends a camera in :func:`segment`, when every
    source is a camera)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(claimed_outputs(list(zip(sources, masks, outputs, overlays)), overwrite))
        videos = [_Video(source, mask, fps, max_frames) for source, mask in zip(sources, masks)]
        batch = make_batch()
        totals = [video.total for video in videos]
        counts, written = [0] * len(videos), [_Written() for _ in videos]
        writers = [stack.enter_context(_outputs(output, overlay, video.frame_rate, video.size, video.palette, record,
                                                overwrite))
                   for video, output, overlay, record in zip(videos, outputs, overlays, written)]
        bar = stack.enter_context(tqdm(total=None if None in totals else sum(totals), unit="frame", desc="segment"))
        start, stopped, running = time.perf_counter(), False, dict(enumerate(videos))
        try:
            while running:
                frames = {stream: item for stream, video in running.items() if (item := next(video, None))}
                for stream in [stream for stream in running if stream not in frames]:  # a live source that stopped
                    batch.end(stream)
                    del running[stream]
                last = [stream for stream, (_, is_last) in frames.items() if is_last]
                probs = batch.step({stream: (frame.image, running[stream].mask(frame))
                                    for stream, (frame, _) in frames.items()}, last=last)
                for stream, (frame, _) in frames.items():
                    writers[stream](frame, batch.to_mask(stream, probs[stream]))
                    counts[stream] += 1
                for stream in last:
                    batch.end(stream)
                    del running[stream]
                bar.update(len(frames))
        except KeyboardInterrupt as stop:
            if not all(source.endless for source in sources):
                stop.progress = _progress(counts, totals, sources)
                raise
            stopped = True
    seconds = time.perf_counter() - start
    return [SegmentResult(count, seconds, Path(output) if output is not None else None,
                          Path(overlay) if overlay is not None else None, stopped, record.others)
            for count, output, overlay, record in zip(counts, outputs, overlays, written)]


class _Video:
    """A source's frames, each with whether it is the last (an iterator), and its masks. Opening
    it reads the first frame and checks that frame's mask. ``fps``: the frame rate when the source
    has none (positive); at most ``max_frames`` frames (at least 1)."""

    def __init__(self, source: io.FrameSource, masks: str | Path, fps: float | None, max_frames: int | None):
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"--max-frames must be at least 1, got {max_frames}")
        inputs.check_fps(fps)
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
        self._frames = ((f, False) for f in stream) if source.endless else _flag_last(stream)

    def __iter__(self) -> "_Video":
        return self

    def __next__(self) -> tuple[io.Frame, bool]:
        return next(self._frames)

    def mask(self, frame: io.Frame) -> np.ndarray | None:
        """The label map given for ``frame`` (the first frame's on the first call), or None."""
        mask, self._first_mask = self._first_mask, None
        return mask if mask is not None else _mask_for(frame, self.mask_paths)


def _progress(counts: Sequence[int], totals: Sequence[int | None], sources: Sequence[io.FrameSource]) -> str:
    """How far a run stopped before the end of its finite inputs got, e.g. "after 5 of the 8
    frames of image folder clip", for the message of the exit status."""
    parts = [f"{count} of the {total} frames" if total is not None else f"{count} frames (not the end)"
             for count, total in zip(counts, totals)]
    where = [f"{part} of {inputs.printable(source.description)}" for part, source in zip(parts, sources)]
    return f"stopped after {', '.join(where)}; nothing was written"


def _mask_for(frame: io.Frame, mask_paths: dict[str, Path]) -> np.ndarray | None:
    if frame.name not in mask_paths:
        return None
    mask, _ = _read_mask(mask_paths[frame.name], frame.image.shape[:2])
    return mask


def _read_mask(path: Path, size: tuple[int, int]) -> tuple[np.ndarray, list[int] | None]:
    """Label map for a frame of ``size`` (H, W), and its palette. A mask a few pixels off the frame
    size (as in some DAVIS annotations) is aligned by the session as the official code aligns it
    (:func:`vosrt.runtime.geometry.check_mask_size`); other sizes are errors."""
    mask, palette = io.read_label_map(path)
    check_mask_size(mask.shape, size, f"mask {path}")
    return mask, palette


def _flag_last(items: Iterable[T]) -> Iterator[tuple[T, bool]]:
    """``(item, is_last)`` pairs, one item ahead, so the last frame is known when it comes."""
    items = iter(items)
    previous = next(items, None)
    for item in items:
        yield previous, False
        previous = item
    if previous is not None:
        yield previous, True


@dataclass
class _Written:
    others: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _outputs(output: str | Path | None, overlay: str | Path | None, fps: float, size: tuple[int, int],
             palette: list[int] | None, written: _Written, overwrite: bool
             ) -> Iterator[Callable[[io.Frame, np.ndarray], None]]:
    """``write(frame, labels)``: palette PNGs go to a staging folder beside ``output`` and the
    overlay to a staged video (:func:`vosrt.io.overlay_video`). When the block completes, the video
    is read back and put in place, then the PNGs are read back and moved into ``output``
    (``written.others``: the files it held that this run did not write); without ``overwrite``,
    each target is checked again first to be new or empty. When it raises, nothing is left."""
    with (safe_write.staged_folder(output) if output is not None else contextlib.nullcontext()) as staging:
        with (io.overlay_video(overlay, fps, size, palette, overwrite=overwrite) if overlay is not None
              else contextlib.nullcontext()) as video:
            def write(frame: io.Frame, labels: np.ndarray) -> None:
                if staging is not None:
                    io.write_label_map(staging / f"{frame.name}.png", labels, palette)
                if video is not None:
                    video.write(frame.image, labels)

            yield write
        if staging is not None:
            for path in staging.iterdir():
                io.check_label_map(path)
            safe_write.check_still_free(Path(output), overwrite, "--output")
            written.others = safe_write.move_files(staging, Path(output))
