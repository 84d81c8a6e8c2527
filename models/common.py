"""What both networks share: fp32 regions, the ImageNet normalisation, Cutie/XMem's soft aggregation
and the softmax over its channels."""
from __future__ import annotations

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def fp32_region(x: torch.Tensor):
    """A context with autocast off on ``x``'s device: the parts the official code runs in fp32
    under AMP (``autocast(enabled=False)`` there). Values enter it through :func:`to_fp32`."""
    return torch.autocast(x.device.type, enabled=False)


def to_fp32(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a new fp32 tensor: how a value enters an :func:`fp32_region`. A copy even when
    ``x`` is fp32 already, so that an ONNX trace records the entry as a Cast of ``x`` (where the
    fp16 export starts an fp32 island, see :mod:`vosrt.export.fp16`); ``x.float()`` would return
    ``x`` itself, and the trace would count every later use of ``x`` as inside the region."""
    return x.to(torch.float32, copy=True)


def aggregate(prob: torch.Tensor, dim: int) -> torch.Tensor:
    """Soft aggregation: per-object probabilities -> logits with a background channel first, in
    fp32 (an fp32 region in the official code: in fp16, 1 - 1e-7 rounds to 1 and the logits of
    confident pixels become infinite)."""
    with fp32_region(prob):
        prob = to_fp32(prob)
        bg = torch.prod(1 - prob, dim=dim, keepdim=True)
        new_prob = torch.cat([bg, prob], dim).clamp(1e-7, 1 - 1e-7)
        return torch.log(new_prob / (1 - new_prob))


def channel_softmax(logits: torch.Tensor) -> torch.Tensor:
    """``torch.softmax(logits, dim=1)`` of ``[B, C, H, W]`` logits. Exported as Exp, ReduceMax,
    ReduceSum and Div: ONNX Runtime's Softmax on a non-last axis transposes in and out, 5x slower
    (19 ms against 4 ms on 2 CPU threads for 3x480x864); the results differ by rounding only."""
    if not torch.onnx.is_in_onnx_export():
        return torch.softmax(logits, dim=1)
    e = torch.exp(logits - logits.amax(dim=1, keepdim=True))
    return e / e.sum(dim=1, keepdim=True)


class ImageNormalization(torch.nn.Module):
    """RGB in [0, 1] ``[B, 3, H, W]`` -> normalised with the ImageNet mean and std (no checkpoint keys)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.mean) / self.std
