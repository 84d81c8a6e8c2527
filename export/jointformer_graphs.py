"""JointFormer split into stateless graphs with named inputs and outputs (the four stages of
:class:`vosrt.models.jointformer.JointFormer`; see :mod:`.cutie_graphs` for Cutie's).

Symbols: K objects, H x W padded image (multiple of 16), hw = H/16 * W/16 tokens, L = 11
joint blocks, M = cache slots x hw reference tokens. The per-block reference keys/values
(``ref_keys``/``ref_values`` ``[L, K, 12, tokens, 64]``) are what the runtime caches.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from vosrt.models.jointformer import JointFormer, TopKConfig

from .cutie_graphs import GraphSpec

_IMAGE = {2: "H", 3: "W"}
_SKIPS = {"f8": {2: "h8", 3: "w8"}, "f4": {2: "h4", 3: "w4"}}
_CACHE = {1: "K", 3: "M"}

SPECS = {
    "query_encoder": GraphSpec(
        "query_encoder", ("image",), ("f8", "f4", "tokens"),
        {"image": _IMAGE, **_SKIPS, "tokens": {1: "hw"}}),
    "reference_encoder": GraphSpec(
        "reference_encoder", ("image", "masks", "summary"), ("ref_keys", "ref_values", "new_summary"),
        {"image": _IMAGE, "masks": {0: "K", 1: "H", 2: "W"}, "summary": {0: "K"},
         "ref_keys": {1: "K", 3: "hw"}, "ref_values": {1: "K", 3: "hw"}, "new_summary": {0: "K"}}),
    "joint_propagation": GraphSpec(
        "joint_propagation", ("tokens", "ref_keys", "ref_values", "ref_valid"), ("f16",),
        {"tokens": {1: "hw"}, "ref_keys": _CACHE, "ref_values": _CACHE, "ref_valid": {0: "K", 1: "M"},
         "f16": {0: "K", 1: "hw"}}),
    "decoder": GraphSpec(
        "decoder", ("f16", "f8", "f4", "summary"), ("prob", "new_summary"),
        {"f16": {0: "K", 1: "hw"}, **_SKIPS, "summary": {0: "K"}, "prob": {0: "K+1", 1: "H", 2: "W"},
         "new_summary": {0: "K"}}),
}


class _Stage(nn.Module):
    """One stage method of a shared :class:`JointFormer`, called with fixed trailing ``options``."""

    def __init__(self, model: JointFormer, stage: str, options: tuple):
        super().__init__()
        self.model, self.stage, self.options = model, stage, options

    def forward(self, *inputs):
        return getattr(self.model, self.stage)(*inputs, *self.options)


def graph_modules(model: JointFormer, topk: TopKConfig, joint_attention: Callable | None = None
                  ) -> dict[str, nn.Module]:
    """The four graphs over one shared ``model`` in eval mode. ``joint_attention``: what computes
    the top-K filtered joint blocks' attention (default: the model's standard-op formulation;
    :func:`vosrt.kernels.custom_ops.topk_joint_attention_op` exports one custom node per block)."""
    propagate = (topk,) if joint_attention is None else (topk, joint_attention)
    stages = {"query_encoder": ("encode_query", ()), "reference_encoder": ("encode_reference", (topk,)),
              "joint_propagation": ("propagate", propagate), "decoder": ("decode", (topk,))}
    return {name: _Stage(model.eval(), stage, options).eval() for name, (stage, options) in stages.items()}


def architecture(model: JointFormer) -> dict:
    """What the manifest records of the network: the block depths read from the checkpoint."""
    return {"update_block_depth": len(model.convmae.blocks4), "enhance_block_depth": len(model.convmae.blocks5)}


def example_inputs(model: JointFormer, name: str, size: tuple[int, int], num_objects: int, capacity: int) -> tuple:
    """Random inputs of the right shapes and dtypes for graph ``name`` (for export and checks);
    ``capacity``: cache slots (frames) per object, the last one left empty."""
    g = torch.Generator().manual_seed(0)
    H, W = size
    hw, k = (H // 16) * (W // 16), num_objects
    dim, heads = model.convmae.norm.normalized_shape[0], model.num_heads
    blocks = len(model.convmae.blocks3)

    def rand(*shape):
        return torch.rand(*shape, generator=g)

    image, summary = rand(1, 3, H, W), rand(k, 1, dim) - 0.5
    if name == "query_encoder":
        return (image,)
    if name == "reference_encoder":
        return image, rand(k, H, W), summary
    tokens = rand(1, hw, dim) - 0.5
    if name == "joint_propagation":
        m = capacity * hw
        valid = torch.ones(k, m, dtype=torch.bool)
        valid[:, (capacity - 1) * hw if capacity > 1 else m:] = False
        return tokens, rand(blocks, k, heads, m, dim // heads) - 0.5, rand(blocks, k, heads, m, dim // heads) - 0.5, valid
    if name == "decoder":
        d8, d4 = model.decoder.up_16_8.skip_conv.in_channels, model.decoder.up_8_4.skip_conv.in_channels
        return rand(k, hw, dim) - 0.5, rand(1, d8, H // 8, W // 8) - 0.5, rand(1, d4, H // 4, W // 4) - 0.5, summary
    raise KeyError(name)
