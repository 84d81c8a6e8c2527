"""The one interface every backend implements: run a named stage on named tensors.

>>> outputs = backend.run("image_encoder", image=image)      # {"f8": ..., "f4": ..., ...}

Backends work on torch tensors on their ``device``. A backend may return the same output
buffers on every call of a stage (TensorRT, CUDA graphs): an output is valid until the next
call of that stage; copy what must outlive it.
"""
from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from typing import Any, Callable, Mapping, Sequence

import torch

from ..stages import StageSpec


class Backend(ABC):
    """Runs the stages of one model on ``device``. ``architecture``: the network's manifest
    description (what sessions read sizes from); ``constants``: tensors the session needs
    besides the stages (e.g. JointFormer's initial compressed-memory token). ``fixed_shapes``:
    every call of a stage should see the same memory shapes (CUDA-graph replay); other backends
    are given only the memory in use. ``slot_major_values``: the backend reads memory values
    fastest one slot at a time, so sessions store them slot-major (eager torch); exported graphs
    take them contiguous as their inputs are declared."""

    device: torch.device
    stages: Mapping[str, StageSpec]
    architecture: Mapping[str, Any]
    constants: Mapping[str, torch.Tensor]
    fixed_shapes: bool = False
    slot_major_values: bool = False

    def run(self, stage: str, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run ``stage`` on its named inputs -> its named outputs."""
        spec = self.stages.get(stage)
        if spec is None:
            raise ValueError(f"this model has no stage {stage!r}; its stages are {', '.join(self.stages)}")
        if set(inputs) != set(spec.input_names):
            raise TypeError(f"stage {stage} takes {', '.join(spec.input_names)}; got {', '.join(inputs)}")
        outputs = self._run(spec, [inputs[name] for name in spec.input_names])
        return dict(zip(spec.output_names, outputs))

    @abstractmethod
    def _run(self, stage: StageSpec, inputs: list[torch.Tensor]) -> Sequence[torch.Tensor]:
        """The outputs of ``stage`` for its inputs in spec order, in spec order."""

    def graph_runner(self, stage: StageSpec) -> Callable[[list[torch.Tensor]], Sequence[torch.Tensor]]:
        """What one CUDA graph of ``stage`` captures (see :mod:`.cuda_graphs`): inputs in spec order ->
        outputs. A graph fixes whatever state its capture ran with, so a backend whose run state
        changes from call to call (TensorRT's execution context: shapes, addresses) gives each graph
        its own; by default it is :meth:`_run`."""
        return functools.partial(self._run, stage)


class BackendWrapper(Backend):
    """A backend that adds behaviour around another one's ``_run`` (CUDA graphs, timing)."""

    def __init__(self, inner: Backend):
        self.inner = inner
        self.device = inner.device
        self.stages = inner.stages
        self.architecture = inner.architecture
        self.constants = inner.constants
        self.fixed_shapes = inner.fixed_shapes
        self.slot_major_values = inner.slot_major_values
