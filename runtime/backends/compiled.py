"""``vosrt.load(model, compile=True)``: the torch backend with every stage through ``torch.compile``.

Each stage's network method is compiled whole (``fullgraph=True``, inductor) the first time it
runs. The axes the stage specs declare as varying within a video (``ModelFamily.video_symbols``:
memory tokens, objects ``K``, streams ``B``/``BK``) are marked dynamic on every call
(``torch._dynamo.maybe_mark_dynamic``), so a filling memory and objects that come and go reuse
the compiled graph; the frame size stays static (one compilation per resolution). torch
specialises axes of size 0 and 1, so the first call with two objects (after one) or two streams
compiles once more; from then on the graph is general.

Compilations are counted per stage (:attr:`CompiledTorchBackend.compilations`, with the
seconds they took in :attr:`CompiledTorchBackend.compile_seconds`): a compilation is a graph
dynamo hands to inductor, whether inductor then builds it or finds it in its cache. Past
``max_compilations`` per stage a warning says the shapes keep changing; dynamo's own
``recompile_limit`` is raised to that bound so that it does not fall back to eager first.

Inductor's caches go to ``$VOSRT_CACHE/inductor`` (unless ``TORCHINDUCTOR_CACHE_DIR`` is set), so
a second process compiling the same stages finds their code there instead of building it again
(dynamo still traces each stage: seconds, not minutes).

The top-K attention runs as the torch library ops of :mod:`vosrt.kernels.torch_ops`: the Triton
kernel compiled into the graph on CUDA, the ONNX exports' torch formulation on the CPU.

With ``cuda_graph=True`` the compiled stages are captured as CUDA graphs by
:mod:`.cuda_graphs` (vosrt's own capture, keyed by shapes and memory addresses; inductor's
``mode="reduce-overhead"`` is not used): the session then hands every stage its whole memory
buffers, so each stage compiles once per buffer size.
"""
from __future__ import annotations

import functools
import os
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..family import ModelFamily
from ..stages import StageSpec
from .torch import TorchBackend

DEFAULT_MAX_COMPILATIONS = 8


def use_vosrt_inductor_cache() -> str:
    """Point inductor's caches at ``$VOSRT_CACHE/inductor`` unless ``TORCHINDUCTOR_CACHE_DIR`` is set;
    returns the folder in use."""
    vosrt_cache = Path(os.environ.get("VOSRT_CACHE", Path.home() / ".cache" / "vosrt"))  # as vosrt.weights.cache_dir
    return os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(vosrt_cache / "inductor"))


def mark_dynamic(stage: StageSpec, inputs: list[torch.Tensor], video_symbols: frozenset[str]) -> None:
    """Mark the axes of ``inputs`` that vary within a video (their symbol is one of ``video_symbols``) dynamic."""
    for spec, x in zip(stage.inputs, inputs):
        for axis, dim in enumerate(spec.shape):
            if dim in video_symbols:
                torch._dynamo.maybe_mark_dynamic(x, axis)


def dense(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself when it is a dense row-major tensor of its own (strides of its shape, offset 0),
    else such a copy. Views of a memory being filled have the strides of the whole buffer, and a
    stream's rows an offset: dynamo guards on both (on size-1 axes too, where ``is_contiguous``
    does not look) and would recompile when the memory fills up or an object leaves. A copy costs
    less than a compilation."""
    strides, step = [], 1
    for size in reversed(x.shape):
        strides.append(step)
        step *= size
    if tuple(reversed(strides)) == x.stride() and x.storage_offset() == 0:
        return x
    return x.clone(memory_format=torch.contiguous_format)


class CompiledTorchBackend(TorchBackend):
    """:class:`~.torch.TorchBackend` with each stage compiled by ``torch.compile`` (see the module
    docstring). ``max_compilations``: per stage, after which each further compilation warns."""

    formulation = "compiled"

    def __init__(self, family: ModelFamily, network: nn.Module, settings: Mapping[str, Any],
                 device: torch.device | str, fp16: bool = False, max_compilations: int = DEFAULT_MAX_COMPILATIONS):
        self.cache_dir = use_vosrt_inductor_cache()  # before triton's import sets torch's default
        import vosrt.kernels.torch_ops  # noqa: F401  (registers the vosrt:: ops)

        super().__init__(family, network, settings, device, fp16=fp16)
        self.max_compilations = max_compilations
        self.video_symbols = family.video_symbols
        # dynamo's limit counts the graphs of one code object: every stage (and every session) compiles
        # through the same torch.compile wrapper, so the bound is raised for all stages together
        limit = torch._dynamo.config.recompile_limit
        torch._dynamo.config.recompile_limit = max(limit, 4 * len(self.stages) * (max_compilations + 1))
        self.compilations: Counter[str] = Counter()
        self.compile_seconds: Counter[str] = Counter()
        options = family.stage_options(settings, self.formulation)
        # the network's own methods (one code object per stage, so each stage has its own dynamo cache)
        self._compiled = {name: torch.compile(functools.partial(getattr(self.network, stage.method),
                                                                **options.get(name, {})),
                                              fullgraph=True, backend=self._counting_backend(name))
                          for name, stage in self.stages.items()}

    def _counting_backend(self, stage: str) -> Callable:
        """Inductor, counting the graphs it is given for ``stage``."""
        from torch._inductor.compile_fx import compile_fx

        def backend(graph: torch.fx.GraphModule, example_inputs: list) -> Callable:
            self.compilations[stage] += 1
            if self.compilations[stage] > self.max_compilations:
                warnings.warn(f"torch.compile: stage {stage} compiled {self.compilations[stage]} times, more than "
                              f"max_compilations={self.max_compilations}; its input shapes keep changing in a way "
                              "the dynamic axes do not cover (each compilation costs seconds to minutes)",
                              RuntimeWarning, stacklevel=2)
            return compile_fx(graph, example_inputs)

        return backend

    def _run(self, stage: StageSpec, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        inputs = [dense(x) for x in inputs]
        mark_dynamic(stage, inputs, self.video_symbols)
        before, start = self.compilations[stage.name], time.perf_counter()
        with torch.inference_mode(), self._autocast():
            outputs = self._compiled[stage.name](*inputs)
        if self.compilations[stage.name] != before:
            self.compile_seconds[stage.name] += time.perf_counter() - start
        return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)

    @property
    def total_compilations(self) -> int:
        return sum(self.compilations.values())
