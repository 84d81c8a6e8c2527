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
}


class ArithmeticBackend(Backend):
    """Stage ``double``: ``y = 2 x``; stage ``read``: ``y = x + memory`` (``memory`` is session memory,
    read in place). ``host_sync``: ``double`` reads a value back to the host (cannot be captured)."""

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
        return [inputs[0] + inputs[1]]


class OneStreamPerCall(BackendWrapper):
    """Runs a stage call of B streams as B calls of one stream each (its rows of every ``B`` and
    ``BK`` tensor; with both axes ``BK = B x K``) and concatenates their outputs: what a batch
    computes, without the kernels that round differently for another batch size. Stages with only
    ``BK`` rows (independent objects) run as they are."""

    def _run(self, stage: StageSpec, inputs: list[torch.Tensor]):
        streams = next((x.shape[t.stream_axis] for t, x in zip(stage.inputs, inputs)
                        if t.stream_axis is not None and t.shape[t.stream_axis] == "B"), 1)
        if streams == 1:
            return self.inner._run(stage, inputs)
        parts = zip(*(x.chunk(streams, t.stream_axis) for t, x in zip(stage.inputs, inputs)))
        outputs = [self.inner._run(stage, list(part)) for part in parts]
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
