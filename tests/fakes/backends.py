"""Tiny backends for testing what wraps a backend (CUDA-graph replay, timing) without a model."""
from __future__ import annotations

import torch

from vosrt.runtime.backends.base import Backend
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
