"""CUDA-graph replay of the stage calls of any CUDA backend.

:class:`CudaGraphs` wraps a :class:`~vosrt.runtime.graphs.CutieGraphs` (eager torch or
TensorRT). The first call of a stage with a given set of input shapes and dtypes is run
eagerly twice on a side stream (warm-up: Triton compilation, cuDNN/TensorRT set-up), then
captured into a CUDA graph over static input buffers; from then on a call copies its inputs
into those buffers and replays the graph. The frame's kernels then launch as one graph per
stage instead of hundreds of launches from Python.

Shapes change when objects are added or removed; every new shape set is captured once (up
to ``max_graphs``; later ones run eagerly). A stage whose capture fails (an op that
synchronises with the host, say) runs eagerly from then on, with one warning.
Returned tensors are the graph's static outputs: valid until the next call of that stage
with the same shapes.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import torch


class _Captured:
    """A captured stage call: static inputs, the graph, and the output structure it fills."""

    def __init__(self, fn: Callable, inputs: tuple[torch.Tensor, ...], kwargs: dict, warmup: int):
        self.inputs = tuple(torch.empty_like(x, memory_format=torch.contiguous_format).copy_(x) for x in inputs)
        device = self.inputs[0].device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn(*self.inputs, **kwargs)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = fn(*self.inputs, **kwargs)

    def __call__(self, inputs: tuple[torch.Tensor, ...]) -> Any:
        for static, x in zip(self.inputs, inputs):
            static.copy_(x)
        self.graph.replay()
        return self.outputs


class CudaGraphs:
    """A :class:`~vosrt.runtime.graphs.CutieGraphs` that replays CUDA graphs of ``graphs``' stages."""

    def __init__(self, graphs, max_graphs: int = 64, warmup: int = 2):
        if graphs.device.type != "cuda":
            raise ValueError("cuda_graph=True needs device='cuda' (CUDA graphs capture GPU work)")
        self.graphs = graphs
        self.device = graphs.device
        self.num_queries = graphs.num_queries
        self.value_dim = graphs.value_dim
        self.sensory_dim = graphs.sensory_dim
        self.max_graphs = max_graphs
        self.warmup = warmup
        self.captured: dict[tuple, _Captured | None] = {}  # None: runs eagerly (capture failed)

    def encode_image(self, *args, **kwargs):
        return self._call("encode_image", args, kwargs)

    def encode_mask(self, *args, **kwargs):
        return self._call("encode_mask", args, kwargs)

    def read_memory(self, *args, **kwargs):
        return self._call("read_memory", args, kwargs)

    def memory_usage(self, *args, **kwargs):
        return self._call("memory_usage", args, kwargs)

    def decode(self, *args, **kwargs):
        return self._call("decode", args, kwargs)

    @torch.inference_mode()
    def _call(self, stage: str, inputs: tuple[torch.Tensor, ...], kwargs: dict) -> Any:
        fn = getattr(self.graphs, stage)
        key = (stage, tuple((tuple(x.shape), x.dtype) for x in inputs), tuple(sorted(kwargs.items())),
               torch.is_autocast_enabled("cuda"))
        if key not in self.captured:
            if len(self.captured) >= self.max_graphs:
                return fn(*inputs, **kwargs)
            self.captured[key] = self._capture(stage, fn, inputs, kwargs)
        captured = self.captured[key]
        return fn(*inputs, **kwargs) if captured is None else captured(inputs)

    def _capture(self, stage: str, fn: Callable, inputs: tuple[torch.Tensor, ...], kwargs: dict) -> _Captured | None:
        try:
            return _Captured(fn, inputs, kwargs, self.warmup)
        except RuntimeError as err:  # e.g. a host synchronisation inside the stage
            warnings.warn(f"CUDA-graph capture of {stage} failed, running it eagerly: {str(err).splitlines()[0]}",
                          RuntimeWarning, stacklevel=3)
            return None
