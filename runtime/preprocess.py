"""Frame and mask preparation (validation, resizing to ``max_internal_size``, padding to 16) and
the way back to the frame size."""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import FrameGeometry, VosrtWarning, check_mask_size, padded_size, stride_pad
from .objects import object_ids


def check_image(image: np.ndarray) -> None:
    """ValueError unless ``image`` is ``HxWx3`` RGB, uint8 (0..255) or float (16, 32 or 64 bit) with
    every value in [0, 1]: other integer types, booleans, NaN or infinite values and floats outside
    [0, 1] (a forgotten ``/ 255``) are refused, never reinterpreted."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", type(image).__name__)
        raise ValueError(f"image must be an HxWx3 RGB numpy array, got {shape}")
    if min(image.shape[:2]) < 1:
        raise ValueError(f"image is {image.shape[0]}x{image.shape[1]} pixels: a frame needs at least 1x1")
    if image.dtype == np.uint8:
        return
    if not np.issubdtype(image.dtype, np.floating):
        hint = {np.dtype(np.uint16): "; for 16-bit images: (image / 65535).astype(np.float32)"}.get(image.dtype, "")
        raise ValueError(f"image dtype {image.dtype}: give uint8 (0..255) or float in [0, 1]{hint}")
    bad = image.size - int(np.isfinite(image).sum())
    if bad:
        raise ValueError(f"image has {bad} NaN or infinite values; the frame was not used (give finite values "
                         "in [0, 1])")
    low, high = float(image.min()), float(image.max())
    if low < 0 or high > 1:
        hint = " (0..255? divide by 255)" if low >= 0 and high <= 255 else ""
        raise ValueError(f"float image values span [{low:g}, {high:g}], outside [0, 1]{hint}")


def prepare_image(image: np.ndarray, max_internal_size: int, device: torch.device) -> tuple[torch.Tensor, FrameGeometry]:
    """``HxWx3`` RGB (uint8, or float in [0, 1]: see :func:`check_image`) -> ``[1, 3, H', W']``
    float32 on ``device``."""
    check_image(image)
    geometry = FrameGeometry.for_size(image.shape[:2], max_internal_size)
    x = torch.from_numpy(np.array(image)).to(device)  # a copy: the input may be read-only
    x = x.permute(2, 0, 1).float()
    if image.dtype == np.uint8:
        x = x / 255
    if geometry.resized:
        x = F.interpolate(x[None], size=geometry.internal, mode="bilinear", align_corners=False)[0]
    return F.pad(x, geometry.pad)[None], geometry


def prepare_mask(mask: np.ndarray, objects: list[int] | None, geometry: FrameGeometry,
                 device: torch.device) -> tuple[torch.Tensor, list[int]]:
    """Validate an ``HxW`` label map -> (padded ``[H', W']`` int64 labels, object ids).

    A mask a few pixels off the frame size is aligned as the official code aligns it (see
    :func:`~vosrt.runtime.geometry.check_mask_size`), with a :class:`VosrtWarning`: padded to the
    network size by its own padding, or resized with the frame when the frame is resized."""
    if not isinstance(mask, np.ndarray) or mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
        shape = getattr(mask, "shape", type(mask).__name__)
        raise ValueError(f"mask must be an HxW integer label map, got {shape} {getattr(mask, 'dtype', '')}".rstrip())
    check_mask_size(mask.shape, geometry.size)
    present = [int(v) for v in np.unique(mask) if v != 0]
    objects = object_ids(present, "mask labels") if objects is None else object_ids(objects)
    unlisted = sorted(set(present) - set(objects))
    if unlisted:
        raise ValueError(f"mask has labels {unlisted} that are not listed in objects={objects}")
    if not objects:
        raise ValueError("the mask holds no object (only background)")
    labels = torch.from_numpy(mask.astype(np.int64)).to(device)
    pad = geometry.pad
    if geometry.resized:
        labels = F.interpolate(labels[None, None].float(), size=geometry.internal,
                               mode="nearest-exact")[0, 0].round().long()
    elif mask.shape != geometry.size:
        pad = stride_pad(mask.shape)
    if mask.shape != geometry.size:
        _warn_aligned(mask.shape, geometry)
    return F.pad(labels, pad), objects


def _warn_aligned(mask_size: tuple[int, int], geometry: FrameGeometry) -> None:
    (h, w), (fh, fw) = mask_size, geometry.size
    how = (f"resized with the frame to {geometry.internal[0]}x{geometry.internal[1]}" if geometry.resized else
           "each padded to {}x{} by its own padding".format(*padded_size(geometry.size)))
    warnings.warn(VosrtWarning(f"a {h}x{w} mask on a {fh}x{fw} frame: aligned as the official code aligns it ({how})"),
                  stacklevel=6)  # the caller of Session.step


def restore(x: torch.Tensor, geometry: FrameGeometry) -> torch.Tensor:
    """Network-size ``[C, H', W']`` -> frame-size ``[C, H, W]`` (unpad, then resize back)."""
    left, right, top, bottom = geometry.pad
    x = x[:, top:x.shape[1] - bottom, left:x.shape[2] - right]
    if geometry.resized:
        x = F.interpolate(x[None], size=geometry.size, mode="bilinear", align_corners=False)[0]
    return x
