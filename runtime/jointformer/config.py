"""JointFormer's inference settings (official ``eval.py`` defaults). No torch import."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from vosrt.models.jointformer.topk import TopKConfig
from vosrt.runtime.config import SessionConfig


@dataclass(frozen=True)
class JointFormerSessionConfig(SessionConfig):
    """JointFormer's settings: ``include_last`` keeps the last processed frame as a reference;
    ``topk_*`` are the official top-K options (see :class:`TopKConfig`)."""

    include_last: bool = True
    topk_range: str = "all_frames"
    topk_block: str = "all_blocks"
    topk_clstoken: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.topk()  # validates the top-K options

    def topk(self) -> TopKConfig:
        values = asdict(self)
        return TopKConfig(**{f.name: values[f.name] for f in fields(TopKConfig)})

    def export_settings(self) -> dict:
        return asdict(self.topk())
