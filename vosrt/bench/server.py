"""``vosrt bench --server URL --streams 1,4,8``: streams on a Triton server beside the same streams
in-process.

For each stream count S: S client threads, each with its own ``vosrt.connect`` and its own
synthetic clip, send their frames as fast as the answers come (the first ``warmup`` frames
untimed, the mask frame first); then the same S clips in one ``vosrt.load_batch`` in this process,
one ``batch.step`` per frame for all. Reported: aggregate frames/s (all streams' frames per
second), each stream's frames/s, the p50 / p99 latency of a frame (server: one request; in-process:
one step of all streams), and the requests per ``execute`` the server formed (its statistics).
The in-process side runs the bench's options and weights: give those the repository was exported
with (timings do not depend on the weights).
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .clip import synthetic_clip


@dataclass
class ServerRun:
    """One stream count, server and in-process (see the module docstring)."""
    streams: int
    frames: int
    server_fps: float
    server_per_stream_fps: list[float]
    server_ms: dict[str, float]
    batch_sizes: dict[int, int]
    in_process_fps: float
    in_process_ms: dict[str, float]
    ratio: float  # server aggregate frames/s over in-process


def measure_server(url: str, model: str, make_batch, counts: list[int], resolution: tuple[int, int], objects: int,
                   frames: int, warmup: int, seed: int) -> list[ServerRun]:
    """Every stream count of ``counts`` on the server at ``url`` and in ``make_batch()`` (a
    ``vosrt.load_batch`` with the served settings), ``warmup`` untimed and ``frames`` timed frames
    per stream."""
    clips = [synthetic_clip(resolution, objects, warmup + frames, seed + s) for s in range(max(counts))]
    batch = make_batch()
    runs = []
    for count in counts:
        before = _executes(url, model)
        server_fps, per_stream, latencies = _on_server(url, model, clips[:count], warmup, f"bench-{seed}-{count}")
        sizes = {size: n - before.get(size, 0) for size, n in _executes(url, model).items() if n > before.get(size, 0)}
        in_process_fps, steps = _in_process(batch, clips[:count], warmup)
        runs.append(ServerRun(count, frames, round(server_fps, 3), [round(f, 3) for f in per_stream],
                              _percentiles(latencies), dict(sorted(sizes.items())), round(in_process_fps, 3),
                              _percentiles(steps), round(server_fps / in_process_fps, 3)))
    return runs


def format_server_table(runs: list[ServerRun]) -> str:
    lines = ["| streams | server fps (all) | fps per stream | latency p50 / p99 ms | requests per execute: count | "
             "in-process fps (all) | step p50 / p99 ms | server / in-process |",
             "| ---: | ---: | --- | --- | --- | ---: | --- | ---: |"]
    for r in runs:
        per_stream = ", ".join(f"{f:.2f}" for f in r.server_per_stream_fps)
        sizes = ", ".join(f"{size}: {n}" for size, n in r.batch_sizes.items())
        lines.append(f"| {r.streams} | {r.server_fps:.2f} | {per_stream} | {r.server_ms['p50']:.0f} / "
                     f"{r.server_ms['p99']:.0f} | {sizes} | {r.in_process_fps:.2f} | {r.in_process_ms['p50']:.0f} / "
                     f"{r.in_process_ms['p99']:.0f} | {r.ratio:.2f}x |")
    return "\n".join(lines)


def _on_server(url: str, model: str, clips: list, warmup: int, prefix: str) -> tuple[float, list[float], list[float]]:
    """(aggregate frames/s, each stream's frames/s, every timed frame's latency in ms)."""
    import vosrt

    barrier = threading.Barrier(len(clips) + 1, timeout=600)
    latencies: list[list[float]] = [[] for _ in clips]
    spans: list[float] = [0.0] * len(clips)

    def run(index: int) -> None:
        images, mask = clips[index]
        stream = f"{prefix}-{index}"
        with vosrt.connect(url, model) as client:
            for i in range(warmup):
                client.step({stream: (images[i], mask) if i == 0 else images[i]})
            barrier.wait()
            began = time.perf_counter()
            for i in range(warmup, len(images)):
                start = time.perf_counter()
                client.step({stream: images[i]}, last=[stream] if i == len(images) - 1 else [])
                latencies[index].append((time.perf_counter() - start) * 1000)
            spans[index] = time.perf_counter() - began

    with ThreadPoolExecutor(len(clips)) as pool:
        futures = [pool.submit(run, index) for index in range(len(clips))]
        barrier.wait()
        began = time.perf_counter()
        for future in futures:
            future.result()
        wall = time.perf_counter() - began
    timed = len(clips[0][0]) - warmup
    return len(clips) * timed / wall, [timed / span for span in spans], [t for per in latencies for t in per]


def _in_process(batch, clips: list, warmup: int) -> tuple[float, list[float]]:
    """(aggregate frames/s, every timed step's latency in ms) of ``clips`` in one batch."""
    for stream in batch.streams:
        batch.end(stream)
    steps = []
    for i in range(len(clips[0][0])):
        start = time.perf_counter()
        batch.step({stream: (images[i], mask) if i == 0 else images[i] for stream, (images, mask) in enumerate(clips)})
        if i >= warmup:
            steps.append((time.perf_counter() - start) * 1000)
    return len(clips) * len(steps) / (sum(steps) / 1000), steps


def _executes(url: str, model: str) -> dict[int, int]:
    """{requests per execute: executes so far} from the server's statistics."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"]
    return {int(b["batch_size"]): int(b["compute_infer"].get("count", 0))
            for version in stats for b in version.get("batch_stats", [])}


def _percentiles(ms: list[float]) -> dict[str, float]:
    return {"p50": round(float(np.percentile(ms, 50)), 2), "p99": round(float(np.percentile(ms, 99)), 2)}
