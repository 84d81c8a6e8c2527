"""Triton kernels of Cutie's top-K readout (:mod:`vosrt.kernels.readout` has the maths and the
torch references; shapes and names as there).

**Similarity on tensor cores.** For a tile of ``BLOCK_Q`` queries and ``BLOCK_N`` memory slots::

    sim = (2 qk qe)^T @ mk  +  (-qe)^T @ mk^2      (two tl.dot, K = Ck padded to a power of two >= 16)
    score = (sim - sum_c qe qk^2) * ms / sqrt(Ck)   (fp32, per query and per slot)

which is the readout's anisotropic L2 with its three terms as dot channels, the per-query term
and the shrinkage applied in fp32 after the dot. With fp16 inputs the dot operands are fp16 and
accumulate in fp32: ``qe`` and ``mk`` enter exactly, and the products ``2 qk qe`` and ``mk^2``
as their fp16 rounding plus, in two more dots, their rounding residue (``RESIDUES``), which
brings the score to about fp32 accuracy (an emulation at N = 8100, Ck = 64, scores of magnitude
~24: max score error 8e-3 and 99.99% of the top-30 slots equal to the exact ones with the
products rounded once, 2e-5 and 100% with the residues; a 1080p slice in the interpreter kept
99.9% of the slots without the residues). The tensor-core work doubles, next to the selection
that dominates. ``mk^2`` overflows fp16 once ``|mk| > 256``: its operand is scaled per slot by a power of
two into range and the dot's column scaled back in fp32 (:func:`_square_scales`; the official code
squares in fp32). With fp32 inputs the operands stay fp32 and the dots run ``tf32x3`` (three tf32
tensor-core products, about fp32 accuracy); Triton's interpreter computes every dot exactly in
fp32, so tf32x3's accuracy has not been measured.

**Selection** (:mod:`.select`): each program keeps, per query, the best ``K_PAD`` (score, slot)
keys of its slots, ``K_PAD`` the top-K bucket (the next power of two >= top_k, at least 16).

**Kernels.**

* :func:`_readout_split_kernel` (grid: query blocks x splits x batch): the memory axis N is cut
  into ``splits`` contiguous chunks (flash-decoding style, so that a 480p frame fills the GPU);
  each program writes the best keys of its chunk to a workspace ``[B, splits, HW, K_PAD]`` int64.
* :func:`_readout_merge_kernel` (grid: query blocks x batch): the best ``K_PAD`` of a query's
  ``splits`` lists, then :func:`_write_readout`: softmax of the first ``top_k`` in fp32, the
  weighted sum of their value rows (read where they lie; contiguous rows when slot-major), and, when asked,
  the usage: each kept weight atomically added to ``usage[b, slot]``.
* :func:`_readout_kernel` (grid: query blocks x batch): the two in one program over all N, with
  no workspace; the TensorRT plugin runs it (an ahead-of-time plugin launches one kernel and
  passes no scratch memory). Arguments are ordered inputs, integer scalars, output.

:func:`topk_readout_triton` launches split + merge and autotunes the split kernel's blocks on a
GPU; :func:`topk_readout_fused` launches the single kernel.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import READOUT_MAX_TOP_K as MAX_TOP_K, select
from .tuning import TileConfig, autotuned, buffer_slots, check_dot_blocks, dot_types, max_registers, operand_dtype

MIN_K_PAD = 16
MAX_SPLITS = 16
MIN_SLOTS_PER_SPLIT = 512


# The split kernel's autotuning space per input dtype; the first is the default where autotuning
# is off. fp32 dots (tf32x3) hold three times the operand registers, hence narrower tiles: compiled
# as launched, 64-slot fp32 tiles spilled (52/48 B on sm_90, up to 24 B on sm_87), so fp32 has the
# 32-slot tile only. All 4 warps: at 8 (128 registers for two blocks per SM), and with 32-query
# blocks, ptxas spilled.
SPLIT_CONFIGS = {
    torch.float16: (TileConfig(block_q=16, block_n=64, segments=8, num_warps=4),
                    TileConfig(block_q=16, block_n=32, segments=8, num_warps=4)),
    torch.float32: (TileConfig(block_q=16, block_n=32, segments=8, num_warps=4),),
}
def split_configs(dtype: torch.dtype, kept: int) -> tuple[TileConfig, ...]:
    """The split kernel's autotuning space for inputs of ``dtype`` and top-K bucket ``kept``: past
    32 kept keys the 64-slot fp16 tile spilled on sm_90 (24/20 B, compiled as launched), so it is dropped."""
    return tuple(c for c in SPLIT_CONFIGS[dtype] if kept <= 32 or c.block_n <= 32)


# The merge kernel's one configuration, and the single kernel's (the TensorRT plugin's: fp32
# inputs, and it cannot autotune).
MERGE_BLOCK_Q = 16
MERGE_WARPS = 4
FUSED_CONFIG = TileConfig(block_q=16, block_n=32, segments=8, num_warps=4)


def k_pad(top_k: int) -> int:
    """The top-K bucket of ``top_k``: keys kept per query (a power of two, at least ``MIN_K_PAD``)."""
    if not 1 <= top_k <= MAX_TOP_K:
        raise ValueError(f"the Triton readout supports 1 <= top_k <= {MAX_TOP_K}, got {top_k}")
    return max(MIN_K_PAD, 1 << (top_k - 1).bit_length())


def value_block(block_q: int, kept: int) -> int:
    """Value channels gathered per step: a ``[block_q, kept, BLOCK_V]`` tile of at most 2048 elements."""
    return max(1, 2048 // (block_q * kept))


# --------------------------------------------------------------------------- device code


@triton.jit
def _query_operands(qk_ptr, qe_ptr, offs_q, q_in, Ck, stride_qkc, stride_qkq, stride_qec, stride_qeq,
                    CK_BLOCK: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """The query side of the similarity for ``BLOCK_Q`` queries: the dot operands ``2 qk qe``, its
    rounding residue ``2 qk qe - DOT_DTYPE(2 qk qe)`` and ``-qe`` ``[BLOCK_Q, CK_BLOCK]``, and the fp32
    term ``-sum_c qe qk^2`` ``[BLOCK_Q]``."""
    offs_c = tl.arange(0, CK_BLOCK)
    mask = q_in[:, None] & (offs_c[None, :] < Ck)
    qk = tl.load(qk_ptr + offs_q[:, None] * stride_qkq + offs_c[None, :] * stride_qkc, mask=mask, other=0.0)
    qe = tl.load(qe_ptr + offs_q[:, None] * stride_qeq + offs_c[None, :] * stride_qec, mask=mask, other=0.0)
    qk = qk.to(tl.float32)
    qe = qe.to(tl.float32)
    product = 2.0 * qk * qe
    rounded = product.to(DOT_DTYPE)
    return rounded, (product - rounded.to(tl.float32)).to(DOT_DTYPE), (-qe).to(DOT_DTYPE), -tl.sum(qe * qk * qk, axis=1)


@triton.jit
def _square_scales(square):
    """Per slot (column of ``square`` ``[CK_BLOCK, BLOCK_N]`` fp32), powers of two ``(down, up)``,
    ``down * up == 1``, with ``square * down`` under 2**15 (within fp16's range) where the slot's
    largest squared key channel is not: fp16 operands cannot hold ``mk**2`` once ``|mk| > 256``.
    Slots within range get 1 (their dot unchanged); the scaling is exact, and undone in fp32 on
    the dot's column after the accumulation."""
    exponent = (tl.max(square, axis=0).to(tl.int32, bitcast=True) >> 23) - 127  # floor(log2), >= -127
    shift = tl.maximum(exponent - 14, 0)
    down = ((127 - shift) << 23).to(tl.float32, bitcast=True)
    up = ((127 + shift) << 23).to(tl.float32, bitcast=True)
    return down, up


@triton.jit
def _tile_keys(query_a, query_a_residue, query_b, query_bias, mk_ptr, ms_ptr, valid_ptr, n0, n_end, Ck, scale,
               stride_mkc, stride_mkn, stride_msn, stride_validn, BLOCK_N: tl.constexpr, CK_BLOCK: tl.constexpr,
               DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, RESIDUES: tl.constexpr):
    """Packed keys ``[BLOCK_Q, BLOCK_N]`` of slots ``n0 ..`` (``EMPTY`` at or past ``n_end`` and
    where ``valid`` is False). ``RESIDUES``: two more dots add the rounding residues of the
    products ``2 qk qe`` and ``mk^2`` (fp16 operands)."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, CK_BLOCK)
    n_in = offs_n < n_end
    mk = tl.load(mk_ptr + offs_c[:, None] * stride_mkc + offs_n[None, :] * stride_mkn,
                 mask=(offs_c[:, None] < Ck) & n_in[None, :], other=0.0).to(tl.float32)
    square = mk * mk
    sim = tl.dot(query_a, mk.to(DOT_DTYPE), input_precision=PRECISION)
    if RESIDUES:
        sim = tl.dot(query_a_residue, mk.to(DOT_DTYPE), sim, input_precision=PRECISION)
        down, up = _square_scales(square)
        square = square * down[None, :]
        square_dot = tl.dot(query_b, square.to(DOT_DTYPE), input_precision=PRECISION)
        square_dot = tl.dot(query_b, (square - square.to(DOT_DTYPE).to(tl.float32)).to(DOT_DTYPE), square_dot,
                            input_precision=PRECISION)
        sim += square_dot * up[None, :]
    else:
        sim = tl.dot(query_b, square.to(DOT_DTYPE), sim, input_precision=PRECISION)
    ms = tl.load(ms_ptr + offs_n * stride_msn, mask=n_in, other=1.0).to(tl.float32)
    live = tl.load(valid_ptr + offs_n * stride_validn, mask=n_in, other=0) != 0
    score = (sim + query_bias[:, None]) * (ms * scale)[None, :]
    keys = select.pack_keys(score, tl.broadcast_to(offs_n[None, :], score.shape))
    return tl.where(live[None, :], keys, select.EMPTY)


@triton.jit
def _top_keys(qk_ptr, qe_ptr, mk_ptr, ms_ptr, valid_ptr, offs_q, q_in, n_begin, n_end, Ck,
              stride_qkc, stride_qkq, stride_qec, stride_qeq, stride_mkc, stride_mkn, stride_msn, stride_validn,
              K_PAD: tl.constexpr, BLOCK_N: tl.constexpr, SEGMENTS: tl.constexpr, CK_BLOCK: tl.constexpr,
              DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, RESIDUES: tl.constexpr):
    """The best ``K_PAD`` keys ``[BLOCK_Q, K_PAD]`` (sorted descending) of slots ``n_begin .. n_end``
    for the queries ``offs_q``."""
    scale = 1.0 / tl.sqrt_rn(Ck.to(tl.float32))
    query_a, query_a_residue, query_b, query_bias = _query_operands(
        qk_ptr, qe_ptr, offs_q, q_in, Ck, stride_qkc, stride_qkq, stride_qec, stride_qeq, CK_BLOCK, DOT_DTYPE)
    running = select.empty_rows(offs_q.shape[0], K_PAD)
    for n0 in range(n_begin, n_end, BLOCK_N):
        keys = _tile_keys(query_a, query_a_residue, query_b, query_bias, mk_ptr, ms_ptr, valid_ptr, n0, n_end, Ck,
                          scale, stride_mkc, stride_mkn, stride_msn, stride_validn, BLOCK_N, CK_BLOCK, DOT_DTYPE,
                          PRECISION, RESIDUES)
        running = select.add_tile(running, keys, SEGMENTS)
    return running


@triton.jit
def _write_readout(running, top_k, mv_ptr, out_ptr, usage_ptr, offs_q, q_in, V,
                   stride_mvv, stride_mvn, stride_ov, stride_oq, BLOCK_V: tl.constexpr):
    """From sorted keys ``[BLOCK_Q, K_PAD]``: ``out[v, q] = sum_j w[q, j] mv[v, slot[q, j]]`` with
    ``w`` the fp32 softmax of the first ``top_k`` real keys (zero when there is none), ``BLOCK_V``
    value rows at a time; and ``usage[slot] += w`` unless ``usage_ptr`` is None."""
    score, slot, keep = select.kept_scores(running, top_k)
    top = tl.max(score, axis=1)
    e = tl.where(keep, tl.exp(score - tl.where(top > float("-inf"), top, 0.0)[:, None]), 0.0)
    total = tl.sum(e, axis=1)
    weight = e / tl.where(total > 0.0, total, 1.0)[:, None]
    for v0 in range(0, V, BLOCK_V):
        offs_v = v0 + tl.arange(0, BLOCK_V)
        v_in = offs_v < V
        readout = select.weighted_rows(weight, slot, mv_ptr, stride_mvn, stride_mvv, offs_v, v_in, weight.shape[1])
        tl.store(out_ptr + offs_q[:, None] * stride_oq + offs_v[None, :] * stride_ov, readout,
                 mask=q_in[:, None] & v_in[None, :])
    if usage_ptr is not None:
        tl.atomic_add(usage_ptr + slot, weight, mask=keep & q_in[:, None])


@triton.jit
def _readout_split_kernel(
    qk_ptr, qe_ptr, mk_ptr, ms_ptr, valid_ptr,
    HW, N, Ck, splits,
    stride_qkb, stride_qkc, stride_qkq, stride_qeb, stride_qec, stride_qeq,
    stride_mkb, stride_mkc, stride_mkn, stride_msb, stride_msn, stride_validb, stride_validn,
    keys_ptr,
    K_PAD: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
    SEGMENTS: tl.constexpr, CK_BLOCK: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
    RESIDUES: tl.constexpr,
):
    """Program (query block, split, batch item): the best keys of the split's slots, written to
    ``keys[b, split, q, :]`` (workspace ``[B, splits, HW, K_PAD]`` int64, contiguous)."""
    split = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    chunk = tl.cdiv(tl.cdiv(N, splits), BLOCK_N) * BLOCK_N
    offs_q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_in = offs_q < HW
    running = _top_keys(qk_ptr + b * stride_qkb, qe_ptr + b * stride_qeb, mk_ptr + b * stride_mkb,
                        ms_ptr + b * stride_msb, valid_ptr + b * stride_validb, offs_q, q_in,
                        split * chunk, tl.minimum(N, (split + 1) * chunk), Ck,
                        stride_qkc, stride_qkq, stride_qec, stride_qeq, stride_mkc, stride_mkn, stride_msn,
                        stride_validn, K_PAD, BLOCK_N, SEGMENTS, CK_BLOCK, DOT_DTYPE, PRECISION, RESIDUES)
    rows = (b * splits + split) * HW + offs_q
    tl.store(keys_ptr + rows[:, None] * K_PAD + tl.arange(0, K_PAD)[None, :], running, mask=q_in[:, None])


@triton.jit
def _readout_merge_kernel(
    keys_ptr, mv_ptr,
    HW, V, top_k, splits,
    stride_mvb, stride_mvv, stride_mvn, stride_ob, stride_ov, stride_oq, stride_usageb,
    out_ptr, usage_ptr,
    K_PAD: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """Program (query block, batch item): the best ``K_PAD`` of the ``splits`` sorted lists of
    each query, merged one list at a time (read in reverse: ascending), then :func:`_write_readout`."""
    b = tl.program_id(1).to(tl.int64)
    offs_q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_in = offs_q < HW
    cols = tl.arange(0, K_PAD)
    rows = b * splits * HW + offs_q
    running = tl.load(keys_ptr + rows[:, None] * K_PAD + cols[None, :], mask=q_in[:, None], other=select.EMPTY)
    for split in range(1, splits):
        rows = (b * splits + split) * HW + offs_q
        rising = tl.load(keys_ptr + rows[:, None] * K_PAD + (K_PAD - 1 - cols)[None, :], mask=q_in[:, None],
                         other=select.EMPTY)
        running = select.merge_rising(running, rising)
    if usage_ptr is not None:
        usage_ptr += b * stride_usageb
    _write_readout(running, top_k, mv_ptr + b * stride_mvb, out_ptr + b * stride_ob, usage_ptr, offs_q, q_in, V,
                   stride_mvv, stride_mvn, stride_ov, stride_oq, BLOCK_V)


@triton.jit
def _readout_kernel(
    qk_ptr, qe_ptr, mk_ptr, ms_ptr, mv_ptr, valid_ptr,
    HW, N, Ck, V, top_k,
    stride_qkb, stride_qkc, stride_qkq, stride_qeb, stride_qec, stride_qeq,
    stride_mkb, stride_mkc, stride_mkn, stride_msb, stride_msn,
    stride_mvb, stride_mvv, stride_mvn, stride_validb, stride_validn,
    stride_ob, stride_ov, stride_oq,
    out_ptr,
    K_PAD: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, SEGMENTS: tl.constexpr,
    BLOCK_V: tl.constexpr, CK_BLOCK: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
    RESIDUES: tl.constexpr,
):
    """Program (query block, batch item): selection over all N slots and the readout, in one
    launch without workspace (what the TensorRT plugin runs; no usage)."""
    b = tl.program_id(1).to(tl.int64)
    offs_q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_in = offs_q < HW
    running = _top_keys(qk_ptr + b * stride_qkb, qe_ptr + b * stride_qeb, mk_ptr + b * stride_mkb,
                        ms_ptr + b * stride_msb, valid_ptr + b * stride_validb, offs_q, q_in, 0, N, Ck,
                        stride_qkc, stride_qkq, stride_qec, stride_qeq, stride_mkc, stride_mkn, stride_msn,
                        stride_validn, K_PAD, BLOCK_N, SEGMENTS, CK_BLOCK, DOT_DTYPE, PRECISION, RESIDUES)
    _write_readout(running, top_k, mv_ptr + b * stride_mvb, out_ptr + b * stride_ob, None, offs_q, q_in, V,
                   stride_mvv, stride_mvn, stride_ov, stride_oq, BLOCK_V)


# --------------------------------------------------------------------------- launchers


def split_count(batch: int, hw: int, n_slots: int, block_q: int, programs_wanted: int) -> int:
    """Splits of the memory axis (a power of two <= ``MAX_SPLITS``) so that about
    ``programs_wanted`` programs run, each over at least ``MIN_SLOTS_PER_SPLIT`` slots."""
    base = batch * triton.cdiv(hw, block_q)
    splits = 1
    while (splits * 2 <= MAX_SPLITS and base * splits < programs_wanted
           and n_slots >= splits * 2 * MIN_SLOTS_PER_SPLIT):
        splits *= 2
    return splits


def _programs_wanted(device: torch.device) -> int:
    """Two programs per streaming multiprocessor of ``device`` (a nominal 132 off a GPU)."""
    if device.type != "cuda":
        return 264
    return 2 * torch.cuda.get_device_properties(device).multi_processor_count


def kernel_constants(top_k: int, ck: int, dtype: torch.dtype, config: TileConfig) -> dict:
    """The compile-time constants the split and single kernels share."""
    check_dot_blocks(block_q=config.block_q, block_n=config.block_n)
    return dict(K_PAD=k_pad(top_k), BLOCK_Q=config.block_q, BLOCK_N=config.block_n, SEGMENTS=config.segments,
                CK_BLOCK=max(16, 1 << (ck - 1).bit_length()), RESIDUES=dtype == torch.float16, **dot_types(dtype))


def top_keys(query_key: torch.Tensor, query_selection: torch.Tensor, memory_key: torch.Tensor,
             memory_shrinkage: torch.Tensor, valid: torch.Tensor, top_k: int, config: TileConfig,
             splits: int | None = None) -> torch.Tensor:
    """The split kernel's output: each query's best keys per split, ``[B, splits, HW, K_PAD]`` int64
    (packed as in :mod:`.select`, sorted descending). ``splits``: None picks :func:`split_count`."""
    batch, ck, hw = query_key.shape
    n_slots = memory_key.shape[2]
    if splits is None:
        splits = split_count(batch, hw, n_slots, config.block_q, _programs_wanted(query_key.device))
    constants = kernel_constants(top_k, ck, operand_dtype(query_key, query_selection, memory_key), config)
    keys = torch.empty(batch, splits, hw, constants["K_PAD"], device=query_key.device, dtype=torch.int64)
    _readout_split_kernel[(triton.cdiv(hw, config.block_q), splits, batch)](
        query_key, query_selection, memory_key, memory_shrinkage, valid, hw, n_slots, ck, splits,
        *query_key.stride(), *query_selection.stride(), *memory_key.stride(), memory_shrinkage.stride(0),
        memory_shrinkage.stride(2), *valid.stride(), keys, **constants,
        num_warps=config.num_warps, num_stages=config.num_stages, maxnreg=config.maxnreg)
    return keys


def _run_split(inputs: tuple, top_k: int, config: TileConfig, splits: int | None, out: torch.Tensor,
               usage: torch.Tensor | None) -> None:
    """Split kernel then merge kernel into ``out`` (and ``usage``, zeroed here)."""
    qk, qe, mk, ms, mv, valid = inputs
    keys = top_keys(qk, qe, mk, ms, valid, top_k, config, splits)
    batch, splits, hw, kept = keys.shape
    if usage is not None:
        usage.zero_()
    _readout_merge_kernel[(triton.cdiv(hw, MERGE_BLOCK_Q), batch)](
        keys, mv, hw, mv.shape[1], top_k, splits, *mv.stride(), *out.stride(),
        usage.stride(0) if usage is not None else 0, out, usage, K_PAD=kept, BLOCK_Q=MERGE_BLOCK_Q,
        BLOCK_V=value_block(MERGE_BLOCK_Q, kept), num_warps=MERGE_WARPS, maxnreg=max_registers(MERGE_WARPS))


def topk_readout_triton(query_key: torch.Tensor, query_selection: torch.Tensor, memory_key: torch.Tensor,
                        memory_shrinkage: torch.Tensor, memory_value: torch.Tensor, valid: torch.Tensor, top_k: int,
                        *, with_usage: bool = False, config: TileConfig | None = None,
                        splits: int | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Top-K readout ``[B, V, HW]`` fp32 by the split and merge kernels (shapes as in
    :mod:`vosrt.kernels.readout`; fp32 or fp16 inputs, mixed or not, any strides, each read where
    it lies, never copied; the value rows gather fastest slot-major, the layout eager sessions
    store). ``with_usage``: also return the usage ``[B, N]`` fp32. ``config``: the split kernel's
    blocks; None autotunes over ``SPLIT_CONFIGS[dtype]`` (``dtype``: :func:`.tuning.operand_dtype`) on a GPU
    (once per query shape, memory capacity (:func:`.tuning.buffer_slots`, not the filled slots)
    and dtypes) and takes the first elsewhere. ``splits``: chunks of the memory axis, None picks
    :func:`split_count` (about two programs per SM)."""
    operand_dtype(memory_shrinkage, memory_value)  # raises for dtypes other than fp16 and fp32
    dtype = operand_dtype(query_key, query_selection, memory_key)
    inputs = (query_key, query_selection, memory_key, memory_shrinkage, memory_value, valid)
    batch, _, hw = query_key.shape
    out = torch.empty(batch, memory_value.shape[1], hw, device=query_key.device, dtype=torch.float32)
    usage = torch.empty(batch, valid.shape[1], device=query_key.device, dtype=torch.float32) if with_usage else None
    if config is None:
        key = ("readout", top_k, tuple(query_key.shape), tuple(memory_value.shape[:2]), buffer_slots(valid),
               *(t.dtype for t in inputs))
        config = autotuned(key, split_configs(dtype, k_pad(top_k)),
                           lambda c: _run_split(inputs, top_k, c, splits, out, usage), query_key.device)
    _run_split(inputs, top_k, config, splits, out, usage)
    return (out, usage) if with_usage else out


def fused_launch(hw: int, n_slots: int, ck: int, n_values: int, top_k: int, batch: int,
                 strides: dict[str, tuple]) -> tuple[tuple[int, int], list]:
    """Grid and integer scalars (in argument order) of :func:`_readout_kernel`; ``strides`` maps
    each tensor name (qk, qe, mk, ms, mv, valid, out) to its strides. Shape arguments may be
    TensorRT shape expressions."""
    scalars = [hw, n_slots, ck, n_values, top_k, *strides["qk"], *strides["qe"], *strides["mk"],
               strides["ms"][0], strides["ms"][2], *strides["mv"], *strides["valid"], *strides["out"]]
    return ((hw + FUSED_CONFIG.block_q - 1) // FUSED_CONFIG.block_q, batch), scalars


def fused_constants(top_k: int, ck: int) -> dict:
    """Compile-time constants of :func:`_readout_kernel` at ``FUSED_CONFIG`` (fp32 inputs)."""
    constants = kernel_constants(top_k, ck, torch.float32, FUSED_CONFIG)
    return dict(constants, BLOCK_V=value_block(FUSED_CONFIG.block_q, constants["K_PAD"]))


def topk_readout_fused(query_key: torch.Tensor, query_selection: torch.Tensor, memory_key: torch.Tensor,
                       memory_shrinkage: torch.Tensor, memory_value: torch.Tensor, valid: torch.Tensor,
                       top_k: int) -> torch.Tensor:
    """Top-K readout ``[B, V, HW]`` fp32 by the single kernel at ``FUSED_CONFIG`` (the TensorRT
    plugin's kernel and configuration; fp32 inputs of any strides, values read where they lie,
    as TensorRT passes them)."""
    if query_key.dtype != torch.float32:
        raise ValueError(f"the single-kernel readout (the TensorRT plugin's) takes float32 inputs, "
                         f"got {query_key.dtype}")
    batch, ck, hw = query_key.shape
    n_slots, n_values = memory_key.shape[2], memory_value.shape[1]
    out = torch.empty(batch, n_values, hw, device=query_key.device, dtype=torch.float32)
    tensors = dict(qk=query_key, qe=query_selection, mk=memory_key, ms=memory_shrinkage, mv=memory_value,
                   valid=valid, out=out)
    grid, scalars = fused_launch(hw, n_slots, ck, n_values, top_k, batch, {k: t.stride() for k, t in tensors.items()})
    _readout_kernel[grid](query_key, query_selection, memory_key, memory_shrinkage, memory_value, valid, *scalars,
                          out, **fused_constants(top_k, ck),
                          num_warps=FUSED_CONFIG.num_warps, num_stages=FUSED_CONFIG.num_stages,
                          maxnreg=FUSED_CONFIG.maxnreg)
    return out
