"""The models vosrt runs: one :class:`ModelSpec` per model name, and their official checkpoints.

This is the one place that maps a model name to what it is. Adding a model means one entry
here and its own folders (``models/<family>/``, ``runtime/<family>/``), or, for a model that lives
outside this repository, one call of :func:`register_model` (``vosrt.register_model``). No torch import: the
command line reads the names and config types; a model's :class:`~vosrt.runtime.family.ModelFamily`
(network, stages, session) is imported when first used.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vosrt.runtime.config import SessionConfig
from vosrt.runtime.cutie.config import CutieSessionConfig
from vosrt.runtime.jointformer.config import JointFormerSessionConfig

if TYPE_CHECKING:
    from vosrt.runtime.family import ModelFamily

CUTIE_RELEASE = "https://github.com/hkchengrex/Cutie/releases/download/v1.0"
JOINTFORMER_RELEASE = "https://github.com/MCG-NJU/JointFormer/releases/download/v0.1"


@dataclass(frozen=True)
class Checkpoint:
    """An official checkpoint. ``md5`` is None where the official repository publishes none."""

    name: str
    url: str
    md5: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """A model name: its settings (``config_type``, whose fields are the options of
    ``vosrt.load`` and the command line), its family (network, stages, session; in
    ``family_module``, imported on first use), the family's architecture ``variant``, and its
    official checkpoints (the first is the default)."""

    name: str
    config_type: type[SessionConfig]
    family_module: str
    variant: str
    checkpoints: tuple[Checkpoint, ...]

    @property
    def family(self) -> "ModelFamily":
        return importlib.import_module(self.family_module).FAMILY

    @property
    def default_checkpoint(self) -> Checkpoint:
        return self.checkpoints[0]


def _cutie(variant: str, md5: dict[str, str]) -> ModelSpec:
    names = [f"cutie-{variant}-{training}" for training in ("mega", "nomose", "wmose")]
    return ModelSpec(f"cutie-{variant}", CutieSessionConfig, "vosrt.runtime.cutie.family", variant,
                     tuple(Checkpoint(n, f"{CUTIE_RELEASE}/{n}.pth", md5.get(n)) for n in names))


# JointFormer's release (the official checkpoints/download_checkpoint.sh; suffix = training stages:
# s0/s01 pre-trained, s2/s02/s012 DAVIS + YouTube-VOS, s24/s024 VOST, s5/s05/s015 MOSE, s026/s0126
# LVOS, s7/s07 VISOR); the first, s2, is what the official eval.sh uses for DAVIS and YouTube-VOS.
# The official repository publishes no checksums.
_JOINTFORMER_STAGES = ("s2", "s0", "s01", "s02", "s012", "s24", "s024", "s5", "s05", "s015", "s026", "s0126",
                       "s7", "s07")

MODELS = {spec.name: spec for spec in (
    _cutie("small", {}),
    _cutie("base", {"cutie-base-mega": "a6071de6136982e396851903ab4c083a"}),
    ModelSpec("jointformer", JointFormerSessionConfig, "vosrt.runtime.jointformer.family", "default",
              tuple(Checkpoint(f"jointformer_{s}", f"{JOINTFORMER_RELEASE}/jointformer_{s}.pth")
                    for s in _JOINTFORMER_STAGES)),
)}
MODEL_NAMES = tuple(MODELS)


def register_model(spec: ModelSpec) -> None:
    """Add a model: ``vosrt.load``, ``vosrt.load_batch``, the ONNX exporter, the backends and
    ``vosrt verify`` then take ``spec.name``. Its family (``spec.family_module``'s ``FAMILY``, a
    :class:`~vosrt.runtime.family.ModelFamily`) declares its stages, sizes and session."""
    if spec.name in MODELS:
        raise ValueError(f"a model named {spec.name!r} is registered already")
    MODELS[spec.name] = spec


def model_spec(name: str) -> ModelSpec:
    """The spec of model ``name``, or a ValueError listing the models."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None
