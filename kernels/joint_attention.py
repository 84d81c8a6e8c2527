"""JointFormer's top-K joint attention: the plain-torch reference.

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

:func:`topk_joint_attention_triton` is the fused kernel (``topk_range='all_frames'``): it
never materialises the ``N x M`` score matrix. It reuses the packed (score, index) keys and
the bitonic top-K merge of :mod:`.readout`; like that kernel, triton is imported only
when it first runs (set ``TRITON_INTERPRET=1`` before that to run it on CPU tensors).
:func:`topk_joint_attention` picks the kernel for CUDA tensors and the reference otherwise.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch

from . import readout

# Bound by _jit_kernel(): triton, its language module, and topk_readout's jitted helpers.
triton = None
tl = None
_pack = _unpack = _merge_top = None


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


# --------------------------------------------------------------------------- triton


def _topk_joint_attention_kernel(
    q_ptr, k_ptr, v_ptr, rk_ptr, rv_ptr, valid_ptr,
    N, M, heads, top_k,
    stride_qb, stride_qn, stride_kb, stride_kn, stride_vb, stride_vn,
    stride_rkb, stride_rkm, stride_rvb, stride_rvm, stride_validb, stride_validm, stride_ob, stride_on,
    out_ptr,
    D: tl.constexpr, LOG_K: tl.constexpr, LOG_BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    """One program per (BLOCK_Q queries, batch * head). Pass 1 streams the reference tokens,
    keeping each query's best 2**LOG_K (score, index) keys; the kept scores start an online
    softmax (their values gathered), which pass 2 extends over the current-frame tokens.
    Tensors are ``[B * Hd, tokens, D]`` with unit stride over D. Arguments are ordered inputs,
    integer scalars, output (the scale 1/sqrt(D) is derived here), as TensorRT's ahead-of-time
    plugins launch a kernel (see ``trt_plugin``)."""
    scale = 1.0 / tl.sqrt_rn(tl.full([], D, tl.float32))
    bh = tl.program_id(1).to(tl.int64)
    q_ptr += bh * stride_qb
    k_ptr += bh * stride_kb
    v_ptr += bh * stride_vb
    rk_ptr += bh * stride_rkb
    rv_ptr += bh * stride_rvb
    valid_ptr += (bh // heads) * stride_validb
    out_ptr += bh * stride_ob
    offs_q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_mask = offs_q < N
    offs_d = tl.arange(0, D)
    q = tl.load(q_ptr + offs_q[:, None] * stride_qn + offs_d[None, :], mask=q_mask[:, None], other=0.0)
    q = q.to(tl.float32) * scale

    running = _pack(tl.full([BLOCK_Q, 2**LOG_K], float("-inf"), tl.float32), tl.zeros([BLOCK_Q, 2**LOG_K], tl.int32))
    for m0 in range(0, M, 2**LOG_BLOCK_M):
        offs_m = m0 + tl.arange(0, 2**LOG_BLOCK_M)
        live = tl.load(valid_ptr + offs_m * stride_validm, mask=offs_m < M, other=0) != 0
        rk = tl.load(rk_ptr + offs_m[:, None] * stride_rkm + offs_d[None, :], mask=live[:, None], other=0.0)
        scores = tl.dot(q, tl.trans(rk.to(tl.float32)), input_precision="ieee")
        scores = tl.where(live[None, :], scores, float("-inf"))
        running = _merge_top(running, _pack(scores, tl.broadcast_to(offs_m[None, :], scores.shape)), LOG_K, LOG_BLOCK_M)

    top, slot = _unpack(running)
    keep = (tl.arange(0, 2**LOG_K)[None, :] < top_k) & (top > float("-inf"))
    row_max = tl.max(tl.where(keep, top, float("-inf")), axis=1)
    row_max = tl.where(row_max > float("-inf"), row_max, 0.0)
    weight = tl.where(keep, tl.exp(top - row_max[:, None]), 0.0)
    total = tl.sum(weight, axis=1)
    picked = tl.load(rv_ptr + slot[:, :, None].to(tl.int64) * stride_rvm + offs_d[None, None, :],
                     mask=keep[:, :, None], other=0.0).to(tl.float32)
    acc = tl.sum(weight[:, :, None] * picked, axis=1)

    for n0 in range(0, N, 2**LOG_BLOCK_M):
        offs_n = n0 + tl.arange(0, 2**LOG_BLOCK_M)
        n_mask = offs_n < N
        k = tl.load(k_ptr + offs_n[:, None] * stride_kn + offs_d[None, :], mask=n_mask[:, None], other=0.0)
        scores = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee")
        scores = tl.where(n_mask[None, :], scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, axis=1))
        rescale = tl.exp(row_max - new_max)
        p = tl.exp(scores - new_max[:, None])
        v = tl.load(v_ptr + offs_n[:, None] * stride_vn + offs_d[None, :], mask=n_mask[:, None], other=0.0)
        acc = acc * rescale[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
        total = total * rescale + tl.sum(p, axis=1)
        row_max = new_max
    tl.store(out_ptr + offs_q[:, None] * stride_on + offs_d[None, :], acc / total[:, None], mask=q_mask[:, None])


@functools.cache
def _jit_kernel() -> Callable:
    """Import triton (through :mod:`.readout`, which jits the shared helpers) and jit the kernel."""
    global triton, tl, _pack, _unpack, _merge_top
    readout._jit_device_code()
    triton, tl = readout.triton, readout.tl
    _pack, _unpack, _merge_top = readout._pack, readout._unpack, readout._merge_top
    return triton.jit(_topk_joint_attention_kernel)


def topk_joint_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ref_k: torch.Tensor,
                                ref_v: torch.Tensor, ref_valid: torch.Tensor | None, top_k: int, *,
                                BLOCK_Q: int = 16, BLOCK_M: int = 64, num_warps: int = 4) -> torch.Tensor:
    """Fused top-K joint attention (``topk_range='all_frames'``); arguments and result as in
    :func:`topk_joint_attention_reference` (fp32 math, output in ``q``'s dtype).

    ``D`` must be a power of two and the block sizes too; ``BLOCK_M`` is raised to the kept-set
    size ``2**ceil(log2(top_k))`` when smaller. Ties among bit-identical reference scores keep
    the lower index (``torch.topk`` does not specify which).
    """
    kernel = _jit_kernel()
    b, heads, n, d = q.shape
    m = ref_k.shape[2]
    if d & (d - 1) or BLOCK_Q & (BLOCK_Q - 1) or BLOCK_M & (BLOCK_M - 1):
        raise ValueError(f"head size and block sizes must be powers of two, got D={d}, BLOCK_Q={BLOCK_Q}, "
                         f"BLOCK_M={BLOCK_M}")
    if ref_valid is None:
        ref_valid = torch.ones(b, m, dtype=torch.bool, device=q.device)
    q3, k3, v3, rk3, rv3 = (t.reshape(b * heads, t.shape[2], d).contiguous() for t in (q, k, v, ref_k, ref_v))
    out = torch.empty_like(q3)
    kernel[(triton.cdiv(n, BLOCK_Q), b * heads)](
        q3, k3, v3, rk3, rv3, ref_valid, n, m, heads, top_k,
        q3.stride(0), q3.stride(1), k3.stride(0), k3.stride(1), v3.stride(0), v3.stride(1),
        rk3.stride(0), rk3.stride(1), rv3.stride(0), rv3.stride(1), *ref_valid.stride(), out.stride(0), out.stride(1),
        out, **kernel_constants(top_k, d, BLOCK_Q, BLOCK_M), num_warps=num_warps,
    )
    return out.view(b, heads, n, d)


def kernel_constants(top_k: int, head_dim: int, BLOCK_Q: int, BLOCK_M: int) -> dict[str, int]:
    """The kernel's compile-time constants for ``top_k``, the head size and power-of-two block sizes."""
    log_k = (top_k - 1).bit_length()
    return dict(D=head_dim, LOG_K=log_k, LOG_BLOCK_M=max(BLOCK_M.bit_length() - 1, log_k), BLOCK_Q=BLOCK_Q)


def topk_joint_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ref_k: torch.Tensor,
                         ref_v: torch.Tensor, ref_valid: torch.Tensor | None, top_k: int,
                         frame_tokens: int | None = None) -> torch.Tensor:
    """Top-K joint attention ``[B, Hd, N, D]``: the Triton kernel for CUDA tensors (all-frames
    range, triton installed, not while exporting to ONNX), else :func:`topk_joint_attention_reference`."""
    if q.is_cuda and frame_tokens is None and readout.triton_available() and not torch.onnx.is_in_onnx_export():
        return topk_joint_attention_triton(q, k, v, ref_k, ref_v, ref_valid, top_k)
    return topk_joint_attention_reference(q, k, v, ref_k, ref_v, ref_valid, top_k, frame_tokens)
