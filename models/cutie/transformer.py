"""Cutie's object summarizer and object transformer (the "query transformer")."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vosrt.models.common import aggregate, fp32_region, to_fp32

from .blocks import CAResBlock, GConv2d


class SinePositionalEncoding(nn.Module):
    """2-D sine/cosine encoding over a ``h x w`` grid -> ``[h, w, 2 * len(inv_freq) * 2]``.

    ``inv_freq`` is a checkpoint buffer (it is part of the official state_dict).
    Channels: x encoding (sin/cos interleaved) then y encoding.
    """

    def __init__(self, dim: int, scale: float, temperature: float):
        super().__init__()
        half = -(-dim // 4) * 2
        self.register_buffer("inv_freq", 1.0 / (temperature ** (torch.arange(0, half, 2).float() / half)))
        self.scale = scale

    def _axis(self, n: int, device: torch.device) -> torch.Tensor:
        pos = torch.arange(n, device=device, dtype=self.inv_freq.dtype)
        pos = pos / (pos[-1] + 1e-6) * self.scale
        angles = pos[:, None] * self.inv_freq[None, :]
        return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)

    def forward(self, h: int, w: int) -> torch.Tensor:
        emb_x = self._axis(w, self.inv_freq.device)  # [w, half]
        emb_y = self._axis(h, self.inv_freq.device)  # [h, half]
        return torch.cat([emb_x[None].expand(h, -1, -1), emb_y[:, None].expand(-1, w, -1)], dim=-1)


class ObjectSummarizer(nn.Module):
    """Masks ``[B, K, H, W]`` (image size) + values ``[B, K, C, h, w]`` -> summaries ``[B, K, Q, C + 1]``.

    The last channel of a summary is its (soft) area, so summaries can be summed over time.
    """

    def __init__(self, value_dim: int, embed_dim: int, num_summaries: int, pe_scale: float, pe_temperature: float):
        super().__init__()
        self.num_summaries = num_summaries
        self.pos_enc = SinePositionalEncoding(embed_dim, pe_scale, pe_temperature)
        self.input_proj = nn.Linear(value_dim, embed_dim)
        self.feature_pred = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, embed_dim))
        self.weights_pred = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, num_summaries))

    def forward(self, masks: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        h, w = value.shape[-2:]
        masks = F.avg_pool2d(masks, 16).unsqueeze(-1)  # image size -> [B, K, h, w, 1] (stride 16)
        half = self.num_summaries // 2
        allowed = torch.cat([masks.expand(-1, -1, -1, -1, half), (1 - masks).expand(-1, -1, -1, -1, half)], -1)
        value = self.input_proj(value.permute(0, 1, 3, 4, 2))
        with fp32_region(value):
            value = to_fp32(value + self.pos_enc(h, w).to(value.dtype))
            weights = self.weights_pred(value).sigmoid() * to_fp32(allowed)  # [B, K, h, w, Q]
            feature = self.feature_pred(value)  # [B, K, h, w, C]
            sums = torch.einsum("bkhwq,bkhwc->bkqc", weights, feature)
            area = weights.flatten(2, 3).sum(2).unsqueeze(-1)
            return torch.cat([sums, area], dim=-1)


class MultiheadAttention(nn.Module):
    """Batch-first multi-head attention with ``nn.MultiheadAttention``'s parameter names.

    ``blocked``: optional bool ``[N * heads, Lq, Lk]``, True where attention is not allowed.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)  # nn.MultiheadAttention's initialisation
        nn.init.zeros_(self.in_proj_bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        return x.view(n, length, self.num_heads, dim // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocked: torch.Tensor | None = None):
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq, bk, bv = self.in_proj_bias.chunk(3)
        q, k, v = (self._heads(F.linear(t, w, b)) for t, w, b in ((q, wq, bq), (k, wk, bk), (v, wv, bv)))
        mask = None
        if blocked is not None:
            mask = ~blocked.view(q.shape[0], self.num_heads, *blocked.shape[1:])
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class CrossAttention(nn.Module):
    """Pre-norm attention of ``x`` over ``mem`` with positional encodings added to q and k."""

    def __init__(self, dim: int, num_heads: int, norm: bool = True):
        super().__init__()
        self.cross_attn = MultiheadAttention(dim, num_heads)
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()

    def forward(self, x, mem, x_pe, mem_pe, blocked=None):
        x = self.norm(x)
        return x + self.cross_attn(x + x_pe, mem + mem_pe, mem, blocked)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.self_attn = MultiheadAttention(dim, num_heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x, pe):
        x = self.norm(x)
        return x + self.self_attn(x + pe, x + pe, x)


class FFN(nn.Module):
    def __init__(self, dim: int, ff_dim: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, ff_dim)
        self.linear2 = nn.Linear(ff_dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return x + self.linear2(F.relu(self.linear1(self.norm(x))))


class PixelFFN(nn.Module):
    """Tokens ``[N, h*w, C]`` -> CAResBlock over the ``h x w`` map -> ``[N, C, h, w]``."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = CAResBlock(dim, dim)

    def forward(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.conv(tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w))


class QueryTransformerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, ff_dim: int):
        super().__init__()
        self.read_from_pixel = CrossAttention(dim, num_heads)
        self.self_attn = SelfAttention(dim, num_heads)
        self.ffn = FFN(dim, ff_dim)
        self.read_from_query = CrossAttention(dim, num_heads, norm=False)
        self.pixel_ffn = PixelFFN(dim)

    def forward(self, query, pixel, query_pe, pixel_pe, blocked):
        """query/query_pe ``[N, Q, C]``; pixel ``[N, C, h, w]``; pixel_pe ``[N, h*w, C]``."""
        h, w = pixel.shape[-2:]
        tokens = pixel.flatten(2).transpose(1, 2)
        query = self.read_from_pixel(query, tokens, query_pe, pixel_pe, blocked)
        query = self.ffn(self.self_attn(query, query_pe))
        tokens = self.read_from_query(tokens, query, pixel_pe, query_pe)
        return query, self.pixel_ffn(tokens, h, w)


class QueryTransformer(nn.Module):
    """Object transformer: pixel readout ``[B, K, C, h, w]`` + object memory ``[B, K, Q, C + 1]``
    -> refined readout ``[B, K, C, h, w]``."""

    def __init__(self, dim: int, num_heads: int, num_queries: int, ff_dim: int, num_blocks: int,
                 pe_scale: float, pe_temperature: float):
        super().__init__()
        self.num_heads = num_heads
        self.num_queries = num_queries
        self.query_init = nn.Embedding(num_queries, dim)
        self.query_emb = nn.Embedding(num_queries, dim)
        self.summary_to_query_init = nn.Linear(dim, dim)
        self.summary_to_query_emb = nn.Linear(dim, dim)
        self.pixel_init_proj = GConv2d(dim, dim, 1)
        self.pixel_emb_proj = GConv2d(dim, dim, 1)
        self.spatial_pe = SinePositionalEncoding(dim, pe_scale, pe_temperature)
        self.blocks = nn.ModuleList(QueryTransformerBlock(dim, num_heads, ff_dim) for _ in range(num_blocks))
        # One mask head per block input plus one after the last block (trained with an aux loss only).
        self.mask_pred = nn.ModuleList(nn.Sequential(nn.ReLU(), nn.Conv2d(dim, 1, 1)) for _ in range(num_blocks + 1))

    def forward(self, pixel: torch.Tensor, obj_memory: torch.Tensor) -> torch.Tensor:
        b, k, c, h, w = pixel.shape
        obj_memory = obj_memory.flatten(0, 1)
        obj_values = obj_memory[..., :-1] / (obj_memory[..., -1:] + 1e-4)
        query = self.query_init.weight + self.summary_to_query_init(obj_values)
        query_pe = self.query_emb.weight + self.summary_to_query_emb(obj_values)

        pixel_pe = self.spatial_pe(h, w).flatten(0, 1).to(pixel.dtype)
        pixel_pe = pixel_pe + self.pixel_emb_proj(pixel).flatten(0, 1).flatten(2).transpose(1, 2)
        pixel = self.pixel_init_proj(pixel).flatten(0, 1)  # [B*K, C, h, w]

        for i, block in enumerate(self.blocks):
            blocked = self._attention_mask(self.mask_pred[i](pixel).view(b, k, h * w))
            query, pixel = block(query, pixel, query_pe, pixel_pe, blocked)
        return pixel.view(b, k, c, h, w)

    def _attention_mask(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-object logits ``[B, K, h*w]`` -> bool ``[B*K*heads, Q, h*w]``, True = blocked.

        The first half of the queries may only look at the object's (aggregated) foreground
        pixels, the second half only at the rest; a query with nothing to look at sees everything.
        """
        agg = aggregate(logits.sigmoid(), dim=1)
        foreground = agg[:, 1:] >= agg.max(dim=1, keepdim=True)[0]  # [B, K, hw]
        half = self.num_queries // 2
        blocked = torch.cat([(~foreground).unsqueeze(2).expand(-1, -1, half, -1),
                             foreground.unsqueeze(2).expand(-1, -1, half, -1)], dim=2)  # [B, K, Q, hw]
        blocked = blocked & ~blocked.all(dim=-1, keepdim=True)
        return blocked.unsqueeze(2).expand(-1, -1, self.num_heads, -1, -1).flatten(0, 2)
