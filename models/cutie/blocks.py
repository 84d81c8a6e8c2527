"""Convolutional building blocks of Cutie.

Tensors that carry one feature map per object ("grouped") have shape
``[B, K, C, H, W]`` (K = number of objects); shared ones ``[B, C, H, W]``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vosrt.models.common import fp32_region, to_fp32


def per_object(fn, g: torch.Tensor) -> torch.Tensor:
    """Apply a ``[N, C, H, W]`` function to every object of a ``[B, K, C, H, W]`` tensor."""
    b, k = g.shape[:2]
    out = fn(g.flatten(0, 1))
    return out.view(b, k, *out.shape[1:])


def upsample2x(g: torch.Tensor) -> torch.Tensor:
    """Bilinear x2 (align_corners=False) of a grouped tensor."""
    return per_object(lambda x: F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False), g)


def area_downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Area (box) downsampling by an integer factor; sizes must divide (they are multiples of 16)."""
    if factor == 1:
        return x
    if x.dim() == 5:
        return per_object(lambda t: F.avg_pool2d(t, factor), x)
    return F.avg_pool2d(x, factor)


class GConv2d(nn.Conv2d):
    """A Conv2d applied independently to every object of a grouped tensor."""

    def forward(self, g: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return per_object(super().forward, g)


class GroupResBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.downsample = nn.Identity() if in_dim == out_dim else GConv2d(in_dim, out_dim, 1)
        self.conv1 = GConv2d(in_dim, out_dim, 3, padding=1)
        self.conv2 = GConv2d(out_dim, out_dim, 3, padding=1)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(F.relu(g))))
        return out + self.downsample(g)


class CAResBlock(nn.Module):
    """Residual block with ECA-style channel attention, on ``[N, C, H, W]``."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_dim, out_dim, 3, padding=1)
        self.conv2 = nn.Conv2d(out_dim, out_dim, 3, padding=1)
        t = int((abs(math.log2(out_dim)) + 1) // 2)
        k = t if t % 2 else t + 1
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)
        self.downsample = nn.Identity() if in_dim == out_dim else nn.Conv2d(in_dim, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = x
        x = self.conv2(F.relu(self.conv1(F.relu(x))))
        w = x.mean(dim=(2, 3)).unsqueeze(1)  # [N, 1, C]
        w = self.conv(w).transpose(1, 2).unsqueeze(-1).sigmoid()  # [N, C, 1, 1]
        return x * w + self.downsample(r)


class _AddDistributor(nn.Module):
    """Projects shared features ``x`` and grouped features ``g`` and adds them (key names: distributor.*)."""

    def __init__(self, x_dim: int, g_dim: int, out_dim: int):
        super().__init__()
        self.x_transform = nn.Conv2d(x_dim, out_dim, 1)
        self.g_transform = GConv2d(g_dim, out_dim, 1)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return self.x_transform(x).unsqueeze(1) + self.g_transform(g)


class GroupFeatureFusionBlock(nn.Module):
    """Fuses shared ``[B, Cx, H, W]`` with grouped ``[B, K, Cg, H, W]`` -> ``[B, K, out, H, W]``."""

    def __init__(self, x_dim: int, g_dim: int, out_dim: int):
        super().__init__()
        self.distributor = _AddDistributor(x_dim, g_dim, out_dim)
        self.block1 = CAResBlock(out_dim, out_dim)
        self.block2 = CAResBlock(out_dim, out_dim)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        g = self.distributor(x, g)
        return per_object(lambda t: self.block2(self.block1(t)), g)


def gru_update(h: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """GRU-like sensory update: ``values`` holds [forget, update, candidate] along dim 2."""
    forget, update, candidate = values.chunk(3, dim=2)
    forget, update = torch.sigmoid(forget), torch.sigmoid(update)
    return forget * h * (1 - update) + update * torch.tanh(candidate)


class SensoryDeepUpdater(nn.Module):
    """Sensory update from the mask encoder's value features (both ``[B, K, C, H, W]``)."""

    def __init__(self, f_dim: int, sensory_dim: int):
        super().__init__()
        self.transform = GConv2d(f_dim + sensory_dim, sensory_dim * 3, 3, padding=1)

    def forward(self, g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        with fp32_region(g):
            g, h = to_fp32(g), to_fp32(h)
            return gru_update(h, self.transform(torch.cat([g, h], dim=2)))


class SensoryUpdater(nn.Module):
    """Sensory update from the decoder's features at strides 16, 8 and 4."""

    def __init__(self, g_dims: list[int], mid_dim: int, sensory_dim: int):
        super().__init__()
        self.g16_conv = GConv2d(g_dims[0], mid_dim, 1)
        self.g8_conv = GConv2d(g_dims[1], mid_dim, 1)
        self.g4_conv = GConv2d(g_dims[2], mid_dim, 1)
        self.transform = GConv2d(mid_dim + sensory_dim, sensory_dim * 3, 3, padding=1)

    def forward(self, g16: torch.Tensor, g8: torch.Tensor, g4: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        g = self.g16_conv(g16) + self.g8_conv(area_downsample(g8, 2)) + self.g4_conv(area_downsample(g4, 4))
        with fp32_region(g):
            g, h = to_fp32(g), to_fp32(h)
            return gru_update(h, self.transform(torch.cat([g, h], dim=2)))


class MaskUpsampleBlock(nn.Module):
    """x2 upsampling of grouped features plus a shared skip connection."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.out_conv = GroupResBlock(in_dim, out_dim)

    def forward(self, g: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.out_conv(upsample2x(g) + skip.unsqueeze(1))
