"""``vosrt doctor`` on this machine, with packages missing or broken, and on a stand-in GPU machine."""
from __future__ import annotations

import subprocess
import sys
import types

import pytest
import torch

from fakes.tensorrt import FakeTensorRT
from vosrt.cli import doctor, main


def test_python_m_vosrt_doctor_reports_this_machine():
    done = subprocess.run([sys.executable, "-m", "vosrt.doctor"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    for heading in ("found", "can run", "GPU", "torch", "Triton", "ONNX Runtime", "TensorRT"):
        assert heading in done.stdout
    assert "yes  backend='torch' on the CPU" in done.stdout


def test_missing_and_broken_packages_are_report_lines(monkeypatch, tmp_path, capsys):
    broken = tmp_path / "tensorrt"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise OSError('libnvinfer.so.10: cannot open shared object file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # not installed
    monkeypatch.setitem(sys.modules, "triton", None)
    assert main(["doctor"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "Traceback" not in out
    assert "TensorRT                broken: OSError: libnvinfer.so.10: cannot open shared object file" in out
    assert "ONNX Runtime            not installed" in out and "Triton                  not installed" in out
    assert "onnxruntime (backend='onnxruntime', vosrt verify):\n      pip install 'vosrt[onnxruntime]'" in out
    assert "pip install 'vosrt[kernels]'" in out
    assert "no   backend='onnxruntime' on the CPU  (needs onnxruntime >= 1.26)" in out


def test_an_old_onnxruntime_is_named_with_the_upgrade(monkeypatch):
    old = types.SimpleNamespace(__version__="1.25.1", OrtValue=type("OrtValue", (), {}),
                                get_available_providers=lambda: ["CPUExecutionProvider"])
    monkeypatch.setitem(sys.modules, "onnxruntime", old)
    facts = doctor.collect()
    assert not facts.ort_dlpack
    assert ("onnxruntime 1.25.1 (backend='onnxruntime' needs >= 1.26)", "pip install -U 'onnxruntime>=1.26'") in \
        doctor.fixes(facts)


def _installed(monkeypatch, *names: str, providers=("CPUExecutionProvider",)) -> None:
    """Stand-ins: the distributions ``names`` installed (and nothing else), an onnxruntime module with ``providers``."""
    distributions = [types.SimpleNamespace(metadata={"Name": name}) for name in names]
    monkeypatch.setattr(doctor.importlib.metadata, "distributions", lambda: distributions)
    monkeypatch.setitem(sys.modules, "onnxruntime", types.SimpleNamespace(
        __version__="1.26.0", OrtValue=type("OrtValue", (), {"__dlpack__": None}),
        get_available_providers=lambda: list(providers)))


@pytest.mark.parametrize("names, providers, line", [
    (["onnxruntime"], ["CPUExecutionProvider"], "1.26.0, CPU build (onnxruntime); providers: CPUExecutionProvider"),
    (["onnxruntime-gpu"], ["CUDAExecutionProvider", "CPUExecutionProvider"],
     "1.26.0, GPU (CUDA) build (onnxruntime-gpu); providers: CUDAExecutionProvider, CPUExecutionProvider"),
    (["onnxruntime", "onnxruntime-gpu"], ["CPUExecutionProvider"],
     "1.26.0, CPU build (onnxruntime) and GPU (CUDA) build (onnxruntime-gpu); providers: CPUExecutionProvider"),
], ids=["cpu", "gpu", "both"])
def test_the_onnxruntime_build_is_named(monkeypatch, names, providers, line):
    _installed(monkeypatch, *names, providers=providers)
    facts = doctor.collect()
    assert f"  ONNX Runtime            {line}\n" in doctor.format_report(facts)
    assert facts.ort_both_builds == (len(names) == 2)


@pytest.fixture
def gpu_machine(monkeypatch):
    """torch reporting an H200, TensorRT 10.9 with its plugin API and two DLA cores (stand-ins)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: types.SimpleNamespace(name="NVIDIA H200", total_memory=143 * 2**30))
    trt = FakeTensorRT()
    trt.Builder.num_DLA_cores = 2
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", types.SimpleNamespace(aot_impl=lambda name: None))


def test_a_gpu_machine(gpu_machine, capsys):
    """Triton really compiles its probe kernel for sm_90 here (no launch)."""
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "GPU                     NVIDIA H200, compute capability 9.0, 143.0 GiB" in out
    assert "compiles for this GPU: yes (sm_90)" in out
    assert "TensorRT                10.9.0.34; ahead-of-time plugins: yes; DLA cores: 2" in out
    assert "yes  TensorRT engines: export-engine, backend='tensorrt'" in out
    assert "yes  DLA (export-engine --dla-core)" in out
    assert "ONNX Runtime's CUDA provider (backend='onnxruntime' on CUDA):\n      " + doctor.ORT_GPU in out
