"""Transformer blocks of JointFormer's ConvMAE backbone and the attention patterns they run.

All blocks share one layout (pre-norm attention + MLP, ``norm1/attn/norm2/mlp`` as in the
official checkpoint); what differs is who attends to whom:

* :meth:`JointBlock.forward_summary`: tokens attend to themselves only; one summary token
  (the per-object compressed-memory token, ``cls_token`` in the official code) attends to
  itself and all tokens. Reference encoding (``blocks3``) and the summary update from the
  decoder features (``blocks4``) run this.
* :meth:`JointBlock.forward_joint`: current-frame tokens attend to themselves and to the
  top-K reference tokens of the block's key/value cache (``blocks3`` on the query frame).
* :meth:`JointBlock.forward_enhance`: each token is gated by the summary token (sigmoid of
  its score) and takes the summary's value (``blocks5``).

Token tensors are ``[B, N, C]`` (B = objects), the summary ``[B, 1, C]``; keys/values per
head ``[B, Hd, N, D]``.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vosrt.kernels import topk_joint_attention

from .topk import TopK

LAYER_NORM_EPS = 1e-6


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head projections (``qkv``, ``proj``); the attention patterns live in :class:`JointBlock`."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[B, N, C]`` -> q, k, v ``[B, Hd, N, C / Hd]``."""
        b, n, c = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, Hd, N, D]`` -> output projection ``[B, N, Hd * D]``."""
        return self.proj(x.transpose(1, 2).flatten(2))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Plain scaled dot-product attention ``[B, Hd, N, D]`` (scale 1 / sqrt(D)); ``mask``: bool,
    broadcastable to the scores, False = not attended."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class JointBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def _finish(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        x = x + attended
        return x + self.mlp(self.norm2(x))

    def token_kv(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[B, Hd, N, D]`` that ``tokens`` (this block's input) offer to other tokens."""
        _, k, v = self.attn.heads(self.norm1(tokens))
        return k, v

    def forward_summary(self, summary: torch.Tensor, tokens: torch.Tensor, summary_topk: TopK | None = None,
                        update_tokens: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """summary ``[B, 1, C]``, tokens ``[B, N, C]`` -> (summary, tokens, token keys, token values).

        The summary attends to itself and to the tokens (to their ``summary_topk.k`` best when
        given, the official ``topk_clstoken='Y'``); the tokens attend only to each other.
        The keys/values are those of the *input* tokens (what a reference frame caches).
        ``update_tokens=False`` returns the input tokens unchanged (for a last block whose
        tokens are not used).
        """
        q, k, v = self.attn.heads(self.norm1(torch.cat([summary, tokens], dim=1)))
        if summary_topk is None:
            summary_out = attend(q[:, :, :1], k, v)
        else:
            summary_out = topk_joint_attention(q[:, :, :1], k[:, :, :1], v[:, :, :1], k[:, :, 1:], v[:, :, 1:],
                                               None, summary_topk.k)
        token_k, token_v = k[:, :, 1:], v[:, :, 1:]
        new_summary = self._finish(summary, self.attn.merge(summary_out))
        if update_tokens:
            tokens = self._finish(tokens, self.attn.merge(attend(q[:, :, 1:], token_k, token_v)))
        return new_summary, tokens, token_k, token_v

    def forward_joint(self, tokens: torch.Tensor, ref_k: torch.Tensor, ref_v: torch.Tensor,
                      ref_valid: torch.Tensor | None, topk: TopK | None,
                      attention: Callable = topk_joint_attention) -> torch.Tensor:
        """Current-frame tokens ``[B, N, C]`` attend to themselves and the reference cache
        ``ref_k/ref_v`` ``[B, Hd, M, D]`` (``ref_valid`` ``[B, M]``): all of it without ``topk``,
        else its top-K per query and head, computed by ``attention`` (arguments of
        :func:`~vosrt.kernels.joint_attention.topk_joint_attention`)."""
        q, k, v = self.attn.heads(self.norm1(tokens))
        if topk is None:
            mask = None
            if ref_valid is not None:
                mask = torch.cat([torch.ones_like(ref_valid[:, :1]).expand(-1, tokens.shape[1]), ref_valid], 1)
                mask = mask[:, None, None, :]
            out = attend(q, torch.cat([k, ref_k], 2), torch.cat([v, ref_v], 2), mask)
        else:
            out = attention(q, k, v, ref_k, ref_v, ref_valid, topk.k, topk.frame_tokens)
        return self._finish(tokens, self.attn.merge(out))

    def forward_enhance(self, summary: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summary-gated tokens: token n gets ``sigmoid(q_n . k_s / sqrt(D)) * v_s`` per head;
        the summary's attention output is its own normalised input (as in the official block)."""
        normed = self.norm1(torch.cat([summary, tokens], dim=1))
        q, k, v = self.attn.heads(normed)
        gate = torch.sigmoid((q[:, :, 1:] @ k[:, :, :1].transpose(-2, -1)) * q.shape[-1] ** -0.5)
        x = torch.cat([summary, tokens], dim=1)
        x = self._finish(x, torch.cat([normed[:, :1], self.attn.merge(gate @ v[:, :, :1])], dim=1))
        return x[:, :1], x[:, 1:]
