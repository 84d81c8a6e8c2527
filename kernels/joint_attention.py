"""JointFormer's top-K joint attention: the plain-torch reference and the dispatcher to the Triton kernel.

In a JointFormer joint block every current-frame token attends, per head, to all
current-frame tokens and to the ``top_k`` best-scoring reference tokens; one softmax runs
over the union of both score sets::

    s_self[n, m] = q[n] . k[m] / sqrt(D)              m over the N current tokens
    s_ref[n, j]  = q[n] . rk[j] / sqrt(D)             j over the M reference tokens
    keep[n]      = top_k of s_ref[n, :]                (per reference frame when ``frame_tokens`` is set)
    w            = softmax over [s_self[n, :], s_ref[n, keep[n]]]
    out[n]       = sum_m w[n, m] v[m] + sum_{j in keep[n]} w[n, j] rv[j]

which is the official ``Attention.query_topk`` followed by the value product (the official
code scatters the kept weights into a dense ``N x M`` matrix; gathering the kept values
gives the same result without it).

Shapes: ``q, k, v`` ``[B, Hd, N, D]``; ``ref_k, ref_v`` ``[B, Hd, M, D]``; ``ref_valid``
``[B, M]`` bool (False: an empty slot of a preallocated buffer, never selected while enough
valid tokens exist and weighted 0 otherwise) or None; returns ``[B, Hd, N, D]``.

:func:`topk_joint_attention` dispatches to the Triton kernel of
:mod:`vosrt.kernels.triton.joint_attention` (``topk_range='all_frames'``; it never materialises
the ``N x M`` score matrix) for CUDA tensors when triton is installed, ``top_k <=
KERNEL_MAX_TOP_K`` and no ONNX export is running, and to the reference otherwise. This module
never imports triton; the dispatcher imports the kernel when it first runs.
"""
from __future__ import annotations

import torch

from .readout import triton_available
from .triton import JOINT_ATTENTION_MAX_TOP_K as KERNEL_MAX_TOP_K



def topk_joint_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ref_k: torch.Tensor,
                                   ref_v: torch.Tensor, ref_valid: torch.Tensor | None, top_k: int,
                                   frame_tokens: int | None = None) -> torch.Tensor:
    """Joint attention with top-K reference selection (see the module docstring).

    ``frame_tokens``: None keeps the top_k over all M reference tokens (official
    ``topk_range='all_frames'``); an integer splits M into frames of that many tokens and
    keeps top_k per frame (``'every_frame'``).
    """
    scale = q.shape[-1] ** -0.5
    self_scores = (q @ k.transpose(-2, -1)) * scale
    ref_scores = (q @ ref_k.transpose(-2, -1)) * scale
    if ref_valid is not None:
        ref_scores = ref_scores.masked_fill(~ref_valid[:, None, None, :], float("-inf"))
    top_scores, top_index = _select_top(ref_scores, top_k, frame_tokens)
    n = self_scores.shape[-1]
    weights = torch.cat([self_scores, top_scores], dim=-1).softmax(dim=-1)
    return weights[..., :n] @ v + _weighted_gather(ref_v, top_index, weights[..., n:])


def _select_top(scores: torch.Tensor, top_k: int, frame_tokens: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, Hd, N, M]`` scores -> (kept scores, their indices into M), both ``[B, Hd, N, K]``."""
    if frame_tokens is None:
        return scores.topk(min(top_k, scores.shape[-1]), dim=-1)
    b, hd, n, m = scores.shape
    frames = scores.view(b, hd, n, m // frame_tokens, frame_tokens)
    values, index = frames.topk(min(top_k, frame_tokens), dim=-1)
    offsets = torch.arange(0, m, frame_tokens, device=scores.device).view(1, 1, 1, -1, 1)
    return values.flatten(-2), (index + offsets).flatten(-2)


def _weighted_gather(values: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_j weights[..., n, j] * values[..., index[n, j], :] -> ``[B, Hd, N, D]``."""
    b, hd, n, kept = index.shape
    m, d = values.shape[-2:]
    row_base = torch.arange(b * hd, device=index.device).view(b, hd, 1, 1) * m
    picked = values.reshape(b * hd * m, d)[(index + row_base).flatten()].view(b, hd, n, kept, d)
    return (weights.unsqueeze(-2) @ picked).squeeze(-2)


def topk_joint_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ref_k: torch.Tensor,
                         ref_v: torch.Tensor, ref_valid: torch.Tensor | None, top_k: int,
                         frame_tokens: int | None = None) -> torch.Tensor:
    """Top-K joint attention ``[B, Hd, N, D]``: the Triton kernel for CUDA tensors (all-frames range,
    fp16 inputs as fp16, others as fp32, output in ``q``'s dtype), else
    :func:`topk_joint_attention_reference`."""
    if (q.is_cuda and frame_tokens is None and 1 <= top_k <= KERNEL_MAX_TOP_K and triton_available()
            and not torch.onnx.is_in_onnx_export()):
        from .triton.joint_attention import topk_joint_attention_triton

        tensors = (q, k, v, ref_k, ref_v)
        dtype = torch.float16 if all(t.dtype == torch.float16 for t in tensors) else torch.float32
        out = topk_joint_attention_triton(*(t.to(dtype) for t in tensors), ref_valid, top_k)
        return out.to(q.dtype)
    return topk_joint_attention_reference(q, k, v, ref_k, ref_v, ref_valid, top_k, frame_tokens)
