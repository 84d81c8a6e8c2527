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
    """Median latency per frame: one panel per setting the report varies (memory frames, object
    count; a line per backend and the other setting), or, for a single configuration, one bar per
    backend with its median and p90. Written through a staged file (complete or not at all)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vosrt.runtime import safe_write

    runs = report["runs"]
    varied = [(axis, other) for axis, other in (("memory_frames", "objects"), ("objects", "memory_frames"))
              if len({r[axis] for r in runs}) > 1]
    fig, axes = plt.subplots(1, max(len(varied), 1), figsize=(5.5 * max(len(varied), 1) + 0.5, 4.2), squeeze=False)
    if varied:
        for panel, (axis, other) in zip(axes[0], varied):
            _lines(panel, runs, axis, other)
    else:
        _bars(axes[0][0], runs)
    h, w = report["resolution"]
    fig.suptitle(f"{report['model']} {h}x{w}, {report['environment']['device']}, {report['weights']} weights",
                 fontsize=10)
    fig.tight_layout()
    with safe_write.staged_file(path) as partial:
        fig.savefig(partial, dpi=120, format="png")
    plt.close(fig)


_AXIS_LABELS = {"memory_frames": "memory frames (max_mem_frames)", "objects": "objects"}
_LINE_LABELS = {"memory_frames": "{} mem frames", "objects": "{} obj"}


def _lines(panel, runs: list[dict], axis: str, other: str) -> None:
    """Median latency against ``axis``, one line per backend and value of ``other``."""
    from matplotlib.ticker import MaxNLocator

    for backend in dict.fromkeys(r["backend"] for r in runs):
        mine = [r for r in runs if r["backend"] == backend]
        for value in sorted({r[other] for r in mine}):
            points = sorted((r[axis], r["latency_ms"]["median"]) for r in mine if r[other] == value)
            panel.plot(*zip(*points), marker="o", label=f"{backend}, {_LINE_LABELS[other].format(value)}")
    panel.set_xlabel(_AXIS_LABELS[axis])
    panel.xaxis.set_major_locator(MaxNLocator(integer=True))
    panel.set_ylabel("median latency per frame (ms)")
    panel.grid(alpha=0.3)
    panel.legend(fontsize=8)


def _bars(panel, runs: list[dict]) -> None:
    """One configuration: a bar per backend (median), its p90 as a whisker, the values written on."""
    names = [r["backend"] for r in runs]
    medians = [r["latency_ms"]["median"] for r in runs]
    p90 = [r["latency_ms"]["p90"] - m for r, m in zip(runs, medians)]
    bars = panel.bar(names, medians, yerr=[[0] * len(runs), p90], capsize=4, color="tab:blue", alpha=0.8)
    panel.bar_label(bars, labels=[f"{m:.1f} ms" for m in medians], label_type="center", color="white", fontsize=9)
    run = runs[0]
    panel.set_title(f"{run['objects']} object(s), {run['memory_frames']} memory frames (whisker: p90)", fontsize=9)
    panel.set_ylabel("median latency per frame (ms)")
    panel.grid(axis="y", alpha=0.3)
