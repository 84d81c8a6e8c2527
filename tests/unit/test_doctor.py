"""``vosrt doctor`` on this machine, with packages missing or broken, and on a stand-in GPU machine."""
from __future__ import annotations

import subprocess
import sys
import types

import pytest
import torch

from fakes.tensorrt import FakeTensorRT
from vosrt import requirements
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
    assert f"no   backend='onnxruntime' on the CPU  (needs onnxruntime{requirements.versions('onnxruntime')})" in out


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


def test_a_gpu_machine(gpu_machine, capsys, monkeypatch):
    """Triton really compiles its probe kernel for sm_90 here (no launch), in a process of its own:
    this one's Triton may be in interpreter mode (the kernel tests set TRITON_INTERPRET=1)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "GPU                     NVIDIA H200, compute capability 9.0, 143.0 GiB" in out
    assert "compiles for this GPU: yes (sm_90)" in out
    assert "TensorRT                10.9.0.34; ahead-of-time plugins: yes; DLA cores: 2" in out
    assert "yes  TensorRT engines: export-engine, backend='tensorrt'" in out
    assert "yes  DLA (export-engine --dla-core)" in out
    assert "ONNX Runtime's CUDA provider (backend='onnxruntime' on CUDA):\n      " + doctor.ORT_GPU in out


def test_a_probe_that_cannot_finish_is_not_a_verdict_on_the_gpu(gpu_machine, monkeypatch):
    monkeypatch.setattr(doctor, "PROBE_TIMEOUT_S", 0.001)
    facts = doctor.collect()
    assert facts.triton_compiles == "not checked: the probe compile ran over 0.001 s"
    assert not dict((what, ok) for what, ok, _ in doctor.abilities(facts))[
        "Triton top-K kernels on this GPU (eager torch on CUDA)"]


@pytest.mark.parametrize("triton, tensorrt, jetson", [("3.5.1", "10.8.0.43", False), ("3.6.0", "12.0.0", False),
                                                      ("3.6.0", "10.3.0.30", True)])
def test_versions_come_from_the_package_metadata(monkeypatch, triton, tensorrt, jetson):
    """The ranges the doctor checks and prints are those of pyproject.toml's extras (as installed),
    JetPack 6's TensorRT 10.3 excepted on a Jetson (engines without plugins, docs/jetson.md)."""
    facts = doctor.Facts(python="3.11", platform="Linux", jetson=jetson, triton=triton, tensorrt=tensorrt,
                         capability="9.0")
    can_run = {what: (ok, needs) for what, ok, needs in doctor.abilities(facts)}
    assert can_run["TensorRT engines: export-engine, backend='tensorrt'"] == (
        jetson, f"a GPU and tensorrt{requirements.versions('tensorrt')}")
    assert f"triton{requirements.versions('triton')}" in can_run["Triton top-K kernels on this GPU (eager torch on CUDA)"][1]
    fixes = dict(doctor.fixes(facts))
    if not requirements.satisfied("triton", triton):
        assert f"Triton {triton} (vosrt's kernels need triton{requirements.versions('triton')})" in fixes
    if not jetson:
        assert fixes[f"TensorRT {tensorrt} (vosrt needs tensorrt{requirements.versions('tensorrt')})"] == \
            requirements.pip_install("tensorrt")


def test_two_opencv_builds_are_named_with_the_fix():
    """opencv-python (what vosrt and vos-benchmark require) beside -headless: one cv2, two packages."""
    facts = doctor.Facts(python="3.11", platform="Linux", jetson=False,
                         opencv=("opencv-python", "opencv-python-headless"))
    fixes = dict(doctor.fixes(facts))
    assert fixes["opencv-python and opencv-python-headless installed together (one cv2 module: they overwrite each other)"] \
        == ("pip uninstall -y opencv-python-headless && pip install --force-reinstall --no-deps "
            f"'opencv-python{requirements.versions('opencv-python')}'")
    assert not [what for what, _ in doctor.fixes(doctor.Facts(python="3.11", platform="Linux", jetson=False,
                                                              opencv=("opencv-python",))) if "opencv" in what]
