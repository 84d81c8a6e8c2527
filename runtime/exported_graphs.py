"""The stages of :class:`~vosrt.runtime.graphs.CutieGraphs` over exported graphs run by name.

ONNX Runtime and TensorRT both run the graphs of :data:`vosrt.export.cutie_graphs.SPECS`
with inputs and outputs in spec order; a backend subclasses :class:`ExportedGraphs` and
provides ``_run``.
"""
from __future__ import annotations

import torch

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
