"""Triton kernel of JointFormer's top-K joint attention (:mod:`vosrt.kernels.joint_attention` has
the maths and the torch reference; ``topk_range='all_frames'``).

One program per (``BLOCK_Q`` queries, batch item x head):

1. **Select.** Stream the M reference tokens ``BLOCK_M`` at a time: scores ``q @ ref_k^T / sqrt(D)``
   with ``tl.dot`` (fp32 accumulate), kept per query in a running top-``K_PAD`` of packed
   (score, index) keys (:mod:`.select`; ``K_PAD`` the top-K bucket, a power of two >= top_k).
2. **Kept references.** The first ``top_k`` kept scores start an online softmax; their value rows
   are gathered ``GATHER`` at a time (:func:`.select.weighted_rows`).
3. **Current frame.** FlashAttention over the N current tokens, ``BLOCK_M`` at a time, extending
   the same softmax: ``acc = acc * exp(m_old - m_new) + p @ v``.

Dots run on fp16 operands for fp16 inputs (AMP and fp16 modes; ``p`` is rounded to fp16 for the
``p @ v`` dot, as FlashAttention does) and ``tf32x3`` for fp32 inputs (about fp32 accuracy on
tensor cores; Triton's interpreter computes dots exactly in fp32). Every ``tl.dot`` has M, N and
K >= 16: ``BLOCK_Q``, ``BLOCK_M`` and the padded head size ``D_BLOCK`` (Triton 3.6 rejects smaller).
Arguments are ordered inputs, integer scalars, output, as TensorRT's ahead-of-time plugins launch
a kernel; the plugin runs :func:`plugin_config`. ``BLOCK_M`` (the config's ``block_n``) is the
tokens per tile, of the reference and of the current frame alike.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import JOINT_ATTENTION_MAX_TOP_K as MAX_TOP_K, select
from .tuning import TileConfig, autotuned, buffer_slots, check_dot_blocks, dot_types

MIN_K_PAD = 32


def k_pad(top_k: int) -> int:
    """The top-K bucket of ``top_k``: reference keys kept per query (a power of two, at least ``MIN_K_PAD``)."""
    if not 1 <= top_k <= MAX_TOP_K:
        raise ValueError(f"the Triton joint attention supports 1 <= top_k <= {MAX_TOP_K}, got {top_k}")
    return max(MIN_K_PAD, 1 << (top_k - 1).bit_length())


def bucket_config(kept: int) -> tuple[TileConfig, ...]:
    """The autotuning space for top-K bucket ``kept`` (the same for fp32 and fp16 inputs); the first
    is the default where autotuning is off and the TensorRT plugin's config. The running top-K
    ``[block_q, kept]`` int64 lives in registers: past 32 kept keys only the narrow tile compiled
    without spills on both sm_90 and sm_87 (wider tiles, and 8 warps at 128 registers for two
    blocks per SM, spilled)."""
    if kept <= 32:
        return (TileConfig(16, 32, 8, 4), TileConfig(16, 64, 8, 4))
    return (TileConfig(16, 32, 8, 4),)


def plugin_config(top_k: int) -> TileConfig:
    """The TensorRT plugin's configuration for ``top_k`` (fp32 inputs; it cannot autotune)."""
    return bucket_config(k_pad(top_k))[0]


def kernel_constants(top_k: int, head_dim: int, dtype: torch.dtype, config: TileConfig) -> dict:
    """Compile-time constants for ``top_k``, the head size, the input dtype and ``config``."""
    check_dot_blocks(block_q=config.block_q, block_n=config.block_n)
    d_block = max(16, 1 << (head_dim - 1).bit_length())
    kept = k_pad(top_k)
    return dict(D=head_dim, D_BLOCK=d_block, K_PAD=kept, BLOCK_Q=config.block_q, BLOCK_M=config.block_n,
                SEGMENTS=config.segments, GATHER=max(1, min(kept, 2048 // (config.block_q * d_block))),
                **dot_types(dtype))


@triton.jit
def _load_rows(ptr, offs_row, row_in, stride_row, stride_d, offs_d, d_in):
    """Rows ``offs_row`` ``[len, D_BLOCK]`` of a ``[tokens, D]`` matrix (zero outside)."""
    return tl.load(ptr + offs_row[:, None] * stride_row + offs_d[None, :] * stride_d,
                   mask=row_in[:, None] & d_in[None, :], other=0.0)


@triton.jit
def _topk_joint_attention_kernel(
    q_ptr, k_ptr, v_ptr, rk_ptr, rv_ptr, valid_ptr,
    N, M, heads, top_k,
    stride_qb, stride_qh, stride_qn, stride_qd, stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd, stride_rkb, stride_rkh, stride_rkm, stride_rkd,
    stride_rvb, stride_rvh, stride_rvm, stride_rvd, stride_validb, stride_validm,
    stride_ob, stride_oh, stride_on, stride_od,
    out_ptr,
    D: tl.constexpr, D_BLOCK: tl.constexpr, K_PAD: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr,
    SEGMENTS: tl.constexpr, GATHER: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    """Program (query block, batch item x head); see the module docstring."""
    b = (tl.program_id(1) // heads).to(tl.int64)
    h = (tl.program_id(1) % heads).to(tl.int64)
    q_ptr += b * stride_qb + h * stride_qh
    k_ptr += b * stride_kb + h * stride_kh
    v_ptr += b * stride_vb + h * stride_vh
    rk_ptr += b * stride_rkb + h * stride_rkh
    rv_ptr += b * stride_rvb + h * stride_rvh
    valid_ptr += b * stride_validb
    out_ptr += b * stride_ob + h * stride_oh
    scale = 1.0 / tl.sqrt_rn(tl.full([], D, tl.float32))
    offs_q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_in = offs_q < N
    offs_d = tl.arange(0, D_BLOCK)
    d_in = offs_d < D
    q = _load_rows(q_ptr, offs_q, q_in, stride_qn, stride_qd, offs_d, d_in).to(DOT_DTYPE)

    running = select.empty_rows(BLOCK_Q, K_PAD)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_in = offs_m < M
        ref_k = _load_rows(rk_ptr, offs_m, m_in, stride_rkm, stride_rkd, offs_d, d_in).to(DOT_DTYPE)
        scores = tl.dot(q, tl.trans(ref_k), input_precision=PRECISION) * scale
        live = tl.load(valid_ptr + offs_m * stride_validm, mask=m_in, other=0) != 0
        keys = select.pack_keys(scores, tl.broadcast_to(offs_m[None, :], scores.shape))
        running = select.add_tile(running, tl.where(live[None, :], keys, select.EMPTY), SEGMENTS)

    score, slot, keep = select.kept_scores(running, top_k)
    row_max = tl.max(score, axis=1)  # -inf for a query without kept reference
    weight = tl.where(keep, tl.exp(score - tl.where(row_max > float("-inf"), row_max, 0.0)[:, None]), 0.0)
    total = tl.sum(weight, axis=1)
    acc = select.weighted_rows(weight, slot, rv_ptr, stride_rvm, stride_rvd, offs_d, d_in, GATHER)

    for n0 in range(0, N, BLOCK_M):
        offs_n = n0 + tl.arange(0, BLOCK_M)
        n_in = offs_n < N
        k = _load_rows(k_ptr, offs_n, n_in, stride_kn, stride_kd, offs_d, d_in).to(DOT_DTYPE)
        scores = tl.where(n_in[None, :], tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, axis=1))
        rescale = tl.exp(row_max - new_max)
        p = tl.exp(scores - new_max[:, None])
        v = _load_rows(v_ptr, offs_n, n_in, stride_vn, stride_vd, offs_d, d_in).to(DOT_DTYPE)
        acc = acc * rescale[:, None] + tl.dot(p.to(DOT_DTYPE), v, input_precision=PRECISION)
        total = total * rescale + tl.sum(p, axis=1)
        row_max = new_max
    out = acc / total[:, None]
    tl.store(out_ptr + offs_q[:, None] * stride_on + offs_d[None, :] * stride_od, out.to(out_ptr.dtype.element_ty),
             mask=q_in[:, None] & d_in[None, :])


def launch(n: int, m: int, heads: int, top_k: int, batch: int, block_q: int,
           strides: dict[str, tuple]) -> tuple[tuple[int, int], list]:
    """Grid and integer scalars (in argument order) of the kernel; ``strides`` maps q, k, v,
    ref_k, ref_v, ref_valid, out to their strides. Shape arguments may be TensorRT shape expressions."""
    scalars = [n, m, heads, top_k]
    for name in ("q", "k", "v", "ref_k", "ref_v", "ref_valid", "out"):
        scalars += list(strides[name])
    return ((n + block_q - 1) // block_q, batch * heads), scalars


def _run(tensors: dict[str, torch.Tensor], top_k: int, config: TileConfig) -> None:
    q = tensors["q"]
    batch, heads, n, d = q.shape
    grid, scalars = launch(n, tensors["ref_k"].shape[2], heads, top_k, batch, config.block_q,
                           {name: t.stride() for name, t in tensors.items()})
    _topk_joint_attention_kernel[grid](
        q, tensors["k"], tensors["v"], tensors["ref_k"], tensors["ref_v"], tensors["ref_valid"], *scalars,
        tensors["out"], **kernel_constants(top_k, d, q.dtype, config),
        num_warps=config.num_warps, num_stages=config.num_stages, maxnreg=config.maxnreg)


def topk_joint_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ref_k: torch.Tensor,
                                ref_v: torch.Tensor, ref_valid: torch.Tensor | None, top_k: int, *,
                                config: TileConfig | None = None) -> torch.Tensor:
    """Top-K joint attention ``[B, Hd, N, D]`` in ``q``'s dtype (``topk_range='all_frames'``;
    arguments as :func:`vosrt.kernels.joint_attention.topk_joint_attention_reference`, fp32 or
    fp16, any strides). ``config``: None autotunes over :func:`bucket_config` on a GPU (once per
    shape, reference capacity (:func:`.tuning.buffer_slots`) and dtype) and takes the first elsewhere. Ties among bit-identical reference scores keep
    the lower index."""
    batch, heads, n, d = q.shape
    if ref_valid is None:
        ref_valid = torch.ones(batch, ref_k.shape[2], dtype=torch.bool, device=q.device)
    tensors = dict(q=q, k=k, v=v, ref_k=ref_k, ref_v=ref_v, ref_valid=ref_valid, out=torch.empty_like(q))
    if config is None:
        key = ("joint_attention", top_k, tuple(q.shape), tuple(k.shape), buffer_slots(ref_valid), q.dtype,
               ref_k.dtype)
        config = autotuned(key, bucket_config(k_pad(top_k)), lambda c: _run(tensors, top_k, c), q.device)
    _run(tensors, top_k, config)
    return tensors["out"]
