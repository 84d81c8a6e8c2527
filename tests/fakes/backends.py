"""Tiny backends for testing what wraps a backend (CUDA-graph replay, timing) without a model, and a
wrapper that takes the batch size out of a backend's rounding."""
from __future__ import annotations

import torch

from vosrt.runtime.backends.base import Backend, BackendWrapper
from vosrt.runtime.stages import StageSpec, TensorSpec

STAGES = {
    "double": StageSpec("double", "double", (TensorSpec("x", ("K",)),), (TensorSpec("y", ("K",)),)),
    "read": StageSpec("read", "read", (TensorSpec("x", ("K",)), TensorSpec("memory", ("K",), memory=True)),
                      (TensorSpec("y", ("K",)),)),
    "blend": StageSpec("blend", "blend", (TensorSpec("x", ("K",)), TensorSpec("memory", ("K",), memory=True)),
                       (TensorSpec("y", ("K",)),)),
}


class ArithmeticBackend(Backend):
    """Stage ``double``: ``y = 2 x``; stage ``read``: ``y = x + memory`` (``memory`` is session memory,
    read in place); stage ``blend``: ``y = 2 (3 x + memory)``, in three kernels with two temporaries.
    ``host_sync``: ``double`` reads a value back to the host (cannot be captured)."""

    stages = STAGES
    architecture = {"size": 1}
    constants: dict = {}

    def __init__(self, device: str = "cpu", host_sync: bool = False):
        self.device = torch.device(device)
        self.host_sync = host_sync
        self.calls = 0

    def _run(self, stage, inputs):
        self.calls += 1
        if stage.name == "double":
            if self.host_sync:
                float(inputs[0].sum())  # a device-to-host copy: not allowed while capturing
            return [2 * inputs[0]]
        if stage.name == "blend":
            return [(3 * inputs[0] + inputs[1]) * 2]
        return [inputs[0] + inputs[1]]


class OneStreamPerCall(BackendWrapper):
    """Runs a stage call of B streams as B calls of one stream each (its rows of every ``B`` and
    ``BK`` tensor; with both axes ``BK = B x K``) and a stage with only ``BK`` rows (objects, each
    independent of the others) one row per call, then concatenates the outputs: what a batch
    computes, whatever a kernel might round differently for another number of rows."""

    def _run(self, stage: StageSpec, inputs: list[torch.Tensor]):
        axes = [t.stream_axis for t in stage.inputs]
        parts = next((x.shape[axis] for t, x, axis in zip(stage.inputs, inputs, axes)
                      if axis is not None and t.shape[axis] == "B"), None)
        if parts is None:  # objects only: one row each
            parts = next((x.shape[axis] for x, axis in zip(inputs, axes) if axis is not None), 1)
        split = [x.chunk(parts, axis) if axis is not None else [x] * parts for x, axis in zip(inputs, axes)]
        outputs = [self.inner._run(stage, list(part)) for part in zip(*split)]
        return [torch.cat(column, dim=t.stream_axis) for t, column in zip(stage.outputs, zip(*outputs))]


class ReusedOutputBuffers(BackendWrapper):
    """Returns every output in a buffer kept per stage and shape, overwritten by the next call of
    that stage with that shape, as TensorRT engines and CUDA graphs do."""

    def __init__(self, inner: Backend):
        super().__init__(inner)
        self.buffers: dict[tuple, torch.Tensor] = {}

    def _run(self, stage: StageSpec, inputs: list[torch.Tensor]):
        outputs = []
        for spec, y in zip(stage.outputs, self.inner._run(stage, inputs)):
            key = (stage.name, spec.name, tuple(y.shape), y.dtype)
            outputs.append(self.buffers.setdefault(key, torch.empty_like(y)).copy_(y))
        return outputs
