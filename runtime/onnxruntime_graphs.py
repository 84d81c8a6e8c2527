"""ONNX Runtime backend: the four exported graphs, run with IO binding.

Inputs are bound straight from torch tensors and outputs come back as torch tensors
through DLPack, so on a GPU the state never leaves the device between frames; the same
code runs on the CPU provider.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vosrt.export.onnx_export import read_manifest

from .graphs import ImageFeatures

_ORT_TYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.bool: np.bool_}


def providers_for(device: torch.device) -> list[str]:
    """TensorRT / CUDA execution providers on a GPU when this onnxruntime has them, else CPU."""
    import onnxruntime as ort

    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    available = [p for p in wanted if p in ort.get_available_providers()]
    if not available:
        raise RuntimeError("device='cuda' needs onnxruntime-gpu (pip install 'vosrt[gpu]'); "
                           f"this onnxruntime has {ort.get_available_providers()}")
    return available


class OnnxRuntimeGraphs:
    """Runs an export directory (see :func:`vosrt.export.onnx_export.export_onnx`)."""

    def __init__(self, directory: str | Path, device: torch.device | str = "cpu"):
        import onnxruntime as ort

        self.manifest = read_manifest(directory)
        self.device = torch.device(device)
        architecture = self.manifest["architecture"]
        self.num_queries = architecture["num_queries"]
        self.value_dim = architecture["value_dim"]
        self.sensory_dim = architecture["sensory_dim"]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        providers = providers_for(self.device)
        self.sessions = {name: ort.InferenceSession(str(Path(directory) / info["file"]), options, providers=providers)
                         for name, info in self.manifest["graphs"].items()}
        self.providers = self.sessions["image_encoder"].get_providers()

    def _run(self, name: str, *inputs: torch.Tensor) -> list[torch.Tensor]:
        session = self.sessions[name]
        binding = session.io_binding()
        device_type = "cuda" if self.device.type == "cuda" else "cpu"
        device_id = self.device.index or 0
        inputs = [x.contiguous() for x in inputs]  # kept alive until the run is over
        for meta, x in zip(session.get_inputs(), inputs):
            binding.bind_input(meta.name, device_type, device_id, _ORT_TYPES[x.dtype], list(x.shape), x.data_ptr())
        for meta in session.get_outputs():
            binding.bind_output(meta.name, device_type, device_id)
        session.run_with_iobinding(binding)
        return [torch.from_dlpack(value) for value in binding.get_outputs()]

    def encode_image(self, image):
        return ImageFeatures(*self._run("image_encoder", image))

    def encode_mask(self, image, pix_feat, sensory, masks):
        return tuple(self._run("mask_encoder", image, pix_feat, sensory, masks))

    def read_memory(self, key, selection, pix_feat, memory_key, memory_shrinkage, memory_value, memory_valid,
                    sensory, last_mask, obj_memory):
        (readout,) = self._run("memory_readout", key, selection, pix_feat, memory_key, memory_shrinkage,
                               memory_value, memory_valid, sensory, last_mask, obj_memory)
        return readout

    def decode(self, f8, f4, readout, sensory):
        return tuple(self._run("mask_decoder", f8, f4, readout, sensory))
