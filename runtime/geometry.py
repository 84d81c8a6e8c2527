"""How a frame maps to the network input: resized to ``max_internal_size``, padded to a multiple
of 16. No torch import."""
from __future__ import annotations

from dataclasses import dataclass

STRIDE = 16


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
        pad_h, pad_w = (-internal[0]) % STRIDE, (-internal[1]) % STRIDE
        return cls(size, internal, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))

    @property
    def resized(self) -> bool:
        return self.internal != self.size

    @property
    def padded(self) -> tuple[int, int]:
        """The network input size (H', W'): ``internal`` padded to multiples of 16."""
        left, right, top, bottom = self.pad
        return self.internal[0] + top + bottom, self.internal[1] + left + right
