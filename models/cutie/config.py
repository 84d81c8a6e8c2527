"""Cutie's architecture variants (official ``cutie/config/model/*.yaml``). No torch import."""
from __future__ import annotations

from dataclasses import dataclass

STRIDE = 16  # of the memory features w.r.t. the (padded) image


@dataclass(frozen=True)
class CutieConfig:
    """Architecture hyper-parameters (official ``cutie/config/model/*.yaml``)."""

    query_encoder: str = "resnet50"
    ms_dims: tuple[int, int, int] = (1024, 512, 256)
    mask_encoder: str = "resnet18"
    key_dim: int = 64
    value_dim: int = 256
    sensory_dim: int = 256
    embed_dim: int = 256
    num_queries: int = 16
    num_heads: int = 8
    ff_dim: int = 2048
    num_blocks: int = 3
    up_dims: tuple[int, int, int] = (256, 128, 128)
    pe_scale: float = 32.0
    pe_temperature: float = 128.0


VARIANTS = {  # the official small (ResNet-18 query encoder) and base (ResNet-50) networks
    "small": CutieConfig(query_encoder="resnet18", ms_dims=(256, 128, 64)),
    "base": CutieConfig(),
}
