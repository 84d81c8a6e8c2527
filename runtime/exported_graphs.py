"""The stages of :class:`~vosrt.runtime.graphs.CutieGraphs` and of
:class:`~vosrt.runtime.jointformer_graphs.JointFormerGraphs` over exported graphs run by name.

ONNX Runtime and TensorRT both run the graphs of :data:`vosrt.export.cutie_graphs.SPECS`
and :data:`vosrt.export.jointformer_graphs.SPECS` with inputs and outputs in spec order; a
backend subclasses :class:`ExportedGraphs` and provides ``_run``, and its JointFormer variant
puts :class:`ExportedJointFormerGraphs` first among its bases.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vosrt.models.jointformer import TopKConfig

from .graphs import ImageFeatures


class ExportedGraphs:
    """Stage methods in terms of ``_run(graph_name, *inputs) -> list of outputs``."""

    device: torch.device

    def _set_architecture(self, manifest: dict) -> None:
        """The sizes the session needs, from an export manifest."""
        architecture = manifest["architecture"]
        self.num_queries = architecture["num_queries"]
        self.value_dim = architecture["value_dim"]
        self.sensory_dim = architecture["sensory_dim"]

    def _run(self, name: str, *inputs: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def encode_image(self, image):
        return ImageFeatures(*self._run("image_encoder", image))

    def encode_mask(self, image, pix_feat, sensory, masks):
        return tuple(self._run("mask_encoder", image, pix_feat, sensory, masks))

    def read_memory(self, key, selection, pix_feat, memory_key, memory_shrinkage, memory_value, memory_valid,
                    sensory, last_mask, obj_memory):
        (readout,) = self._run("memory_readout", key, selection, pix_feat, memory_key, memory_shrinkage,
                               memory_value, memory_valid, sensory, last_mask, obj_memory)
        return readout

    def memory_usage(self, key, selection, memory_key, memory_shrinkage, memory_valid):
        (usage,) = self._run("memory_usage", key, selection, memory_key, memory_shrinkage, memory_valid)
        return usage

    def decode(self, f8, f4, readout, sensory):
        return tuple(self._run("mask_decoder", f8, f4, readout, sensory))


class ExportedJointFormerGraphs:
    """JointFormer's stage methods in terms of the backend's ``_run`` (this class comes first among
    the bases, so it defines no ``_run`` of its own). A backend calls :meth:`_load_initial_summary`
    with the export's ``initial_summary.npy`` (the compressed-memory token of a new object)."""

    device: torch.device

    def _set_architecture(self, manifest: dict) -> None:
        """The top-K options the graphs were exported with."""
        self.topk = TopKConfig(**manifest["topk"])

    def _load_initial_summary(self, path: Path) -> None:
        self._initial_summary = torch.from_numpy(np.load(path)).to(self.device)

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
