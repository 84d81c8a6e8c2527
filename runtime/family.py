"""What a model family (Cutie, JointFormer) provides to the runtime and the exporters.

A family knows its network, its stages (:mod:`.stages`), which formulation of the top-K
attention each stage runs, what an export fixes, and how to make a session. Each family's
``runtime/<family>/family.py`` defines one instance, ``FAMILY``, that the registry points to.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import nn

from .stages import STREAM_AXES, StageSpec, frame_sizes

if TYPE_CHECKING:
    from .backends.base import Backend
    from .config import SessionConfig
    from .session import Session

# How a stage computes its top-K attention: "eager" (the dispatchers: the Triton kernels on CUDA,
# the torch reference elsewhere), "graph" (standard ONNX ops, what an export holds), "reference"
# (the official formulation, what exports are verified against), "custom_ops" (one custom ONNX node),
# "compiled" (the torch library ops of kernels/torch_ops.py: torch.compile and AOTInductor).
FORMULATIONS = ("eager", "graph", "reference", "custom_ops", "compiled")


@dataclass(frozen=True)
class Fp16Policy:
    """A family's fp16 graphs. What they keep in fp32 besides what every fp16 graph keeps (the
    model's own fp32 regions, autocast's fp32 ops: see :mod:`vosrt.export.fp16`): the scores
    that each ``scores_of`` op ranks or normalises, from the ``scores_from`` ops that compute
    them (included) on. ``tolerances``: how far each output may be from the eager fp32 model,
    ``{"stage.output": max |error| / max |eager|}`` (``vosrt verify``'s defaults for fp16
    graphs, set from measurements)."""

    scores_of: tuple[str, ...] = ()
    scores_from: tuple[str, ...] = ("MatMul", "Gemm", "Conv")
    tolerances: Mapping[str, float] = field(default_factory=dict)


class ModelFamily(ABC):
    """One network family. Subclasses declare ``stages``, ``memory_symbol`` (the dynamic symbol of
    the memory tokens in the stages' shapes: memory frames x ``hw``), ``session_type``,
    ``fp16_policy`` and ``torch_fp16`` (whether eager torch has an fp16 mode) and implement the
    abstract methods."""

    stages: Mapping[str, StageSpec]
    memory_symbol: str
    session_type: type["Session"]
    fp16_policy: Fp16Policy
    torch_fp16: bool = False

    def __init__(self) -> None:
        self.session_type.family = self  # its sessions allocate their state from these declarations

    @property
    def video_symbols(self) -> frozenset[str]:
        """The symbols whose size changes within one video: the memory tokens, the objects and the
        stream axes (the frame's symbols are fixed for a video)."""
        return frozenset({self.memory_symbol, "K", "K+1", *STREAM_AXES})

    @abstractmethod
    def build_network(self, variant: str, state_dict: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
        """The network of ``variant`` (shaped by ``state_dict`` where the checkpoint decides, e.g.
        block depths), with its initial weights: the caller loads the checkpoint."""

    @abstractmethod
    def network_for(self, architecture: Mapping[str, Any]) -> nn.Module:
        """The network an export's ``architecture`` describes (for shapes; build it on the meta device)."""

    @abstractmethod
    def architecture(self, network: nn.Module) -> dict:
        """What a manifest records of the network, enough to rebuild its shape."""

    @abstractmethod
    def sizes(self, architecture: Mapping[str, Any]) -> dict[str, int]:
        """Values of the architecture symbols of the stages' shapes (channels, blocks, heads)."""

    @abstractmethod
    def stage_options(self, settings: Mapping[str, Any], formulation: str) -> dict[str, dict]:
        """Keyword options of each stage's network method for export ``settings``
        (:meth:`SessionConfig.export_settings`) and a top-K ``formulation`` (:data:`FORMULATIONS`)."""

    @abstractmethod
    def memory_frames(self, max_mem_frames: int) -> int:
        """Frames of ``hw`` tokens in the memory inputs of a session with ``max_mem_frames``."""

    def new_session(self, backend: "Backend", config: "SessionConfig", amp: bool = False) -> "Session":
        """A session running on ``backend`` (``amp``: every step under fp16 autocast)."""
        return self.session_type(backend, config, amp=amp)

    def constants(self, network: nn.Module) -> dict[str, torch.Tensor]:
        """Tensors a session needs besides the stages (an export saves them beside its graphs)."""
        return {}

    def check_export(self, settings: Mapping[str, Any], custom_ops: bool) -> None:
        """ValueError for export settings the export does not handle."""

    def example_sizes(self, architecture: Mapping[str, Any], height: int, width: int, objects: int,
                      memory_frames: int, streams: int = 1) -> dict[str, int]:
        """Every symbol's value for a call at that size (:func:`~vosrt.runtime.stages.frame_sizes`,
        the memory's tokens and the architecture's sizes)."""
        frame = frame_sizes(height, width, objects, memory_frames, streams)
        return frame | {self.memory_symbol: memory_frames * frame["hw"]} | self.sizes(architecture)


def stage_method(network: nn.Module, stage: StageSpec, options: Mapping[str, Any]):
    """``fn(*inputs)`` running ``stage`` on ``network`` with its ``options`` -> outputs as a tuple."""
    method = getattr(network, stage.method)

    def run(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = method(*inputs, **options)
        return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)

    return run
