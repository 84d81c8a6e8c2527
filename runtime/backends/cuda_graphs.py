"""CUDA-graph replay of the stages of any CUDA backend (eager torch or TensorRT), for any model.

The first call of a stage with a given set of input shapes and dtypes is run eagerly twice on a
side stream (warm-up: Triton compilation, cuDNN/TensorRT set-up), then captured into a CUDA
graph; from then on a call replays the graph. The frame's kernels then launch as one graph
per stage instead of hundreds of launches from Python.

Two kinds of input: the session's preallocated memory (the stage's ``memory`` inputs, see
:mod:`vosrt.runtime.stages`) is read in place, and the graph is keyed by its address and
layout as well, so a frame copies none of it; every other input is copied into the graph's
static buffer before the replay. A graph is replayed only for memory at the address it was
captured with, so it never reads memory it does not own: new buffers (objects added or
removed) get new graphs, up to ``max_graphs`` in all, the least recently used being dropped
beyond that. A stage whose capture fails (an op that synchronises with the host, say) runs
eagerly from then on, with one warning. Returned tensors are the graph's static outputs:
valid until the next replay of that graph.

What each graph captures comes from the backend's :meth:`~.base.Backend.graph_runner`: for
TensorRT a run on an execution context of the graph's own, since a captured graph fixes the
shapes and addresses its context was set to.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Callable, Sequence

import torch

from ..stages import StageSpec
from .base import Backend, BackendWrapper


class CapturedStage:
    """A captured stage call: static buffers of the copied inputs, the graph and its outputs.
    ``run``: what the graph captures (and the warm-up runs); kept for the graph's lifetime (it may
    own the graph's execution state)."""

    def __init__(self, run: Callable[[list[torch.Tensor]], Sequence[torch.Tensor]], inputs: list[torch.Tensor],
                 in_place: set[int], warmup: int):
        self.run = run
        self.copied = {i: torch.empty_like(x, memory_format=torch.contiguous_format).copy_(x)
                       for i, x in enumerate(inputs) if i not in in_place}
        args = [self.copied.get(i, x) for i, x in enumerate(inputs)]
        device = args[0].device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                run(args)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = run(args)

    def __call__(self, inputs: list[torch.Tensor]) -> Sequence[torch.Tensor]:
        for i, static in self.copied.items():
            static.copy_(inputs[i])
        self.graph.replay()
        return self.outputs


class CudaGraphBackend(BackendWrapper):
    """``inner`` with every stage replayed as a CUDA graph per input signature."""

    def __init__(self, inner: Backend, max_graphs: int = 64, warmup: int = 2):
        if inner.device.type != "cuda":
            raise ValueError("cuda_graph=True needs device='cuda' (CUDA graphs capture GPU work)")
        super().__init__(inner)
        self.max_graphs = max_graphs
        self.warmup = warmup
        self.captured: OrderedDict[tuple, CapturedStage | None] = OrderedDict()  # None: runs eagerly

    @torch.inference_mode()
    def _run(self, stage: StageSpec, inputs: list[torch.Tensor]) -> Sequence[torch.Tensor]:
        in_place = {i for i, spec in enumerate(stage.inputs) if spec.memory}
        key = (stage.name, tuple(_signature(x, i in in_place) for i, x in enumerate(inputs)),
               torch.is_autocast_enabled("cuda"))
        if key not in self.captured:
            if len(self.captured) >= self.max_graphs:
                self.captured.popitem(last=False)
            self.captured[key] = self._capture(stage, inputs, in_place)
        self.captured.move_to_end(key)
        captured = self.captured[key]
        return self.inner._run(stage, inputs) if captured is None else captured(inputs)

    def _capture(self, stage: StageSpec, inputs: list[torch.Tensor], in_place: set[int]) -> CapturedStage | None:
        try:
            return CapturedStage(self.inner.graph_runner(stage), inputs, in_place, self.warmup)
        except RuntimeError as err:  # e.g. a host synchronisation inside the stage
            warnings.warn(f"CUDA-graph capture of {stage.name} failed, running it eagerly: {str(err).splitlines()[0]}",
                          RuntimeWarning, stacklevel=4)
            return None


def _signature(x: torch.Tensor, in_place: bool) -> tuple:
    """What a captured graph depends on: shape and dtype, and for memory read in place its address and strides."""
    return (tuple(x.shape), x.dtype, *((x.data_ptr(), x.stride()) if in_place else ()))
