"""Cutie as a model family: its five stages, their top-K formulations, and its session.

Symbols (besides the frame symbols of :mod:`vosrt.runtime.stages`): ``N`` memory tokens, ``C`` pixel/embedding
channels, ``Ck`` key channels, ``Cv`` value channels, ``Cs`` sensory channels, ``Q`` object
queries, ``C8``/``C4`` skip-feature channels. Every tensor has the stream axis ``B`` first (the
network's batch): a call for several streams stacks their frames, or for the memory stages one
bucket of each stream with the same object count.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, Mapping

from torch import nn

from vosrt import kernels
from vosrt.kernels import custom_ops
from vosrt.models.cutie.config import VARIANTS, CutieConfig
from vosrt.models.cutie.model import Cutie

from ..family import Fp16Policy, ModelFamily
from ..stages import StageSpec, TensorSpec
from .session import CutieSession

UNIT = (0.0, 1.0)
# Object memory holds [sums, area] of the same weights, so a summary sum / area is a weighted mean of
# features; independent draws from (0, 1) made that mean up to 50x any feature (areas near 0), which
# no session produces. From (0.5, 1) the means stay within (0.5, 2).
OBJECT_MEMORY = (0.5, 1.0)
IMAGE = TensorSpec("image", ("B", 3, "H", "W"), values=UNIT)
F8, F4 = TensorSpec("f8", ("B", "C8", "h8", "w8")), TensorSpec("f4", ("B", "C4", "h4", "w4"))
PIX_FEAT = TensorSpec("pix_feat", ("B", "C", "h", "w"))
KEY, SELECTION = TensorSpec("key", ("B", "Ck", "h", "w")), TensorSpec("selection", ("B", "Ck", "h", "w"), values=UNIT)
SENSORY = TensorSpec("sensory", ("B", "K", "Cs", "h", "w"))
MEMORY = (TensorSpec("memory_key", ("B", "Ck", "N"), memory=True),
          TensorSpec("memory_shrinkage", ("B", 1, "N"), values=(1.0, 2.0), memory=True))
MEMORY_VALUE = TensorSpec("memory_value", ("B", "K", "Cv", "N"), memory=True)
MEMORY_VALID = TensorSpec("memory_valid", ("B", "N"), dtype="bool", memory=True)
READOUT = TensorSpec("readout", ("B", "K", "C", "h", "w"))

STAGES = {stage.name: stage for stage in (
    StageSpec("image_encoder", "encode_image", (IMAGE,),
              (F8, F4, PIX_FEAT, KEY, TensorSpec("shrinkage", ("B", 1, "h", "w")), SELECTION)),
    StageSpec("mask_encoder", "encode_mask", (IMAGE, PIX_FEAT, SENSORY, TensorSpec("masks", ("B", "K", "H", "W"), values=UNIT)),
              (TensorSpec("mask_value", ("B", "K", "Cv", "h", "w")), TensorSpec("new_sensory", SENSORY.shape),
               TensorSpec("obj_summaries", ("B", "K", "Q", "C+1")))),
    StageSpec("memory_readout", "read_memory",
              (KEY, SELECTION, PIX_FEAT, *MEMORY, MEMORY_VALUE, MEMORY_VALID, SENSORY,
               TensorSpec("last_mask", ("B", "K", "H", "W"), values=UNIT),
               TensorSpec("obj_memory", ("B", "K", "Q", "C+1"), values=OBJECT_MEMORY)),
              (READOUT,), selects_top_k=True),
    StageSpec("memory_usage", "memory_usage", (KEY, SELECTION, *MEMORY, MEMORY_VALID),
              (TensorSpec("memory_usage", ("B", "N")),), selects_top_k=True),
    StageSpec("mask_decoder", "decode", (F8, F4, READOUT, SENSORY),
              (TensorSpec("new_sensory", SENSORY.shape), TensorSpec("prob", ("B", "K+1", "H", "W")))),
)}

# (readout, usage) per formulation. Usage has no custom op: the usage graph stays standard ops.
_TOPK = {
    "eager": (kernels.topk_readout, kernels.topk_usage),
    "graph": (kernels.topk_readout_gather, kernels.topk_usage_scatter),
    "reference": (kernels.topk_readout_reference, kernels.topk_usage_reference),
    "custom_ops": (custom_ops.topk_readout_op, kernels.topk_usage_scatter),
}


def _topk(formulation: str) -> tuple:
    """(readout, usage) of ``formulation``; "compiled" imports the torch library ops (and triton) here."""
    if formulation != "compiled":
        return _TOPK[formulation]
    from vosrt.kernels import torch_ops

    return torch_ops.topk_readout, kernels.topk_usage_scatter


class CutieFamily(ModelFamily):
    stages = STAGES
    memory_symbol = "N"
    session_type = CutieSession
    # Cutie's fp32 parts are the model's own fp32 regions (the top-K readout and usage, sensory
    # updates, object summaries, final logits and soft aggregation), which every fp16 graph keeps.
    # Tolerances: about 3x the worst max |fp16 graph - eager fp32| / max |eager fp32| measured on
    # ONNX Runtime (CPU) with random inputs, cutie-small and cutie-base, 128x192 to 480x864, 1-3
    # objects (in brackets); memory_usage is fp32 throughout.
    fp16_policy = Fp16Policy(tolerances={
        "image_encoder.f8": 3e-3, "image_encoder.f4": 3e-3, "image_encoder.pix_feat": 3e-3,  # [5.1e-4 4.3e-4 8.8e-4]
        "image_encoder.key": 3e-3, "image_encoder.shrinkage": 3e-3,  # [6.6e-4 1.0e-3]
        "image_encoder.selection": 3e-3,  # [8.2e-4]
        "mask_encoder.mask_value": 3e-3, "mask_encoder.new_sensory": 1.5e-2,  # [7.9e-4 4.1e-3]
        "mask_encoder.obj_summaries": 2e-3,  # [4.7e-4]
        "memory_readout.readout": 5e-3,  # [1.4e-3]
        "memory_usage.memory_usage": 1e-4,  # [3.6e-7]
        "mask_decoder.new_sensory": 2e-3, "mask_decoder.prob": 1e-3,  # [5.0e-4 2.8e-4]
    })
    torch_fp16 = True

    def build_network(self, variant: str, state_dict=None) -> nn.Module:
        return Cutie(VARIANTS[variant])

    def network_for(self, architecture: Mapping[str, Any]) -> nn.Module:
        return Cutie(CutieConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in architecture.items()}))

    def architecture(self, network: Cutie) -> dict:
        return asdict(network.cfg)

    def sizes(self, architecture: Mapping[str, Any]) -> dict[str, int]:
        a = architecture
        return {"C": a["embed_dim"], "C+1": a["embed_dim"] + 1, "Ck": a["key_dim"], "Cv": a["value_dim"],
                "Cs": a["sensory_dim"], "Q": a["num_queries"], "C8": a["ms_dims"][1], "C4": a["ms_dims"][2]}

    def stage_options(self, settings: Mapping[str, Any], formulation: str) -> dict[str, dict]:
        readout, usage = _topk(formulation)
        top_k = settings["top_k"]
        return {"memory_readout": {"top_k": top_k, "readout_fn": readout},
                "memory_usage": {"top_k": top_k, "usage_fn": usage}}

    def memory_frames(self, max_mem_frames: int) -> int:
        return max_mem_frames



FAMILY = CutieFamily()
