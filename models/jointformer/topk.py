"""JointFormer's top-K options (official ``eval.py`` flags) and the filter each block applies.

No torch import: the command line reads these options before any model is built.
"""
from __future__ import annotations

from dataclasses import dataclass

JOINT_BLOCKS = 11  # joint blocks of the ConvMAE backbone (``blocks3``)


@dataclass(frozen=True)
class TopK:
    """Top-K filter of one block: ``k`` kept reference tokens per query and head, over all
    reference frames together or per frame (``frame_tokens`` = tokens per frame)."""

    k: int
    frame_tokens: int | None = None


TOPK_RANGES = ("all_frames", "every_frame")
TOPK_BLOCKS = ("all_blocks", "last_block", "half", "None")


@dataclass(frozen=True)
class TopKConfig:
    """The official top-K options (``eval.py``: ``--topk_num``, ``--topk_range``,
    ``--topk_block``, ``--topk_clstoken``), with its defaults."""

    top_k: int = 30
    topk_range: str = "all_frames"
    topk_block: str = "all_blocks"
    topk_clstoken: bool = False

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.topk_range not in TOPK_RANGES:
            raise ValueError(f"topk_range must be one of {TOPK_RANGES}, got {self.topk_range!r}")
        if self.topk_block not in TOPK_BLOCKS:
            raise ValueError(f"topk_block must be one of {TOPK_BLOCKS}, got {self.topk_block!r}")

    def filtered_blocks(self, depth: int = JOINT_BLOCKS) -> range:
        """Indices of the joint blocks that apply the top-K filter."""
        return {"all_blocks": range(depth), "last_block": range(depth - 1, depth),
                "half": range(depth // 2, depth), "None": range(0)}[self.topk_block]

    def joint(self, block: int, frame_tokens: int) -> TopK | None:
        """Filter of joint block ``block`` reading the reference cache (frames of ``frame_tokens``)."""
        if block not in self.filtered_blocks():
            return None
        return TopK(self.top_k, frame_tokens if self.topk_range == "every_frame" else None)

    def summary(self, block: int | None) -> TopK | None:
        """Filter of the compressed-memory token's attention in joint block ``block``
        (None: an update block, filtered when any joint block is)."""
        filtered = bool(self.filtered_blocks()) if block is None else block in self.filtered_blocks()
        return TopK(self.top_k) if self.topk_clstoken and filtered else None


