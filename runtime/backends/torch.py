"""Eager PyTorch backend: each stage is its network method, run in inference mode."""
from __future__ import annotations

import contextlib
from typing import Any, Mapping

import torch
from torch import nn

from ..family import ModelFamily, stage_method
from ..stages import StageSpec
from .base import Backend


class TorchBackend(Backend):
    """Runs ``family``'s stages on ``network`` (moved to ``device``) with the export ``settings``
    and the eager top-K formulation (the Triton kernels on CUDA, the torch reference elsewhere),
    which reads memory values slot-major (``slot_major_values``).

    ``fp16``: every stage runs under fp16 autocast; what the official code keeps out of autocast
    stays fp32 inside the network. Without it the stages enter no autocast region of their own,
    so a caller's autocast (the official AMP, which wraps the whole step) applies inside them.
    """

    slot_major_values = True
    formulation = "eager"  # the top-K formulation its stages run (runtime.family.FORMULATIONS)

    def __init__(self, family: ModelFamily, network: nn.Module, settings: Mapping[str, Any],
                 device: torch.device | str, fp16: bool = False):
        self.device = torch.device(device)
        self.network = network.eval().to(self.device)
        self.stages = family.stages
        self.architecture = family.architecture(network)
        with torch.inference_mode():
            self.constants = {name: t.to(self.device) for name, t in family.constants(self.network).items()}
        self.fp16 = fp16
        options = family.stage_options(settings, self.formulation)
        self._methods = {name: stage_method(self.network, stage, options.get(name, {}))
                         for name, stage in self.stages.items()}

    def _run(self, stage: StageSpec, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        with torch.inference_mode(), self._autocast():
            return self._methods[stage.name](*inputs)

    def _autocast(self):
        """fp16 autocast with ``fp16``, else nothing (a caller's autocast applies)."""
        return (torch.autocast(self.device.type, dtype=torch.float16, cache_enabled=False) if self.fp16
                else contextlib.nullcontext())
