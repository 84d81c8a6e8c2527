"""benchmarks/gpu_acceptance.py's bookkeeping without running a model: every section ends in the
report (ok, skipped with the reason, or its error), a run out of budget skips what is left, and
the report is written whatever happens. CI runs the whole script with --smoke (.ci/run)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from helpers import SHARED

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_acceptance.py"


@pytest.fixture
def acceptance(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_acceptance", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_acceptance", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _report(out: Path) -> dict:
    assert (out / "gpu_acceptance.md").is_file()
    return json.loads((out / "gpu_acceptance.json").read_text())


def test_a_failing_section_is_reported_and_the_next_one_runs(acceptance, monkeypatch, tmp_path):
    def fail(ctx, budget):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setitem(acceptance.SECTIONS, "cutie", fail)
    monkeypatch.setitem(acceptance.SECTIONS, "jointformer", lambda ctx, budget: {"budget": budget})
    status = acceptance.main(["--smoke", "--data", str(SHARED), "--out", str(tmp_path), "--sections",
                              "kernels,cutie,jointformer"])
    sections = _report(tmp_path)["sections"]
    assert status == 1 and list(sections) == ["kernels", "cutie", "jointformer"]
    assert sections["kernels"]["status"] == "skipped" and "need a CUDA GPU" in sections["kernels"]["reason"]
    assert sections["cutie"]["status"] == "error" and "illegal memory access" in sections["cutie"]["reason"]
    assert sections["jointformer"] == {"status": "ok", "result": {"budget": 90}, "seconds": 0.0}


def test_a_run_out_of_budget_skips_what_is_left(acceptance, tmp_path):
    assert acceptance.main(["--smoke", "--data", str(SHARED), "--out", str(tmp_path), "--budget", "3"]) == 0
    sections = _report(tmp_path)["sections"]
    assert list(sections) == list(acceptance.SECTIONS)
    assert all(entry["status"] == "skipped" and entry["reason"].startswith("budget") for entry in sections.values())


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
    assert acceptance.main(["--smoke", "--data", str(SHARED), "--out", str(tmp_path)]) == 0
    sections = _report(tmp_path)["sections"]
    assert list(sections) == list(acceptance.SECTIONS)
    assert {name: entry["status"] for name, entry in sections.items() if entry["status"] == "error"} == {}
    assert sections["cutie"]["status"] == sections["jointformer"]["status"] == "ok"
