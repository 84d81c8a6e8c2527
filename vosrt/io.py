"""Reading frames and label maps, writing palette PNGs."""
from __future__ import annotations

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
