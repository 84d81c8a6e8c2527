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
beyond that. A stage whose capture fails, for whatever reason (an op that synchronises with the
host, say), runs eagerly from then on, with one warning naming the error; the caller's stream is
as it was (see :class:`CapturedStage`). Returned tensors are the graph's static outputs:
valid until the next replay of that graph.

What each graph captures comes from the backend's :meth:`~.base.Backend.graph_runner`: for
TensorRT a run on an execution context of the graph's own, since a captured graph fixes the
shapes and addresses its context was set to.

Memory: all graphs of a backend allocate from one shared pool (``torch.cuda.graph_pool_handle``)
instead of a private pool each. Sharing is safe because nothing a replay leaves for later
lives in the pool: a graph's static inputs and outputs are allocated outside the capture (the
stage's own outputs are copied into them at the end of the graph), so the pool holds only what
a replay uses and frees, and replays run one after another on one stream.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Any, Callable, Sequence

import torch

from ..stages import StageSpec
from .base import Backend, BackendWrapper

Runner = Callable[[list[torch.Tensor]], Sequence[torch.Tensor]]


class CapturedStage:
    """A captured stage call: static buffers of the copied inputs and of the outputs, and the graph,
    whose allocations come from the memory pool ``pool``. ``runner``: what the graph captures
    (and the warm-up runs); kept for the graph's lifetime (it may own the graph's execution state).

    Warm-up and capture run on ``stream`` (the backend's side stream), inside a stream context of
    their own around torch's: ``torch.cuda.graph`` ends the capture before it restores the stream,
    so when the capture fails there the outer context still puts the caller's stream back, and the
    caller's stream never captured nor allocated from ``pool``."""

    def __init__(self, runner: Runner, inputs: list[torch.Tensor], in_place: set[int], warmup: int, pool: Any,
                 stream: torch.cuda.Stream):
        self.runner = runner
        self.copied = {i: torch.empty_like(x, memory_format=torch.contiguous_format).copy_(x)
                       for i, x in enumerate(inputs) if i not in in_place}
        args = [self.copied.get(i, x) for i, x in enumerate(inputs)]
        device = args[0].device
        caller = torch.cuda.current_stream(device)
        stream.wait_stream(caller)
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                shapes = [(x.shape, x.dtype) for x in runner(args)]
        caller.wait_stream(stream)
        self.outputs = [torch.empty(shape, dtype=dtype, device=device) for shape, dtype in shapes]
        self.graph = torch.cuda.CUDAGraph()
        stream.wait_stream(caller)
        with torch.cuda.stream(stream):
            with torch.cuda.graph(self.graph, pool=pool, stream=stream):
                for static, output in zip(self.outputs, runner(args)):
                    static.copy_(output)
        caller.wait_stream(stream)

    def __call__(self, inputs: list[torch.Tensor]) -> Sequence[torch.Tensor]:
        for i, static in self.copied.items():
            static.copy_(inputs[i])
        self.graph.replay()
        return self.outputs


class CudaGraphBackend(BackendWrapper):
    """``inner`` with every stage replayed as a CUDA graph per input signature; ``warmup`` (>= 1)
    eager runs before each capture. Sessions give it their whole memory buffers
    (``fixed_shapes``), so a bucket's readout is one graph."""

    def __init__(self, inner: Backend, max_graphs: int = 64, warmup: int = 2):
        if inner.device.type != "cuda":
            raise ValueError("cuda_graph=True needs device='cuda' (CUDA graphs capture GPU work)")
        if warmup < 1:
            raise ValueError("CUDA graphs need at least one warm-up run before the capture")
        super().__init__(inner)
        self.fixed_shapes = True
        self.max_graphs = max_graphs
        self.warmup = warmup
        self.pool = torch.cuda.graph_pool_handle()  # shared by every graph of this backend
        self.stream = torch.cuda.Stream(inner.device)  # every warm-up and capture runs on it
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
            return CapturedStage(self.inner.graph_runner(stage), inputs, in_place, self.warmup, self.pool, self.stream)
        except Exception as err:  # noqa: BLE001  any failure to capture (a host sync inside the stage, say) runs eagerly
            first_line = (str(err).splitlines() or [""])[0]
            warnings.warn(f"CUDA-graph capture of {stage.name} failed, running it eagerly: "
                          f"{type(err).__name__}: {first_line}", RuntimeWarning, stacklevel=4)
            return None


def _signature(x: torch.Tensor, in_place: bool) -> tuple:
    """What a captured graph depends on: shape and dtype, and for memory read in place its address and strides."""
    return (tuple(x.shape), x.dtype, *((x.data_ptr(), x.stride()) if in_place else ()))
