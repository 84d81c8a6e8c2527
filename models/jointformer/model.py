"""JointFormer (Zhang et al., "JointFormer: A Unified Framework with Joint Modeling for Video
Object Segmentation") as stateless stages.

The module tree and parameter names match the official ``JointFormer`` network (multi-object
mode), so official checkpoints load with ``strict=True``. Images enter as RGB in [0, 1] and
are normalised inside. Shapes: H x W = padded image size (multiple of 16), h x w = H/16 x
W/16, K = objects, L = 11 joint blocks, Hd = 12 heads of D = 64 channels, B = frames of
several videos processed together (1 for one video); per-object rows ``BK`` hold the K objects
of each frame, frame after frame.

Stages (the runtime owns all state between them):

* :meth:`JointFormer.encode_query`: the image's conv stem and stride-16 tokens, shared by
  all objects.
* :meth:`JointFormer.encode_reference`: a frame with the objects' masks -> each joint block's
  keys/values of the reference tokens (the cache entries), and the updated compressed-memory
  token. Reference tokens never attend to the current frame, so a reference frame's keys and
  values are computed once, when it enters memory.
* :meth:`JointFormer.propagate`: the current frame's tokens through the joint blocks,
  attending to the cached reference keys/values (top-K) -> per-object f16.
* :meth:`JointFormer.decode`: enhancement by the compressed-memory token, mask decoder, soft
  aggregation over objects, and the compressed-memory update from the decoder features.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from vosrt.kernels import topk_joint_attention
from vosrt.models.common import ImageNormalization, aggregate, channel_softmax

from .backbone import ConvViT
from .decoder import Decoder
from .topk import TopKConfig

class JointFormer(nn.Module):
    def __init__(self, update_block_depth: int = 2, enhance_block_depth: int = 1):
        super().__init__()
        self.convmae = ConvViT(update_block_depth, enhance_block_depth)
        self.decoder = Decoder()
        self.normalize = ImageNormalization()

    @classmethod
    def for_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> "JointFormer":
        """A network whose update/enhance depths are those of ``state_dict`` (as the official
        ``init_hyperparameters`` reads them from a checkpoint)."""
        def depth(prefix: str) -> int:
            return len({k[len(prefix):].split(".")[0] for k in state_dict if k.startswith(prefix)})
        return cls(depth("convmae.blocks4."), depth("convmae.blocks5."))

    @property
    def num_heads(self) -> int:
        return self.convmae.blocks3[0].attn.num_heads

    def initial_summary(self, num_objects: int) -> torch.Tensor:
        """Compressed-memory tokens of new objects ``[K, 1, C]`` (the learned ``cls_token``)."""
        return self.convmae.cls_token.expand(num_objects, -1, -1)

    def encode_query(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """image ``[B, 3, H, W]`` in [0, 1] -> f8 ``[B, 384, 2h, 2w]``, f4 ``[B, 256, 4h, 4w]``,
        tokens ``[B, h*w, 768]``."""
        f4, f8, tokens = self.convmae.conv_stem(self.normalize(image), self.convmae.patch_embed1_query)
        return f8, f4, tokens

    def encode_reference(self, image: torch.Tensor, masks: torch.Tensor, summary: torch.Tensor,
                         topk: TopKConfig = TopKConfig()) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """image ``[B, 3, H, W]`` in [0, 1], masks ``[B, K, H, W]`` (probabilities), summary ``[BK, 1, C]``
        -> (cache keys, cache values ``[L, BK, Hd, h*w, D]``, new summary ``[BK, 1, C]``)."""
        others = masks.sum(dim=1, keepdim=True) - masks
        b, k = masks.shape[:2]
        image = self.normalize(image)[:, None].expand(-1, k, -1, -1, -1)
        x = torch.cat([image, masks[:, :, None], others[:, :, None]], dim=2).flatten(0, 1)
        _, _, tokens = self.convmae.conv_stem(x, self.convmae.patch_embed1_memory)
        summary = summary + self.convmae.summary_pos_embed()
        keys, values = [], []
        blocks = self.convmae.blocks3
        for i, block in enumerate(blocks):
            summary, tokens, block_k, block_v = block.forward_summary(
                summary, tokens, topk.summary(i), update_tokens=i < len(blocks) - 1)
            keys.append(block_k)
            values.append(block_v)
        return torch.stack(keys), torch.stack(values), self.convmae.norm(summary)

    def propagate(self, tokens: torch.Tensor, ref_keys: torch.Tensor, ref_values: torch.Tensor,
                  ref_valid: torch.Tensor | None, topk: TopKConfig = TopKConfig(),
                  attention: Callable = topk_joint_attention) -> torch.Tensor:
        """tokens ``[BK, h*w, C]`` (from :meth:`encode_query`: each object row holds its frame's
        tokens), reference cache ``[L, BK, Hd, M, D]`` (M = frames * h*w; frame after frame),
        ref_valid ``[BK, M]`` bool or None -> normalised f16 tokens ``[BK, h*w, C]``. The rows are
        independent. ``attention`` computes the top-K filtered blocks' attention (e.g. the custom
        ONNX op)."""
        x, hw = tokens, tokens.shape[1]
        for i, block in enumerate(self.convmae.blocks3):
            x = block.forward_joint(x, ref_keys[i], ref_values[i], ref_valid, topk.joint(i, hw), attention)
        return self.convmae.norm(x)

    def decode(self, f16: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor, summary: torch.Tensor,
               topk: TopKConfig = TopKConfig()) -> tuple[torch.Tensor, torch.Tensor]:
        """f16 tokens ``[BK, h*w, C]`` (from :meth:`propagate`) with f8/f4 ``[B, ...]`` from
        :meth:`encode_query` and summary ``[BK, 1, C]`` -> (probabilities ``[B, K + 1, H, W]``,
        background first, soft-aggregated over each frame's K objects; new summary ``[BK, 1, C]``)."""
        h, w = f8.shape[-2] // 2, f8.shape[-1] // 2
        f16 = f16.transpose(1, 2).reshape(f16.shape[0], -1, h, w)
        logits, fusion = self.decoder(f16, self._enhance(f16, summary), f8, f4)
        logits = torch.sigmoid(logits).unflatten(0, (f8.shape[0], -1))
        prob = channel_softmax(aggregate(logits, dim=1))
        return prob, self._update_summary(fusion, summary, topk)

    def _enhance(self, f16: torch.Tensor, summary: torch.Tensor) -> torch.Tensor:
        """f16 ``[K, C, h, w]`` gated by the compressed-memory token -> ``[K, C, h, w]``."""
        summary, tokens = self.convmae.embed_with_summary(self.convmae.patch_embed4_block5, summary, f16)
        for block in self.convmae.blocks5:
            summary, tokens = block.forward_enhance(summary, tokens)
        return self.convmae.norm(tokens).transpose(1, 2).reshape(f16.shape)

    def _update_summary(self, fusion: torch.Tensor, summary: torch.Tensor, topk: TopKConfig) -> torch.Tensor:
        """Compressed-memory token ``[K, 1, C]`` updated from the decoder's fusion feature ``[K, C, h, w]``."""
        summary, tokens = self.convmae.embed_with_summary(self.convmae.patch_embed4_block4, summary, fusion)
        blocks = self.convmae.blocks4
        for i, block in enumerate(blocks):
            summary, tokens, _, _ = block.forward_summary(summary, tokens, topk.summary(None),
                                                          update_tokens=i < len(blocks) - 1)
        return self.convmae.norm(summary)
