"""How a frame maps to the network input: resized to ``max_internal_size``, padded to a multiple
of 16; how a label map a few pixels off the frame size is aligned with it; and the warning vosrt
gives about such inputs (:class:`VosrtWarning`). No torch import."""
from __future__ import annotations

from dataclasses import dataclass

STRIDE = 16
ALIGNMENT_RULE = ("a mask a few pixels off the frame size is aligned as the official code aligns it only when both "
                  "pad to the same multiple of 16")


class VosrtWarning(UserWarning):
    """Something a user should know about a run that still goes on: a mask aligned to its frame, a
    video shorter than its header says. The command line prints each as one line."""


@dataclass(frozen=True)
class FrameGeometry:
    """How a frame of ``size`` (H, W) maps to the network input: resized to ``internal``
    then padded by ``pad`` = (left, right, top, bottom) to a multiple of 16."""

    size: tuple[int, int]
    internal: tuple[int, int]
    pad: tuple[int, int, int, int]

    @classmethod
    def for_size(cls, size: tuple[int, int], max_internal_size: int) -> "FrameGeometry":
        h, w = size
        internal = size
        if 0 < max_internal_size < min(h, w):
            internal = (int(h / min(h, w) * max_internal_size), int(w / min(h, w) * max_internal_size))
        return cls(size, internal, stride_pad(internal))

    @property
    def resized(self) -> bool:
        return self.internal != self.size

    @property
    def padded(self) -> tuple[int, int]:
        """The network input size (H', W'): ``internal`` padded to multiples of 16."""
        left, right, top, bottom = self.pad
        return self.internal[0] + top + bottom, self.internal[1] + left + right


def stride_pad(size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) padding of an image of ``size`` (H, W) to multiples of 16, half
    on each side (the odd pixel right / at the bottom): the official ``pad_divide_by``."""
    pad_h, pad_w = (-size[0]) % STRIDE, (-size[1]) % STRIDE
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


def padded_size(size: tuple[int, int]) -> tuple[int, int]:
    """``size`` (H, W) rounded up to multiples of 16."""
    left, right, top, bottom = stride_pad(size)
    return size[0] + top + bottom, size[1] + left + right


def alignable(mask_size: tuple[int, int], frame_size: tuple[int, int]) -> bool:
    """Whether a label map of ``mask_size`` (H, W) can be aligned with a frame of ``frame_size``
    as the official Cutie and JointFormer code aligns it (see :func:`check_mask_size`)."""
    return tuple(mask_size) == tuple(frame_size) or padded_size(mask_size) == padded_size(frame_size)


def check_mask_size(mask_size: tuple[int, int], frame_size: tuple[int, int], what: str = "mask") -> None:
    """ValueError unless a label map of ``mask_size`` (H, W) can be aligned with a frame of
    ``frame_size`` as the official Cutie and JointFormer code aligns it.

    The official ``InferenceCore.step`` pads the image and the mask separately with
    ``pad_divide_by``: the two line up only when they pad to the same multiple-of-16 canvas (a
    mask 853 px wide on an 854 px frame: both to 864, 5 px on the left, the mask's missing column
    zero on the right). A mask of another size breaks the official code and is an error here too.
    When the frame is resized (``max_internal_size``), such a mask is resized with it to the
    frame's internal size, as the official code does."""
    if not alignable(mask_size, frame_size):
        raise ValueError(f"{what} is {mask_size[0]}x{mask_size[1]} but the frame is {frame_size[0]}x{frame_size[1]} "
                         f"({ALIGNMENT_RULE})")


def mask_on_frame(mask_size: tuple[int, int], frame_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Where a label map of ``mask_size`` lands on a frame of ``frame_size`` (checked by
    :func:`check_mask_size`): (left, right, top, bottom) padding, negative where it is cropped,
    that gives it the frame's size. The mask's own official padding places it on the shared
    canvas; the frame's padding is then removed."""
    check_mask_size(mask_size, frame_size)
    mask_pad, frame_pad = stride_pad(mask_size), stride_pad(frame_size)
    return tuple(m - f for m, f in zip(mask_pad, frame_pad))
