"""What both networks share: the ImageNet normalisation and Cutie/XMem's soft aggregation."""
from __future__ import annotations

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def aggregate(prob: torch.Tensor, dim: int) -> torch.Tensor:
    """Soft aggregation: per-object probabilities -> logits with a background channel first (fp32)."""
    prob = prob.float()
    bg = torch.prod(1 - prob, dim=dim, keepdim=True)
    new_prob = torch.cat([bg, prob], dim).clamp(1e-7, 1 - 1e-7)
    return torch.log(new_prob / (1 - new_prob))


class ImageNormalization(torch.nn.Module):
    """RGB in [0, 1] ``[B, 3, H, W]`` -> normalised with the ImageNet mean and std (no checkpoint keys)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.mean) / self.std
