"""The tiny model's settings: the common ones, and nothing an export fixes. No torch import."""
from __future__ import annotations

from dataclasses import dataclass

from vosrt.runtime.config import SessionConfig


@dataclass(frozen=True)
class TinyConfig(SessionConfig):
    mem_every: int = 2
    max_mem_frames: int = 2

    def export_settings(self) -> dict:
        return {}
