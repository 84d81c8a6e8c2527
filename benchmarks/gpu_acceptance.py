"""GPU acceptance run: every GPU path of vosrt in one command, one JSON and one markdown report.

Made for one H100/H200 with torch + CUDA, Triton and ONNX Runtime, without TensorRT, in under
6 minutes with the install. Each section runs in a process of its own (a CUDA fault is sticky
only within its process) under a timeout of its own; the sections' timeouts add up to less than
the run's ``--budget`` (``TOTAL_S``, 280 s), so the run ends before the command's limit whatever
a section does. Before a section starts the report marks it ``running``, and it is rewritten
after each, so a run cut short still says which section it was in. A section ends as ``ok``,
``skipped`` (with why), ``error`` (its exception), ``timeout`` (killed at its limit: hung or too
slow), ``killed`` (its process died of a signal: a segfault, the OOM killer) or ``crashed`` (its
process exited without a result: ``os._exit``, a fatal error); what a section had measured before
it was stopped is kept (``partial``), and its log's last lines are in the report.

Sections (timeout in seconds):
  environment  (20)  what ``vosrt doctor`` finds: GPU, driver, torch/CUDA, Triton (and whether it
                     compiles for this GPU), ONNX Runtime (its build and providers), TensorRT;
                     torch's TF32 switches
  gpu_tests    (75)  ``pytest -m "gpu or tensorrt" tests/gpu`` (the TensorRT tests skip without
                     TensorRT), log in pytest-gpu.log
  kernel_tests (40)  ``pytest tests/kernels``: the Triton kernels compiled for this GPU against their
                     torch references, with the tolerances of the dot precision each path runs
                     (tests/kernels/kernel_testing.py), log in pytest-kernels.log
  kernels      (30)  Triton kernels against the torch paths: ``benchmarks/bench_topk_readout.py``'s
                     ``run(budget_s) -> dict``
  cutie        (60)  cutie-small at 480x854 on DAVIS judo (ping-pong, 46 frames, objects joining on
                     frames 0/5/8/13, object 2 leaving after the 35th) in fp32, amp, fp16 and fp16 +
                     CUDA graphs: median/p90 latency and FPS over the steady frames, peak GPU memory,
                     agreement (mean IoU of the objects) with fp32 per frame, the dtypes the
                     convolutions ran in, graphs
  jointformer  (35)  JointFormer the same way in fp32, amp and fp32 + CUDA graphs (26 frames)

The test sections select their files explicitly (``GPU_TEST_PATHS``, ``KERNEL_TEST_PATHS``), so a
test module that needs a package the machine lacks elsewhere in tests/ is not collected; a
collection error in a selected file is reported apart from the tests' own errors.

Weights are the seed-1 random weights of the reference data (``gen_weights.py``), as in the
tests: timings do not depend on them, and agreement with fp32 is low with them (docs/parity.md), so it
is reported, not asserted.

Data (``--data``): a folder laid out like ``../shared`` with ``DATA_PATHS`` (reference/ and the
three clips the sections and the selected tests read, about 34 MiB; tests/unit/test_gpu_acceptance.py
checks that every shared path those tests name is among them). On a lent GPU machine only the
repository travels, so first, once, in the repository root here (``.gpu-data`` is git-ignored)::

    python benchmarks/gpu_acceptance.py --copy-data .gpu-data

then the device tool's ``run`` with ``carry=[".gpu-data"]`` and ``timeout_s=330``, command::

    python3 -m pip install --no-deps --no-build-isolation -e . >$OUT/install.log 2>&1; echo "exit status $?" >>$OUT/install.log; PYTHONUNBUFFERED=1 python3 benchmarks/gpu_acceptance.py --data .gpu-data --out $OUT --install-log $OUT/install.log

The install is not joined to the run with ``&&``: a failed install still gives a report, which
holds the install log's last lines. 330 s: the install (~20 s), the sections' 280 s and a margin;
with the machine's start-up (1-2 min) one run takes at most 7.5 minutes of device time, so a
second run fits the 15 minutes too. Six files come back: ``gpu_acceptance.json``,
``gpu_acceptance.md``, ``sections.log`` (every section's output), ``pytest-gpu.log``,
``pytest-kernels.log`` and ``install.log``. A rerun of some sections: ``--sections cutie,jointformer``.

``--smoke`` runs every section end to end on the CPU at tiny sizes in seconds (CI does, see
``.ci/run``): modes that need CUDA are reported as skipped. The exit status is 1 when a section
ended as error, timeout, killed or crashed (failing tests are in the report, not in the status).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import runpy
import shutil
import signal
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

ROOT = Path(__file__).resolve().parents[1]
REPORT = "gpu_acceptance"
TOTAL_S = 280  # the sections' timeouts (Section.timeout_s) add up to less
SMOKE_SLOWDOWN = 3  # --smoke: every timeout and the total times this (a shared CPU, weights made on it)
MIN_SECTION_S = 2  # a section given less is skipped
DATA_PATHS = ("reference", "data/davis-examples", "data/synthetic-shapes", "data/synthetic-long")
GPU_TEST_PATHS = ("tests/gpu",)
KERNEL_TEST_PATHS = ("tests/kernels",)
FAILED = {"error", "timeout", "killed", "crashed"}  # a section ending so makes the exit status 1


class Skip(Exception):
    """A section or mode that cannot run here; the message says why."""


@dataclass(frozen=True)
class Section:
    """A section: ``target`` is a function of this script (its name) or ``"path.py:function"``;
    it takes (:class:`Context`, seconds it should finish within) and returns a JSON-able dict."""

    name: str
    target: str
    timeout_s: float


SECTIONS = [Section("environment", "environment", 20), Section("gpu_tests", "gpu_tests", 75),
            Section("kernel_tests", "kernel_tests", 40), Section("kernels", "kernels", 30),
            Section("cutie", "cutie", 60), Section("jointformer", "jointformer", 35)]


@dataclass
class Context:
    """What every section reads: the data folder, the report folder, the mode; ``work`` holds the
    weights, pytest's junit files and the sections' results (not in ``out``); ``result`` is the
    file the section's process writes its result to."""

    data: Path
    out: Path
    smoke: bool
    work: Path
    result: Path | None = None
    weights: dict[str, Path] = field(default_factory=dict)

    @property
    def device(self) -> str:
        import torch

        return "cuda" if torch.cuda.is_available() and not self.smoke else "cpu"

    def save_partial(self, result: dict) -> None:
        """Keep what the section has so far: the report shows it if the section is stopped."""
        if self.result is not None:
            _write_json(self.result, {"status": "partial", "result": result})

    def seeded_weights(self, model: str) -> Path:
        """The reference data's seed-1 weights for ``model``, generated once per process."""
        if model not in self.weights:
            path = self.work / f"{model}-seed1.pth"
            generate = runpy.run_path(str(self.data / "reference" / "gen_weights.py"))["main"]
            generate(str(self.data / "reference" / f"{model}.layout.json"), str(path), 1)
            self.weights[model] = path
        return self.weights[model]


def copy_data(shared: Path, destination: Path) -> list[Path]:
    """Copy ``DATA_PATHS`` of ``shared`` (laid out like ../shared) into ``destination``; returns the copies."""
    copies = []
    for relative in DATA_PATHS:
        source, target = shared / relative, destination / relative
        if not source.is_dir():
            raise FileNotFoundError(f"{source} is missing: --data must be laid out like ../shared")
        shutil.rmtree(target, ignore_errors=True)
        copies.append(Path(shutil.copytree(source, target)))
    return copies


# -- sections ---------------------------------------------------------------------------------

def environment(ctx: Context, budget: float) -> dict:
    import torch

    from vosrt.cli import doctor

    facts = doctor.collect()
    report = doctor.as_dict(facts)
    report["torch_tf32"] = {"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                            "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    report["summary"] = (f"{facts.gpu or 'no GPU'}; driver {facts.driver}; torch {facts.torch} "
                         f"(CUDA {facts.torch_cuda}); Triton {facts.triton} (compiles for this GPU: "
                         f"{facts.triton_compiles}); ONNX Runtime {facts.onnxruntime} ({facts.ort_build}; "
                         f"{', '.join(facts.ort_providers)}); TensorRT {facts.tensorrt}")
    return report


def gpu_tests(ctx: Context, budget: float) -> dict:
    return run_pytest(ctx, "gpu", [*GPU_TEST_PATHS, "-m", "gpu or tensorrt"], budget)


def kernel_tests(ctx: Context, budget: float) -> dict:
    # On the CPU the kernels run in Triton's interpreter: the smoke run takes the quickest file.
    paths = ["tests/kernels/test_select.py", "-k", "equal_scores"] if ctx.smoke else list(KERNEL_TEST_PATHS)
    return run_pytest(ctx, "kernels", paths, budget)


def pytest_command(name: str, selection: list[str], junit: Path) -> list[str]:
    """pytest over ``selection`` (paths and options), one line per test (a log cut short still says how far it got)."""
    return [sys.executable, "-m", "pytest", *selection, "-v", "-rfEs", "-p", "no:cacheprovider", "--durations=5",
            "--continue-on-collection-errors", f"--junitxml={junit}", "-o", f"junit_suite_name={name}"]


def run_pytest(ctx: Context, name: str, selection: list[str], budget: float) -> dict:
    """Run :func:`pytest_command` with its output in ``out/pytest-<name>.log``, stopped 5 s before ``budget``."""
    junit, log_path = ctx.work / f"junit-{name}.xml", ctx.out / f"pytest-{name}.log"
    command = pytest_command(name, selection, junit)
    env = {key: value for key, value in os.environ.items() if key != "VOSRT_REQUIRE_GPU"}
    env["VOSRT_SHARED"] = str(ctx.data.resolve())
    started = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            status = process.wait(timeout=max(budget - 5, 1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            status = f"stopped after {budget - 5:.0f} s"
    lines = log_path.read_text(errors="replace").strip().splitlines()
    report = {"command": " ".join(["pytest", *command[3:]]), "exit_status": status,
              "seconds": round(time.perf_counter() - started, 1), "log": log_path.name, "tail": lines[-3:]}
    if not junit.is_file():  # stopped: the outcomes pytest printed so far
        return report | {"outcomes_so_far": _outcomes_in_log(lines)}
    return report | junit_summary(junit)


def _outcomes_in_log(lines: list[str]) -> dict[str, int]:
    words = [match.group(1) for line in lines if (match := re.search(r" (PASSED|FAILED|ERROR|SKIPPED)\b", line))]
    return {word.lower(): words.count(word) for word in sorted(set(words))}


def junit_summary(path: Path) -> dict:
    """Counts per outcome, collection errors apart (a file that failed to import), the tests that did
    not pass (with the first line of why) and the slowest."""
    cases = []
    for case in ElementTree.parse(path).iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        detail = next((child.get("message") or "" for child in case if child.tag == outcome), "")
        if outcome == "error" and not case.get("classname") and detail == "collection failure":
            outcome = "collection_error"  # pytest's junit names the file in ``name``, ``classname`` empty
            text = next(child.text or "" for child in case if child.tag == "error")
            detail = next((line[2:] for line in reversed(text.splitlines()) if line.startswith("E ")), detail)
        test = f"{case.get('classname')}::{case.get('name')}" if case.get("classname") else case.get("name")
        cases.append({"test": test, "outcome": outcome, "seconds": float(case.get("time") or 0),
                      "message": detail.strip().splitlines()[0][:300] if detail.strip() else ""})
    outcomes = ("passed", "failure", "error", "skipped", "collection_error")
    counts = {outcome: sum(c["outcome"] == outcome for c in cases) for outcome in outcomes}
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
    return module.run(0.7 * budget)  # it checks its budget between cases: a case may run over


def cutie(ctx: Context, budget: float) -> dict:
    return _model_section(ctx, "cutie-small", budget)


def jointformer(ctx: Context, budget: float) -> dict:
    return _model_section(ctx, "jointformer", budget)


# -- a model in every torch mode --------------------------------------------------------------

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


def _model_section(ctx: Context, model: str, budget: float) -> dict:
    device = ctx.device
    if device != "cuda" and not ctx.smoke:
        raise Skip("no CUDA GPU visible to torch (on a CPU, --smoke runs the code paths at tiny sizes)")
    clip = CLIPS[model][ctx.smoke]
    deadline = time.perf_counter() + budget
    weights = ctx.seeded_weights(model)
    frames = _load_frames(ctx, clip)
    print(f"{model}: weights and {len(frames)} frames ready", flush=True)
    modes, reference, slowest = {}, None, 0.0
    result = {"clip": clip.name, "frame_size": list(frames[0][0].shape[:2]), "max_internal_size": clip.size,
              "frames": len(clip.frames), "objects_join_at": clip.joins, "objects_leave_after": clip.leaves,
              "steady_frames": [clip.steady.start, clip.steady.stop - 1], "modes": modes}
    for mode, options in MODES[model].items():
        left = deadline - time.perf_counter()
        if options and device != "cuda":
            modes[mode] = {"skipped": "needs CUDA"}
            continue
        if left < 1.5 * slowest:
            modes[mode] = {"skipped": f"budget: {left:.0f} s left, a mode took up to {slowest:.0f} s"}
            continue
        started = time.perf_counter()
        modes[mode], labels = _run_clip(device, model, weights, options, clip, frames)
        reference = reference if reference is not None else labels
        modes[mode] |= _agreement(labels, reference)
        took = time.perf_counter() - started
        slowest = max(slowest, took)
        print(f"{model} {mode}: {took:.1f} s, median {modes[mode]['median_ms']:.1f} ms", flush=True)
        ctx.save_partial(result)
    return result


def _load_frames(ctx: Context, clip: Clip) -> list[tuple]:
    """(image, label map of the joining object or None) per position of ``clip``."""
    import numpy as np

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


def _run_clip(device: str, model: str, weights: Path, options: dict, clip: Clip, frames: list) -> tuple[dict, list]:
    """One mode over ``clip``: timings, memory, layer dtypes and graphs; and the label map of every frame."""
    import numpy as np
    import torch

    import vosrt

    cuda = device == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    session = vosrt.load(model, weights=str(weights), device=device, max_internal_size=clip.size, **options)
    counts, hooks = _count_layer_dtypes(session.backend)
    latencies, labels = [], []
    for position, (image, mask) in enumerate(frames):
        if position == 3:
            for hook in hooks:
                hook.remove()
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        prob = session.step(image, mask)
        if cuda:
            torch.cuda.synchronize()
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


def _count_layer_dtypes(backend) -> tuple[dict, list]:
    """Hooks counting the output dtypes of the network's Conv2d and Linear layers (torch backends;
    under CUDA graphs they see the warm-up and capture runs)."""
    import torch

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


def _agreement(labels: list, reference: list) -> dict:
    """Per-frame mean IoU of the objects (1.0 where neither map has one) against ``reference`` (fp32)."""
    import numpy as np

    ious = []
    for a, b in zip(labels, reference):
        objects = np.setdiff1d(np.union1d(np.unique(a), np.unique(b)), [0])
        ious.append(float(np.mean([((a == o) & (b == o)).sum() / ((a == o) | (b == o)).sum() for o in objects]))
                    if len(objects) else 1.0)
    return {"miou_vs_fp32_min": min(ious), "miou_vs_fp32_mean": float(np.mean(ious))}


# -- a section in a process of its own ---------------------------------------------------------

def _write_json(path: Path, value: dict) -> None:
    """Write ``value`` whole or not at all (a process killed while writing leaves the last version)."""
    part = path.with_suffix(".part")
    part.write_text(json.dumps(value, indent=2, default=str) + "\n")
    os.replace(part, path)


def _section_function(target: str) -> Callable[[Context, float], dict]:
    if ":" not in target:
        return globals()[target]
    path, name = target.rsplit(":", 1)
    return vars(_load_file(path))[name]


def _load_file(path: str):
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def section_process(spec: dict) -> int:
    """The body of a section's process (``--section SPEC``): run it, write its result to ``spec["result"]``."""
    ctx = Context(Path(spec["data"]), Path(spec["out"]), spec["smoke"], Path(spec["work"]), Path(spec["result"]))
    try:
        entry = {"status": "ok", "result": _section_function(spec["target"])(ctx, spec["budget"])}
    except Skip as skip:
        entry = {"status": "skipped", "reason": str(skip)}
    except BaseException as err:  # noqa: BLE001  whatever a section raises is its result
        entry = {"status": "error", "reason": f"{type(err).__name__}: {str(err).strip()[:500]}",
                 "traceback": traceback.format_exc()[-4000:]}
    _write_json(ctx.result, entry)
    return 1 if entry["status"] == "error" else 0


class AcceptanceRun:
    """Runs ``sections`` one after another, each in a process of its own, within ``budget`` seconds
    (each under its own timeout), rewriting the report in ``ctx.out`` before and after each."""

    def __init__(self, ctx: Context, sections: list[Section], budget: float, command: str,
                 install_log: Path | None = None):
        self.ctx, self.sections, self.budget = ctx, sections, budget
        self.started = time.perf_counter()
        self.report = {"command": command, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "smoke": ctx.smoke, "budget_s": budget,
                       "install": install_report(install_log) if install_log else None,
                       "sections": {s.name: {"status": "pending", "timeout_s": s.timeout_s} for s in sections}}

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.started)

    def run(self) -> dict:
        self.write()
        with open(self.ctx.out / "sections.log", "a") as log:
            for section in self.sections:
                self.report["sections"][section.name] = self._section(section, log)
                self.report["total_s"] = round(time.perf_counter() - self.started, 1)
                self.write()
        return self.report

    def _section(self, section: Section, log) -> dict:
        timeout = min(section.timeout_s * (SMOKE_SLOWDOWN if self.ctx.smoke else 1), self.left() - 1)
        print(f"[{time.perf_counter() - self.started:6.1f} s] {section.name} (timeout {timeout:.0f} s)", flush=True)
        if timeout < MIN_SECTION_S:
            entry = {"status": "skipped", "reason": f"budget: {self.left():.0f} s of {self.budget:.0f} s left",
                     "seconds": 0.0}
        else:
            self.report["sections"][section.name] = {"status": "running", "timeout_s": round(timeout, 1),
                                                     "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            self.write()
            entry = self._in_own_process(section, timeout, log)
        print(f"           {section.name}: {entry['status']} {entry.get('reason', '')}", flush=True)
        return entry

    def _in_own_process(self, section: Section, timeout: float, log) -> dict:
        result = self.ctx.work / f"{section.name}.json"
        result.unlink(missing_ok=True)
        spec = {"target": section.target, "budget": 0.85 * timeout, "data": str(self.ctx.data), "out": str(self.ctx.out),
                "work": str(self.ctx.work), "smoke": self.ctx.smoke, "result": str(result)}
        log.write(f"\n===== {section.name} (timeout {timeout:.0f} s) =====\n")
        log.flush()
        start_of_log = log.tell()
        env = os.environ | {"PYTHONUNBUFFERED": "1", "VOSRT_SHARED": str(self.ctx.data.resolve())}
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, __file__, "--section", json.dumps(spec)], cwd=ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            status = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            status = None
        _kill_group(process)  # also what the section started (pytest, compilers), finished or not
        entry = outcome(status, timeout, json.loads(result.read_text()) if result.is_file() else None)
        entry["seconds"] = round(time.perf_counter() - started, 1)
        if entry["status"] != "ok":
            entry["log_tail"] = _tail(self.ctx.out / "sections.log", start_of_log)
        return entry

    def write(self) -> None:
        _write_json(self.ctx.out / f"{REPORT}.json", self.report)
        (self.ctx.out / f"{REPORT}.md").write_text(markdown(self.report))


def outcome(status: int | None, timeout: float, written: dict | None) -> dict:
    """A section's entry from its process's exit status (None: still running at ``timeout``) and what it wrote."""
    partial = {"partial": written["result"]} if written and written["status"] == "partial" else {}
    if status is None:
        return {"status": "timeout", "reason": f"still running after {timeout:.0f} s (hung or too slow): killed",
                **partial}
    if status < 0:
        return {"status": "killed", "reason": f"its process died of {signal.Signals(-status).name}", **partial}
    if not written or partial:
        return {"status": "crashed", "reason": f"its process exited with status {status} without a result", **partial}
    return written


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _tail(path: Path, offset: int, lines: int = 15) -> list[str]:
    with open(path, errors="replace") as log:
        log.seek(offset)
        return log.read().strip().splitlines()[-lines:]


def install_report(path: Path) -> dict:
    """The install step's log: its exit status (the ``exit status N`` line the command appends) and last lines."""
    if not path.is_file():
        return {"status": "no log", "log": str(path)}
    lines = path.read_text(errors="replace").strip().splitlines()
    found = [int(m.group(1)) for line in lines if (m := re.fullmatch(r"exit status (\d+)", line.strip()))]
    status = "ok" if found == [0] else f"failed (exit status {found[-1]})" if found else "unknown (no exit status)"
    return {"status": status, "log": path.name, "tail": lines[-20:]}


# -- the report -------------------------------------------------------------------------------

def markdown(report: dict) -> str:
    sections = report["sections"]
    lines = ["# vosrt GPU acceptance run", "",
             f"{report['started']}{' (smoke run, CPU)' if report['smoke'] else ''}, budget {report['budget_s']:.0f} s, "
             f"took {report.get('total_s', 0):.0f} s so far. Command: `{report['command']}`", ""]
    if report["install"]:
        lines += [f"Install: {report['install']['status']}", ""]
        if report["install"]["status"] != "ok":
            lines += ["```", *report["install"].get("tail", []), "```", ""]
    lines += ["| section | status | seconds | note |", "|---|---|---|---|"]
    lines += [f"| {name} | {entry['status']} | {entry.get('seconds', '')} | {entry.get('reason', '')} |"
              for name, entry in sections.items()]
    for name, entry in sections.items():
        if entry["status"] == "ok":
            lines += ["", f"## {name}", "", *_render(name, entry["result"])]
        elif entry["status"] in FAILED:
            lines += ["", f"## {name}: {entry['status']}", "", entry.get("reason", "")]
            if "partial" in entry:
                lines += ["", "What it had before it stopped:", "", *_render(name, entry["partial"])]
            log = [*entry.get("log_tail", []), *entry.get("traceback", "").splitlines()[-10:]]
            lines += ["", "```", *log, "```"] if log else []
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
             f"{result.get('counts', result.get('outcomes_so_far'))} (log: {result['log']})", ""]
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


RENDER = {"environment": _render_environment, "gpu_tests": _render_tests, "kernel_tests": _render_tests,
          "cutie": _render_modes, "jointformer": _render_modes}


def main(argv: list[str] | None = None, sections: list[Section] | None = None) -> int:
    """The command line; ``sections`` replaces :data:`SECTIONS` (tests)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--section"]:
        return section_process(json.loads(argv[1]))
    sections = SECTIONS if sections is None else sections
    names = [s.name for s in sections]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared",
                        help="reference data laid out like ../shared (default: ../shared)")
    parser.add_argument("--out", type=Path, default=Path("gpu-acceptance"), help="folder for the reports")
    parser.add_argument("--budget", type=float, help=f"seconds for all sections (default {TOTAL_S}; smoke "
                                                     f"{SMOKE_SLOWDOWN} times that)")
    parser.add_argument("--sections", default=",".join(names), help=f"a subset of {','.join(names)}")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: the code paths in seconds")
    parser.add_argument("--install-log", type=Path, help="the install step's log, to keep in the report")
    parser.add_argument("--copy-data", type=Path, metavar="FOLDER",
                        help="copy DATA_PATHS of --data into FOLDER (for a machine where only the repository travels)")
    args = parser.parse_args(argv)
    if args.copy_data:
        copies = copy_data(args.data, args.copy_data)
        print(f"copied {', '.join(str(c) for c in copies)}")
        return 0
    chosen = args.sections.split(",")
    unknown = sorted(set(chosen) - set(names))
    if unknown or not (args.data / "reference" / "gen_weights.py").is_file():
        parser.error(f"unknown section(s) {unknown}" if unknown else
                     f"{args.data} has no reference/gen_weights.py: pass --data (see this script's docstring)")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vosrt-acceptance-") as work:
        ctx = Context(args.data, args.out, args.smoke, Path(work))
        run = AcceptanceRun(ctx, [s for s in sections if s.name in chosen],
                            args.budget or TOTAL_S * (SMOKE_SLOWDOWN if args.smoke else 1),
                            " ".join(["benchmarks/gpu_acceptance.py", *argv]), args.install_log)
        report = run.run()
    failed = [name for name, entry in report["sections"].items() if entry["status"] in FAILED]
    print(f"wrote {args.out / REPORT}.json and .md in {report['total_s']:.0f} s"
          + (f"; sections that did not finish cleanly: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
