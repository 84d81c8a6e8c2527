"""Cutie split into stateless graphs with named inputs and outputs: the four stages, and
the memory usage that only the long-term memory needs.

Each wrapper's ``forward`` takes and returns exactly what the runtime keeps or passes on,
so a backend only has to run these graphs (see :class:`vosrt.runtime.graphs.CutieGraphs`).
Symbols: K objects, H x W padded image (multiple of 16), h x w = H/16 x W/16,
N = memory capacity in frames x h x w, Q object queries, C = 256, Ck = 64.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from vosrt.kernels import topk_readout_gather, topk_usage_scatter
from vosrt.models.cutie import Cutie


@dataclass(frozen=True)
class GraphSpec:
    """Names and dynamic axes of one graph: ``dynamic[name] = {axis: symbol}``."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic: dict[str, dict[int, str]]


_IMAGE = {2: "H", 3: "W"}
_STRIDE16 = {2: "h", 3: "w"}
_PER_OBJECT16 = {1: "K", 3: "h", 4: "w"}

SPECS = {
    "image_encoder": GraphSpec(
        "image_encoder", ("image",), ("f8", "f4", "pix_feat", "key", "shrinkage", "selection"),
        {"image": _IMAGE, "f8": {2: "h8", 3: "w8"}, "f4": {2: "h4", 3: "w4"}, "pix_feat": _STRIDE16,
         "key": _STRIDE16, "shrinkage": _STRIDE16, "selection": _STRIDE16}),
    "mask_encoder": GraphSpec(
        "mask_encoder", ("image", "pix_feat", "sensory", "masks"), ("mask_value", "new_sensory", "obj_summaries"),
        {"image": _IMAGE, "pix_feat": _STRIDE16, "sensory": _PER_OBJECT16, "masks": {1: "K", 2: "H", 3: "W"},
         "mask_value": _PER_OBJECT16, "new_sensory": _PER_OBJECT16, "obj_summaries": {1: "K"}}),
    "memory_readout": GraphSpec(
        "memory_readout",
        ("key", "selection", "pix_feat", "memory_key", "memory_shrinkage", "memory_value", "memory_valid",
         "sensory", "last_mask", "obj_memory"),
        ("readout",),
        {"key": _STRIDE16, "selection": _STRIDE16, "pix_feat": _STRIDE16, "memory_key": {2: "N"},
         "memory_shrinkage": {2: "N"}, "memory_value": {1: "K", 3: "N"}, "memory_valid": {1: "N"},
         "sensory": _PER_OBJECT16, "last_mask": {1: "K", 2: "H", 3: "W"}, "obj_memory": {1: "K"},
         "readout": _PER_OBJECT16}),
    "memory_usage": GraphSpec(
        "memory_usage", ("key", "selection", "memory_key", "memory_shrinkage", "memory_valid"), ("memory_usage",),
        {"key": _STRIDE16, "selection": _STRIDE16, "memory_key": {2: "N"}, "memory_shrinkage": {2: "N"},
         "memory_valid": {1: "N"}, "memory_usage": {1: "N"}}),
    "mask_decoder": GraphSpec(
        "mask_decoder", ("f8", "f4", "readout", "sensory"), ("new_sensory", "prob"),
        {"f8": {2: "h8", 3: "w8"}, "f4": {2: "h4", 3: "w4"}, "readout": _PER_OBJECT16, "sensory": _PER_OBJECT16,
         "new_sensory": _PER_OBJECT16, "prob": {1: "K+1", 2: "H", 3: "W"}}),
}


class ImageEncoderGraph(nn.Module):
    """image ``[1, 3, H, W]`` in [0, 1] -> f8, f4, pix_feat, key, shrinkage, selection."""

    def __init__(self, model: Cutie):
        super().__init__()
        self.model = model

    def forward(self, image):
        return self.model.encode_image(image)


class MaskEncoderGraph(nn.Module):
    """image, pix_feat ``[1, C, h, w]``, sensory ``[1, K, C, h, w]``, masks ``[1, K, H, W]``
    -> mask_value ``[1, K, C, h, w]``, new_sensory, obj_summaries ``[1, K, Q, C + 1]``."""

    def __init__(self, model: Cutie):
        super().__init__()
        self.model = model

    def forward(self, image, pix_feat, sensory, masks):
        return self.model.encode_mask(image, pix_feat, sensory, masks)


class MemoryReadoutGraph(nn.Module):
    """Top-k readout + pixel fusion + object transformer for the objects of one bucket.

    Inputs: key/selection ``[1, Ck, h, w]``, pix_feat ``[1, C, h, w]``, memory_key ``[1, Ck, N]``,
    memory_shrinkage ``[1, 1, N]``, memory_value ``[1, K, C, N]``, memory_valid bool ``[1, N]``,
    sensory ``[1, K, C, h, w]``, last_mask ``[1, K, H, W]``, obj_memory ``[1, K, Q, C + 1]``.
    Output: readout ``[1, K, C, h, w]``.
    ``readout_fn`` is the seam for the top-k attention: standard ONNX ops by default
    (:func:`~vosrt.kernels.readout.topk_readout_gather`: MatMul / TopK / Softmax / Gather /
    MatMul), or a custom op.
    """

    def __init__(self, model: Cutie, top_k: int, readout_fn: Callable = topk_readout_gather):
        super().__init__()
        self.model = model
        self.top_k = top_k
        self.readout_fn = readout_fn

    def forward(self, key, selection, pix_feat, memory_key, memory_shrinkage, memory_value, memory_valid,
                sensory, last_mask, obj_memory):
        return self.model.read_memory(key, selection, pix_feat, memory_key, memory_shrinkage, memory_value,
                                      memory_valid, sensory, last_mask, obj_memory, self.top_k, self.readout_fn)


class MemoryUsageGraph(nn.Module):
    """How much one bucket's readout uses each memory token, for the long-term memory.

    Inputs: key/selection ``[1, Ck, h, w]``, memory_key ``[1, Ck, N]``, memory_shrinkage
    ``[1, 1, N]``, memory_valid bool ``[1, N]`` (as :class:`MemoryReadoutGraph`).
    Output: memory_usage ``[1, N]`` float32, each token's top-k attention weight summed over the
    query pixels, computed by ``usage_fn`` (default
    :func:`~vosrt.kernels.readout.topk_usage_scatter`). No weights.
    """

    def __init__(self, top_k: int, usage_fn: Callable = topk_usage_scatter):
        super().__init__()
        self.top_k = top_k
        self.usage_fn = usage_fn

    def forward(self, key, selection, memory_key, memory_shrinkage, memory_valid):
        return self.usage_fn(key.flatten(2), selection.flatten(2), memory_key, memory_shrinkage, memory_valid,
                             self.top_k)


class MaskDecoderGraph(nn.Module):
    """f8, f4, readout ``[1, K, C, h, w]``, sensory -> new_sensory, prob ``[1, K + 1, H, W]``."""

    def __init__(self, model: Cutie):
        super().__init__()
        self.model = model

    def forward(self, f8, f4, readout, sensory):
        return self.model.decode(f8, f4, readout, sensory)


def example_inputs(model: Cutie, name: str, size: tuple[int, int], num_objects: int, capacity: int) -> tuple:
    """Random inputs of the right shapes and dtypes for graph ``name`` (for export and checks)."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    H, W = size
    h, w, k = H // 16, W // 16, num_objects
    n = capacity * h * w

    def rand(*shape):
        return torch.rand(*shape, generator=g)

    image, pix_feat = rand(1, 3, H, W), rand(1, cfg.embed_dim, h, w) - 0.5
    sensory = rand(1, k, cfg.sensory_dim, h, w) - 0.5
    if name == "image_encoder":
        return (image,)
    if name == "mask_encoder":
        return image, pix_feat, sensory, rand(1, k, H, W)
    if name in ("memory_readout", "memory_usage"):
        valid = torch.zeros(1, n, dtype=torch.bool)
        valid[:, : max(1, capacity - 1) * h * w] = True
        key, selection = rand(1, cfg.key_dim, h, w) - 0.5, rand(1, cfg.key_dim, h, w)
        memory_key, memory_shrinkage = rand(1, cfg.key_dim, n) - 0.5, 1 + rand(1, 1, n)
        if name == "memory_usage":
            return key, selection, memory_key, memory_shrinkage, valid
        obj_memory = rand(1, k, cfg.num_queries, cfg.embed_dim + 1)
        return (key, selection, pix_feat, memory_key, memory_shrinkage, rand(1, k, cfg.value_dim, n) - 0.5, valid,
                sensory, rand(1, k, H, W), obj_memory)
    if name == "mask_decoder":
        ms = cfg.ms_dims
        return rand(1, ms[1], 2 * h, 2 * w) - 0.5, rand(1, ms[2], 4 * h, 4 * w) - 0.5, \
            rand(1, k, cfg.embed_dim, h, w) - 0.5, sensory
    raise KeyError(name)


def graph_modules(model: Cutie, top_k: int, readout_fn: Callable = topk_readout_gather,
                  usage_fn: Callable = topk_usage_scatter) -> dict[str, nn.Module]:
    """The graphs over one shared ``model``, in eval mode (an exporter restores the
    wrappers' mode afterwards, which would otherwise switch BatchNorm to training).
    ``readout_fn``/``usage_fn``: the top-k formulations (defaults: the ones exported)."""
    graphs = {"image_encoder": ImageEncoderGraph(model), "mask_encoder": MaskEncoderGraph(model),
              "memory_readout": MemoryReadoutGraph(model, top_k, readout_fn),
              "memory_usage": MemoryUsageGraph(top_k, usage_fn), "mask_decoder": MaskDecoderGraph(model)}
    return {name: graph.eval() for name, graph in graphs.items()}
