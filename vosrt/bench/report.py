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
    busiest = max((env.get(f"load_average_1min_at_{when}", 0) for when in ("start", "end")), default=0)
    if env.get("cpu_count") and busiest > env["cpu_count"]:
        lines.append(f"note: the machine was busy (load average {busiest} on {env['cpu_count']} CPUs): other work "
                     "slows the backends unevenly, so these latencies and speed-ups are not the machine's; rerun idle")
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
    """:func:`figure` written as a PNG through a staged file (complete or not at all)."""
    import matplotlib.pyplot as plt

    from vosrt.runtime import safe_write

    fig = figure(report)
    with safe_write.staged_file(path) as partial:
        fig.savefig(partial, dpi=120, format="png")
    plt.close(fig)


def figure(report: dict):
    """Latency per frame: one panel per setting the report varies (memory frames, object count;
    a line per backend and value of the other setting), or, for a single configuration, one bar
    per backend with its median and p10-p90. A backend has the same colour and line style in
    every panel."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    return fig


_AXIS_LABELS = {"memory_frames": "memory frames (max_mem_frames)", "objects": "objects"}
_NOUNS = {"memory_frames": "memory frame", "objects": "object"}
LINE_STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def counted(count: int, noun: str) -> str:
    """``counted(1, "object")`` -> ``"1 object"``; ``counted(5, "memory frame")`` -> ``"5 memory frames"``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def backend_styles(runs: list[dict]) -> dict[str, dict]:
    """A colour and a line style per backend, in the order the report has them: the same in every panel."""
    import matplotlib.pyplot as plt

    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    backends = dict.fromkeys(r["backend"] for r in runs)
    return {b: {"color": colours[i % len(colours)], "linestyle": LINE_STYLES[i % len(LINE_STYLES)]}
            for i, b in enumerate(backends)}


def _lines(panel, runs: list[dict], axis: str, other: str) -> None:
    """Median latency against ``axis`` (ticks at the measured values only), one line per backend
    (colour and line style) and value of ``other`` (marker), the p10-p90 spread shaded."""
    styles = backend_styles(runs)
    others = sorted({r[other] for r in runs})
    for backend, style in styles.items():
        mine = [r for r in runs if r["backend"] == backend]
        for value in sorted({r[other] for r in mine}):
            points = sorted((r[axis], r["latency_ms"]) for r in mine if r[other] == value)
            x = [p[0] for p in points]
            panel.plot(x, [p[1]["median"] for p in points], marker=MARKERS[others.index(value) % len(MARKERS)],
                       label=f"{backend}, {counted(value, _NOUNS[other])}", **style)
            panel.fill_between(x, [p[1]["p10"] for p in points], [p[1]["p90"] for p in points],
                               color=style["color"], alpha=0.15, linewidth=0)
    panel.set_xticks(sorted({r[axis] for r in runs}))
    panel.set_xlabel(_AXIS_LABELS[axis])
    panel.set_ylabel("latency per frame (ms): median, p10-p90 shaded")
    panel.grid(alpha=0.3)
    panel.legend(fontsize=8)


def _bars(panel, runs: list[dict]) -> None:
    """One configuration: a bar per backend (median) in its colour, the p10-p90 spread as a whisker,
    the values written on."""
    styles = backend_styles(runs)
    names = [r["backend"] for r in runs]
    medians = [r["latency_ms"]["median"] for r in runs]
    spread = [[m - r["latency_ms"]["p10"] for r, m in zip(runs, medians)],
              [r["latency_ms"]["p90"] - m for r, m in zip(runs, medians)]]
    bars = panel.bar(names, medians, yerr=spread, capsize=4, color=[styles[n]["color"] for n in names], alpha=0.8)
    panel.bar_label(bars, labels=[f"{m:.1f} ms" for m in medians], label_type="center", color="white", fontsize=9)
    run = runs[0]
    panel.set_title(f"{counted(run['objects'], 'object')}, {counted(run['memory_frames'], 'memory frame')} "
                    "(whisker: p10-p90)", fontsize=9)
    panel.set_ylabel("median latency per frame (ms)")
    panel.grid(axis="y", alpha=0.3)
