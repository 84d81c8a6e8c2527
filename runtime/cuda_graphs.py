"""CUDA-graph replay of the stage calls of any CUDA backend, for either model.

:class:`CudaGraphs` wraps a graphs object (:class:`~vosrt.runtime.graphs.CutieGraphs` or
:class:`~vosrt.runtime.jointformer_graphs.JointFormerGraphs`, eager torch or TensorRT). The
first call of a stage with a given set of input shapes and dtypes is run eagerly twice on a
side stream (warm-up: Triton compilation, cuDNN/TensorRT set-up), then captured into a CUDA
graph; from then on a call replays the graph. The frame's kernels then launch as one graph
per stage instead of hundreds of launches from Python.

Two kinds of input: the session's preallocated memory (Cutie's memory buffers, JointFormer's
reference cache: :data:`CUTIE_MEMORY_INPUTS`, :data:`JOINTFORMER_MEMORY_INPUTS`) is read in
place, and the graph is keyed by its address and layout as well, so a frame copies none of
it; every other input is copied into the graph's static buffer before the replay. A graph
is replayed only for memory at the address it was captured with, so it never reads memory
it does not own: new buffers (objects added or removed) get new graphs, up to
``max_graphs`` in all, the least recently used being dropped beyond that. A stage whose
capture fails (an op that synchronises with the host, say) runs eagerly from then on, with
one warning. Returned tensors are the graph's static outputs: valid until the next replay
of that graph.
"""
from __future__ import annotations

import functools
import warnings
from collections import OrderedDict
from typing import Any, Callable, Mapping

import torch

# Stage name -> positions of the arguments that are the session's preallocated memory.
CUTIE_MEMORY_INPUTS = {"encode_image": (), "encode_mask": (), "read_memory": (3, 4, 5, 6),
                       "memory_usage": (2, 3, 4), "decode": ()}
JOINTFORMER_MEMORY_INPUTS = {"encode_query": (), "encode_reference": (), "propagate": (1, 2), "decode": ()}


class _Captured:
    """A captured stage call: static buffers of the copied inputs, the graph and its outputs."""

    def __init__(self, fn: Callable, inputs: tuple[torch.Tensor, ...], in_place: tuple[int, ...], kwargs: dict,
                 warmup: int):
        self.copied = {i: torch.empty_like(x, memory_format=torch.contiguous_format).copy_(x)
                       for i, x in enumerate(inputs) if i not in in_place}
        args = tuple(self.copied.get(i, x) for i, x in enumerate(inputs))
        device = args[0].device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn(*args, **kwargs)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = fn(*args, **kwargs)

    def __call__(self, inputs: tuple[torch.Tensor, ...]) -> Any:
        for i, static in self.copied.items():
            static.copy_(inputs[i])
        self.graph.replay()
        return self.outputs


class CudaGraphs:
    """``graphs`` with the stages of ``memory_inputs`` (stage -> positions of its memory
    arguments) replayed as CUDA graphs; every other attribute is ``graphs``' own."""

    def __init__(self, graphs, memory_inputs: Mapping[str, tuple[int, ...]], max_graphs: int = 64, warmup: int = 2):
        if graphs.device.type != "cuda":
            raise ValueError("cuda_graph=True needs device='cuda' (CUDA graphs capture GPU work)")
        self.graphs = graphs
        self.memory_inputs = dict(memory_inputs)
        self.max_graphs = max_graphs
        self.warmup = warmup
        self.captured: OrderedDict[tuple, _Captured | None] = OrderedDict()  # None: runs eagerly (capture failed)

    def __getattr__(self, name: str):
        attribute = getattr(self.graphs, name)
        return functools.partial(self._call, name) if name in self.memory_inputs else attribute

    @torch.inference_mode()
    def _call(self, stage: str, *inputs: torch.Tensor, **kwargs) -> Any:
        fn = getattr(self.graphs, stage)
        in_place = self.memory_inputs[stage]
        key = (stage, tuple(_signature(x, i in in_place) for i, x in enumerate(inputs)), tuple(sorted(kwargs.items())),
               torch.is_autocast_enabled("cuda"))
        if key not in self.captured:
            if len(self.captured) >= self.max_graphs:
                self.captured.popitem(last=False)
            self.captured[key] = self._capture(stage, fn, inputs, in_place, kwargs)
        self.captured.move_to_end(key)
        captured = self.captured[key]
        return fn(*inputs, **kwargs) if captured is None else captured(inputs)

    def _capture(self, stage: str, fn: Callable, inputs: tuple[torch.Tensor, ...], in_place: tuple[int, ...],
                 kwargs: dict) -> _Captured | None:
        try:
            return _Captured(fn, inputs, in_place, kwargs, self.warmup)
        except RuntimeError as err:  # e.g. a host synchronisation inside the stage
            warnings.warn(f"CUDA-graph capture of {stage} failed, running it eagerly: {str(err).splitlines()[0]}",
                          RuntimeWarning, stacklevel=3)
            return None


def _signature(x: torch.Tensor, in_place: bool) -> tuple:
    """What a captured graph depends on: shape and dtype, and for memory read in place its address and strides."""
    return (tuple(x.shape), x.dtype, *((x.data_ptr(), x.stride()) if in_place else ()))
