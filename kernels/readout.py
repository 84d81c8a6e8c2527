"""Cutie top-K memory readout: plain-torch references, the formulation the exported graphs use,
and dispatchers to the Triton kernels.

All compute, for every query token ``q`` of every batch item ``b``::

    sim[n, q]  = -sum_c qe[c, q] * (mk[c, n] - qk[c, q]) ** 2 * ms[n] / sqrt(Ck)
    keep       = the top_k slots n of sim[:, q] (padded slots never count)
    w[n, q]    = softmax of sim[keep, q] over the kept slots (fp32)
    out[v, q]  = sum_{n in keep} w[n, q] * mv[v, n]
    usage[n]   = sum_q w[n, q]                       (the long-term memory's usage count)

which is Cutie/XMem's ``get_similarity`` (anisotropic L2 with shrinkage and selection)
followed by ``do_softmax(top_k)``, the value readout and ``return_usage``.

Shapes (all functions share the signature):

* ``query_key``         ``[B, Ck, HW]``  query keys ``qk``
* ``query_selection``   ``[B, Ck, HW]``  query selection ``qe``, values in (0, 1)
* ``memory_key``        ``[B, Ck, N]``   memory keys ``mk``
* ``memory_shrinkage``  ``[B, 1, N]``    memory shrinkage ``ms``, values >= 1
* ``memory_value``      ``[B, V, N]``    memory values ``mv`` (V = objects * value dim)
* ``valid``             ``[B, N]`` bool  True where the slot holds memory; padded
  slots (False) have no influence on the result
* readout               ``[B, V, HW]``   float32; usage ``[B, N]`` float32

When a batch item has fewer valid slots than ``top_k`` all its valid slots are kept;
when it has none its readout is zero.

* :func:`topk_readout_reference`, :func:`topk_usage_reference`: the official formulation (dense
  affinity), fp32.
* :func:`topk_readout_gather`, :func:`topk_usage_scatter`: the same in the ops the exported ONNX
  graphs use.
* :func:`topk_readout`, :func:`topk_readout_with_usage`, :func:`topk_usage`: dispatchers, the
  Triton kernels of :mod:`vosrt.kernels.triton.readout` for CUDA tensors (triton installed,
  ``top_k <= KERNEL_MAX_TOP_K``, not while exporting to ONNX), the references otherwise. The
  kernels read every input where it lies, in its own dtype (fp16 or fp32, mixed or not: fp16
  dots when the query and memory keys are all fp16, else fp32), and copy none of them; the value
  rows gather fastest slot-major (``memory_value`` a ``[B, V, N]`` view of a ``[B, N, V]``
  buffer: what eager sessions store, :class:`vosrt.runtime.cutie.memory.MemoryBucket`), as does
  the CPU path's ``embedding_bag``.

This module never imports triton; the dispatchers import the kernels when they first run
(to run them in Triton's interpreter on CPU tensors, call the kernel modules directly with
``TRITON_INTERPRET=1`` set before triton is first imported).
"""

from __future__ import annotations

import importlib.util
import math

import torch

from .triton import READOUT_MAX_TOP_K as KERNEL_MAX_TOP_K  # the package imports no triton


def triton_available() -> bool:
    """Whether triton is installed (without importing it)."""
    return importlib.util.find_spec("triton") is not None


# --------------------------------------------------------------------------- reference


def anisotropic_similarity(
    query_key: torch.Tensor,
    query_selection: torch.Tensor,
    memory_key: torch.Tensor,
    memory_shrinkage: torch.Tensor,
) -> torch.Tensor:
    """Cutie's ``get_similarity`` in fp32: ``[B, N, HW]`` from the ``[B, Ck, *]`` inputs.

    Also the similarity of the long-term memory consolidation, where the prototypes are the
    queries and the consolidated working-memory tokens the memory."""
    qk, qe = query_key.float(), query_selection.float()
    mk_t = memory_key.float().transpose(1, 2)  # [B, N, Ck]
    a_sq = mk_t.pow(2) @ qe
    two_ab = 2 * (mk_t @ (qk * qe))
    b_sq = (qe * qk.pow(2)).sum(1, keepdim=True)
    scale = memory_shrinkage.float().transpose(1, 2) / math.sqrt(memory_key.shape[1])
    return (-a_sq + two_ab - b_sq) * scale


def _masked_softmax(values: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Softmax over ``dim`` in which -inf entries get weight 0, and all -inf lines give 0."""
    top = values.amax(dim=dim, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    e = torch.exp(values - top)
    return e / e.sum(dim=dim, keepdim=True).clamp_min(torch.finfo(e.dtype).tiny)


def topk_readout_reference(
    query_key: torch.Tensor,
    query_selection: torch.Tensor,
    memory_key: torch.Tensor,
    memory_shrinkage: torch.Tensor,
    memory_value: torch.Tensor,
    valid: torch.Tensor,
    top_k: int,
) -> torch.Tensor:
    """Top-K readout the way the official code computes it, in fp32.

    Similarity by matmuls ``[B, N, HW]``, ``torch.topk`` over the slots (dim 1),
    softmax of the kept scores scattered into a dense ``[B, N, HW]`` affinity, and
    ``bmm`` with the values. Shapes are in the module docstring; returns
    ``[B, V, HW]`` float32. Padded slots score -inf, so when a batch item has fewer
    valid slots than ``top_k`` the surplus picks are -inf and get weight 0, which
    shrinks k to the number of valid slots without a host sync.
    """
    _check_inputs(query_key, query_selection, memory_key, memory_shrinkage, memory_value, valid, top_k)
    with torch.autocast(query_key.device.type, enabled=False):  # fp32 even inside an autocast region
        affinity = _topk_affinity(query_key, query_selection, memory_key, memory_shrinkage, valid, top_k)
        return torch.bmm(memory_value.float(), affinity)


def topk_usage_reference(
    query_key: torch.Tensor,
    query_selection: torch.Tensor,
    memory_key: torch.Tensor,
    memory_shrinkage: torch.Tensor,
    valid: torch.Tensor,
    top_k: int,
) -> torch.Tensor:
    """Memory usage of a top-K readout: ``[B, N]`` float32, each slot's top-K softmax weight
    summed over the queries (padded slots get 0).

    The official ``do_softmax(..., return_usage=True)`` (``affinity.sum(dim=2)``), which the
    long-term memory counts to pick prototypes and to evict. Inputs as in
    :func:`topk_readout_reference`, without the values.
    """
    _check_inputs(query_key, query_selection, memory_key, memory_shrinkage, None, valid, top_k)
    with torch.autocast(query_key.device.type, enabled=False):
        return _topk_affinity(query_key, query_selection, memory_key, memory_shrinkage, valid, top_k).sum(2)


def _topk_affinity(query_key: torch.Tensor, query_selection: torch.Tensor, memory_key: torch.Tensor,
                   memory_shrinkage: torch.Tensor, valid: torch.Tensor, top_k: int) -> torch.Tensor:
    """Dense top-K affinity ``[B, N, HW]`` fp32: the softmax of each query's ``top_k`` best
    valid slots scattered into zeros (all zero for a query with no valid slot)."""
    weights, indices = _official_selection(query_key, query_selection, memory_key, memory_shrinkage, valid, top_k)
    affinity = torch.zeros(indices.shape[0], memory_key.shape[2], indices.shape[2], device=weights.device)
    return affinity.scatter_(1, indices, weights)


def _official_selection(query_key: torch.Tensor, query_selection: torch.Tensor, memory_key: torch.Tensor,
                        memory_shrinkage: torch.Tensor, valid: torch.Tensor, top_k: int
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's ``top_k`` best valid slots as the official code picks them (its similarity
    sums, ``torch.topk`` over dim 1 of ``[B, N, HW]``: the same choice among tied slots) and their
    softmax weights, both ``[B, k, HW]``, k = min(top_k, N)."""
    sim = anisotropic_similarity(query_key, query_selection, memory_key, memory_shrinkage)
    if sim.shape[1] == 0:  # no memory: nothing kept
        return sim, torch.zeros_like(sim, dtype=torch.long)
    sim = sim.masked_fill(~valid[:, :, None], float("-inf"))
    values, indices = torch.topk(sim, k=min(top_k, sim.shape[1]), dim=1)
    return _masked_softmax(values), indices


# --------------------------------------------------------------------------- graph formulation
# What the exported graphs compute: the reference's result, in the ops that ONNX Runtime and
# TensorRT run fast. The similarity is one matmul, query-major ``[B, HW, N]`` so that TopK and
# Softmax reduce the contiguous last axis, and the kept values are gathered instead of
# multiplying a dense ``[N, HW]`` affinity (V * N * HW multiply-adds) with the values.


def topk_readout_gather(
    query_key: torch.Tensor,
    query_selection: torch.Tensor,
    memory_key: torch.Tensor,
    memory_shrinkage: torch.Tensor,
    memory_value: torch.Tensor,
    valid: torch.Tensor,
    top_k: int,
) -> torch.Tensor:
    """:func:`topk_readout_reference` computed as the exported graphs do: ``[B, V, HW]`` float32
    (shapes in the module docstring). The values are read slot-major (one contiguous row of V
    per slot): a Gather of each query's ``top_k`` kept rows, then a batched matmul with their
    softmax weights."""
    _check_inputs(query_key, query_selection, memory_key, memory_shrinkage, memory_value, valid, top_k)
    with torch.autocast(query_key.device.type, enabled=False):
        weights, index = _top_weights(query_key, query_selection, memory_key, memory_shrinkage, valid, top_k)
        return _gathered_readout(weights, index, memory_value)


def _gathered_readout(weights: torch.Tensor, index: torch.Tensor, memory_value: torch.Tensor) -> torch.Tensor:
    """``out[b, v, q] = sum_j weights[b, q, j] * memory_value[b, v, index[b, q, j]]`` -> ``[B, V, HW]``
    fp32: a Gather of each query's kept value rows (read slot-major), then a batched matmul."""
    batch, values, _ = memory_value.shape
    hw, kept = index.shape[1:]
    slot_rows, rows = _kept_slot_rows(index, memory_value)
    picked = slot_rows.index_select(0, rows.flatten()).view(batch * hw, kept, values)
    return (weights.reshape(batch * hw, 1, kept) @ picked).view(batch, hw, values).transpose(1, 2)


def _bagged_readout(weights: torch.Tensor, index: torch.Tensor, memory_value: torch.Tensor) -> torch.Tensor:
    """:func:`_gathered_readout` (same arguments and result, up to the order of the fp32 sums) as
    one weighted ``embedding_bag``, which reads the kept rows without materialising them (3 ms
    against 64 ms for the gather and matmul on 2 CPU threads, cutie-base at 480x864 with 2 objects
    and 2 memory frames; 47 ms when the table is a strided view, as it was for a lone stream).
    Eager only: ONNX has no such op, so the exported graphs keep the gather."""
    batch, values, _ = memory_value.shape
    hw, kept = index.shape[1:]
    if values == 0 or kept == 0:
        return memory_value.new_zeros(batch, values, hw, dtype=torch.float32)
    slot_rows, rows = _kept_slot_rows(index, memory_value)
    bags = torch.nn.functional.embedding_bag(rows, slot_rows, mode="sum",
                                             per_sample_weights=weights.reshape(batch * hw, kept))
    return bags.view(batch, hw, values).transpose(1, 2)


def _kept_slot_rows(index: torch.Tensor, memory_value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The values slot-major, ``[B * N, V]`` fp32 contiguous, and each query's kept rows in it, ``[B * HW, k]``
    (``index`` ``[B, HW, k]`` offset by each batch item's first row)."""
    batch, values, slots = memory_value.shape
    # contiguous for any batch: embedding_bag sums a strided table in another order (and 15x slower),
    # so a lone item (whose reshape is a view) would round differently from the same item in a batch
    slot_rows = memory_value.float().transpose(1, 2).reshape(batch * slots, values).contiguous()
    first_row = torch.arange(batch, device=index.device).view(-1, 1, 1) * slots
    return slot_rows, (index + first_row).reshape(batch * index.shape[1], index.shape[2])


def _scattered_usage(weights: torch.Tensor, index: torch.Tensor, slots: int) -> torch.Tensor:
    """Each slot's kept weights summed over the queries -> ``[B, N]`` fp32 (an eager scatter-add)."""
    usage = torch.zeros(weights.shape[0], slots, device=weights.device, dtype=torch.float32)
    return usage.scatter_add_(1, index.flatten(1), weights.flatten(1))


def topk_usage_scatter(
    query_key: torch.Tensor,
    query_selection: torch.Tensor,
    memory_key: torch.Tensor,
    memory_shrinkage: torch.Tensor,
    valid: torch.Tensor,
    top_k: int,
) -> torch.Tensor:
    """:func:`topk_usage_reference` computed as the exported graphs do: ``[B, N]`` float32. The kept
    weights are scattered into a query-major ``[B, HW, N]`` affinity (a query's slots are distinct,
    so ScatterElements needs no reduction, which TensorRT runs natively) and summed over queries."""
    _check_inputs(query_key, query_selection, memory_key, memory_shrinkage, None, valid, top_k)
    with torch.autocast(query_key.device.type, enabled=False):
        weights, index = _top_weights(query_key, query_selection, memory_key, memory_shrinkage, valid, top_k)
        affinity = torch.zeros(*index.shape[:2], valid.shape[1], device=weights.device, dtype=torch.float32)
        return affinity.scatter(2, index, weights).sum(1)


def _query_major_similarity(query_key: torch.Tensor, query_selection: torch.Tensor, memory_key: torch.Tensor,
                            memory_shrinkage: torch.Tensor) -> torch.Tensor:
    """:func:`anisotropic_similarity` transposed, ``[B, HW, N]`` fp32, as one matmul over ``2 Ck + 1``
    channels: ``[2 qk qe, -qe, -sum_c qe qk^2]`` against ``[mk, mk^2, 1] * ms / sqrt(Ck)``."""
    qk, qe, mk = query_key.float(), query_selection.float(), memory_key.float()
    scale = memory_shrinkage.float() / math.sqrt(mk.shape[1])
    memory = torch.cat([mk * scale, mk.square() * scale, scale], dim=1)
    query = torch.cat([2 * qk * qe, -qe, -(qe * qk.square()).sum(1, keepdim=True)], dim=1)
    return query.transpose(1, 2) @ memory


def _top_weights(query_key: torch.Tensor, query_selection: torch.Tensor, memory_key: torch.Tensor,
                 memory_shrinkage: torch.Tensor, valid: torch.Tensor, top_k: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's ``top_k`` valid slots and their softmax weights, both ``[B, HW, k]``
    (k = min(top_k, N); surplus picks of padded slots get weight 0). Padded slots are masked by
    adding -inf, a broadcast Add, which ONNX Runtime runs faster than a Where."""
    padding = torch.zeros_like(memory_shrinkage, dtype=torch.float32).masked_fill(~valid[:, None, :], float("-inf"))
    sim = _query_major_similarity(query_key, query_selection, memory_key, memory_shrinkage) + padding
    scores, index = torch.topk(sim, k=min(top_k, sim.shape[2]), dim=2)
    return _masked_softmax(scores, dim=2), index


def _check_inputs(
    query_key: torch.Tensor,
    query_selection: torch.Tensor,
    memory_key: torch.Tensor,
    memory_shrinkage: torch.Tensor,
    memory_value: torch.Tensor | None,
    valid: torch.Tensor,
    top_k: int,
) -> None:
    """Raise ValueError unless the shapes agree with the module docstring and top_k >= 1
    (``memory_value`` None: no values to check)."""
    batch, ck, hw = query_key.shape
    n_slots = memory_key.shape[2]
    expected = {
        "query_selection": (query_selection.shape, (batch, ck, hw)),
        "memory_key": (memory_key.shape, (batch, ck, n_slots)),
        "memory_shrinkage": (memory_shrinkage.shape, (batch, 1, n_slots)),
        "valid": (valid.shape, (batch, n_slots)),
    }
    if memory_value is not None:
        expected["memory_value"] = ((memory_value.shape[0], memory_value.shape[2]), (batch, n_slots))
    for name, (got, want) in expected.items():
        if tuple(got) != want:
            raise ValueError(f"{name}: shape {tuple(got)} does not match {want}")
    if valid.dtype != torch.bool:
        raise ValueError(f"valid must be bool, got {valid.dtype}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")


# --------------------------------------------------------------------------- dispatch


def _kernel_applies(query_key: torch.Tensor, top_k: int) -> bool:
    """Whether the dispatchers run the Triton kernels for these inputs."""
    return (query_key.is_cuda and 1 <= top_k <= KERNEL_MAX_TOP_K and triton_available()
            and not torch.onnx.is_in_onnx_export())


def topk_readout(
    query_key: torch.Tensor,
    query_selection: torch.Tensor,
    memory_key: torch.Tensor,
    memory_shrinkage: torch.Tensor,
    memory_value: torch.Tensor,
    valid: torch.Tensor,
    top_k: int,
) -> torch.Tensor:
    """Top-K readout ``[B, V, HW]`` fp32 (shapes in the module docstring): the Triton kernels for
    CUDA tensors, else the official similarity and top-k with the kept values summed by a
    weighted ``embedding_bag`` (no dense ``V x N x HW`` product, no gathered copy of the kept
    values; the same selection as :func:`topk_readout_reference`)."""
    return _dispatch((query_key, query_selection, memory_key, memory_shrinkage, memory_value, valid), top_k,
                     with_usage=False)


def topk_readout_with_usage(
    query_key: torch.Tensor,
    query_selection: torch.Tensor,
    memory_key: torch.Tensor,
    memory_shrinkage: torch.Tensor,
    memory_value: torch.Tensor,
    valid: torch.Tensor,
    top_k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-K readout ``[B, V, HW]`` and memory usage ``[B, N]`` (both fp32) of one selection: the
    Triton kernels for CUDA tensors (the usage summed by atomics, so its last bits vary from run
    to run), else the official similarity and top-k, bagged (see :func:`topk_readout`)."""
    return _dispatch((query_key, query_selection, memory_key, memory_shrinkage, memory_value, valid), top_k,
                     with_usage=True)


def _dispatch(inputs: tuple[torch.Tensor, ...], top_k: int, with_usage: bool):
    """The readout (and usage) of ``inputs`` (the six tensors of :func:`topk_readout`), by the
    kernels or the references."""
    if _kernel_applies(inputs[0], top_k):
        from .triton.readout import topk_readout_triton

        _check_inputs(*inputs, top_k)
        return topk_readout_triton(*inputs, top_k, with_usage=with_usage)
    _check_inputs(*inputs, top_k)
    with torch.autocast(inputs[0].device.type, enabled=False):
        weights, index = (t.transpose(1, 2) for t in _official_selection(*inputs[:4], inputs[5], top_k))
        readout = _bagged_readout(weights, index, inputs[4])
        return (readout, _scattered_usage(weights, index, inputs[5].shape[1])) if with_usage else readout


def topk_usage(
    query_key: torch.Tensor,
    query_selection: torch.Tensor,
    memory_key: torch.Tensor,
    memory_shrinkage: torch.Tensor,
    valid: torch.Tensor,
    top_k: int,
) -> torch.Tensor:
    """Memory usage ``[B, N]`` fp32 (arguments as :func:`topk_usage_reference`): the Triton kernels
    for CUDA tensors (selection and softmax, no value read), else from the official similarity and
    top-k (see :func:`topk_readout`)."""
    no_values = memory_key.new_empty(memory_key.shape[0], 0, memory_key.shape[2])
    return topk_readout_with_usage(query_key, query_selection, memory_key, memory_shrinkage, no_values, valid,
                                   top_k)[1]
