"""Per-query top-K selection in registers, shared by the readout and joint-attention kernels.

**Keys.** A score (fp32) and the index of its slot (int32, >= 0) are packed into one int64 whose
order is the score's, ties going to the lower slot: the high word is the score's bits mapped to
an int32 of the same order, the low word ``0x7FFFFFFF - slot``. ``EMPTY`` (the key of a -inf
score at slot 0x7FFFFFFF) is below every key a kernel packs; padded slots are given ``EMPTY``,
so they are never selected, and a row with fewer than K real keys keeps ``EMPTY`` in its tail.

**Running top-K.** A kernel streams its slots one tile ``[rows, W]`` at a time and keeps, per
row, the best ``K`` keys sorted in descending order (``K`` a power of two). :func:`add_tile`
first drops every key of the tile that is not above the row's K-th best (one compare per
score: after the first tiles most scores stop here), then, while some row still has a key
left, takes the best key of each of ``SEGMENTS`` column segments of every row and merges those
``[rows, SEGMENTS]`` winners into the sorted row with a bitonic merge. A row with ``c`` keys
above its threshold in a tile needs about ``c / SEGMENTS`` rounds (more when they share a
segment); a round costs ``log2(K)`` compare-exchange stages over ``K`` keys plus a sort of the
winners, against ``log2(W)(log2(W) + 1) / 2`` stages over ``W`` keys for sorting a whole tile.

**Bitonic networks.** A row of ``2**L`` keys is viewed as a hypercube ``[rows, 2, ..., 2]``
whose axis ``ndim - 1 - j`` is bit ``j`` of a key's position; the partner of a key in a
compare-exchange lies across one axis and is read with a min/max reduction over that size-2
axis (``tl.sort`` uses an xor reduction, which Triton's interpreter evaluates slowly).
"""
from __future__ import annotations

import triton
import triton.language as tl

# pack_keys(-inf, 0x7FFFFFFF): the ordered bits of -inf (-2139095041) in the high word, 0 in the low word.
EMPTY: tl.constexpr = tl.constexpr(-2139095041 << 32)


@triton.constexpr_function
def log2(n: int) -> int:
    """log2 of a power of two, at compile time."""
    return int(n).bit_length() - 1


@triton.jit
def pack_keys(score, slot):
    """int64 keys of fp32 ``score`` and int32 ``slot`` (same shape): larger score first, then lower slot."""
    bits = score.to(tl.int32, bitcast=True)
    ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    return (ordered.to(tl.int64) << 32) | (0x7FFFFFFF - slot).to(tl.int64)


@triton.jit
def unpack_keys(key):
    """Inverse of :func:`pack_keys`: ``(score fp32, slot int32)``; ``EMPTY`` gives a -inf score."""
    ordered = (key >> 32).to(tl.int32)
    bits = tl.where(ordered >= 0, ordered, ordered ^ 0x7FFFFFFF)
    return bits.to(tl.float32, bitcast=True), 0x7FFFFFFF - key.to(tl.int32)


@triton.jit
def kept_scores(running, top_k):
    """The first ``top_k`` real keys of sorted rows ``[rows, K]``: ``(score, slot, keep)``, each
    ``[rows, K]``; ``score`` is -inf where ``keep`` is False."""
    score, slot = unpack_keys(running)
    keep = (tl.arange(0, running.shape[1])[None, :] < top_k) & (score > float("-inf"))
    return tl.where(keep, score, float("-inf")), slot, keep


@triton.jit
def _position_bit(h, AXIS: tl.constexpr):
    """0 or 1: the position of each key along the size-2 ``AXIS`` of hypercube ``h``, broadcastable to it."""
    ndim: tl.constexpr = len(h.shape)
    return tl.reshape(tl.arange(0, 2), [1] * AXIS + [2] + [1] * (ndim - AXIS - 1))


@triton.jit
def _run_direction(h, LOG_RUN: tl.constexpr, DESCENDING: tl.constexpr):
    """1 where the run of ``2**LOG_RUN`` keys holding a key is to be sorted descending, else 0.
    Runs shorter than the row alternate (ascending, descending, ...) so that neighbours form
    bitonic sequences; a run that is the whole row takes ``DESCENDING``."""
    ndim: tl.constexpr = len(h.shape)
    if LOG_RUN < ndim - 1:
        direction = _position_bit(h, ndim - 1 - LOG_RUN)
    else:
        direction = tl.full([1] * ndim, DESCENDING, tl.int32)
    return direction


@triton.jit
def _compare_exchange(h, BIT: tl.constexpr, direction):
    """Order each pair of keys of ``h`` whose positions differ in ``BIT``: ascending where
    ``direction`` is 0, descending where it is 1."""
    axis: tl.constexpr = len(h.shape) - 1 - BIT
    low = tl.min(h, axis=axis, keep_dims=True)
    high = tl.max(h, axis=axis, keep_dims=True)
    return tl.where((_position_bit(h, axis) ^ direction) != 0, high, low)


@triton.jit
def _bitonic_merge(h, LOG_RUN: tl.constexpr, direction):
    """Sort every bitonic run of ``2**LOG_RUN`` keys of hypercube ``h`` in its ``direction``."""
    for i in tl.static_range(LOG_RUN):
        h = _compare_exchange(h, LOG_RUN - 1 - i, direction)
    return h


@triton.jit
def top_sorted(keys, LOG_K: tl.constexpr, DESCENDING: tl.constexpr):
    """The ``2**LOG_K`` largest keys of each row of ``keys`` ``[rows, 2**L]`` (``LOG_K <= L``),
    sorted (bitonic top-K: sort runs of ``2**LOG_K``, then halve the row ``L - LOG_K`` times by
    the elementwise max of neighbouring ascending and descending runs, merging again)."""
    LOG_N: tl.constexpr = log2(keys.shape[1])
    h = tl.reshape(keys, [keys.shape[0]] + [2] * LOG_N)
    for s in tl.static_range(1, LOG_K + 1):
        h = _bitonic_merge(h, s, _run_direction(h, s, DESCENDING))
    for _ in tl.static_range(LOG_K, LOG_N):
        h = tl.max(h, axis=len(h.shape) - 1 - LOG_K)
        h = _bitonic_merge(h, LOG_K, _run_direction(h, LOG_K, DESCENDING))
    return tl.reshape(h, [keys.shape[0], 2**LOG_K])


@triton.jit
def merge_rising(running, rising):
    """The best ``K`` of ``running`` (sorted descending) and ``rising`` (sorted ascending), both
    ``[rows, K]``, sorted descending: their elementwise max is a bitonic row holding the best
    ``K`` of both, which one bitonic merge sorts."""
    K: tl.constexpr = running.shape[1]
    h = tl.reshape(tl.maximum(running, rising), [running.shape[0]] + [2] * log2(K))
    h = _bitonic_merge(h, log2(K), _run_direction(h, log2(K), 1))
    return tl.reshape(h, [running.shape[0], K])


@triton.jit
def _merge_candidates(running, candidates):
    """The best ``K`` of ``running`` ``[rows, K]`` (sorted descending) and the unsorted
    ``candidates`` ``[rows, S]``, sorted descending: the candidates are sorted ascending (their
    best ``K`` when ``S > K``), laid at the tail of a row of ``EMPTY`` and merged."""
    K: tl.constexpr = running.shape[1]
    S: tl.constexpr = candidates.shape[1]
    if S >= K:
        rising = top_sorted(candidates, log2(K), 0)
    else:
        tail = top_sorted(candidates, log2(S), 0)
        tiled = tl.reshape(tl.broadcast_to(tail[:, None, :], [running.shape[0], K // S, S]), [running.shape[0], K])
        rising = tl.where(tl.arange(0, K)[None, :] >= K - S, tiled, EMPTY)
    return merge_rising(running, rising)


@triton.jit
def add_tile(running, keys, SEGMENTS: tl.constexpr):
    """``running`` ``[rows, K]`` (each row's best keys so far, sorted descending) updated with
    the tile ``keys`` ``[rows, W]`` (``EMPTY`` for padded slots): see the module docstring."""
    rows: tl.constexpr = keys.shape[0]
    width: tl.constexpr = keys.shape[1]
    keys = tl.where(keys > tl.min(running, axis=1)[:, None], keys, EMPTY)
    while tl.max(tl.max(keys, axis=1), axis=0) > EMPTY:
        segments = tl.reshape(keys, [rows, SEGMENTS, width // SEGMENTS])
        winners = tl.max(segments, axis=2)
        keys = tl.reshape(tl.where(segments == winners[:, :, None], EMPTY, segments), [rows, width])
        running = _merge_candidates(running, winners)
        keys = tl.where(keys > tl.min(running, axis=1)[:, None], keys, EMPTY)
    return running


@triton.jit
def empty_rows(ROWS: tl.constexpr, K: tl.constexpr):
    """A running top-K ``[ROWS, K]`` holding no key yet."""
    return tl.full([ROWS, K], EMPTY, tl.int64)


@triton.jit
def weighted_rows(weight, slot, rows_ptr, stride_row, stride_col, offs_col, col_in, GATHER: tl.constexpr):
    """``sum_j weight[r, j] * rows[slot[r, j], cols]`` ``[rows, len(offs_col)]`` fp32, for kept keys'
    weights and slots ``[rows, K]`` (entries of weight 0 are not read), ``GATHER`` kept keys per step."""
    K: tl.constexpr = weight.shape[1]
    chunk = tl.arange(0, K // GATHER)[None, :, None]
    weights = tl.reshape(weight, [weight.shape[0], K // GATHER, GATHER])
    slots = tl.reshape(slot, [weight.shape[0], K // GATHER, GATHER])
    total = tl.zeros([weight.shape[0], offs_col.shape[0]], tl.float32)
    for c in range(0, K // GATHER):
        w = tl.sum(tl.where(chunk == c, weights, 0.0), axis=1)
        picked = tl.sum(tl.where(chunk == c, slots, 0), axis=1)
        rows = tl.load(rows_ptr + picked[:, :, None] * stride_row + offs_col[None, None, :] * stride_col,
                       mask=(w != 0.0)[:, :, None] & col_in[None, None, :], other=0.0).to(tl.float32)
        total += tl.sum(rows * w[:, :, None], axis=1)
    return total

