"""benchmarks/gpu_acceptance.py as a harness, without a GPU: a section that raises, hangs or kills its
own process is reported as such while the others run; the report says which section is running; the
timeouts fit the run and the run fits the device budget twice; the install log is kept; the data
folder holds every shared path the selected tests read; the selected test files collect without the
optional packages. CI also runs the whole script with --smoke (.ci/run)."""
from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import helpers
from helpers import SHARED, require_shared

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_acceptance.py"
TESTS = ROOT / "tests"
DEVICE_SECONDS = 15 * 60  # a lent GPU machine's time per task, start-ups included
START_UP_S = 120  # a machine's start: 1-2 minutes


@pytest.fixture
def acceptance(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_acceptance", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_acceptance", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def data(tmp_path) -> Path:
    """A --data folder as far as the script checks it (no section here reads it)."""
    (tmp_path / "data" / "reference").mkdir(parents=True)
    (tmp_path / "data" / "reference" / "gen_weights.py").write_text("")
    return tmp_path / "data"


def _report(out: Path) -> dict:
    assert (out / "gpu_acceptance.md").is_file()
    return json.loads((out / "gpu_acceptance.json").read_text())


STAND_INS = '''
import json, os, signal, time
from pathlib import Path


def first(ctx, budget):
    return {"budget": budget}


def raises(ctx, budget):
    raise RuntimeError("CUDA error: an illegal memory access was encountered")


def hangs(ctx, budget):
    ctx.save_partial({"frames_done": 3})
    time.sleep(600)


def kills_itself(ctx, budget):
    os.kill(os.getpid(), signal.SIGKILL)


def exits(ctx, budget):
    os._exit(3)


def last(ctx, budget):
    """What the report said while this section ran."""
    sections = json.loads((ctx.out / "gpu_acceptance.json").read_text())["sections"]
    return {name: entry["status"] for name, entry in sections.items()}
'''


def test_a_section_that_raises_hangs_or_kills_itself_is_reported_so_and_the_others_run(acceptance, data, tmp_path):
    stand_ins = tmp_path / "stand_ins.py"
    stand_ins.write_text(STAND_INS)
    names = ["first", "raises", "hangs", "kills_itself", "exits", "last"]
    sections = [acceptance.Section(name, f"{stand_ins}:{name}", 2 if name == "hangs" else 30) for name in names]
    out = tmp_path / "out"
    status = acceptance.main(["--data", str(data), "--out", str(out), "--budget", "200"], sections=sections)
    report = _report(out)["sections"]
    assert status == 1 and list(report) == names
    assert report["first"]["status"] == "ok" and report["first"]["result"]["budget"] == pytest.approx(0.85 * 30)
    assert report["raises"]["status"] == "error" and "illegal memory access" in report["raises"]["reason"]
    assert "raise RuntimeError" in report["raises"]["traceback"]
    assert report["hangs"]["status"] == "timeout" and report["hangs"]["partial"] == {"frames_done": 3}
    assert report["hangs"]["seconds"] < 10
    assert report["kills_itself"] == {**report["kills_itself"], "status": "killed",
                                      "reason": "its process died of SIGKILL"}
    assert report["exits"]["status"] == "crashed" and "exited with status 3" in report["exits"]["reason"]
    assert report["last"]["status"] == "ok"
    assert report["last"]["result"] == {"first": "ok", "raises": "error", "hangs": "timeout", "kills_itself": "killed",
                                        "exits": "crashed", "last": "running"}
    markdown = (out / "gpu_acceptance.md").read_text()
    for name, status in [("raises", "error"), ("hangs", "timeout"), ("kills_itself", "killed"), ("exits", "crashed")]:
        assert f"| {name} | {status} |" in markdown and f"## {name}: {status}" in markdown


def test_the_sections_timeouts_fit_the_run_and_two_runs_fit_the_device_time(acceptance):
    """The docstring's device command: a timeout above the sections' total (with the install), and two
    runs with a start-up each within the device time; the install not joined to the run with &&."""
    assert sum(section.timeout_s for section in acceptance.SECTIONS) < acceptance.TOTAL_S
    timeout = int(re.search(r"timeout_s=(\d+)", acceptance.__doc__).group(1))
    assert acceptance.TOTAL_S + 30 <= timeout and 2 * (START_UP_S + timeout) <= DEVICE_SECONDS
    command = next(line.strip() for line in acceptance.__doc__.splitlines() if "pip install" in line)
    assert "&&" not in command and "--install-log $OUT/install.log" in command
    assert re.search(r">\s*\$OUT/install.log 2>&1; ", command)


def test_a_run_out_of_budget_skips_what_is_left(acceptance, data, tmp_path):
    assert acceptance.main(["--smoke", "--data", str(data), "--out", str(tmp_path), "--budget", "3"]) == 0
    sections = _report(tmp_path)["sections"]
    assert list(sections) == [section.name for section in acceptance.SECTIONS]
    assert all(entry["status"] == "skipped" and entry["reason"].startswith("budget") for entry in sections.values())


def test_a_failed_install_is_in_the_report_and_the_sections_still_run(acceptance, data, tmp_path):
    install_log = tmp_path / "install.log"
    install_log.write_text("ERROR: Could not build wheels for vosrt\nexit status 1\n")
    (tmp_path / "stand_ins.py").write_text(STAND_INS)
    sections = [acceptance.Section("first", f"{tmp_path / 'stand_ins.py'}:first", 30)]
    argv = ["--data", str(data), "--out", str(tmp_path / "out"), "--install-log", str(install_log)]
    assert acceptance.main(argv, sections=sections) == 0
    report = _report(tmp_path / "out")
    assert report["install"]["status"] == "failed (exit status 1)"
    assert "ERROR: Could not build wheels for vosrt" in report["install"]["tail"]
    assert report["sections"]["first"]["status"] == "ok"
    assert "ERROR: Could not build wheels for vosrt" in (tmp_path / "out" / "gpu_acceptance.md").read_text()


def _test_modules_read(paths: list[Path]) -> list[Path]:
    """The files under tests/ that the test files in ``paths`` import, at any depth and inside functions too,
    with those files and the conftest.py files pytest loads for them."""
    found: list[Path] = []
    queue = [file for path in paths for file in (sorted(path.rglob("*.py")) if path.is_dir() else [path])]
    queue += [TESTS / "conftest.py"] + [p / "conftest.py" for p in paths if (p / "conftest.py").is_file()]
    while queue:
        file = queue.pop()
        if file in found:
            continue
        found.append(file)
        for node in ast.walk(ast.parse(file.read_text())):
            modules = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                       [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for module in modules:
                parts = module.split(".")
                for folder in {TESTS, *(p if p.is_dir() else p.parent for p in paths)}:
                    candidate = folder.joinpath(*parts).with_suffix(".py")
                    package = folder.joinpath(*parts, "__init__.py")
                    queue += [c for c in (candidate, package) if c.is_file()]
    return found


def test_the_data_folder_holds_every_shared_path_the_selected_tests_read(acceptance, tmp_path):
    """Every shared path of tests/helpers.py named in a file the selected tests import (an over-estimate: a
    name that appears is taken as read) exists in the folder ``--copy-data`` makes."""
    require_shared()
    selected = [ROOT / p for p in (*acceptance.GPU_TEST_PATHS, *acceptance.KERNEL_TEST_PATHS)]
    names_used = {node.id for file in _test_modules_read(selected) for node in ast.walk(ast.parse(file.read_text()))
                  if isinstance(node, ast.Name)}
    shared_paths = {name: value for name, value in vars(helpers).items()
                    if isinstance(value, Path) and value.is_relative_to(SHARED) and value != SHARED}
    read = {name: path for name, path in shared_paths.items() if name in names_used}
    assert {"SYNTHETIC_LONG", "DAVIS", "REFERENCE"} <= set(read)  # what tests/gpu reads today: the check sees it
    assert acceptance.main(["--data", str(SHARED), "--copy-data", str(tmp_path / "copy")]) == 0
    missing = [name for name, path in read.items() if not (tmp_path / "copy" / path.relative_to(SHARED)).exists()]
    assert missing == []


BLOCK_OPTIONAL = '''
import sys
for name in ("onnx", "onnxruntime", "onnxscript", "onnxruntime_extensions", "polygraphy", "tensorrt", "cv2",
             "matplotlib"):
    sys.modules[name] = None  # import fails as for a package not installed
'''


def test_the_selected_test_files_collect_without_the_optional_packages(acceptance, tmp_path):
    (tmp_path / "block_optional.py").write_text(BLOCK_OPTIONAL)
    selected = [*acceptance.GPU_TEST_PATHS, *acceptance.KERNEL_TEST_PATHS]
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "block_optional",
                           "-p", "no:cacheprovider", *selected], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0 and "error" not in done.stdout.lower(), done.stdout[-3000:]


def test_collection_errors_are_counted_apart_from_the_tests_errors(acceptance, tmp_path):
    (tmp_path / "test_needs_onnx.py").write_text("import onnx_not_installed_here\n")
    (tmp_path / "test_runs.py").write_text(textwrap.dedent("""
        import pytest

        def test_passes():
            pass

        @pytest.fixture
        def broken():
            raise RuntimeError("set-up failed")

        def test_errors(broken):
            pass
        """))
    junit = tmp_path / "junit.xml"
    command = acceptance.pytest_command("probe", [str(tmp_path)], junit)
    subprocess.run(command, cwd=tmp_path, capture_output=True, timeout=300)
    summary = acceptance.junit_summary(junit)
    assert summary["counts"] == {"passed": 1, "failure": 0, "error": 1, "skipped": 0, "collection_error": 1}
    assert [(case["test"], case["message"]) for case in summary["not_passed"] if case["outcome"] == "collection_error"] \
        == [("test_needs_onnx", "ModuleNotFoundError: No module named 'onnx_not_installed_here'")]


def test_mode_agreement_is_the_mean_iou_of_the_objects(acceptance):
    import numpy as np

    reference = [np.array([[0, 1], [2, 2]]), np.zeros((2, 2), int)]
    labels = [np.array([[0, 1], [2, 0]]), np.zeros((2, 2), int)]
    assert acceptance._agreement(labels, reference) == {"miou_vs_fp32_min": 0.75, "miou_vs_fp32_mean": 0.875}


def test_the_data_folder_is_checked_first(acceptance, tmp_path, capsys):
    with pytest.raises(SystemExit):
        acceptance.main(["--smoke", "--data", str(tmp_path), "--out", str(tmp_path / "out")])
    assert "has no reference/gen_weights.py: pass --data" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_smoke_run_passes_every_section_on_the_cpu(acceptance, tmp_path):
    """The whole script at tiny sizes (what .ci/run runs): a section that breaks on the CPU fails here."""
    require_shared()
    assert acceptance.main(["--smoke", "--data", str(SHARED), "--out", str(tmp_path)]) == 0
    sections = _report(tmp_path)["sections"]
    assert list(sections) == [section.name for section in acceptance.SECTIONS]
    assert {name: entry["status"] for name, entry in sections.items()} == {
        "environment": "ok", "gpu_tests": "ok", "kernel_tests": "ok", "kernels": "skipped", "cutie": "ok",
        "jointformer": "ok"}


def test_the_kernel_tests_run_on_the_gpu_in_a_section_of_their_own(acceptance, tmp_path):
    """tests/kernels carry no gpu marker: the run selects them by path, not by ``-m``."""
    section = next(s for s in acceptance.SECTIONS if s.name == "kernel_tests")
    assert acceptance.KERNEL_TEST_PATHS == ("tests/kernels",) and section.target == "kernel_tests"
    command = acceptance.pytest_command("kernels", list(acceptance.KERNEL_TEST_PATHS), tmp_path / "junit.xml")
    assert "tests/kernels" in command and "-m" not in command[3:]  # after "python -m pytest"
