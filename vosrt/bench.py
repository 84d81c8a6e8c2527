"""``vosrt bench``: latency of each backend on a synthetic clip, per graph and end to end.

Every backend runs the same frames through the ordinary session; the session's graphs
object is wrapped to time each graph call (:class:`TimedGraphs`). Results are a list of
:class:`Run` (one per backend x object count x memory size), printed as a table, written
as JSON and plotted.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import importlib.util
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

import vosrt
from vosrt.api import BACKENDS, CONFIG_TYPES, MODELS, load, resolve_device
from vosrt.models.cutie import CONFIGS, Cutie
from vosrt.models.jointformer import JointFormer
from vosrt.runtime.graphs import CutieGraphs
from vosrt.runtime.jointformer_graphs import JointFormerGraphs
from vosrt.runtime.video_session import VideoSession

REFERENCE_BACKEND = "torch"


@dataclass(frozen=True)
class Backend:
    """A benchmarked backend: ``runtime`` is the ``vosrt.load`` backend it runs on, ``modules``
    the Python packages it needs; ``amp``: the official eager AMP (``vosrt.load(amp=True)``);
    ``needs_engines``: it runs engines built beforehand by ``export-engine`` (``--engine-dir``)."""

    name: str
    runtime: str
    modules: tuple[str, ...] = ()
    needs_cuda: bool = False
    amp: bool = False
    needs_engines: bool = False


BENCH_BACKENDS = {b.name: b for b in (
    Backend("torch", "torch"),
    Backend("torch-amp", "torch", needs_cuda=True, amp=True),
    Backend("onnxruntime", "onnxruntime", modules=("onnx", "onnxruntime")),
    Backend("tensorrt", "tensorrt", modules=("tensorrt",), needs_cuda=True, needs_engines=True),
)}


def unavailable_reason(backend: Backend, device: torch.device, engine_dir: str | None = None) -> str | None:
    """Why ``backend`` cannot run here (e.g. ``"tensorrt not installed"``), or None."""
    missing = [m for m in backend.modules if importlib.util.find_spec(m) is None]
    if missing:
        return f"{', '.join(missing)} not installed"
    if backend.runtime not in BACKENDS:
        return "not supported by this vosrt version"
    if backend.needs_cuda and device.type != "cuda":
        return "needs CUDA (--device cuda)"
    if backend.needs_engines and engine_dir is None:
        return "needs --engine-dir, a directory built by export-engine on this GPU"
    return None


# -- timing the graphs ---------------------------------------------------------------------

class TimedGraphs:
    """Wraps a backend's graphs and records the wall time of every call of each of its
    methods (synchronising the GPU around it), without changing what the calls return."""

    def __init__(self, graphs: CutieGraphs | JointFormerGraphs):
        self.graphs = graphs
        self.calls: dict[str, list[float]] = {}

    def __getattr__(self, name: str):
        attribute = getattr(self.graphs, name)
        if name.startswith("_") or not callable(attribute):
            return attribute
        return functools.partial(self._timed, name, attribute)

    def _timed(self, name: str, method, *args, **kwargs):
        synchronize(self.graphs.device)
        start = time.perf_counter()
        out = method(*args, **kwargs)
        synchronize(self.graphs.device)
        self.calls.setdefault(name, []).append(time.perf_counter() - start)
        return out


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- memory --------------------------------------------------------------------------------

class HostPeakMemory:
    """Peak resident memory of this process. On Linux the peak is reset before each run
    (``/proc/self/clear_refs``), after freed heap memory is handed back to the system, so
    that earlier runs do not count; elsewhere it is the process's peak so far."""

    def reset(self) -> None:
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed memory resident otherwise
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")

    def peak_mb(self) -> float:
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if platform.system() == "Darwin" else peak / 1024


# -- the synthetic clip --------------------------------------------------------------------

def synthetic_clip(size: tuple[int, int], objects: int, frames: int, seed: int = 0
                   ) -> tuple[list[np.ndarray], np.ndarray]:
    """``frames`` RGB images ``HxWx3`` uint8 of ``objects`` discs moving over a smooth random
    background, and the first frame's label map ``HxW`` (labels 1..objects)."""
    rng = np.random.default_rng(seed)
    h, w = size
    coarse = rng.integers(0, 256, (max(h // 32, 2), max(w // 32, 2), 3), dtype=np.uint8)
    background = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR))
    centres = rng.uniform(0.25, 0.75, (objects, 2)) * (h, w)
    velocities = rng.normal(0, 0.01, (objects, 2)) * min(h, w)
    radii = rng.uniform(0.06, 0.12, objects) * min(h, w)
    colours = rng.integers(0, 256, (objects, 3))
    rows, cols = np.mgrid[:h, :w]
    images, first_mask = [], np.zeros((h, w), np.int64)
    for t in range(frames):
        image = background.copy()
        for k in range(objects):
            cy, cx = centres[k] + t * velocities[k]
            disc = (rows - cy) ** 2 + (cols - cx) ** 2 < radii[k] ** 2
            image[disc] = colours[k]
            if t == 0:
                first_mask[disc] = k + 1
        images.append(image)
    return images, first_mask


# -- the benchmark -------------------------------------------------------------------------

@dataclass
class Run:
    """One measurement. Latencies in ms over the timed frames; ``graphs``: per graph (each
    method of the backend's graphs object), the median, p90 and mean ms of one call and the
    calls per frame; ``outside_graphs_ms``: mean frame time not spent in graph calls."""

    backend: str
    objects: int
    memory_frames: int
    frames: int
    latency_ms: dict[str, float]
    fps: float
    graphs: dict[str, dict[str, float]]
    outside_graphs_ms: float  # mean per frame: pre/post-processing and memory bookkeeping
    peak_host_mb: float
    peak_device_mb: float | None
    load_s: float
    speedup_vs_torch: float | None = None


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
    options: dict = field(default_factory=dict)  # other fields of the model's config (vosrt.api.CONFIG_TYPES)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"vosrt bench runs {', '.join(MODELS)}, not {self.model!r}")
        if self.memory_frames is None:
            self.memory_frames = [CONFIG_TYPES[self.model]().max_mem_frames]
        unknown = [b for b in self.backends if b not in BENCH_BACKENDS]
        if unknown:
            raise ValueError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BENCH_BACKENDS)}")
        if self.frames < 1 or self.warmup < 1:
            raise ValueError("--frames and --warmup must be >= 1 (the warm-up includes the mask frame)")
        if min(self.objects) < 1 or min(self.memory_frames) < 1 or min(self.resolution) < 16:
            raise ValueError("objects and memory frames must be >= 1 and the resolution at least 16x16")


def run_benchmark(settings: BenchSettings) -> dict:
    """Run every available backend over the grid of object counts and memory sizes.

    A backend that cannot run here, or fails to load, is skipped with the reason.
    Returns the report: settings, environment, ``skipped`` (backend -> reason) and ``runs``
    (:class:`Run` as dicts), with each run's speed-up over eager fp32 torch of the same
    configuration when torch was benchmarked too.
    """
    device = resolve_device(settings.device)
    environment = _environment(device)
    skipped = {name: reason for name in settings.backends
               if (reason := unavailable_reason(BENCH_BACKENDS[name], device, settings.engine_dir))}
    backends = [BENCH_BACKENDS[name] for name in settings.backends if name not in skipped]
    if not backends:
        raise RuntimeError("no backend can run here: " + "; ".join(f"{n}: {r}" for n, r in skipped.items()))
    clips = {k: synthetic_clip(settings.resolution, k, settings.warmup + settings.frames, settings.seed)
             for k in settings.objects}
    runs: list[Run] = []
    total_frames = len(backends) * len(settings.memory_frames) * len(clips) * (settings.warmup + settings.frames)
    with _weights_file(settings) as weights, tqdm(total=total_frames, unit="frame", desc="bench") as bar:
        for backend in backends:
            for memory_frames in settings.memory_frames:
                bar.set_description(f"bench {backend.name} T={memory_frames} (loading)")
                started = time.perf_counter()
                try:
                    session = _make_session(settings, backend, weights, memory_frames, device)
                except (ValueError, RuntimeError, ImportError) as err:  # e.g. no GPU provider, engines too small
                    skipped[backend.name] = f"cannot load: {str(err).splitlines()[0]}"
                    break
                load_s = time.perf_counter() - started
                for objects, (images, mask) in clips.items():
                    bar.set_description(f"bench {backend.name} T={memory_frames} objects={objects}")
                    runs.append(_measure(session, backend.name, objects, memory_frames, images, mask,
                                         settings.warmup, load_s, bar))
                del session  # before the next one is loaded
    if not runs:
        raise RuntimeError("no backend ran: " + "; ".join(f"{n}: {r}" for n, r in skipped.items()))
    _add_speedups(runs)
    return {
        "vosrt_version": vosrt.__version__, "model": settings.model,
        "weights": settings.weights or f"random (the model's own initialisation, seed {settings.seed})",
        "resolution": list(settings.resolution), "frames": settings.frames, "warmup": settings.warmup,
        "options": (asdict(CONFIG_TYPES[settings.model](**settings.options))
                    | {"max_mem_frames": "memory_frames of each run"}),
        "environment": environment | _load_average("end"),
        "skipped": skipped, "runs": [asdict(r) for r in runs],
    }


@contextlib.contextmanager
def _weights_file(settings: BenchSettings) -> Iterator[str]:
    """The checkpoint to load: the given one, or random weights saved to a temporary folder
    that also serves as the cache for exported graphs (removed afterwards)."""
    if settings.weights is not None:
        yield settings.weights
        return
    torch.manual_seed(settings.seed)
    with tempfile.TemporaryDirectory(prefix="vosrt-bench-") as folder:
        path = Path(folder) / f"{settings.model}-random-seed{settings.seed}.pth"
        model = JointFormer() if settings.model not in CONFIGS else Cutie(CONFIGS[settings.model])
        torch.save(model.state_dict(), path)
        del model  # not kept in memory while the backends run
        saved = os.environ.get("VOSRT_CACHE")
        os.environ["VOSRT_CACHE"] = folder
        try:
            yield str(path)
        finally:
            if saved is None:
                del os.environ["VOSRT_CACHE"]
            else:
                os.environ["VOSRT_CACHE"] = saved


def _make_session(settings: BenchSettings, backend: Backend, weights: str, memory_frames: int,
                  device: torch.device) -> VideoSession:
    options = settings.options | {"max_mem_frames": memory_frames}
    export_dir = settings.engine_dir if backend.needs_engines else None
    return load(settings.model, weights, backend=backend.runtime, device=str(device), amp=backend.amp,
                export_dir=export_dir, **options)


def _measure(session: VideoSession, backend: str, objects: int, memory_frames: int, images: list[np.ndarray],
             mask: np.ndarray, warmup: int, load_s: float, bar: tqdm) -> Run:
    """Warm-up frames (the first one with the mask), then the timed frames."""
    session.reset()
    timed = TimedGraphs(session.graphs)
    session.graphs = timed
    device, host = timed.device, HostPeakMemory()
    host.reset()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    latencies = []
    try:
        for index, image in enumerate(images):
            if index == warmup:
                timed.calls.clear()
            synchronize(device)
            start = time.perf_counter()
            session.step(image, mask if index == 0 else None)
            synchronize(device)
            if index >= warmup:
                latencies.append((time.perf_counter() - start) * 1000)
            bar.update()
    finally:
        session.graphs = timed.graphs
    frames = len(latencies)
    in_graphs_ms = sum(sum(calls) for calls in timed.calls.values()) * 1000 / frames
    return Run(backend=backend, objects=objects, memory_frames=memory_frames, frames=frames,
               latency_ms=_summary(latencies), fps=round(1000 * frames / sum(latencies), 2),
               graphs={name: _summary([t * 1000 for t in calls]) | {"calls_per_frame": round(len(calls) / frames, 3)}
                       for name, calls in timed.calls.items()},
               outside_graphs_ms=round(statistics.fmean(latencies) - in_graphs_ms, 2),
               peak_host_mb=round(host.peak_mb(), 1),
               peak_device_mb=round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None,
               load_s=round(load_s, 2))


def _summary(ms: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(ms), 2), "p90": round(float(np.percentile(ms, 90)), 2),
            "mean": round(statistics.fmean(ms), 2)}


def _add_speedups(runs: list[Run]) -> None:
    """Median latency of eager torch / of the run, for the same objects and memory size."""
    reference = {(r.objects, r.memory_frames): r.latency_ms["median"] for r in runs if r.backend == REFERENCE_BACKEND}
    for r in runs:
        base = reference.get((r.objects, r.memory_frames))
        r.speedup_vs_torch = round(base / r.latency_ms["median"], 3) if base else None


def _environment(device: torch.device) -> dict:
    env = {"device": str(device), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    for module in ("onnxruntime", "tensorrt"):
        if importlib.util.find_spec(module) is not None:
            env[module] = importlib.import_module(module).__version__
    return env | _load_average("start")


def _load_average(when: str) -> dict[str, float]:
    """The 1-minute load average: other work on the machine slows every backend, unevenly."""
    return {f"load_average_1min_at_{when}": round(os.getloadavg()[0], 2)} if hasattr(os, "getloadavg") else {}


# -- reporting -----------------------------------------------------------------------------

def format_table(report: dict) -> str:
    """The runs as a plain-text table, then one line per skipped backend."""
    header = (f"{'backend':12} {'obj':>3} {'mem':>3} {'median ms':>9} {'p90 ms':>8} {'FPS':>6} {'vs torch':>8} "
              f"{'host MB':>8} {'other ms':>8}  per graph: median ms x calls/frame")
    env = report["environment"]
    load = (f", load average {env['load_average_1min_at_start']} -> {env['load_average_1min_at_end']}"
            if "load_average_1min_at_end" in env else "")
    lines = [f"{report['model']} {report['resolution'][0]}x{report['resolution'][1]}, {report['weights']}, "
             f"{env['device']} ({env['torch_threads']} torch threads{load})", header]
    for r in report["runs"]:
        graphs = "  ".join(f"{stage} {g['median']:.1f}x{g['calls_per_frame']:g}" for stage, g in r["graphs"].items())
        speedup = f"{r['speedup_vs_torch']:.2f}x" if r["speedup_vs_torch"] else "-"
        lines.append(f"{r['backend']:12} {r['objects']:>3} {r['memory_frames']:>3} {r['latency_ms']['median']:>9.1f} "
                     f"{r['latency_ms']['p90']:>8.1f} {r['fps']:>6.2f} {speedup:>8} {r['peak_host_mb']:>8.0f} "
                     f"{r['outside_graphs_ms']:>8.1f}  {graphs}")
    lines += [f"{name}: skipped ({reason})" for name, reason in report["skipped"].items()]
    return "\n".join(lines)


def require_matplotlib() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise RuntimeError("--plot needs matplotlib: pip install 'vosrt[bench]' (or pip install matplotlib)")


def plot(report: dict, path: str | Path) -> None:
    """Two panels: median latency vs memory frames (one line per backend and object count)
    and vs object count (one line per backend and memory size)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    runs = report["runs"]
    fig, (by_memory, by_objects) = plt.subplots(1, 2, figsize=(11, 4.2))
    for backend in dict.fromkeys(r["backend"] for r in runs):
        mine = [r for r in runs if r["backend"] == backend]
        for objects in sorted({r["objects"] for r in mine}):
            points = sorted((r["memory_frames"], r["latency_ms"]["median"]) for r in mine if r["objects"] == objects)
            by_memory.plot(*zip(*points), marker="o", label=f"{backend}, {objects} obj")
        for memory in sorted({r["memory_frames"] for r in mine}):
            points = sorted((r["objects"], r["latency_ms"]["median"]) for r in mine if r["memory_frames"] == memory)
            by_objects.plot(*zip(*points), marker="o", label=f"{backend}, {memory} mem frames")
    for axis, label in ((by_memory, "memory frames (max_mem_frames)"), (by_objects, "objects")):
        axis.set_xlabel(label)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel("median latency per frame (ms)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    h, w = report["resolution"]
    fig.suptitle(f"{report['model']} {h}x{w}, {report['environment']['device']}, {report['weights']} weights",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_resolution(text: str) -> tuple[int, int]:
    """``"480x854"`` -> (480, 854) (height x width)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"resolution {text!r}: expected HEIGHTxWIDTH, e.g. 480x854") from None
    return h, w


def parse_counts(text: str) -> list[int]:
    """``"1,3"`` -> [1, 3]; ``"1..4"`` -> [1, 2, 3, 4]; both can be mixed: ``"1..3,8"``."""
    values: list[int] = []
    try:
        for part in text.split(","):
            low, _, high = part.partition("..")
            values += range(int(low), int(high or low) + 1)
    except ValueError:
        raise ValueError(f"{text!r}: expected numbers such as 1,3 or a range such as 1..5") from None
    if not values:
        raise ValueError(f"{text!r}: no numbers")
    return sorted(set(values))

