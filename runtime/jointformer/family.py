"""JointFormer as a model family: its four stages, the top-K formulations of the joint blocks,
and its session.

Symbols (besides the frame symbols of :mod:`vosrt.runtime.stages`): ``M`` cached tokens, ``Dm`` token channels,
``L`` joint blocks, ``Hd`` heads of ``D`` channels, ``C8``/``C4`` skip-feature channels.
The per-block reference keys/values (``[L, K, Hd, M, D]``) are what the session caches.

Streams: the image stages take ``B`` frames, the per-object tensors ``BK`` rows (the ``K``
objects of each stream, stream after stream; the encoders and the decoder need the same ``K``
for every stream of a call). The joint propagation's rows are independent (each object reads
its own bucket's cache with its own copy of the frame's tokens), so one call can take the
buckets of streams with different object counts.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from vosrt import kernels
from vosrt.kernels import custom_ops
from vosrt.models.jointformer.backbone import DEPTHS, EMBED_DIMS, NUM_HEADS
from vosrt.models.jointformer.model import JointFormer
from vosrt.models.jointformer.topk import TopKConfig

from ..family import Fp16Policy, ModelFamily
from ..stages import StageSpec, TensorSpec
from .reference_cache import ReferenceCache
from .session import JointFormerSession

IMAGE = TensorSpec("image", ("B", 3, "H", "W"), values=(0.0, 1.0))
F8, F4 = TensorSpec("f8", ("B", "C8", "h8", "w8")), TensorSpec("f4", ("B", "C4", "h4", "w4"))
SUMMARY = TensorSpec("summary", ("BK", 1, "Dm"))
F16 = TensorSpec("f16", ("BK", "hw", "Dm"))
CACHE = ("L", "BK", "Hd", "M", "D")

STAGES = {stage.name: stage for stage in (
    StageSpec("query_encoder", "encode_query", (IMAGE,), (F8, F4, TensorSpec("tokens", ("B", "hw", "Dm")))),
    StageSpec("reference_encoder", "encode_reference",
              (IMAGE, TensorSpec("masks", ("B", "K", "H", "W"), values=(0.0, 1.0)), SUMMARY),
              (TensorSpec("ref_keys", ("L", "BK", "Hd", "hw", "D")), TensorSpec("ref_values", ("L", "BK", "Hd", "hw", "D")),
               TensorSpec("new_summary", SUMMARY.shape))),
    StageSpec("joint_propagation", "propagate",
              (TensorSpec("tokens", ("BK", "hw", "Dm")), TensorSpec("ref_keys", CACHE, memory=True),
               TensorSpec("ref_values", CACHE, memory=True), TensorSpec("ref_valid", ("BK", "M"), dtype="bool", memory=True)),
              (F16,), selects_top_k=True),
    StageSpec("decoder", "decode", (F16, F8, F4, SUMMARY),
              (TensorSpec("prob", ("B", "K+1", "H", "W")), TensorSpec("new_summary", SUMMARY.shape))),
)}

_ATTENTION = {"eager": kernels.topk_joint_attention, "graph": kernels.topk_joint_attention,
              "reference": kernels.topk_joint_attention_reference, "custom_ops": custom_ops.topk_joint_attention_op}


class JointFormerFamily(ModelFamily):
    stages = STAGES
    memory_symbol = "M"
    session_type = JointFormerSession
    # Every attention's scores from their q.k MatMul on (the top-K and the softmax over [current-frame ;
    # kept reference] scores), and the soft aggregation from the decoder's last conv on; q, k and the
    # layers before them run in fp16.
    # Tolerances: about 3x the worst max |fp16 graph - eager fp32| / max |eager fp32| measured on ONNX
    # Runtime (CPU) with random inputs, 96x128 to 240x320, 1-3 objects, standard ops and custom ops (in
    # brackets). 2-3% of the (block, head, token) rows of joint_propagation keep another top-K set than
    # fp32: q and k come from fp16 layers.
    fp16_policy = Fp16Policy(scores_of=("TopK", "Softmax"), tolerances={
        "query_encoder.f8": 3e-3, "query_encoder.f4": 3e-3, "query_encoder.tokens": 3e-3,  # [8.6e-4 6.0e-4 1.0e-3]
        "reference_encoder.ref_keys": 4e-3, "reference_encoder.ref_values": 4e-3,  # [1.0e-3 1.2e-3]
        "reference_encoder.new_summary": 4e-3,  # [1.1e-3]
        "joint_propagation.f16": 1e-2,  # [3.6e-3]
        "decoder.prob": 3e-3, "decoder.new_summary": 3e-3,  # [7.8e-4 9.0e-4]
    })

    def build_network(self, variant: str, state_dict=None) -> nn.Module:
        return JointFormer.for_state_dict(state_dict) if state_dict is not None else JointFormer()

    def network_for(self, architecture: Mapping[str, Any]) -> nn.Module:
        return JointFormer(**architecture)

    def architecture(self, network: JointFormer) -> dict:
        """The block depths, read from the checkpoint."""
        return {"update_block_depth": len(network.convmae.blocks4),
                "enhance_block_depth": len(network.convmae.blocks5)}

    def sizes(self, architecture: Mapping[str, Any]) -> dict[str, int]:
        c4, c8, dm = EMBED_DIMS
        return {"Dm": dm, "L": DEPTHS[2], "Hd": NUM_HEADS, "D": dm // NUM_HEADS, "C8": c8, "C4": c4}

    def stage_options(self, settings: Mapping[str, Any], formulation: str) -> dict[str, dict]:
        topk = TopKConfig(**settings)
        if formulation == "compiled":  # the torch library op (imports triton)
            from vosrt.kernels.torch_ops import joint_attention as attention
        else:
            attention = _ATTENTION[formulation]
        return {"reference_encoder": {"topk": topk}, "decoder": {"topk": topk},
                "joint_propagation": {"topk": topk, "attention": attention}}

    def memory_frames(self, max_mem_frames: int) -> int:
        """The reference-cache slots, the ``include_last`` slot counted."""
        return ReferenceCache.slot_count(max_mem_frames, include_last=True)


    def constants(self, network: JointFormer) -> dict[str, torch.Tensor]:
        """The compressed-memory token of a new object ``[1, 1, Dm]`` (the learned ``cls_token``)."""
        return {"initial_summary": network.initial_summary(1).detach()}

    def check_export(self, settings: Mapping[str, Any], custom_ops: bool) -> None:
        topk = TopKConfig(**settings)
        if topk.topk_range != "all_frames":
            raise ValueError("JointFormer exports with topk_range='all_frames' only in this version")
        if custom_ops and not topk.filtered_blocks():
            raise ValueError("--custom-ops makes each top-K filtered joint block one node, and topk_block='None' "
                             "filters none: export without --custom-ops")


FAMILY = JointFormerFamily()
