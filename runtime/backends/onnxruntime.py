"""ONNX Runtime backend: an export directory's graphs, run with IO binding.

Inputs are bound straight from torch tensors and outputs come back as torch tensors through
DLPack (``OrtValue.__dlpack__``, onnxruntime >= 1.26: earlier releases have no DLPack export
and ``torch.from_dlpack`` fails on their outputs with "invalid capsule"), so on a GPU the state
never leaves the device between frames; the same code runs on the CPU provider.

On CUDA the graphs run on the CUDA execution provider of onnxruntime-gpu, on ONNX Runtime's
own stream. torch writes the inputs on its stream, so each run first waits for them
(``IOBinding.synchronize_inputs``: the CUDA provider synchronises the device), and a run
returns only once ONNX Runtime's stream is done (its default ``RunOptions``), so torch reads
finished outputs. The TensorRT execution provider is not used: without an engine cache and
optimisation profiles it builds every graph's engine at start-up and again for each new
object count, and ``backend="tensorrt"`` already runs TensorRT with engines built once for a
declared profile (see :mod:`vosrt.export.tensorrt`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..artifacts import ONNX_FORMAT, load_constants, read_manifest
from ..export_check import check_graphs
from ..registry import MODELS
from ..stages import StageSpec
from .base import Backend

_ORT_TYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.bool: np.bool_}
GPU_INSTALL = "pip uninstall -y onnxruntime && pip install 'onnxruntime-gpu>=1.26'"


def import_onnxruntime():
    """The ``onnxruntime`` module, or a RuntimeError when it cannot hand outputs to torch (< 1.26)."""
    import onnxruntime as ort

    if not hasattr(ort.OrtValue, "__dlpack__"):
        raise RuntimeError(f"backend='onnxruntime' needs onnxruntime >= 1.26, whose outputs reach torch through "
                           f"DLPack; this is onnxruntime {ort.__version__}: pip install -U 'onnxruntime>=1.26' "
                           f"(on a GPU: {GPU_INSTALL})")
    return ort


def providers_for(device: torch.device) -> list:
    """The CUDA execution provider on a GPU, else the CPU one (what :func:`create_session` takes)."""
    ort = import_onnxruntime()
    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise RuntimeError(f"device='cuda' with backend='onnxruntime' needs onnxruntime-gpu, which replaces "
                           f"onnxruntime: {GPU_INSTALL}; this onnxruntime has {ort.get_available_providers()}")
    return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]


def create_session(path: str | Path, providers: list, custom_ops: list[str] = ()):
    """An ``onnxruntime.InferenceSession`` for the graph at ``path``; ``custom_ops`` (a manifest's
    ``custom_ops``) get their implementations from :mod:`.onnxruntime_custom_ops`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Idle ORT threads spin by default, taking the cores from torch's pre/post-processing
    # between graph calls: off, cutie-small at 480x854 on 2 cores runs 0.6 -> 0.46 s/frame.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not custom_ops:
        return ort.InferenceSession(str(path), options, providers=providers)
    from .onnxruntime_custom_ops import enable_custom_ops, onnxruntime_model

    enable_custom_ops(options, custom_ops)
    return ort.InferenceSession(onnxruntime_model(path), options, providers=providers)


class OnnxRuntimeBackend(Backend):
    """Runs an export directory (see :func:`vosrt.export.onnx.export_onnx`) on ``device``, once its
    graphs are checked against its manifest (:func:`..export_check.check_graphs`)."""

    def __init__(self, directory: str | Path, device: torch.device | str = "cpu", *, check_files: bool = True):
        directory = Path(directory)
        self.manifest = read_manifest(directory, ONNX_FORMAT, check_files=check_files)
        check_graphs(directory, self.manifest)
        self.device = torch.device(device)
        self.stages = MODELS[self.manifest["model"]].family.stages
        self.architecture = self.manifest["architecture"]
        self.constants = load_constants(directory, self.manifest, self.device)
        providers = providers_for(self.device)
        self.sessions = {name: create_session(directory / info["file"], providers, self.manifest["custom_ops"])
                         for name, info in self.manifest["graphs"].items()}
        self.providers = next(iter(self.sessions.values())).get_providers()

    def _run(self, stage: StageSpec, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        session = self.sessions[stage.name]
        binding = session.io_binding()
        device_type = "cuda" if self.device.type == "cuda" else "cpu"
        device_id = self.device.index or 0
        inputs = [x.contiguous() for x in inputs]  # kept alive until the run is over
        for name, x in zip(stage.input_names, inputs):
            binding.bind_input(name, device_type, device_id, _ORT_TYPES[x.dtype], list(x.shape), x.data_ptr())
        for name in stage.output_names:
            binding.bind_output(name, device_type, device_id)
        if device_type == "cuda":
            binding.synchronize_inputs()  # torch wrote them on its own stream
        session.run_with_iobinding(binding)
        return [torch.from_dlpack(value) for value in binding.get_outputs()]
