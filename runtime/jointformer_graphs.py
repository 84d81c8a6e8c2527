"""The stateless stages of JointFormer as the runtime calls them, and the eager torch backend.

Every backend implements :class:`JointFormerGraphs` over torch tensors on its device; the
session's memory logic (:mod:`.jointformer_session`) is shared by all of them. Shapes as in
:class:`vosrt.models.jointformer.JointFormer`'s stage methods.
"""
from __future__ import annotations

from typing import Protocol

import torch

from vosrt.models.jointformer import JointFormer, TopKConfig


class JointFormerGraphs(Protocol):
    device: torch.device

    def initial_summary(self, num_objects: int) -> torch.Tensor: ...

    def encode_query(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def encode_reference(self, image: torch.Tensor, masks: torch.Tensor,
                         summary: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def propagate(self, tokens: torch.Tensor, ref_keys: torch.Tensor, ref_values: torch.Tensor,
                  ref_valid: torch.Tensor) -> torch.Tensor: ...

    def decode(self, f16: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor,
               summary: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class TorchJointFormerGraphs:
    """Eager PyTorch backend: the stages run directly on a :class:`JointFormer` module with the
    session's top-K options."""

    def __init__(self, model: JointFormer, device: torch.device | str, topk: TopKConfig):
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.topk = topk

    @torch.inference_mode()
    def initial_summary(self, num_objects):
        return self.model.initial_summary(num_objects)

    @torch.inference_mode()
    def encode_query(self, image):
        return self.model.encode_query(image)

    @torch.inference_mode()
    def encode_reference(self, image, masks, summary):
        return self.model.encode_reference(image, masks, summary, self.topk)

    @torch.inference_mode()
    def propagate(self, tokens, ref_keys, ref_values, ref_valid):
        return self.model.propagate(tokens, ref_keys, ref_values, ref_valid, self.topk)

    @torch.inference_mode()
    def decode(self, f16, f8, f4, summary):
        return self.model.decode(f16, f8, f4, summary, self.topk)
