"""ConvMAE-base backbone of JointFormer (the official ``convmae`` module, ``ConvViT``).

Two conv stages (stride 4 and 8, :mod:`.conv_stages`) and a stride-16 ViT: 11 joint blocks
(``blocks3``), the compressed-memory update blocks (``blocks4``) and the enhancement blocks
(``blocks5``). This module holds the parameters and the shared pieces; the stages that
combine them are in :mod:`.model`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .conv_stages import ConvBlock, PatchEmbed
from .topk import JOINT_BLOCKS
from .vit import LAYER_NORM_EPS, JointBlock

EMBED_DIMS = (256, 384, 768)
DEPTHS = (2, 2, JOINT_BLOCKS)
PATCH_SIZES = (4, 2, 2)
NUM_HEADS = 12
PRETRAIN_GRID = 24  # positional embedding grid of the pre-training size (384 / 16)


class ConvViT(nn.Module):
    def __init__(self, update_block_depth: int = 2, enhance_block_depth: int = 1):
        super().__init__()
        d4, d8, d16 = EMBED_DIMS
        self.patch_embed1_query = PatchEmbed(3, d4, PATCH_SIZES[0])
        self.patch_embed1_memory = PatchEmbed(5, d4, PATCH_SIZES[0])  # RGB + mask + other objects
        self.patch_embed2 = PatchEmbed(d4, d8, PATCH_SIZES[1])
        self.patch_embed3 = PatchEmbed(d8, d16, PATCH_SIZES[2])
        self.patch_embed4 = nn.Linear(d16, d16)
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + PRETRAIN_GRID ** 2, d16))
        self.blocks1 = nn.ModuleList(ConvBlock(d4) for _ in range(DEPTHS[0]))
        self.blocks2 = nn.ModuleList(ConvBlock(d8) for _ in range(DEPTHS[1]))
        self.blocks3 = nn.ModuleList(JointBlock(d16, NUM_HEADS) for _ in range(DEPTHS[2]))
        self.patch_embed4_block4 = nn.Linear(d16, d16)
        self.blocks4 = nn.ModuleList(JointBlock(d16, NUM_HEADS) for _ in range(update_block_depth))
        self.patch_embed4_block5 = nn.Linear(d16, d16)
        self.blocks5 = nn.ModuleList(JointBlock(d16, NUM_HEADS) for _ in range(enhance_block_depth))
        self.norm = nn.LayerNorm(d16, eps=LAYER_NORM_EPS)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d16))

    def grid_pos_embed(self, h: int, w: int) -> torch.Tensor:
        """Positional embedding of an ``h x w`` token grid ``[1, h * w, C]``: the pre-training grid,
        bicubically resized when the size differs (official ``get_abs_pos``)."""
        grid = self.pos_embed[:, 1:]
        size = int(math.sqrt(grid.shape[1]))
        if (h, w) == (size, size):
            return grid
        grid = grid.reshape(1, size, size, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return grid.flatten(2).transpose(1, 2)

    def summary_pos_embed(self) -> torch.Tensor:
        """Positional embedding of the compressed-memory (cls) token ``[1, 1, C]``."""
        return self.pos_embed[:, :1]

    def conv_stem(self, x: torch.Tensor, patch_embed: PatchEmbed) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image (``patch_embed1_query``) or image+masks (``patch_embed1_memory``) ``[B, Cin, H, W]``
        -> f4 ``[B, 256, H/4, W/4]``, f8 ``[B, 384, H/8, W/8]``, stride-16 tokens ``[B, h*w, 768]``
        (``patch_embed4`` and positional embedding applied)."""
        x = patch_embed(x)
        for block in self.blocks1:
            x = block(x)
        f4 = x
        x = self.patch_embed2(x)
        for block in self.blocks2:
            x = block(x)
        f8 = x
        x = self.patch_embed3(x)
        h, w = x.shape[-2:]
        tokens = self.patch_embed4(x.flatten(2).transpose(1, 2)) + self.grid_pos_embed(h, w)
        return f4, f8, tokens

    def embed_with_summary(self, projection: nn.Linear, summary: torch.Tensor,
                           feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summary ``[K, 1, C]`` and a stride-16 map ``[K, C, h, w]`` -> both projected by
        ``projection`` with positional embeddings: (``[K, 1, C]``, ``[K, h*w, C]``)."""
        h, w = feature.shape[-2:]
        tokens = projection(feature.flatten(2).transpose(1, 2)) + self.grid_pos_embed(h, w)
        return projection(summary) + self.summary_pos_embed(), tokens
