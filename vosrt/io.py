"""Reading frames (image folders, video files, cameras) and label maps; writing palette PNGs
and overlay videos."""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def voc_palette(n: int = 256) -> list[int]:
    """The PASCAL VOC / DAVIS colour map (label i -> RGB), flattened for ``Image.putpalette``."""
    palette = []
    for label in range(n):
        r = g = b = 0
        c = label
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


def list_frames(folder: str | Path) -> list[Path]:
    """Image files of a folder, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    frames = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not frames:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return frames


def read_rgb(path: str | Path) -> np.ndarray:
    """``HxWx3`` uint8 RGB."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as err:
        raise ValueError(f"cannot read image {path}: {err}") from None


def read_label_map(path: str | Path) -> tuple[np.ndarray, list[int] | None]:
    """``HxW`` integer labels of a palette / greyscale PNG, and its palette if it has one."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16"):
                raise ValueError(f"{path} is a {im.mode} image; a mask must be a palette or greyscale label map")
            return np.asarray(im).astype(np.int64), im.getpalette() if im.mode == "P" else None
    except OSError as err:
        raise ValueError(f"cannot read mask {path}: {err}") from None


def write_label_map(path: str | Path, labels: np.ndarray, palette: list[int] | None = None) -> None:
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(palette or voc_palette())
    image.save(path)


# -- frame sources: an image folder, a video file or a camera ------------------------------

@dataclass(frozen=True)
class Frame:
    """One input frame: ``name`` (file stem, or the 5-digit frame number for videos and
    cameras; masks and outputs are named after it) and ``image`` ``HxWx3`` uint8 RGB."""

    name: str
    image: np.ndarray


class FrameSource:
    """Frames of a video in order. ``fps``: the source's frame rate (None when it has none,
    as for an image folder); ``length``: the number of frames (None for a camera)."""

    description: str = ""
    fps: float | None = None
    length: int | None = None

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file (nothing to do for an image folder)."""

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ImageFolderSource(FrameSource):
    """The images of a folder in name order (see :func:`list_frames`)."""

    def __init__(self, folder: str | Path):
        self.paths = list_frames(folder)
        self.description = f"image folder {folder}"
        self.length = len(self.paths)

    def __iter__(self) -> Iterator[Frame]:
        for path in self.paths:
            yield Frame(path.stem, read_rgb(path))


class CaptureSource(FrameSource):
    """A video file or camera read through OpenCV. The first frame is read when it opens, so
    a file OpenCV cannot decode or a camera that is not there fails here, not mid-stream."""

    def __init__(self, target: str | int):
        import cv2

        is_camera = isinstance(target, int)
        self.description = f"camera {target}" if is_camera else f"video {target}"
        with _native_stderr_silenced():  # OpenCV and FFmpeg print their own warnings on failure
            self._capture = cv2.VideoCapture(target)
            ok, first = self._capture.read() if self._capture.isOpened() else (False, None)
        if not ok:
            self._capture.release()
            if is_camera:
                raise RuntimeError(f"camera {target} is not available (no device, or it delivers no frames)")
            raise ValueError(f"cannot read video {target}: OpenCV cannot decode it or it holds no frames")
        self._first = first
        self.fps = self._capture.get(cv2.CAP_PROP_FPS) or None
        count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.length = count if count > 0 and not is_camera else None

    def __iter__(self) -> Iterator[Frame]:
        import cv2

        if self._first is None:
            raise RuntimeError(f"{self.description} can be read only once")
        image, self._first, index = self._first, None, 0
        while image is not None:
            yield Frame(f"{index:05d}", cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
            ok, image = self._capture.read()
            image, index = (image if ok else None), index + 1

    def close(self) -> None:
        self._capture.release()


def open_frames(source: str) -> FrameSource:
    """``source``: an image folder, a video file (mp4, avi, ...) or a camera index (``0``; a
    file or folder of that name comes first)."""
    path = Path(source)
    if path.is_dir():
        return ImageFolderSource(path)
    if path.is_file():
        return CaptureSource(str(path))
    if source.isdigit():
        return CaptureSource(int(source))
    raise FileNotFoundError(f"input not found: {source} (give an image folder, a video file or a camera index)")


def mask_files(masks: str | Path, first_frame: str) -> dict[str, Path]:
    """Label maps by frame name: a folder of PNGs named like the frames, or one PNG, which is
    the mask of the first frame (``first_frame``)."""
    masks = Path(masks)
    if masks.is_file():
        return {first_frame: masks}
    if not masks.is_dir():
        raise FileNotFoundError(f"mask file or folder not found: {masks}")
    return {p.stem: p for p in masks.glob("*.png")}


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 (where C libraries write) to /dev/null for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# -- overlay video -------------------------------------------------------------------------

class OverlayVideoWriter:
    """Writes frames with their label maps blended in (``alpha`` of the palette colour on the
    objects) to a video file. Frames go to a hidden file beside ``path``, which is renamed to
    ``path`` by ``close(keep=True)`` and deleted by ``close(keep=False)``: a failed run leaves
    no half-written video."""

    FOURCC = {".mp4": "mp4v", ".avi": "MJPG", ".mov": "mp4v", ".mkv": "mp4v"}

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int], palette: list[int] | None = None,
                 alpha: float = 0.5):
        import cv2

        self.path = Path(path)
        if self.path.suffix.lower() not in self.FOURCC:
            raise ValueError(f"overlay video {path}: use one of {', '.join(self.FOURCC)}")
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"folder for the overlay video not found: {self.path.parent}")
        self._partial = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        fourcc = cv2.VideoWriter_fourcc(*self.FOURCC[self.path.suffix.lower()])
        self._writer = cv2.VideoWriter(str(self._partial), fourcc, fps, (size[1], size[0]))
        if not self._writer.isOpened():
            self._partial.unlink(missing_ok=True)
            raise RuntimeError(f"OpenCV cannot write {self.path.suffix} video to {self.path}")
        self.colours = np.array(voc_palette(), dtype=np.float32).reshape(256, 3)
        given = np.array((palette or [])[:768], dtype=np.float32).reshape(-1, 3)  # may list fewer than 256
        self.colours[:len(given)] = given
        self.alpha = alpha

    def write(self, image: np.ndarray, labels: np.ndarray) -> None:
        """image ``HxWx3`` uint8 RGB, labels ``HxW`` integer label map of the same size."""
        import cv2

        blended = image.astype(np.float32)
        objects = labels > 0
        blended[objects] = (1 - self.alpha) * blended[objects] + self.alpha * self.colours[labels[objects]]
        self._writer.write(cv2.cvtColor(blended.round().astype(np.uint8), cv2.COLOR_RGB2BGR))

    def close(self, keep: bool = True) -> None:
        self._writer.release()
        if keep:
            self._partial.replace(self.path)
        else:
            self._partial.unlink(missing_ok=True)
