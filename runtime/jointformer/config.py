"""JointFormer's inference settings (official ``eval.py`` defaults). No torch import."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from vosrt.models.jointformer.topk import TOPK_BLOCKS, TOPK_RANGES, TopKConfig
from vosrt.runtime.config import SessionConfig, option


@dataclass(frozen=True)
class JointFormerSessionConfig(SessionConfig):
    """JointFormer's settings: ``include_last`` keeps the last processed frame as a reference;
    ``topk_*`` are the official top-K options (see :class:`TopKConfig`)."""

    include_last: bool = option(True, "do not keep the last processed frame as a reference")
    topk_range: str = option("all_frames", "top-K over all reference tokens or per frame", choices=TOPK_RANGES)
    topk_block: str = option("all_blocks", "the joint blocks that apply the top-K filter", choices=TOPK_BLOCKS)
    topk_clstoken: bool = option(False, "top-K filter on the compressed-memory token's attention too")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.topk()  # validates the top-K options

    def topk(self) -> TopKConfig:
        values = asdict(self)
        return TopKConfig(**{f.name: values[f.name] for f in fields(TopKConfig)})

    def export_settings(self) -> dict:
        return asdict(self.topk())
