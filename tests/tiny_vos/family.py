"""The tiny model as a vosrt model family: four stages, its memory symbol ``T``, its session.

Symbols besides the frame ones: ``C`` feature channels, ``Ck`` key channels, ``Cv`` value
channels, ``T`` memory tokens (frames x hw)."""
from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from vosrt.runtime.family import Fp16Policy, ModelFamily
from vosrt.runtime.stages import StageSpec, TensorSpec

from .network import TinyVOS
from .session import TinySession

IMAGE = TensorSpec("image", ("B", 3, "H", "W"), values=(0.0, 1.0))
KEY, FEATURES = TensorSpec("key", ("B", "Ck", "h", "w")), TensorSpec("features", ("B", "C", "h", "w"))
READOUT = TensorSpec("readout", ("B", "K", "Cv", "h", "w"))

STAGES = {stage.name: stage for stage in (
    StageSpec("image_encoder", "encode_image", (IMAGE,), (KEY, FEATURES)),
    StageSpec("mask_encoder", "encode_mask", (IMAGE, TensorSpec("masks", ("B", "K", "H", "W"), values=(0.0, 1.0))),
              (TensorSpec("value", ("B", "K", "Cv", "h", "w")),)),
    StageSpec("memory_readout", "read_memory",
              (KEY, TensorSpec("memory_key", ("B", "Ck", "T"), memory=True),
               TensorSpec("memory_value", ("B", "K", "Cv", "T"), memory=True),
               TensorSpec("memory_valid", ("B", "T"), dtype="bool", memory=True)),
              (READOUT,)),
    StageSpec("decoder", "decode", (FEATURES, READOUT), (TensorSpec("prob", ("B", "K+1", "H", "W")),)),
)}


class TinyFamily(ModelFamily):
    stages = STAGES
    memory_symbol = "T"
    session_type = TinySession
    fp16_policy = Fp16Policy()

    def build_network(self, variant: str, state_dict=None) -> nn.Module:
        return TinyVOS()

    def network_for(self, architecture: Mapping[str, Any]) -> nn.Module:
        return TinyVOS(**architecture)

    def architecture(self, network: TinyVOS) -> dict:
        return {"channels": network.channels, "key_dim": network.key_dim, "value_dim": network.value_dim}

    def sizes(self, architecture: Mapping[str, Any]) -> dict[str, int]:
        return {"C": architecture["channels"], "Ck": architecture["key_dim"], "Cv": architecture["value_dim"]}

    def stage_options(self, settings: Mapping[str, Any], formulation: str) -> dict[str, dict]:
        return {}

    def memory_frames(self, max_mem_frames: int) -> int:
        return max_mem_frames


FAMILY = TinyFamily()
