"""JointFormer's mask decoder (official ``modules.Decoder``): per-object features at strides
16/8/4 -> mask logits, plus the multi-scale "fusion feature" that updates the object's
compressed-memory token.

Per-object maps are ``[BK, C, H, W]``: the K objects of each of B frames, frame after frame.
The skip features f8/f4 depend only on the image and are passed once per frame
(``[B, C, H, W]``): they broadcast over the frame's objects.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResBlock(nn.Module):
    """Pre-activation residual block; a 3x3 convolution matches channels on the skip path."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_dim, out_dim, 3, padding=1)
        self.conv2 = nn.Conv2d(out_dim, out_dim, 3, padding=1)
        self.downsample = nn.Conv2d(in_dim, out_dim, 3, padding=1) if in_dim != out_dim else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(F.relu(x))))
        return out + (x if self.downsample is None else self.downsample(x))


class _SpatialConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3)


class ChannelGate(nn.Module):
    """Scales channels by ``sigmoid(mlp(avg pool) + mlp(max pool))``."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        # Indices 1 and 3 as in the official Sequential(Flatten, Linear, ReLU, Linear).
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(channels, channels // reduction), nn.ReLU(),
                                 nn.Linear(channels // reduction, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3)))
        return x * torch.sigmoid(scores)[:, :, None, None]


class SpatialGate(nn.Module):
    """Scales positions by ``sigmoid(conv7x7([channel max, channel mean]))``."""

    def __init__(self):
        super().__init__()
        self.spatial = _SpatialConv()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial.conv(pooled))


class CBAM(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.ChannelGate = ChannelGate(channels)
        self.SpatialGate = SpatialGate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.SpatialGate(self.ChannelGate(x))


class FeatureFusionBlock(nn.Module):
    """[f16, enhanced f16] -> ``[K, out_dim, h, w]`` (residual blocks around CBAM)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.block1 = ResBlock(in_dim, out_dim)
        self.attention = CBAM(out_dim)
        self.block2 = ResBlock(out_dim, out_dim)

    def forward(self, f16: torch.Tensor, enhanced_f16: torch.Tensor) -> torch.Tensor:
        g = self.block1(torch.cat([f16, enhanced_f16], dim=1))
        return self.block2(g + self.attention(g))


class UpsampleBlock(nn.Module):
    """Skip feature (3x3 conv) + bilinearly upsampled (x2) decoder feature, then a residual block."""

    def __init__(self, skip_dim: int, up_dim: int, out_dim: int):
        super().__init__()
        self.skip_conv = nn.Conv2d(skip_dim, up_dim, 3, padding=1)
        self.out_conv = ResBlock(up_dim, out_dim)

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """skip ``[B, C, 2h, 2w]``, up ``[BK, C', h, w]`` -> ``[BK, out_dim, 2h, 2w]``."""
        up = F.interpolate(up, scale_factor=2.0, mode="bilinear", align_corners=False)
        skip = self.skip_conv(skip)
        return self.out_conv((up.unflatten(0, (skip.shape[0], -1)) + skip[:, None]).flatten(0, 1))


class FeatureFuser(nn.Module):
    """Decoder features at strides 16/8/4 -> ``[K, 3 * hidden, h, w]`` (1x1 convs after area pooling)."""

    def __init__(self, dims: tuple[int, int, int], hidden: int):
        super().__init__()
        self.g16_conv = nn.Conv2d(dims[0], hidden, 1)
        self.g8_conv = nn.Conv2d(dims[1], hidden, 1)
        self.g4_conv = nn.Conv2d(dims[2], hidden, 1)

    def forward(self, g16: torch.Tensor, g8: torch.Tensor, g4: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.g16_conv(g16), self.g8_conv(F.avg_pool2d(g8, 2)), self.g4_conv(F.avg_pool2d(g4, 4))],
                         dim=1)


class Decoder(nn.Module):
    def __init__(self, f16_dim: int = 768, f8_dim: int = 384, f4_dim: int = 256, hidden: int = 256):
        super().__init__()
        self.fuser_16 = FeatureFusionBlock(2 * f16_dim, f8_dim)
        self.up_16_8 = UpsampleBlock(f8_dim, f8_dim, f4_dim)
        self.up_8_4 = UpsampleBlock(f4_dim, f4_dim, hidden)
        self.pred = nn.Conv2d(hidden, 1, 3, padding=1)
        self.fuser_all = FeatureFuser((f8_dim, f4_dim, hidden + 1), hidden)

    def forward(self, f16: torch.Tensor, enhanced_f16: torch.Tensor, f8: torch.Tensor,
                f4: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f16/enhanced_f16 ``[BK, C16, h, w]``, f8 ``[B, C8, 2h, 2w]``, f4 ``[B, C4, 4h, 4w]``
        -> (logits ``[BK, 16h, 16w]``, fusion feature ``[BK, 3 * hidden, h, w]``)."""
        g16 = self.fuser_16(f16, enhanced_f16)
        g8 = self.up_16_8(f8, g16)
        g4 = self.up_8_4(f4, g8)
        logits = self.pred(F.relu(g4))
        fusion = self.fuser_all(g16, g8, torch.cat([g4, logits], dim=1))
        logits = F.interpolate(logits, scale_factor=4.0, mode="bilinear", align_corners=False)
        return logits[:, 0], fusion
