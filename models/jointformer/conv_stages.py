"""Convolutional stages of the ConvMAE backbone: patch embeddings and ConvMAE's conv blocks.

Feature maps are ``[B, C, H, W]``; layer norms run over channels (channels-last inside).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def channel_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the channels of ``[B, C, H, W]``."""
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` convolution, channel LayerNorm, GELU:
    ``[B, Cin, H, W]`` -> ``[B, C, H / patch, W / patch]``."""

    def __init__(self, in_ch: int, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_ch, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(channel_norm(self.norm, self.proj(x)))


class ConvMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ConvBlock(nn.Module):
    """ConvMAE's convolutional block: a 5x5 depth-wise convolution between two 1x1 ones
    in place of attention, then a 1x1 MLP; both residual. ``[B, C, H, W]`` in and out."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.attn = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.conv2(self.attn(self.conv1(channel_norm(self.norm1, x))))
        return x + self.mlp(channel_norm(self.norm2, x))
