"""ONNX Runtime backend for JointFormer: the graphs of :mod:`vosrt.export.jointformer_graphs`
run with the IO binding of :class:`~vosrt.runtime.onnxruntime_graphs.OnnxRuntimeGraphs`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vosrt.models.jointformer import TopKConfig

from .onnxruntime_graphs import OnnxRuntimeGraphs


class OnnxRuntimeJointFormerGraphs(OnnxRuntimeGraphs):
    """The :class:`~vosrt.runtime.jointformer_graphs.JointFormerGraphs` stages over an export
    directory written by ``export_onnx`` for ``jointformer``."""

    def __init__(self, directory: str | Path, device: torch.device | str = "cpu"):
        super().__init__(directory, device)
        initial = np.load(Path(directory) / self.manifest["initial_summary"])
        self._initial_summary = torch.from_numpy(initial).to(self.device)

    def _set_architecture(self, manifest: dict) -> None:
        self.topk = TopKConfig(**manifest["topk"])

    def initial_summary(self, num_objects):
        return self._initial_summary.expand(num_objects, -1, -1)

    def encode_query(self, image):
        return tuple(self._run("query_encoder", image))

    def encode_reference(self, image, masks, summary):
        return tuple(self._run("reference_encoder", image, masks, summary))

    def propagate(self, tokens, ref_keys, ref_values, ref_valid):
        return self._run("joint_propagation", tokens, ref_keys, ref_values, ref_valid)[0]

    def decode(self, f16, f8, f4, summary):
        return tuple(self._run("decoder", f16, f8, f4, summary))
