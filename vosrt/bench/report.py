"""``vosrt bench``'s report: a plain-text table and a plot."""
from __future__ import annotations

import importlib.util
from pathlib import Path


def format_table(report: dict) -> str:
    """The runs as a plain-text table (latency, or throughput with ``--streams``), then one line
    per skipped backend."""
    env = report["environment"]
    load = (f", load average {env['load_average_1min_at_start']} -> {env['load_average_1min_at_end']}"
            if "load_average_1min_at_end" in env else "")
    policy = f", OpenMP wait policy {env['omp_wait_policy']}" if "omp_wait_policy" in env else ""
    lines = [f"{report['model']} {report['resolution'][0]}x{report['resolution'][1]}, {report['weights']}, "
             f"{env['device']} ({env['torch_threads']} torch threads{policy}{load}); memory {report['memory']}"]
    lines += _stream_rows(report["runs"]) if report.get("streams") else _latency_rows(report["runs"])
    lines += [f"{name}: skipped ({reason})" for name, reason in report["skipped"].items()]
    return "\n".join(lines)


def _stream_rows(runs: list[dict]) -> list[str]:
    """Aggregate FPS (frames of all streams per second) batched and sequential, their ratio, and the
    frame rate of each stream in the batch."""
    lines = [f"{'backend':16} {'obj':>3} {'mem':>3} {'streams':>7} {'batched FPS':>11} {'per stream':>10} "
             f"{'sequential FPS':>14} {'batched/seq':>11} {'step median ms':>14}"]
    for r in runs:
        lines.append(f"{r['backend']:16} {r['objects']:>3} {r['memory_frames']:>3} {r['streams']:>7} "
                     f"{r['batched_fps']:>11.2f} {r['per_stream_fps']:>10.2f} {r['sequential_fps']:>14.2f} "
                     f"{r['speedup']:>10.2f}x {r['batched_ms']['median']:>14.1f}")
    return lines


def _latency_rows(runs: list[dict]) -> list[str]:
    lines = [f"{'backend':12} {'obj':>3} {'mem':>3} {'median ms':>9} {'p90 ms':>8} {'FPS':>6} {'vs torch':>8} "
             f"{'host MB':>8} {'other ms':>8}  per graph: median ms x calls/frame"]
    for r in runs:
        graphs = "  ".join(f"{stage} {g['median']:.1f}x{g['calls_per_frame']:g}" for stage, g in r["graphs"].items())
        speedup = f"{r['speedup_vs_torch']:.2f}x" if r["speedup_vs_torch"] else "-"
        lines.append(f"{r['backend']:12} {r['objects']:>3} {r['memory_frames']:>3} {r['latency_ms']['median']:>9.1f} "
                     f"{r['latency_ms']['p90']:>8.1f} {r['fps']:>6.2f} {speedup:>8} {r['peak_host_mb']:>8.0f} "
                     f"{r['outside_graphs_ms']:>8.1f}  {graphs}")
    return lines


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
