"""Cutie (Cheng et al., CVPR 2024) as four stateless stages.

The module tree and parameter names match the official ``CUTIE`` network in multi-object
mode, so official checkpoints load with ``strict=True``. Shapes use B = batch (1 at
inference), K = objects, H x W = padded image size (multiple of 16), h x w = H/16 x W/16.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vosrt.kernels import topk_readout, topk_usage_reference
from vosrt.models.common import ImageNormalization, aggregate, channel_softmax, fp32_region, to_fp32

from .blocks import (GConv2d, GroupFeatureFusionBlock, MaskUpsampleBlock, SensoryDeepUpdater,
                     SensoryUpdater, area_downsample, per_object)
from .config import STRIDE, CutieConfig
from .resnet import ResNetTrunk
from .transformer import ObjectSummarizer, QueryTransformer

class KeyProjection(nn.Module):
    """Stride-16 feature -> key ``[B, Ck, h, w]``, shrinkage ``[B, 1, h, w]`` (>= 1), selection ``[B, Ck, h, w]``."""

    def __init__(self, in_dim: int, mid_dim: int, key_dim: int):
        super().__init__()
        self.pix_feat_proj = nn.Conv2d(in_dim, mid_dim, 1)
        self.key_proj = nn.Conv2d(mid_dim, key_dim, 3, padding=1)
        self.d_proj = nn.Conv2d(mid_dim, 1, 3, padding=1)
        self.e_proj = nn.Conv2d(mid_dim, key_dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pix_feat_proj(x)
        return self.key_proj(x), self.d_proj(x) ** 2 + 1, torch.sigmoid(self.e_proj(x))


class MaskEncoder(ResNetTrunk):
    """Image + masks of all objects -> mask values ``[B, K, C, h, w]`` and updated sensory.

    The ResNet-18 trunk's layers sit directly on this module, as in the official checkpoint.
    """

    def __init__(self, cfg: CutieConfig):
        super().__init__(cfg.mask_encoder, in_ch=5)
        self.fuser = GroupFeatureFusionBlock(cfg.embed_dim, self.out_dims[0], cfg.value_dim)
        self.sensory_update = SensoryDeepUpdater(cfg.value_dim, cfg.sensory_dim)

    def forward(self, image, pix_feat, sensory, masks):
        """image ``[B, 3, H, W]`` (normalised), pix_feat ``[B, C, h, w]``, sensory ``[B, K, C, h, w]``,
        masks ``[B, K, H, W]`` in [0, 1] -> (value ``[B, K, C, h, w]``, new sensory)."""
        others = (masks.sum(dim=1, keepdim=True) - masks).clamp(0, 1)
        k = masks.shape[1]
        g = torch.cat([image.unsqueeze(1).expand(-1, k, -1, -1, -1), masks.unsqueeze(2), others.unsqueeze(2)], 2)
        g = per_object(lambda x: ResNetTrunk.forward(self, x)[0], g)
        value = self.fuser(pix_feat, g)
        return value, self.sensory_update(value, sensory)


class PixelFeatureFuser(nn.Module):
    """Visual readout + sensory + last mask -> pixel readout ``[B, K, C, h, w]``."""

    def __init__(self, cfg: CutieConfig):
        super().__init__()
        self.fuser = GroupFeatureFusionBlock(cfg.embed_dim, cfg.value_dim, cfg.embed_dim)
        self.sensory_compress = GConv2d(cfg.sensory_dim + 2, cfg.value_dim, 1)

    def forward(self, pix_feat, visual_readout, sensory, last_mask):
        """last_mask ``[B, K, h, w]``: the previous frame's probabilities at stride 16."""
        others = (last_mask.sum(dim=1, keepdim=True) - last_mask).clamp(0, 1)
        masks = torch.stack([last_mask, others], dim=2)
        fused = visual_readout + self.sensory_compress(torch.cat([sensory, masks], dim=2))
        return self.fuser(pix_feat, fused)


class MaskDecoder(nn.Module):
    """Memory readout + skip features -> per-object logits at stride 4 and the updated sensory."""

    def __init__(self, cfg: CutieConfig):
        super().__init__()
        up = cfg.up_dims
        self.sensory_update = SensoryUpdater([up[0], up[1], up[2] + 1], cfg.sensory_dim, cfg.sensory_dim)
        self.decoder_feat_proc = _SkipProjections(cfg.ms_dims[1:], up[:-1])
        self.up_16_8 = MaskUpsampleBlock(up[0], up[1])
        self.up_8_4 = MaskUpsampleBlock(up[1], up[2])
        self.pred = nn.Conv2d(up[-1], 1, 3, padding=1)

    def forward(self, f8, f4, readout, sensory):
        """f8 ``[B, C8, 2h, 2w]``, f4 ``[B, C4, 4h, 4w]``, readout/sensory ``[B, K, C, h, w]``
        -> (new sensory ``[B, K, C, h, w]``, logits ``[B, K, 4h, 4w]``)."""
        f8, f4 = self.decoder_feat_proc(f8, f4)
        p8 = self.up_16_8(readout, f8)
        p4 = self.up_8_4(p8, f4)
        with fp32_region(p4):
            logits = per_object(lambda x: self.pred(F.relu(to_fp32(x))), p4)  # [B, K, 1, 4h, 4w]
        new_sensory = self.sensory_update(readout, p8, torch.cat([p4, logits.to(p4.dtype)], 2), sensory)
        return new_sensory, logits.squeeze(2)


class _SkipProjections(nn.Module):
    def __init__(self, in_dims, out_dims):
        super().__init__()
        self.transforms = nn.ModuleList(nn.Conv2d(i, o, 1) for i, o in zip(in_dims, out_dims))

    def forward(self, f8, f4):
        return self.transforms[0](f8), self.transforms[1](f4)


class _SensoryAux(nn.Module):
    def __init__(self, sensory_dim: int, embed_dim: int):
        super().__init__()
        self.projection = GConv2d(sensory_dim, embed_dim + 1, 1)


class _AuxHeads(nn.Module):
    """Training-only auxiliary head. Kept so official checkpoints load strictly; never run."""

    def __init__(self, cfg: CutieConfig):
        super().__init__()
        self.sensory_aux = _SensoryAux(cfg.sensory_dim, cfg.embed_dim)


class Cutie(nn.Module):
    """The Cutie network. Inference runs as four stages (see each method's docstring):
    :meth:`encode_image`, :meth:`encode_mask`, :meth:`read_memory`, :meth:`decode`.
    Images enter in [0, 1] (RGB) and are normalised inside.
    """

    def __init__(self, cfg: CutieConfig):
        super().__init__()
        self.cfg = cfg
        self.pixel_encoder = ResNetTrunk(cfg.query_encoder, in_ch=3, first_stage_name="res2")
        self.pix_feat_proj = nn.Conv2d(cfg.ms_dims[0], cfg.embed_dim, 1)
        self.key_proj = KeyProjection(cfg.ms_dims[0], cfg.embed_dim, cfg.key_dim)
        self.mask_encoder = MaskEncoder(cfg)
        self.mask_decoder = MaskDecoder(cfg)
        self.pixel_fuser = PixelFeatureFuser(cfg)
        self.object_transformer = QueryTransformer(cfg.embed_dim, cfg.num_heads, cfg.num_queries, cfg.ff_dim,
                                                   cfg.num_blocks, cfg.pe_scale, cfg.pe_temperature)
        self.object_summarizer = ObjectSummarizer(cfg.value_dim, cfg.embed_dim, cfg.num_queries,
                                                  cfg.pe_scale, cfg.pe_temperature)
        self.aux_computer = _AuxHeads(cfg)
        self.normalize = ImageNormalization()

    def encode_image(self, image: torch.Tensor):
        """image ``[B, 3, H, W]`` in [0, 1] -> f8 ``[B, C8, 2h, 2w]``, f4 ``[B, C4, 4h, 4w]`` (skip
        features), pix_feat ``[B, C, h, w]``, key ``[B, Ck, h, w]``, shrinkage ``[B, 1, h, w]``,
        selection ``[B, Ck, h, w]``."""
        f16, f8, f4 = self.pixel_encoder(self.normalize(image))
        key, shrinkage, selection = self.key_proj(f16)
        return f8, f4, self.pix_feat_proj(f16), key, shrinkage, selection

    def encode_mask(self, image, pix_feat, sensory, masks):
        """image ``[B, 3, H, W]`` in [0, 1], pix_feat ``[B, C, h, w]``, sensory ``[B, K, C, h, w]``,
        masks ``[B, K, H, W]`` -> mask value ``[B, K, C, h, w]``, new sensory ``[B, K, C, h, w]``,
        object summaries ``[B, K, Q, C + 1]`` (sums, then area)."""
        value, new_sensory = self.mask_encoder(self.normalize(image), pix_feat, sensory, masks)
        return value, new_sensory, self.object_summarizer(masks, value)

    def read_memory(self, key, selection, pix_feat, memory_key, memory_shrinkage, memory_value, memory_valid,
                    sensory, last_mask, obj_memory, top_k: int, readout_fn=topk_readout):
        """Top-k memory readout + pixel fusion + object transformer for the objects of one bucket.

        key/selection ``[B, Ck, h, w]`` (query), pix_feat ``[B, C, h, w]``; memory_key ``[B, Ck, N]``,
        memory_shrinkage ``[B, 1, N]``, memory_value ``[B, K, Cv, N]``, memory_valid bool ``[B, N]``;
        sensory ``[B, K, C, h, w]``; last_mask ``[B, K, H, W]`` (previous probabilities, image size);
        obj_memory ``[B, K, Q, C + 1]`` -> readout ``[B, K, C, h, w]``.
        ``readout_fn`` computes the top-k attention (default: Triton on CUDA, torch elsewhere).
        """
        b, k, cv, n = memory_value.shape
        h, w = key.shape[-2:]
        visual = readout_fn(key.flatten(2), selection.flatten(2), memory_key, memory_shrinkage,
                            memory_value.reshape(b, k * cv, n), memory_valid, top_k)
        visual = visual.view(b, k, cv, h, w).to(pix_feat.dtype)
        last_mask = area_downsample(last_mask, STRIDE)
        fused = self.pixel_fuser(pix_feat, visual, sensory, last_mask)
        return self.object_transformer(fused, obj_memory)

    @staticmethod
    def memory_usage(key, selection, memory_key, memory_shrinkage, memory_valid, top_k: int,
                     usage_fn=topk_usage_reference):
        """How much a readout of one bucket uses each memory token (long-term memory only): inputs as
        in :meth:`read_memory` -> usage ``[B, N]`` fp32, each token's top-k weight summed over the
        query pixels. No weights."""
        return usage_fn(key.flatten(2), selection.flatten(2), memory_key, memory_shrinkage, memory_valid, top_k)

    def decode(self, f8, f4, readout, sensory):
        """f8, f4 from :meth:`encode_image`, readout/sensory ``[B, K, C, h, w]`` ->
        new sensory ``[B, K, C, h, w]``, probabilities ``[B, K + 1, H, W]`` (background first)."""
        new_sensory, logits = self.mask_decoder(f8, f4, readout, sensory)
        logits = aggregate(torch.sigmoid(logits), dim=1)
        logits = F.interpolate(logits, scale_factor=4.0, mode="bilinear", align_corners=False)
        return new_sensory, channel_softmax(logits)
