"""ONNX Runtime backend for JointFormer: the graphs of :mod:`vosrt.export.jointformer_graphs`
run with the IO binding of :class:`~vosrt.runtime.onnxruntime_graphs.OnnxRuntimeGraphs`."""
from __future__ import annotations

from pathlib import Path

import torch

from .exported_graphs import ExportedJointFormerGraphs
from .onnxruntime_graphs import OnnxRuntimeGraphs


class OnnxRuntimeJointFormerGraphs(ExportedJointFormerGraphs, OnnxRuntimeGraphs):
    """The :class:`~vosrt.runtime.jointformer_graphs.JointFormerGraphs` stages over an export
    directory written by ``export_onnx`` for ``jointformer``."""

    def __init__(self, directory: str | Path, device: torch.device | str = "cpu"):
        super().__init__(directory, device)
        self._load_initial_summary(Path(directory) / self.manifest["initial_summary"])
