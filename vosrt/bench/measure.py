"""``vosrt bench``'s measurements: every backend runs the same frames through the ordinary
session, whose backend is wrapped to time each stage call (:class:`TimedBackend`). Results are
a list of :class:`Run` (one per backend x object count x memory size).

With ``--streams`` it measures throughput instead: several streams (one synthetic clip each) on
one backend, batched (:func:`vosrt.load_batch`, one ``batch.step`` per frame for all streams) and
sequential (a copy of the same streams stepped one after the other, as independent sessions
run), in turn frame by frame: a list of :class:`StreamRun` (one per backend x object count x
memory size x streams)."""
from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import importlib.util
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vosrt.api import load, load_batch, resolve_device
from vosrt.runtime.artifacts import vosrt_version
from vosrt.runtime.backends.base import Backend, BackendWrapper
from vosrt.runtime.streams import BatchSession
from vosrt.runtime.registry import MODELS
from vosrt.runtime.session import Session
from vosrt.runtime.stages import StageSpec

from .clip import synthetic_clip
from .settings import BENCH_BACKENDS, REFERENCE_BACKEND, BenchBackend, BenchSettings


class TimedBackend(BackendWrapper):
    """Records the wall time of every stage call of ``inner`` (synchronising the GPU around
    it), without changing what the calls return."""

    def __init__(self, inner: Backend):
        super().__init__(inner)
        self.calls: dict[str, list[float]] = {}

    def _run(self, stage: StageSpec, inputs: list[torch.Tensor]):
        synchronize(self.device)
        start = time.perf_counter()
        outputs = self.inner._run(stage, inputs)
        synchronize(self.device)
        self.calls.setdefault(stage.name, []).append(time.perf_counter() - start)
        return outputs


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


@dataclass
class Run:
    """One measurement. Latencies in ms over the timed frames (after ``untimed`` frames); ``graphs``:
    per stage, the median, p10, p90 and mean ms of one call and the calls per frame;
    ``outside_graphs_ms``: mean frame time not spent in stage calls."""

    backend: str
    objects: int
    memory_frames: int
    untimed: int
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
class StreamRun:
    """One stream count. FPS count the frames of all streams per second (aggregate); ``per_stream_fps``
    is each stream's frame rate in the batch; ``speedup``: batched over sequential aggregate FPS;
    ``batched_ms``: median, p10, p90 and mean of one batched step (a frame of every stream)."""

    backend: str
    objects: int
    memory_frames: int
    streams: int
    untimed: int
    frames: int
    batched_fps: float
    per_stream_fps: float
    sequential_fps: float
    speedup: float
    batched_ms: dict[str, float]


def _measure_streams(batch: BatchSession, backend: str, objects: int, memory_frames: int,
                     clips: list[tuple[list[np.ndarray], np.ndarray]], untimed: int, bar: tqdm) -> StreamRun:
    """``len(clips)`` streams (a clip and its first mask each) twice over in ``batch``: one copy
    batched (one step for all), the other stepped stream after stream, frame by frame in turn so that
    both see the same load; ``untimed`` frames per stream (the mask frame first), then the timed
    ones. Outputs stay on the device (``output="tensor"``); the clock stops once the device is done."""
    for stream in batch.streams:
        batch.end(stream)
    batched, sequential = [], []
    for index in range(len(clips[0][0])):
        frames = {stream: (images[index], mask) if index == 0 else images[index]
                  for stream, (images, mask) in enumerate(clips)}
        together = _timed_steps(batch, [{("batched", stream): frame for stream, frame in frames.items()}])
        if index == untimed:
            _estimate_once(bar, together / len(clips), bar.total - bar.n - len(clips))  # per frame of a stream
        one_by_one = _timed_steps(batch, [{("sequential", stream): frame} for stream, frame in frames.items()])
        if index >= untimed:
            batched.append(together)
            sequential.append(one_by_one)
        bar.update(2 * len(clips))
    streams, frames = len(clips), len(batched)
    batched_fps, sequential_fps = streams * frames / sum(batched), streams * frames / sum(sequential)
    return StreamRun(backend=backend, objects=objects, memory_frames=memory_frames, streams=streams, untimed=untimed,
                     frames=frames, batched_fps=_fps(batched_fps), per_stream_fps=_fps(batched_fps / streams),
                     sequential_fps=_fps(sequential_fps), speedup=round(batched_fps / sequential_fps, 3),
                     batched_ms=_summary([t * 1000 for t in batched]))


def _timed_steps(batch: BatchSession, steps: list[dict]) -> float:
    """Seconds to run ``steps`` (``batch.step`` inputs) one after the other, the device done."""
    synchronize(batch.backend.device)
    start = time.perf_counter()
    for frames in steps:
        batch.step(frames, output="tensor")
    synchronize(batch.backend.device)
    return time.perf_counter() - start


def run_benchmark(settings: BenchSettings) -> dict:
    """Run every available backend over the grid of object counts and memory sizes (and stream
    counts with ``settings.streams``).

    A backend that cannot run here, or fails to load, is skipped with the reason.
    Returns the report: settings, environment, ``skipped`` (backend -> reason) and ``runs``
    (:class:`Run` as dicts, with each run's speed-up over eager fp32 torch of the same
    configuration when torch was benchmarked too; :class:`StreamRun` with ``streams``).
    """
    device = resolve_device(settings.device)
    environment = _environment(device)
    skipped = {name: reason for name in settings.backends
               if (reason := BENCH_BACKENDS[name].unavailable_reason(device.type, settings.engine_dir))}
    backends = [BENCH_BACKENDS[name] for name in settings.backends if name not in skipped]
    if not backends:
        raise RuntimeError("no backend can run here: " + "; ".join(f"{n}: {r}" for n, r in skipped.items()))
    longest = max(settings.untimed_frames(t) for t in settings.memory_frames) + settings.frames
    streams = settings.streams or [1]
    clips = {k: [synthetic_clip(settings.resolution, k, longest, settings.seed + s) for s in range(max(streams))]
             for k in settings.objects}
    runs: list[Run | StreamRun] = []
    total_frames = len(backends) * len(clips) * sum(settings.untimed_frames(t) + settings.frames
                                                    for t in settings.memory_frames)
    if settings.streams:
        total_frames *= 2 * sum(streams)  # batched and sequential copies, every stream's frames
    print(plan(backends, settings, total_frames), flush=True)
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
                untimed = settings.untimed_frames(memory_frames)
                for objects, clip in clips.items():
                    bar.set_description(f"bench {backend.name} T={memory_frames} objects={objects}")
                    clip = [(images[:untimed + settings.frames], mask) for images, mask in clip]
                    if settings.streams:
                        runs += [_measure_streams(session, backend.name, objects, memory_frames, clip[:count], untimed,
                                                  bar) for count in settings.streams]
                    else:
                        runs.append(_measure(session, backend.name, objects, memory_frames, *clip[0], untimed, load_s,
                                             bar))
                del session  # before the next one is loaded
    if not runs:
        raise RuntimeError("no backend ran: " + "; ".join(f"{n}: {r}" for n, r in skipped.items()))
    if not settings.streams:
        _add_speedups(runs)
    return {
        "vosrt_version": vosrt_version(), "model": settings.model,
        "weights": settings.weights or f"random (the model's own initialisation, seed {settings.seed})",
        "resolution": list(settings.resolution), "frames": settings.frames, "warmup": settings.warmup,
        "memory": ("filling up: timed from the frame after the warm-up" if settings.fill else
                   "full: the timed frames start once the memory holds memory_frames frames"),
        "options": (asdict(MODELS[settings.model].config_type(**settings.options))
                    | {"max_mem_frames": "memory_frames of each run"}),
        "streams": settings.streams,
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
        spec = MODELS[settings.model]
        network = spec.family.build_network(spec.variant)
        torch.save(network.state_dict(), path)
        del network  # not kept in memory while the backends run
        saved = os.environ.get("VOSRT_CACHE")
        os.environ["VOSRT_CACHE"] = folder
        try:
            yield str(path)
        finally:
            if saved is None:
                del os.environ["VOSRT_CACHE"]
            else:
                os.environ["VOSRT_CACHE"] = saved


def _make_session(settings: BenchSettings, backend: BenchBackend, weights: str, memory_frames: int,
                  device: torch.device) -> Session | BatchSession:
    """A session of ``backend`` (:func:`vosrt.load`), or a batch (:func:`vosrt.load_batch`) with ``streams``."""
    options = settings.options | {"max_mem_frames": memory_frames}
    export_dir = settings.engine_dir if backend.needs_engines else None
    return (load_batch if settings.streams else load)(
        settings.model, weights, backend=backend.runtime, device=str(device), amp=backend.amp, fp16=backend.fp16,
        cuda_graph=backend.cuda_graph, export_dir=export_dir, **options)


def _measure(session: Session, backend: str, objects: int, memory_frames: int, images: list[np.ndarray],
             mask: np.ndarray, warmup: int, load_s: float, bar: tqdm) -> Run:
    """Warm-up frames (the first one with the mask), then the timed frames."""
    session.reset()
    timed = session.backend = TimedBackend(session.backend)
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
            if index == warmup:
                _estimate_once(bar, latencies[-1] / 1000, bar.total - bar.n - 1)
            bar.update()
    finally:
        session.backend = timed.inner
    frames = len(latencies)
    in_graphs_ms = sum(sum(calls) for calls in timed.calls.values()) * 1000 / frames
    return Run(backend=backend, objects=objects, memory_frames=memory_frames, untimed=warmup, frames=frames,
               latency_ms=_summary(latencies), fps=_fps(1000 * frames / sum(latencies)),
               graphs={name: _summary([t * 1000 for t in calls]) | {"calls_per_frame": round(len(calls) / frames, 3)}
                       for name, calls in timed.calls.items()},
               outside_graphs_ms=round(statistics.fmean(latencies) - in_graphs_ms, 2),
               peak_host_mb=round(host.peak_mb(), 1),
               peak_device_mb=round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None,
               load_s=round(load_s, 2))


def plan(backends: list[BenchBackend], settings: BenchSettings, total_frames: int) -> str:
    """The line printed before the benchmark starts: what it runs, and when the duration is known."""
    grid = [f"{len(backends)} backend(s)", f"{len(settings.objects)} object count(s)",
            f"{len(settings.memory_frames)} memory size(s)"] + ([f"{len(settings.streams)} stream count(s)"]
                                                               if settings.streams else [])
    return (f"vosrt bench: {' x '.join(grid)}, {total_frames} frames in all; the expected duration follows the first "
            "timed frame")


def _estimate_once(bar: tqdm, frame_s: float, frames_left: int) -> None:
    """At the first timed frame (the memory full, as in every timed frame): the expected duration, once."""
    if not getattr(bar, "estimated", False):
        bar.estimated = True
        bar.write(expected_duration(bar.format_dict["elapsed"], frames_left, frame_s))


def expected_duration(elapsed_s: float, frames_left: int, frame_s: float) -> str:
    """The whole run: ``elapsed_s`` so far, then ``frames_left`` at ``frame_s`` each."""
    return (f"vosrt bench: expected duration about {_duration(elapsed_s + frames_left * frame_s)} in all "
            f"({_duration(elapsed_s)} so far, then {frames_left} frames at {frame_s:.2f} s, the first timed frame's "
            "pace; more objects take longer, and loading each further backend comes on top: an ONNX export takes a "
            "minute or more)")


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{max(seconds, 1):.0f} s"


def _fps(fps: float) -> float:
    return float(f"{fps:.4g}")


def _summary(ms: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(ms), 2), "p10": round(float(np.percentile(ms, 10)), 2),
            "p90": round(float(np.percentile(ms, 90)), 2), "mean": round(statistics.fmean(ms), 2)}


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
