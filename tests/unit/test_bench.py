"""``vosrt bench``: report structure, timing wrapper, skipped backends, argument errors."""
from __future__ import annotations

import json
import os

import pytest
import torch
from PIL import Image

from fakes.backends import ArithmeticBackend
from vosrt.bench import measure
from vosrt.bench.clip import synthetic_clip
from vosrt.bench.settings import BENCH_BACKENDS, BenchBackend, BenchSettings
from vosrt.cli import main
from vosrt.cli.options import parse_counts, parse_resolution


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """Random cutie-small weights saved once (seed 0, as bench makes them without --weights), and a
    cache shared by this module's tests: the onnxruntime backend exports their graphs once, not
    once per test (bench's own temporary cache is tested by the test that leaves --weights out)."""
    from vosrt.runtime.registry import MODELS

    folder = tmp_path_factory.mktemp("bench")
    spec = MODELS["cutie-small"]
    torch.manual_seed(0)
    torch.save(spec.family.build_network(spec.variant).state_dict(), folder / "cutie-small-random.pth")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VOSRT_CACHE", str(folder / "cache"))
        yield folder / "cutie-small-random.pth"


def test_bench_cli_writes_json_and_plot(tmp_path, capsys, random_weights):
    report_path, plot_path = tmp_path / "bench.json", tmp_path / "bench.png"
    argv = ["bench", "cutie-small", "--backends", "torch,onnxruntime,tensorrt,torch-amp", "--resolution", "64x96",
            "--objects", "1,2", "--memory-frames", "2", "--frames", "2", "--warmup", "2", "--weights",
            str(random_weights), "--json", str(report_path), "--plot", str(plot_path)]
    assert main(argv) == 0
    report = json.loads(report_path.read_text())
    assert report["command"].startswith("vosrt bench cutie-small --backends torch,onnxruntime")
    assert report["model"] == "cutie-small" and report["resolution"] == [64, 96]
    assert report["weights"] == str(random_weights)
    assert set(report["skipped"]) == {"tensorrt", "torch-amp"}  # this CPU machine: no CUDA
    assert "needs CUDA" in report["skipped"]["torch-amp"]
    runs = report["runs"]
    assert [(r["backend"], r["objects"], r["memory_frames"]) for r in runs] == [
        ("torch", 1, 2), ("torch", 2, 2), ("onnxruntime", 1, 2), ("onnxruntime", 2, 2)]
    assert report["memory"].startswith("full") and report["environment"]["omp_wait_policy"]
    for r in runs:
        assert r["frames"] == 2 and r["untimed"] == 6  # the mask frame, then the next memory frame, 5 frames later
        assert 0 < r["latency_ms"]["median"] <= r["latency_ms"]["p90"]
        assert r["fps"] == pytest.approx(2000 / (2 * r["latency_ms"]["mean"]), rel=0.01)
        assert {"image_encoder", "memory_readout", "mask_decoder"} <= set(r["graphs"])
        assert r["graphs"]["image_encoder"]["calls_per_frame"] == 1
        assert r["peak_host_mb"] > 0 and r["peak_device_mb"] is None
        in_graphs = sum(g["mean"] * g["calls_per_frame"] for g in r["graphs"].values())
        assert in_graphs <= r["latency_ms"]["mean"] * 1.01
    assert [r["speedup_vs_torch"] for r in runs[:2]] == [1.0, 1.0]
    for torch_run, ort_run in zip(runs[:2], runs[2:]):
        expected = torch_run["latency_ms"]["median"] / ort_run["latency_ms"]["median"]
        assert ort_run["speedup_vs_torch"] == pytest.approx(expected, rel=1e-2)
    with Image.open(plot_path) as image:
        assert image.format == "PNG" and image.width > 600
    out = capsys.readouterr().out
    assert out.startswith("vosrt bench: 2 backend(s) x 2 object count(s) x 1 memory size(s), 32 frames in all")
    assert "\nvosrt bench: expected duration about " in out
    assert "tensorrt: skipped (" in out and "torch-amp: skipped (needs CUDA" in out
    assert out.count("\ntorch ") == 2 and out.count("\nonnxruntime ") == 2


@pytest.mark.slow  # exports a JointFormer and runs it on two backends
def test_bench_cli_runs_jointformer_on_torch_and_onnxruntime(tmp_path):
    report_path = tmp_path / "bench.json"
    argv = ["bench", "jointformer", "--backends", "torch,onnxruntime,tensorrt", "--resolution", "64x96", "--frames",
            "1", "--warmup", "1", "--top-k", "8", "--no-include-last", "--fill", "--json", str(report_path)]
    assert main(argv) == 0
    report = json.loads(report_path.read_text())
    assert report["model"] == "jointformer" and list(report["skipped"]) == ["tensorrt"]  # this CPU machine
    assert report["memory"].startswith("filling up") and [r["untimed"] for r in report["runs"]] == [1, 1]
    options = report["options"]  # JointFormer's own settings and defaults
    assert options.pop("max_mem_frames") == "memory_frames of each run"
    assert options == {"mem_every": 5, "include_last": False, "top_k": 8, "topk_range": "all_frames",
                       "topk_block": "all_blocks", "topk_clstoken": False, "max_internal_size": -1}
    runs = report["runs"]
    assert [(r["backend"], r["objects"], r["memory_frames"]) for r in runs] == [("torch", 1, 5), ("onnxruntime", 1, 5)]
    for r in runs:
        assert r["frames"] == 1 and r["latency_ms"]["median"] > 0
        assert r["graphs"]["query_encoder"]["calls_per_frame"] == 1
        assert r["graphs"]["joint_propagation"]["calls_per_frame"] == 1  # one bucket: the object entered on frame 0


def test_bench_streams_reports_batched_and_sequential_throughput(tmp_path, capsys, random_weights):
    report_path = tmp_path / "streams.json"
    argv = ["bench", "cutie-small", "--backends", "torch,onnxruntime", "--resolution", "48x64", "--streams", "1,3",
            "--frames", "2", "--warmup", "1", "--fill", "--weights", str(random_weights), "--json", str(report_path)]
    assert main(argv) == 0
    report = json.loads(report_path.read_text())
    assert report["streams"] == [1, 3]
    runs = report["runs"]
    assert [(r["backend"], r["streams"]) for r in runs] == [("torch", 1), ("torch", 3), ("onnxruntime", 1),
                                                            ("onnxruntime", 3)]
    for r in runs:
        assert r["frames"] == 2 and r["untimed"] == 1
        assert r["per_stream_fps"] == pytest.approx(r["batched_fps"] / r["streams"], rel=1e-3)
        assert r["speedup"] == pytest.approx(r["batched_fps"] / r["sequential_fps"], rel=1e-2)
        assert r["batched_fps"] == pytest.approx(2 * r["streams"] * 1000 / (2 * r["batched_ms"]["mean"]), rel=1e-2)
    out = capsys.readouterr().out
    assert "batched FPS" in out and "sequential FPS" in out and out.count("\ntorch ") == 2
    assert main(["bench", "cutie-small", "--streams", "2", "--plot", str(tmp_path / "p.png")]) == 2
    assert "--plot draws latencies" in capsys.readouterr().err


def test_timed_backend_records_every_call_and_returns_its_result():
    timed = measure.TimedBackend(ArithmeticBackend())
    x = torch.ones(2)
    assert torch.equal(timed.run("double", x=x)["y"], 2 * x)
    timed.run("double", x=x)
    assert timed.architecture == {"size": 1} and timed.stages is timed.inner.stages
    assert {name: len(times) for name, times in timed.calls.items()} == {"double": 2}
    assert all(t >= 0 for t in timed.calls["double"])


def test_unavailable_backends_say_why():
    assert BENCH_BACKENDS["torch"].unavailable_reason("cpu") is None
    assert BENCH_BACKENDS["torch-amp"].unavailable_reason("cpu") == "needs CUDA (--device cuda)"
    missing = BenchBackend("x", "torch", modules=("vosrt_no_such_module",))
    assert missing.unavailable_reason("cpu") == "vosrt_no_such_module not installed"
    assert BenchBackend("y", "no-such-runtime").unavailable_reason("cpu") == "not supported by this vosrt version"
    engines = BenchBackend("z", "torch", needs_engines=True)
    assert engines.unavailable_reason("cpu").startswith("needs --engine-dir")
    assert engines.unavailable_reason("cpu", engine_dir="engines") is None


def test_untimed_frames_fill_the_memory_unless_asked_to_time_the_filling():
    settings = BenchSettings("cutie-small", ["torch"], warmup=2, options={"mem_every": 3})
    assert [settings.untimed_frames(t) for t in (1, 2, 5)] == [2, 4, 13]  # frames 0, 3, 6, 9, 12 are memorised
    settings.fill = True
    assert settings.untimed_frames(5) == 2


def test_synthetic_clip_has_the_objects_and_size():
    images, mask = synthetic_clip((48, 80), objects=3, frames=4, seed=1)
    assert len(images) == 4 and images[0].shape == (48, 80, 3) and images[0].dtype.name == "uint8"
    assert set(mask.flat) == {0, 1, 2, 3}
    assert not (images[0] == images[3]).all()  # the discs move


def test_count_and_resolution_parsing():
    assert parse_counts("1..3,8") == [1, 2, 3, 8]
    assert parse_counts("3,1,3") == [1, 3]
    assert parse_resolution("480x854") == (480, 854)
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        parse_resolution("480")
    with pytest.raises(ValueError, match="range such as 1..5"):
        parse_counts("a..b")


@pytest.mark.parametrize("extra, message", [
    (["--backends", "torch,warp"], "unknown backend(s) warp"),
    (["--backends", "tensorrt"], "no backend can run here: tensorrt:"),
    (["--objects", "0"], "objects and memory frames must be >= 1"),
    (["--json", "/nonexistent/folder/b.json"], "folder not found for /nonexistent/folder/b.json"),
])
def test_bench_errors_are_one_line(extra, message, capsys):
    assert main(["bench", "cutie-small", "--resolution", "32x32", "--frames", "1", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vosrt bench: error: ") and message in err[0], err


def test_a_backend_that_fails_to_load_is_skipped_with_the_reason(monkeypatch):
    real_load = measure.load
    cache_before = os.environ.get("VOSRT_CACHE")

    def load(name, weights, *, backend, **options):
        if backend == "onnxruntime":
            raise RuntimeError("device='cuda' needs onnxruntime-gpu\nsecond line")
        return real_load(name, weights, backend=backend, **options)

    monkeypatch.setattr(measure, "load", load)
    report = measure.run_benchmark(BenchSettings("cutie-small", ["torch", "onnxruntime"], resolution=(32, 48),
                                                 memory_frames=[1], frames=1, warmup=1))
    assert report["skipped"] == {"onnxruntime": "cannot load: device='cuda' needs onnxruntime-gpu"}
    assert [r["backend"] for r in report["runs"]] == ["torch"]
    assert os.environ.get("VOSRT_CACHE") == cache_before  # the temporary cache of random weights is gone


def _report(backends=("torch", "onnxruntime"), objects=(1, 3), memory=(1, 2, 5)) -> dict:
    """A report as run_benchmark writes it, with made-up latencies."""
    runs = [{"backend": b, "objects": k, "memory_frames": t,
             "latency_ms": {"median": 10.0 * (i + 1) + k + t, "p10": 9.0 * (i + 1) + k + t,
                            "p90": 12.0 * (i + 1) + k + t, "mean": 10.5 * (i + 1) + k + t}}
            for i, b in enumerate(backends) for k in objects for t in memory]
    return {"runs": runs, "model": "cutie-small", "resolution": [480, 854], "weights": "random",
            "environment": {"device": "cpu"}}


def test_plot_tells_backends_apart_by_colour_and_line_style_in_every_panel():
    pytest.importorskip("matplotlib")
    from matplotlib import colors

    from vosrt.bench import report

    fig = report.figure(_report())
    panels = fig.axes
    assert [p.get_xlabel() for p in panels] == ["memory frames (max_mem_frames)", "objects"]
    styles = {}
    for panel in panels:
        for line in panel.get_lines():
            backend = line.get_label().split(",")[0]
            styles.setdefault(backend, set()).add((colors.to_hex(line.get_color()), line.get_linestyle()))
        assert len(panel.collections) == len(panel.get_lines())  # a p10-p90 band per line
    assert all(len(s) == 1 for s in styles.values()), styles  # one colour and style per backend, every panel
    (torch_style,), (ort_style,) = styles["torch"], styles["onnxruntime"]
    assert torch_style[0] != ort_style[0] and torch_style[1] != ort_style[1]
    assert list(panels[0].get_xticks()) == [1, 2, 5] and list(panels[1].get_xticks()) == [1, 3]  # measured only
    labels = [line.get_label() for panel in panels for line in panel.get_lines()]
    assert "torch, 1 object" in labels and "torch, 3 objects" in labels
    assert "onnxruntime, 1 memory frame" in labels and "onnxruntime, 5 memory frames" in labels


def test_plot_of_one_configuration_shows_p10_to_p90():
    pytest.importorskip("matplotlib")
    from vosrt.bench import report

    fig = report.figure(_report(objects=(1,), memory=(1,)))
    (panel,) = fig.axes
    assert panel.get_title() == "1 object, 1 memory frame (whisker: p10-p90)"
    (bars,) = [c for c in panel.containers if hasattr(c, "errorbar")]
    whiskers = bars.errorbar.lines[2][0].get_segments()
    assert [(float(s[0][1]), float(s[1][1])) for s in whiskers] == [(11.0, 14.0), (20.0, 26.0)]


def test_bench_says_what_it_will_run_and_for_how_long():
    settings = BenchSettings("cutie-small", ["torch", "onnxruntime"], objects=[1, 3], memory_frames=[5])
    line = measure.plan([BENCH_BACKENDS["torch"], BENCH_BACKENDS["onnxruntime"]], settings, 124)
    assert line == ("vosrt bench: 2 backend(s) x 2 object count(s) x 1 memory size(s), 124 frames in all; the "
                    "expected duration follows the first timed frame")
    assert measure.expected_duration(30, 100, 3.3).startswith(
        "vosrt bench: expected duration about 6 min in all (30 s so far, then 100 frames at 3.30 s, the first timed "
        "frame's pace;")
    assert "about 12 s in all" in measure.expected_duration(2, 10, 1.0)


@pytest.mark.parametrize("load, busy", [(1.5, False), (7.9, True)])
def test_a_busy_machine_is_named_below_the_table(load, busy):
    from vosrt.bench import report

    environment = {"device": "cpu", "torch_threads": 2, "cpu_count": 2, "load_average_1min_at_start": 0.2,
                   "load_average_1min_at_end": load}
    table = report.format_table(_report() | {"environment": environment, "memory": "full", "skipped": {}} | {
        "runs": [r | {"graphs": {}, "fps": 1.0, "speedup_vs_torch": None, "peak_host_mb": 1.0,
                      "outside_graphs_ms": 0.0} for r in _report()["runs"]]})
    note = f"note: the machine was busy (load average {load} on 2 CPUs)"
    assert (note in table) == busy
