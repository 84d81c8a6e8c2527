"""A tiny memory network: stride-16 keys and features from the image, per-object values from the
image and each object's mask, attention of every pixel over the memory's keys, and a decoder that
turns each object's readout into probabilities (soft aggregation over the objects)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vosrt.models.common import aggregate

STRIDE = 16


class TinyVOS(nn.Module):
    def __init__(self, channels: int = 8, key_dim: int = 4, value_dim: int = 6):
        super().__init__()
        self.channels, self.key_dim, self.value_dim = channels, key_dim, value_dim
        self.stem = nn.Conv2d(3, channels, 1)
        self.key_proj = nn.Conv2d(channels, key_dim, 1)
        self.value_proj = nn.Conv2d(channels + 1, value_dim, 1)
        self.head = nn.Conv2d(channels + value_dim, 1, 3, padding=1)

    def encode_image(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image ``[B, 3, H, W]`` -> key ``[B, Ck, h, w]``, features ``[B, C, h, w]``."""
        features = torch.relu(self.stem(F.avg_pool2d(image, STRIDE)))
        return self.key_proj(features), features

    def encode_mask(self, image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """image ``[B, 3, H, W]``, masks ``[B, K, H, W]`` -> values ``[B, K, Cv, h, w]``."""
        features = torch.relu(self.stem(F.avg_pool2d(image, STRIDE)))
        b, k = masks.shape[:2]
        pooled = F.avg_pool2d(masks, STRIDE).unsqueeze(2)  # [B, K, 1, h, w]
        both = torch.cat([features.unsqueeze(1).expand(-1, k, -1, -1, -1), pooled], dim=2)
        return self.value_proj(both.flatten(0, 1)).unflatten(0, (b, k))

    def read_memory(self, key: torch.Tensor, memory_key: torch.Tensor, memory_value: torch.Tensor,
                    memory_valid: torch.Tensor) -> torch.Tensor:
        """key ``[B, Ck, h, w]``, memory key ``[B, Ck, T]``, values ``[B, K, Cv, T]``, valid ``[B, T]``
        -> readout ``[B, K, Cv, h, w]``: each pixel's softmax-weighted sum of the valid tokens' values."""
        b, _, h, w = key.shape
        scores = key.flatten(2).transpose(1, 2) @ memory_key / self.key_dim ** 0.5  # [B, hw, T]
        scores = scores.masked_fill(~memory_valid[:, None], -1e4)
        weights = scores.softmax(dim=-1)
        readout = memory_value.flatten(1, 2) @ weights.transpose(1, 2)  # [B, K * Cv, hw]
        return readout.view(b, -1, self.value_dim, h, w)

    def decode(self, features: torch.Tensor, readout: torch.Tensor) -> torch.Tensor:
        """features ``[B, C, h, w]``, readout ``[B, K, Cv, h, w]`` -> probabilities ``[B, K + 1, H, W]``."""
        b, k = readout.shape[:2]
        both = torch.cat([features.unsqueeze(1).expand(-1, k, -1, -1, -1), readout], dim=2)
        logits = self.head(both.flatten(0, 1)).view(b, k, *readout.shape[-2:])
        logits = aggregate(torch.sigmoid(logits), dim=1)
        return F.interpolate(logits, scale_factor=float(STRIDE), mode="bilinear", align_corners=False).softmax(dim=1)
