"""GPU acceptance run: every GPU path of vosrt in one command, one JSON and one markdown report.

Made for one H100/H200 with torch + CUDA, Triton and ONNX Runtime (CPU build), without TensorRT or
onnxruntime-gpu, in under 8 minutes: the sections share ``--budget`` seconds (default 420), each
up to its own cap; a section (or a mode within one) that no longer fits is skipped with the
reason, a section that fails is reported with its error and the next one runs, and the report
is rewritten after every section, so a run cut short still leaves one.

Sections:
  environment  what ``vosrt doctor`` finds: GPU, driver, torch/CUDA, Triton (and whether it compiles
               for this GPU), ONNX Runtime, TensorRT; torch's TF32 switches
  gpu_tests    ``pytest -m "gpu or tensorrt"`` over tests/ with VOSRT_REQUIRE_GPU unset (the TensorRT
               tests skip without TensorRT); the full log goes to pytest.log
  kernels      Triton kernels against the torch paths: ``benchmarks/bench_topk_readout.py``'s
               ``run(budget_s) -> dict``
  cutie        cutie-small at 480x854 on DAVIS judo (ping-pong, 46 frames, objects joining on frames
               0/5/8/13, object 2 leaving after the 35th) in fp32, amp, fp16 and fp16 + CUDA graphs:
               median/p90 latency and FPS over the steady frames, peak GPU memory, agreement (mean
               IoU of the objects) with fp32 per frame, the dtypes the convolutions ran in, graphs
  jointformer  JointFormer the same way in fp32, amp and fp32 + CUDA graphs (26 frames)

Weights are the seed-1 random weights of the reference data (``gen_weights.py``), as in the
tests: timings do not depend on them, and agreement with fp32 is low with them (docs/parity.md), so it
is reported, not asserted.

Data (``--data``): a folder laid out like ``../shared``: ``reference/`` (gen_weights.py, the
cutie-small and jointformer layouts, golden-cutie-small-synthetic-seed1.npz and
golden-jointformer-synthetic-seed1.npz for the GPU tests) and ``data/davis-examples/``,
``data/synthetic-shapes/`` (about 14 MiB in all). On a lent GPU machine only the repository
travels, so first, once, in the repository root here (``.gpu-data`` is git-ignored)::

    mkdir -p .gpu-data/reference .gpu-data/data
    cp ../shared/reference/{gen_weights.py,cutie-small.layout.json,jointformer.layout.json} .gpu-data/reference/
    cp ../shared/reference/golden-{cutie-small,jointformer}-synthetic-seed1.npz .gpu-data/reference/
    cp -r ../shared/data/davis-examples ../shared/data/synthetic-shapes .gpu-data/data/

then the device tool's ``run`` with ``carry=[".gpu-data"]`` and ``timeout_s=540``, command::

    python3 -m pip install -q --no-deps --no-build-isolation -e . && PYTHONUNBUFFERED=1 python3 benchmarks/gpu_acceptance.py --data .gpu-data --out $OUT

Three files come back: ``gpu_acceptance.json``, ``gpu_acceptance.md`` and ``pytest.log``. A rerun
of some sections: ``--sections cutie,jointformer``.

``--smoke`` runs every section end to end on the CPU at tiny sizes in seconds (CI does, see
``.ci/run``): modes that need CUDA are reported as skipped. The exit status is 1 when a section
failed with an error (failing tests are in the report, not in the status).
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
REPORT = "gpu_acceptance"
CAPS = {"environment": 60, "gpu_tests": 180, "kernels": 60, "cutie": 150, "jointformer": 90}  # seconds


class Skip(Exception):
    """A section or mode that cannot run here; the message says why."""


@dataclass(frozen=True)
class Clip:
    """Frames of a DAVIS example clip: ``frames`` (indices, in play order), the objects whose
    mask is given at a position, the objects removed after a position, the steady positions
    timed, and the internal size (-1: full)."""

    name: str
    frames: list[int]
    joins: dict[int, int]
    leaves: dict[int, int]
    steady: range
    size: int = -1


def ping_pong(count: int) -> list[int]:
    """Frame indices 0..15, 14..1, 0..15, ... cut to ``count`` (the examples have 16 frames)."""
    cycle = list(range(16)) + list(range(14, 0, -1))
    return [cycle[i % len(cycle)] for i in range(count)]


CLIPS = {  # (GPU, smoke)
    "cutie-small": (Clip("judo", ping_pong(46), {0: 1, 5: 2, 8: 3, 13: 4}, {34: 2}, range(16, 34)),
                    Clip("judo", ping_pong(8), {0: 1, 5: 2}, {}, range(2, 8), size=64)),
    "jointformer": (Clip("judo", ping_pong(26), {0: 1, 5: 2}, {}, range(8, 26)),
                    Clip("judo", ping_pong(4), {0: 1}, {}, range(1, 4), size=64)),
}
MODES = {
    "cutie-small": {"fp32": {}, "amp": {"amp": True}, "fp16": {"fp16": True},
                    "fp16+cuda_graph": {"fp16": True, "cuda_graph": True}},
    "jointformer": {"fp32": {}, "amp": {"amp": True}, "fp32+cuda_graph": {"cuda_graph": True}},
}


@dataclass
class Context:
    """What every section reads: the data folder, the report folder, the mode and the device."""

    data: Path
    out: Path
    smoke: bool
    device: str
    work: Path  # weights and pytest's junit file: not in ``out``
    weights: dict[str, Path] = field(default_factory=dict)

    def seeded_weights(self, model: str) -> Path:
        """The reference data's seed-1 weights for ``model``, generated once."""
        if model not in self.weights:
            path = self.work / f"{model}-seed1.pth"
            generate = runpy.run_path(str(self.data / "reference" / "gen_weights.py"))["main"]
            generate(str(self.data / "reference" / f"{model}.layout.json"), str(path), 1)
            self.weights[model] = path
        return self.weights[model]


# -- sections ---------------------------------------------------------------------------------

def environment(ctx: Context, budget: float) -> dict:
    from vosrt.cli import doctor

    facts = doctor.collect()
    report = doctor.as_dict(facts)
    report["torch_tf32"] = {"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                            "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    report["summary"] = (f"{facts.gpu or 'no GPU'}; driver {facts.driver}; torch {facts.torch} "
                         f"(CUDA {facts.torch_cuda}); Triton {facts.triton} (compiles for this GPU: "
                         f"{facts.triton_compiles}); ONNX Runtime {facts.onnxruntime}; TensorRT {facts.tensorrt}")
    return report


def gpu_tests(ctx: Context, budget: float) -> dict:
    junit = ctx.work / "junit.xml"
    paths = ["tests/gpu"] if ctx.smoke else ["tests"]
    command = [sys.executable, "-m", "pytest", "-m", "gpu or tensorrt", *paths, "-q", "-rfEs", "-p", "no:cacheprovider",
               "--continue-on-collection-errors", f"--junitxml={junit}"]
    env = {key: value for key, value in os.environ.items() if key != "VOSRT_REQUIRE_GPU"}
    env["VOSRT_SHARED"] = str(ctx.data.resolve())
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=budget)
        output, status = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as expired:
        output, status = _text(expired.stdout) + _text(expired.stderr), f"timed out after {budget:.0f} s"
    (ctx.out / "pytest.log").write_text(output)
    report = {"command": " ".join(command[1:]), "exit_status": status,
              "seconds": round(time.perf_counter() - started, 1), "tail": output.strip().splitlines()[-3:]}
    return report | (_junit_summary(junit) if junit.is_file() else {})


def _text(stream) -> str:
    return stream.decode(errors="replace") if isinstance(stream, bytes) else stream or ""


def _junit_summary(path: Path) -> dict:
    """Counts per outcome, the tests that did not pass (with the first line of why) and the slowest."""
    cases = []
    for case in ElementTree.parse(path).iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        detail = next((child.get("message") or "" for child in case if child.tag == outcome), "")
        cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time") or 0), "message": detail.strip().splitlines()[0][:300]
                      if detail.strip() else ""})
    counts = {outcome: sum(c["outcome"] == outcome for c in cases) for outcome in ("passed", "failure", "error",
                                                                                    "skipped")}
    return {"counts": counts, "not_passed": [c for c in cases if c["outcome"] != "passed"],
            "slowest": sorted(cases, key=lambda c: -c["seconds"])[:5]}


def kernels(ctx: Context, budget: float) -> dict:
    path = ROOT / "benchmarks" / "bench_topk_readout.py"
    try:
        spec = importlib.util.spec_from_file_location("bench_topk_readout", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001  e.g. Triton missing
        raise Skip(f"benchmarks/bench_topk_readout.py does not import: {type(err).__name__}: {err}") from None
    if ctx.device != "cuda":
        raise Skip("the Triton kernels against the torch paths need a CUDA GPU")
    return module.run(budget)


def cutie(ctx: Context, budget: float) -> dict:
    return _model_section(ctx, "cutie-small", budget)


def jointformer(ctx: Context, budget: float) -> dict:
    return _model_section(ctx, "jointformer", budget)


SECTIONS: dict[str, Callable[[Context, float], dict]] = {
    "environment": environment, "gpu_tests": gpu_tests, "kernels": kernels, "cutie": cutie,
    "jointformer": jointformer}


# -- a model in every torch mode --------------------------------------------------------------

def _model_section(ctx: Context, model: str, budget: float) -> dict:
    if ctx.device != "cuda" and not ctx.smoke:
        raise Skip("no CUDA GPU visible to torch (on a CPU, --smoke runs the code paths at tiny sizes)")
    clip = CLIPS[model][ctx.smoke]
    deadline = time.perf_counter() + budget
    weights = ctx.seeded_weights(model)
    frames = _load_frames(ctx, clip)
    modes, reference, slowest = {}, None, 0.0
    for mode, options in MODES[model].items():
        left = deadline - time.perf_counter()
        if options and ctx.device != "cuda":
            modes[mode] = {"skipped": "needs CUDA"}
            continue
        if left < 1.5 * slowest:
            modes[mode] = {"skipped": f"budget: {left:.0f} s left, a mode took up to {slowest:.0f} s"}
            continue
        started = time.perf_counter()
        modes[mode], labels = _run_clip(ctx, model, weights, options, clip, frames)
        reference = reference if reference is not None else labels
        modes[mode] |= _agreement(labels, reference)
        slowest = max(slowest, time.perf_counter() - started)
    return {"clip": clip.name, "frame_size": list(frames[0][0].shape[:2]), "max_internal_size": clip.size,
            "frames": len(clip.frames),
            "objects_join_at": clip.joins, "objects_leave_after": clip.leaves,
            "steady_frames": [clip.steady.start, clip.steady.stop - 1], "modes": modes}


def _load_frames(ctx: Context, clip: Clip) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(image, label map of the joining object or None) per position of ``clip``."""
    from vosrt import io

    folder = ctx.data / "data" / "davis-examples"
    frames = []
    for position, index in enumerate(clip.frames):
        image = io.read_rgb(folder / "images" / clip.name / f"{index:05d}.jpg")
        mask = None
        if position in clip.joins:
            labels, _ = io.read_label_map(folder / "masks" / clip.name / f"{index:05d}.png")
            mask = np.where(labels == clip.joins[position], labels, 0)
        frames.append((image, mask))
    return frames


def _run_clip(ctx: Context, model: str, weights: Path, options: dict, clip: Clip,
              frames: list[tuple[np.ndarray, np.ndarray | None]]) -> tuple[dict, list[np.ndarray]]:
    import vosrt

    cuda = ctx.device == "cuda"
    if cuda:
        gc.collect()  # the previous mode's session and graphs
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    session = vosrt.load(model, weights=str(weights), device=ctx.device, max_internal_size=clip.size, **options)
    counts, hooks = _count_layer_dtypes(session.backend)
    latencies, labels = [], []
    for position, (image, mask) in enumerate(frames):
        if position == 3:
            for hook in hooks:
                hook.remove()
        _synchronize(cuda)
        started = time.perf_counter()
        prob = session.step(image, mask)
        _synchronize(cuda)
        latencies.append(1000 * (time.perf_counter() - started))
        labels.append(session.to_mask(prob))
        if position in clip.leaves:
            session.remove_objects([clip.leaves[position]])
    steady = [latencies[i] for i in clip.steady]
    result = {"median_ms": statistics.median(steady), "p90_ms": float(np.percentile(steady, 90)),
              "fps": 1000 / statistics.fmean(steady), "first_frame_ms": latencies[0], "max_ms": max(latencies),
              "layer_output_dtypes_first_3_frames": counts}
    if cuda:
        result |= {"peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
                   "reserved_mib": torch.cuda.memory_reserved() / 2**20}
    captured = getattr(session.backend, "captured", None)
    if captured is not None:
        result |= {"cuda_graphs": len(captured), "eager_fallbacks": sum(c is None for c in captured.values())}
    return result, labels


def _synchronize(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def _count_layer_dtypes(backend) -> tuple[dict, list]:
    """Hooks counting the output dtypes of the network's Conv2d and Linear layers (torch backends;
    under CUDA graphs they see the warm-up and capture runs)."""
    network = getattr(backend, "network", None) or getattr(getattr(backend, "inner", None), "network", None)
    counts: dict[str, dict[str, int]] = {}
    if network is None:
        return counts, []

    def count(module, inputs, output):
        per_type = counts.setdefault(type(module).__name__, {})
        dtype = str(output.dtype).removeprefix("torch.")
        per_type[dtype] = per_type.get(dtype, 0) + 1

    layers = [m for m in network.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    return counts, [layer.register_forward_hook(count) for layer in layers]


def _agreement(labels: list[np.ndarray], reference: list[np.ndarray]) -> dict:
    """Per-frame mean IoU of the objects (1.0 where neither map has one) against ``reference`` (fp32)."""
    ious = []
    for a, b in zip(labels, reference):
        objects = np.setdiff1d(np.union1d(np.unique(a), np.unique(b)), [0])
        ious.append(float(np.mean([((a == o) & (b == o)).sum() / ((a == o) | (b == o)).sum() for o in objects]))
                    if len(objects) else 1.0)
    return {"miou_vs_fp32_min": min(ious), "miou_vs_fp32_mean": float(np.mean(ious))}


# -- the run and its report -------------------------------------------------------------------

class AcceptanceRun:
    """Runs the sections in order within the budget, rewriting the report after each."""

    def __init__(self, ctx: Context, budget: float, sections: list[str], argv: list[str]):
        self.ctx, self.budget, self.sections = ctx, budget, sections
        self.started = time.perf_counter()
        self.report = {"command": " ".join(["benchmarks/gpu_acceptance.py", *argv]),
                       "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "smoke": ctx.smoke,
                       "device": ctx.device, "budget_s": budget, "sections": {}}

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.started)

    def run(self) -> dict:
        for name in self.sections:
            self.report["sections"][name] = self._section(name)
            self.report["total_s"] = round(time.perf_counter() - self.started, 1)
            self.write()
        return self.report

    def _section(self, name: str) -> dict:
        budget = min(CAPS[name], self.left())
        print(f"[{time.perf_counter() - self.started:6.1f} s] {name} (budget {budget:.0f} s)", flush=True)
        started = time.perf_counter()
        try:
            if budget < 5:
                raise Skip(f"budget: {self.left():.0f} s of {self.budget:.0f} s left")
            entry = {"status": "ok", "result": SECTIONS[name](self.ctx, budget)}
        except Skip as skip:
            entry = {"status": "skipped", "reason": str(skip)}
        except Exception as err:  # noqa: BLE001  one section failing must not stop the others
            entry = {"status": "error", "reason": f"{type(err).__name__}: {str(err).strip()[:500]}",
                     "traceback": traceback.format_exc()[-4000:]}
        entry["seconds"] = round(time.perf_counter() - started, 1)
        print(f"           {name}: {entry['status']} {entry.get('reason', '')}", flush=True)
        return entry

    def write(self) -> None:
        (self.ctx.out / f"{REPORT}.json").write_text(json.dumps(self.report, indent=2, default=str) + "\n")
        (self.ctx.out / f"{REPORT}.md").write_text(markdown(self.report))


def markdown(report: dict) -> str:
    sections = report["sections"]
    lines = ["# vosrt GPU acceptance run", "",
             f"{report['started']}, device {report['device']}{' (smoke run)' if report['smoke'] else ''}, "
             f"budget {report['budget_s']:.0f} s, took {report.get('total_s', 0):.0f} s. "
             f"Command: `{report['command']}`", "",
             "| section | status | seconds | note |", "|---|---|---|---|"]
    lines += [f"| {name} | {entry['status']} | {entry['seconds']} | {entry.get('reason', '')} |"
              for name, entry in sections.items()]
    for name, entry in sections.items():
        if entry["status"] == "ok":
            lines += ["", f"## {name}", "", *_render(name, entry["result"])]
    return "\n".join(lines) + "\n"


def _render(name: str, result) -> list[str]:
    """A section's table, or its JSON when the result is not of the expected shape."""
    try:
        return RENDER.get(name, _render_json)(result)
    except (KeyError, TypeError, ValueError, AttributeError):
        return _render_json(result)


def _render_environment(result: dict) -> list[str]:
    return [result["summary"], "", f"TF32: {result['torch_tf32']}", "",
            *[f"- {'yes' if ok else 'no'}: {what}" for what, ok in result["can_run"].items()]]


def _render_tests(result: dict) -> list[str]:
    lines = [f"`{result['command']}`: exit status {result['exit_status']}, {result['seconds']} s, "
             f"{result.get('counts', 'no junit report')}", ""]
    lines += [f"- {case['outcome']}: `{case['test']}` {case['message']}" for case in result.get("not_passed", [])]
    return lines + ["", "Last lines: " + " / ".join(result["tail"])]


def _render_modes(result: dict) -> list[str]:
    columns = ["median_ms", "p90_ms", "fps", "first_frame_ms", "peak_allocated_mib", "miou_vs_fp32_min",
               "miou_vs_fp32_mean", "cuda_graphs", "eager_fallbacks"]
    lines = [f"{result['clip']} {result['frame_size'][0]}x{result['frame_size'][1]} (max_internal_size "
             f"{result['max_internal_size']}), {result['frames']} frames (objects join at "
             f"{result['objects_join_at']}, leave after {result['objects_leave_after']}), steady frames "
             f"{result['steady_frames']}", "", "| mode | " + " | ".join(columns) + " | layer output dtypes |",
             "|---" * (len(columns) + 2) + "|"]
    for mode, row in result["modes"].items():
        if "skipped" in row:
            lines.append(f"| {mode} | skipped: {row['skipped']} |")
            continue
        cells = [f"{row[c]:.3g}" if isinstance(row.get(c), float) else str(row.get(c, "-")) for c in columns]
        lines.append(f"| {mode} | " + " | ".join(cells) + f" | {row['layer_output_dtypes_first_3_frames']} |")
    return lines


def _render_json(result: dict) -> list[str]:
    return ["```json", json.dumps(result, indent=2, default=str)[:20000], "```"]


RENDER = {"environment": _render_environment, "gpu_tests": _render_tests, "cutie": _render_modes,
          "jointformer": _render_modes}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared",
                        help="reference data laid out like ../shared (default: ../shared)")
    parser.add_argument("--out", type=Path, default=Path("gpu-acceptance"), help="folder for the reports")
    parser.add_argument("--budget", type=float, help="seconds for all sections (default 420; smoke 120)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"a subset of {','.join(SECTIONS)}")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: the code paths in seconds")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.sections.split(",")) - set(SECTIONS))
    if unknown or not (args.data / "reference" / "gen_weights.py").is_file():
        parser.error(f"unknown section(s) {unknown}" if unknown else
                     f"{args.data} has no reference/gen_weights.py: pass --data (see this script's docstring)")
    if importlib.util.find_spec("vosrt") is None:
        parser.error("vosrt is not installed here: pip install --no-deps --no-build-isolation -e . first")
    args.out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    with tempfile.TemporaryDirectory(prefix="vosrt-acceptance-") as work:
        ctx = Context(args.data, args.out, args.smoke, device, Path(work))
        run = AcceptanceRun(ctx, args.budget or (120 if args.smoke else 420), args.sections.split(","), argv)
        report = run.run()
    errors = [name for name, entry in report["sections"].items() if entry["status"] == "error"]
    print(f"wrote {args.out / REPORT}.json and .md in {report['total_s']:.0f} s"
          + (f"; sections with errors: {', '.join(errors)}" if errors else ""))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
