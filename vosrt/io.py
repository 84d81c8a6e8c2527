"""Reading frames (image folders, video files, cameras) and label maps; writing palette PNGs
and overlay videos."""
from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vosrt import inputs
from vosrt.runtime import safe_write
from vosrt.runtime.geometry import VosrtWarning

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


def full_palette(palette: list[int] | None = None) -> list[int]:
    """A 256-colour palette (768 values): ``palette``'s colours first (a PNG's palette may list
    fewer), the VOC colours after them. Every label map is written with all 256 entries, so a
    label beyond the first mask's colours never wraps."""
    given = list(palette or [])[:768]
    given = given[:len(given) - len(given) % 3]
    return given + voc_palette()[len(given):]


def list_frames(folder: str | Path) -> list[Path]:
    """Image files of a folder (extensions in any case), sorted by name; ValueError for two whose
    names are the same without the extension (:func:`vosrt.inputs.files_by_name`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    frames = list(inputs.files_by_name(folder.iterdir(), IMAGE_SUFFIXES, "frames").values())
    if not frames:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return frames


# Image modes with more than 8 bits a channel: converting them to RGB clips (a 16-bit frame would
# become nearly all white), so they are refused, as integer arrays other than uint8 are by a session.
_WIDE_MODES = ("I", "F")


def read_rgb(path: str | Path) -> np.ndarray:
    """``HxWx3`` uint8 RGB of an 8-bit image file (16-bit and float images are errors)."""
    try:
        with Image.open(path) as im:
            if im.mode.startswith(_WIDE_MODES):
                raise ValueError(f"{path} is a {im.mode} image (more than 8 bits); vosrt reads 8-bit images: "
                                 "convert it to 8-bit RGB first")
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
    """``HxW`` labels 0..255 as an 8-bit palette PNG with 256 colours (see :func:`full_palette`)."""
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(full_palette(palette))
    image.save(path, format="PNG")


def check_label_map(path: str | Path) -> None:
    """OSError unless the PNG at ``path`` reads back whole (a write cut short, e.g. by a full disk)."""
    try:
        with Image.open(path) as im:
            im.verify()
    except (OSError, SyntaxError) as err:
        raise OSError(f"could not write {path}: it does not read back ({err}); disk full?") from None


def opencv():
    """The cv2 module; a RuntimeError with the fix when it cannot load (opencv-python needs libGL,
    which minimal Linux images lack)."""
    try:
        import cv2
    except ImportError as err:
        raise RuntimeError(f"OpenCV (cv2) does not load: {err}. On a minimal Linux image: apt-get install libgl1 "
                           "libglib2.0-0, or pip uninstall -y opencv-python && pip install opencv-python-headless "
                           "(not with vosrt[eval], whose vos-benchmark requires opencv-python)") from None
    return cv2


# -- frame sources: an image folder, a video file or a camera ------------------------------

@dataclass(frozen=True)
class Frame:
    """One input frame: ``name`` (file stem, or the 5-digit frame number for videos and
    cameras; masks and outputs are named after it) and ``image`` ``HxWx3`` uint8 RGB."""

    name: str
    image: np.ndarray


class FrameSource:
    """Frames of a video in order. ``fps``: the source's frame rate (None when it has none,
    as for an image folder); ``length``: the number of frames (None for a camera, and for a
    file whose header does not give it); ``location``: the folder or file the frames come from
    (None for a camera); ``endless``: a live stream (a camera), which only a signal ends, where
    every other source is finite."""

    description: str = ""
    location: Path | None = None
    fps: float | None = None
    length: int | None = None
    endless: bool = False

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
        self.location = Path(folder)
        self.length = len(self.paths)

    def __iter__(self) -> Iterator[Frame]:
        for path in self.paths:
            yield Frame(path.stem, read_rgb(path))


class CaptureSource(FrameSource):
    """A video file or camera read through OpenCV. The first frame is read when it opens, so
    a file OpenCV cannot decode or a camera that is not there fails here, not mid-stream."""

    def __init__(self, target: str | int):
        cv2 = opencv()

        is_camera = isinstance(target, int)
        self.description = f"camera {target}" if is_camera else f"video {target}"
        self.location = None if is_camera else Path(target)
        with _native_stderr_silenced():  # OpenCV and FFmpeg print their own warnings on failure
            self._capture = cv2.VideoCapture(target)
            ok, first = self._capture.read() if self._capture.isOpened() else (False, None)
        if not ok:
            self._capture.release()
            if is_camera:
                raise RuntimeError(f"camera {target} is not available (no device, or it delivers no frames)")
            raise ValueError(f"cannot read video {target}: OpenCV cannot decode it or it holds no frames")
        self._first = first
        self.endless = is_camera
        self.fps = inputs.source_fps(self._capture.get(cv2.CAP_PROP_FPS))
        count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.length = count if count > 0 and not is_camera else None
        self._packets = _jpeg_packets(target) if not is_camera and _fourcc(self._capture) == "MJPG" else None

    def __iter__(self) -> Iterator[Frame]:
        """The frames; a :class:`VosrtWarning` when a file ends before the frame count its header gives."""
        cv2 = opencv()

        if self._first is None:
            raise RuntimeError(f"{self.description} can be read only once")
        image, self._first, index = self._first, None, 0
        while image is not None:
            self._check_size(index, image.shape[:2])
            yield Frame(f"{index:05d}", cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
            ok, image = self._capture.read()
            image, index = (image if ok else None), index + 1
        if self.length is not None and index < self.length:
            warnings.warn(VosrtWarning(f"{self.description} ended after {index} of the {self.length} frames its "
                                       "header announces: the file is probably truncated"), stacklevel=2)

    def _check_size(self, index: int, size: tuple[int, int]) -> None:
        """ValueError when frame ``index`` of an MJPEG video is stored at another size than
        ``size``, the size OpenCV decoded it at (it stretches every frame to the first one's)."""
        if self._packets is None:
            return
        ok, packet = self._packets.read()
        stored = inputs.jpeg_size(packet.tobytes()) if ok else None
        if stored is not None and stored != tuple(size):
            raise ValueError(f"{self.description} changes its frame size within the file: frame {index} is "
                             f"{stored[0]}x{stored[1]}, the first {size[0]}x{size[1]} (OpenCV would stretch it); split "
                             "the video where the size changes")

    def close(self) -> None:
        self._capture.release()
        if self._packets is not None:
            self._packets.release()


def _fourcc(capture) -> str:
    """The four-character code of the codec of an OpenCV capture."""
    import cv2

    code = int(capture.get(cv2.CAP_PROP_FOURCC))
    return "".join(chr((code >> 8 * i) & 0xFF) for i in range(4))


def _jpeg_packets(path: str):
    """An OpenCV capture of the video file ``path`` that returns each frame's packet undecoded
    (for MJPEG: one JPEG image each)."""
    import cv2

    with _native_stderr_silenced():
        return cv2.VideoCapture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_FORMAT, -1])


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
    return inputs.files_by_name(masks.iterdir(), {".png"}, "masks")


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

@contextlib.contextmanager
def overlay_video(path: str | Path, fps: float, size: tuple[int, int], palette: list[int] | None = None,
                  alpha: float = 0.5, *, overwrite: bool = True) -> Iterator["OverlayVideoWriter"]:
    """An :class:`OverlayVideoWriter` for ``path`` that writes to a fresh hidden file beside it
    (:func:`vosrt.runtime.safe_write.staged_file`): when the block completes the video is read back
    and, if every frame is there at its size (and, without ``overwrite``, ``path`` is still
    absent), renamed to ``path``; otherwise (or when the block raises) it is deleted and ``path``
    is left as it was."""
    path = Path(path)
    codecs = OverlayVideoWriter.codecs(path)
    writer = None

    def check(partial: Path) -> None:
        readable = count_frames(partial)
        if readable != writer.frames:
            raise OSError(f"could not write the overlay video {path}: {readable} of its {writer.frames} frames read "
                          "back (disk full?)")
        safe_write.check_still_free(path, overwrite, "--overlay")
        if readable and frame_size(partial) != writer.size:
            raise OSError(f"could not write the overlay video {path}: its frames read back at {frame_size(partial)}, "
                          f"not the {writer.size} written")

    with safe_write.staged_file(path, check) as partial:
        writer = OverlayVideoWriter(partial, codecs, fps, size, palette, alpha)
        try:
            yield writer
        finally:
            writer.release()


def frame_size(path: str | Path) -> tuple[int, int] | None:
    """``(H, W)`` of the first frame OpenCV reads from the video file at ``path`` (None: none)."""
    import cv2

    with _native_stderr_silenced():
        capture = cv2.VideoCapture(str(path))
        ok, image = capture.read()
        capture.release()
    return image.shape[:2] if ok else None


def count_frames(path: str | Path) -> int:
    """Frames OpenCV can read from the video file at ``path``."""
    cv2 = opencv()

    with _native_stderr_silenced():
        capture = cv2.VideoCapture(str(path))
        count = 0
        while capture.isOpened() and capture.grab():
            count += 1
        capture.release()
    return count


class OverlayVideoWriter:
    """Writes frames with their label maps blended in (``alpha`` of the palette colour on the
    objects) to the video file ``path`` with the first of ``codecs`` (fourcc codes) this OpenCV
    can encode: H.264 for .mp4/.mov/.mkv where OpenCV has an encoder for it, else MPEG-4 Part 2
    with a :class:`VosrtWarning`. Those two encode only even sizes: an odd height or width is
    padded by repeating the last row or column (``size``: what the file holds), with a warning.
    Use it through :func:`overlay_video`, which stages the file."""

    CODECS = {".mp4": ("avc1", "mp4v"), ".mov": ("avc1", "mp4v"), ".mkv": ("avc1", "mp4v"), ".avi": ("MJPG",)}
    PLAYABLE = "avc1"  # H.264: what browsers play
    EVEN_ONLY = ("avc1", "mp4v")  # codecs that drop an odd last row/column (and refuse a size of 1)

    @classmethod
    def codecs(cls, path: Path) -> tuple[str, ...]:
        """The fourcc codes to try for ``path``'s suffix; ValueError for a suffix without any."""
        try:
            return cls.CODECS[path.suffix.lower()]
        except KeyError:
            raise ValueError(f"overlay video {path}: use one of {', '.join(cls.CODECS)}") from None

    def __init__(self, path: str | Path, codecs: tuple[str, ...], fps: float, size: tuple[int, int],
                 palette: list[int] | None = None, alpha: float = 0.5):
        cv2 = opencv()

        self.path = Path(path)
        self.frame_size = tuple(size)
        for self.codec in codecs:
            self.size = inputs.even_size(self.frame_size) if self.codec in self.EVEN_ONLY else self.frame_size
            with _native_stderr_silenced():  # FFmpeg reports a missing encoder on stderr
                self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*self.codec), fps,
                                               (self.size[1], self.size[0]))
            if self._writer.isOpened():
                break
            self._writer.release()
        else:
            raise RuntimeError(f"OpenCV cannot write {self.path.suffix} video here (tried {', '.join(codecs)})")
        if self.codec != codecs[0] and codecs[0] == self.PLAYABLE:
            warnings.warn(VosrtWarning(f"this OpenCV has no H.264 encoder: the overlay is {self.codec} (MPEG-4 "
                                       "Part 2), which browsers do not play; convert it with ffmpeg -c:v libx264 to "
                                       "share it"), stacklevel=2)
        if self.size != self.frame_size:
            warnings.warn(VosrtWarning(f"the overlay is {self.size[0]}x{self.size[1]}: {self.codec} encodes only even "
                                       f"sizes, so the {self.frame_size[0]}x{self.frame_size[1]} frames get their last "
                                       "row or column repeated (an .avi overlay keeps the size)"), stacklevel=2)
        self.colours = np.array(full_palette(palette), dtype=np.float32).reshape(256, 3)
        self.alpha = alpha
        self.frames = 0

    def write(self, image: np.ndarray, labels: np.ndarray) -> None:
        """image ``HxWx3`` uint8 RGB, labels ``HxW`` integer label map of the same size."""
        cv2 = opencv()

        blended = image.astype(np.float32)
        objects = labels > 0
        blended[objects] = (1 - self.alpha) * blended[objects] + self.alpha * self.colours[labels[objects]]
        if image.shape[:2] != self.frame_size:
            raise ValueError(f"an overlay frame of {image.shape[0]}x{image.shape[1]} in a video of "
                             f"{self.frame_size[0]}x{self.frame_size[1]} frames")
        frame = blended.round().astype(np.uint8)
        if self.size != self.frame_size:
            pad = ((0, self.size[0] - self.frame_size[0]), (0, self.size[1] - self.frame_size[1]), (0, 0))
            frame = np.pad(frame, pad, mode="edge")
        self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def release(self) -> None:
        self._writer.release()
