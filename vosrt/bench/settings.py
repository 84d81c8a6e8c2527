"""What ``vosrt bench`` runs: the benchmarked backends and the grid of settings. No torch import."""
from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from vosrt.runtime.backends import BACKENDS
from vosrt.runtime.registry import MODELS

REFERENCE_BACKEND = "torch"


@dataclass(frozen=True)
class BenchBackend:
    """A benchmarked backend: ``runtime`` is the ``vosrt.load`` backend it runs on, ``modules``
    the Python packages it needs; ``amp``: the official eager AMP (``vosrt.load(amp=True)``);
    ``fp16`` and ``cuda_graph``: those options of ``vosrt.load``; ``needs_engines``: it runs engines
    built beforehand by ``export-engine`` (``--engine-dir``)."""

    name: str
    runtime: str
    modules: tuple[str, ...] = ()
    needs_cuda: bool = False
    amp: bool = False
    needs_engines: bool = False
    fp16: bool = False
    cuda_graph: bool = False

    def unavailable_reason(self, device_type: str, engine_dir: str | None = None) -> str | None:
        """Why this backend cannot run here (e.g. ``"tensorrt not installed"``), or None."""
        missing = [m for m in self.modules if importlib.util.find_spec(m) is None]
        if missing:
            return f"{', '.join(missing)} not installed"
        if self.runtime not in BACKENDS:
            return "not supported by this vosrt version"
        if self.needs_cuda and device_type != "cuda":
            return "needs CUDA (--device cuda)"
        if self.needs_engines and engine_dir is None:
            return "needs --engine-dir, a directory built by export-engine on this GPU"
        return None


BENCH_BACKENDS = {b.name: b for b in (
    BenchBackend("torch", "torch"),
    BenchBackend("torch-amp", "torch", needs_cuda=True, amp=True),
    BenchBackend("onnxruntime", "onnxruntime", modules=("onnx", "onnxruntime")),
    BenchBackend("tensorrt", "tensorrt", modules=("tensorrt",), needs_cuda=True, needs_engines=True),
    BenchBackend("torch-fp16-graph", "torch", needs_cuda=True, fp16=True, cuda_graph=True),
    BenchBackend("tensorrt-graph", "tensorrt", modules=("tensorrt",), needs_cuda=True, needs_engines=True,
                 cuda_graph=True),
)}


@dataclass
class BenchSettings:
    model: str
    backends: Sequence[str]
    resolution: tuple[int, int] = (480, 854)
    objects: Sequence[int] = (1,)
    memory_frames: Sequence[int] | None = None  # None: the model's default max_mem_frames
    frames: int = 10
    warmup: int = 2
    weights: str | None = None
    engine_dir: str | None = None  # for tensorrt
    device: str = "cpu"
    seed: int = 0
    options: dict = field(default_factory=dict)  # other fields of the model's config
    fill: bool = False  # time the frames while the memory fills up, instead of a full memory
    streams: Sequence[int] | None = None  # stream counts: throughput batched vs sequential (None: latency)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"vosrt bench runs {', '.join(MODELS)}, not {self.model!r}")
        if self.memory_frames is None:
            self.memory_frames = [MODELS[self.model].config_type().max_mem_frames]
        unknown = [b for b in self.backends if b not in BENCH_BACKENDS]
        if unknown:
            raise ValueError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BENCH_BACKENDS)}")
        if self.frames < 1 or self.warmup < 1:
            raise ValueError("--frames and --warmup must be >= 1 (the warm-up includes the mask frame)")
        if min(self.objects) < 1 or min(self.memory_frames) < 1 or min(self.resolution) < 16:
            raise ValueError("objects and memory frames must be >= 1 and the resolution at least 16x16")
        if self.streams is not None and min(self.streams) < 1:
            raise ValueError("--streams must be >= 1")

    def untimed_frames(self, memory_frames: int) -> int:
        """Frames run before the timed ones: ``warmup`` (the mask frame included) with ``fill``,
        else at least enough to fill a memory of ``memory_frames`` (every ``mem_every`` frames)."""
        if self.fill:
            return self.warmup
        mem_every = self.options.get("mem_every", MODELS[self.model].config_type().mem_every)
        return max(self.warmup, 1 + (memory_frames - 1) * mem_every)


def passive_openmp_threads() -> str:
    """Make torch's idle OpenMP threads sleep instead of spin-waiting (spinning threads slow 3-4x as
    soon as anything else runs on the machine), unless the user chose a policy. It takes effect only
    if torch is not loaded yet. Returns the policy in effect, as the report records it."""
    if "OMP_WAIT_POLICY" not in os.environ and "torch" not in sys.modules:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    return policy if "torch" not in sys.modules else f"{policy} (torch was loaded before the benchmark)"
