"""The ONNX Runtime backend's contract with onnxruntime, against a stand-in module: which
releases it accepts, which execution providers it asks for on a GPU, and the order of the
IO-binding calls (inputs written on torch's stream are synchronised before the run)."""
from __future__ import annotations

import sys
import types

import pytest
import torch

from fakes.backends import STAGES
from vosrt.runtime.backends.onnxruntime import OnnxRuntimeBackend, providers_for


def fake_onnxruntime(version: str = "1.26.0", providers=("CPUExecutionProvider",), dlpack: bool = True):
    """The part of ``onnxruntime`` the backend reads: its version, providers and ``OrtValue``."""
    value = type("OrtValue", (), {"__dlpack__": lambda self, stream=None: None} if dlpack else {})
    return types.SimpleNamespace(__version__=version, OrtValue=value, get_available_providers=lambda: list(providers))


@pytest.fixture
def install(monkeypatch):
    def put(module):
        monkeypatch.setitem(sys.modules, "onnxruntime", module)
        return module
    return put


def test_releases_without_dlpack_outputs_are_refused(install):
    """onnxruntime 1.20-1.25 OrtValues have no __dlpack__: torch.from_dlpack would fail with 'invalid capsule'."""
    install(fake_onnxruntime("1.25.1", dlpack=False))
    with pytest.raises(RuntimeError, match=r"needs onnxruntime >= 1.26.*this is onnxruntime 1.25.1: pip install"):
        providers_for(torch.device("cpu"))


def test_gpu_runs_on_the_cuda_provider_not_tensorrt(install):
    install(fake_onnxruntime(providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")))
    assert providers_for(torch.device("cuda:1")) == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert providers_for(torch.device("cpu")) == ["CPUExecutionProvider"]


def test_gpu_without_the_cuda_provider_says_what_to_install(install):
    install(fake_onnxruntime())
    with pytest.raises(RuntimeError, match="needs onnxruntime-gpu, which replaces onnxruntime: pip uninstall -y onn"):
        providers_for(torch.device("cuda"))


class _RecordingBinding:
    def __init__(self, calls: list):
        self.calls = calls

    def __getattr__(self, name):
        return lambda *args: self.calls.append(name)

    def get_outputs(self):
        return [torch.zeros(4)]  # torch tensors speak DLPack too


@pytest.mark.parametrize("device, synchronised", [("cuda", True), ("cpu", False)])
def test_inputs_written_on_torchs_stream_are_synchronised_before_the_run(device, synchronised):
    calls: list[str] = []
    session = types.SimpleNamespace(io_binding=lambda: _RecordingBinding(calls),
                                    run_with_iobinding=lambda binding: calls.append("run"))
    backend = object.__new__(OnnxRuntimeBackend)  # the binding alone, without an export directory
    backend.device, backend.stages, backend.sessions = torch.device(device), STAGES, {"read": session}
    backend.run("read", x=torch.ones(4), memory=torch.ones(4))
    expected = ["bind_input", "bind_input", "bind_output"] + ["synchronize_inputs"] * synchronised + ["run"]
    assert calls == expected
