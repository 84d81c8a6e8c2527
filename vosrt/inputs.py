"""What the command line reads, normalised in one place: names, sizes and numbers.

- **Names.** Frames and masks are matched by their name without the extension, the extension
  compared in any case (``00003.PNG`` is the mask of frame ``00003``): :func:`files_by_name`. Two
  files whose names are the same once the extension is dropped (``00000.jpg`` and ``00000.png``)
  are refused: their label maps would be written over each other.
- **Sizes.** A frame has at least 1x1 pixels (every frame goes through the session's
  :func:`vosrt.runtime.preprocess.check_image`, the API's check too); an overlay video is written
  at an even size where its codec needs one (:func:`even_size`); a size that changes within a
  video is the session's error, and where OpenCV would hide it by stretching the frames to the
  first size (MJPEG videos), each frame's size is read from its JPEG header (:func:`jpeg_size`).
- **Numbers.** A frame rate is finite and in (0, :data:`MAX_FPS`] (:func:`check_fps`); a video's
  own frame rate outside that range is ignored (:func:`source_fps`).
- **Output paths.** A dangling symbolic link is refused before any work
  (:func:`check_not_dangling`); names that are not valid UTF-8 print with escapes
  (:func:`printable`).

No torch import.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

MAX_FPS = 1000.0  # above this no player plays it; OpenCV's encoders loop on inf


def files_by_name(paths: Iterable[Path], suffixes: Iterable[str], what: str) -> dict[str, Path]:
    """The files among ``paths`` whose extension, in any case, is one of ``suffixes`` (lower case,
    with the dot), by name without the extension, in name order. ValueError when two have the
    same name once the extension is dropped."""
    suffixes = set(suffixes)
    found: dict[str, Path] = {}
    for path in sorted(paths):
        if path.suffix.lower() not in suffixes or not path.is_file():
            continue
        if path.stem in found:
            raise ValueError(f"{what} {found[path.stem].name} and {path.name} in {path.parent} have the same name "
                             f"without the extension ({path.stem}): their outputs would be written over each other; "
                             "keep one of them")
        found[path.stem] = path
    return found


def check_fps(fps: float | None, what: str = "--fps") -> float | None:
    """``fps`` unchanged (None stays None); ValueError unless it is finite and in (0, MAX_FPS]."""
    if fps is not None and not (math.isfinite(fps) and 0 < fps <= MAX_FPS):
        raise ValueError(f"{what} must be a frame rate above 0 and at most {MAX_FPS:g}, got {fps}")
    return fps


def source_fps(fps: float | None) -> float | None:
    """A video's frame rate as OpenCV reports it, or None when it is not a usable one (0, NaN,
    infinite, or above :data:`MAX_FPS`)."""
    return fps if fps is not None and math.isfinite(fps) and 0 < fps <= MAX_FPS else None


def even_size(size: tuple[int, int]) -> tuple[int, int]:
    """``(H, W)`` rounded up to even numbers: what H.264 and MPEG-4 Part 2 encode (they drop an odd
    last row or column, and refuse a width or height of 1)."""
    return size[0] + size[0] % 2, size[1] + size[1] % 2


def check_not_dangling(path: str | Path, what: str) -> None:
    """FileExistsError when ``path`` is a symbolic link to nothing: writing through it would
    create a file wherever it points, and replacing it would remove the user's link."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise FileExistsError(f"{what} {printable(path)} is a symbolic link to nothing ({printable(path.readlink())}); "
                              "remove it or name another output")


def printable(path: str | Path) -> str:
    """``path`` as text any terminal takes: bytes that are not UTF-8 as ``\\xNN`` escapes."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# Start-of-frame markers of JPEG (baseline, extended, progressive, lossless; Huffman or arithmetic).
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """``(H, W)`` from the start-of-frame header of the JPEG image ``data`` (no decoding), or None
    when ``data`` is not a JPEG image with one."""
    if data[:2] != b"\xff\xd8":
        return None
    index = 2
    while index + 9 <= len(data) and data[index] == 0xFF:
        marker = data[index + 1]
        if marker in _SOF_MARKERS:
            return int.from_bytes(data[index + 5:index + 7], "big"), int.from_bytes(data[index + 7:index + 9], "big")
        index += 2 + int.from_bytes(data[index + 2:index + 4], "big")
    return None
