"""Cutie: models, configurations and the stage functions the runtime and exporters call."""
from .model import CONFIGS, Cutie, CutieConfig

__all__ = ["CONFIGS", "Cutie", "CutieConfig"]
