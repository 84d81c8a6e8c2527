"""Cutie's top-K readout: the Triton kernels (split + merge, and the TensorRT plugin's single
kernel) against the torch reference, the reference against a dense softmax, and the exported
graphs' formulation against the reference. Kernels run in Triton's interpreter without a GPU."""
from __future__ import annotations

import math
import os
import time
from typing import NamedTuple

import pytest
import torch

from kernel_testing import DEVICE, READOUT_TOLERANCES, needs_kernel, tolerance
from vosrt.kernels import readout as ro


def make_inputs(seed, batch, ck, hw, n_slots, n_values, invalid_fraction=0.0, valid_counts=None,
                dtype=torch.float32):
    """Random readout inputs (query_key, query_selection, memory_key, memory_shrinkage, memory_value, valid).

    ``valid_counts[b]``, if given, keeps that many random valid slots in batch item b.
    """
    g = torch.Generator().manual_seed(seed)
    qk = torch.randn(batch, ck, hw, generator=g)
    qe = torch.sigmoid(torch.randn(batch, ck, hw, generator=g))
    mk = torch.randn(batch, ck, n_slots, generator=g)
    ms = 1 + 4 * torch.rand(batch, 1, n_slots, generator=g)
    mv = torch.randn(batch, n_values, n_slots, generator=g)
    valid = torch.rand(batch, n_slots, generator=g) >= invalid_fraction
    if valid_counts is not None:
        valid = torch.zeros(batch, n_slots, dtype=torch.bool)
        for b, count in enumerate(valid_counts):
            valid[b, torch.randperm(n_slots, generator=g)[:count]] = True
    return [t.to(dtype) for t in (qk, qe, mk, ms, mv)] + [valid]


def dense_similarity(qk, qe, mk, ms, valid):
    """``-sum_c qe (mk - qk)^2 * ms / sqrt(Ck)`` straight from the definition, float64, -inf where invalid."""
    qk, qe, mk, ms = (t.double() for t in (qk, qe, mk, ms))
    diff = mk[:, :, :, None] - qk[:, :, None, :]
    sim = -(qe[:, :, None, :] * diff**2).sum(1) * ms.transpose(1, 2) / math.sqrt(qk.shape[1])
    return sim.masked_fill(~valid[:, :, None], float("-inf"))


def dense_readout(qk, qe, mk, ms, mv, valid, top_k):
    """Readout by a dense masked softmax over every slot at or above each query's k-th best score."""
    sim = dense_similarity(qk, qe, mk, ms, valid)
    k = min(top_k, sim.shape[1])
    kth = sim.sort(dim=1, descending=True).values[:, k - 1 : k]
    kept = torch.where(sim >= kth, sim, torch.full_like(sim, float("-inf")))
    weights = torch.softmax(kept, dim=1).nan_to_num(0.0)  # no valid slot: all -inf -> zero readout
    return torch.einsum("bvn,bnq->bvq", mv.double(), weights)


def top_k_margins(sim, top_k):
    """Per query of ``sim`` ``[B, N, HW]``, the gap between its k-th and (k+1)-th best scores over
    the k-th score's magnitude (inf where there are not k + 1 valid scores)."""
    ordered = sim.sort(dim=1, descending=True).values
    if ordered.shape[1] <= top_k:
        return torch.full(ordered[:, 0].shape, math.inf, dtype=torch.float64)
    gaps = (ordered[:, top_k - 1] - ordered[:, top_k]).nan_to_num(math.inf)
    return gaps / (1 + ordered[:, top_k - 1].abs().nan_to_num(0.0))


def assert_top_k_unambiguous(inputs, top_k):
    """Every query's k-th and (k+1)-th best valid scores differ clearly (torch.topk's ties are unspecified)."""
    margins = top_k_margins(dense_similarity(*inputs[:4], inputs[5]), top_k)
    assert bool((margins > 1e-4).all()), "near-tie at the top-k boundary"


class Case(NamedTuple):
    seed: int
    batch: int
    objects: int
    value_dim: int
    ck: int
    hw: int
    n_slots: int
    top_k: int
    inputs: dict = {}  # extra make_inputs options, plus slot_major=True for [B, N, V]-stored values
    splits: int = 1  # chunks of the memory axis for the split kernel


CASES = {
    "all_slots_kept_one_tile": Case(0, 1, 1, 8, 16, 20, 30, 30),
    "padded_three_splits": Case(0, 2, 2, 8, 16, 24, 300, 30, dict(invalid_fraction=0.3), splits=3),
    "fewer_valid_than_top_k_and_none": Case(3, 2, 3, 8, 8, 24, 100, 30, dict(valid_counts=(12, 0)), splits=2),
    "top_1_key_dim_12": Case(5, 1, 1, 8, 12, 17, 70, 1),
    "top_5_slot_major_values": Case(6, 1, 2, 4, 16, 33, 130, 5, dict(slot_major=True), splits=2),
    "top_20_of_bucket_32": Case(8, 1, 1, 8, 16, 16, 200, 20, splits=2),
    "top_64": Case(0, 1, 1, 8, 16, 16, 200, 64),
}
SMALL_CONFIG = dict(block_q=16, block_n=16, segments=4, num_warps=4)  # tiles valid on a GPU, few in the interpreter


def case_inputs(case: Case, dtype: torch.dtype) -> list[torch.Tensor]:
    options = dict(case.inputs)
    slot_major = options.pop("slot_major", False)
    inputs = make_inputs(case.seed, case.batch, case.ck, case.hw, case.n_slots, case.objects * case.value_dim,
                         dtype=dtype, **options)
    if slot_major:  # values stored [B, N, V], passed as a [B, V, N] view
        inputs[4] = inputs[4].transpose(1, 2).contiguous().transpose(1, 2)
    return [t.to(DEVICE) for t in inputs]


def kernels():
    from vosrt.kernels.triton import readout as kernel

    return kernel


@needs_kernel
@pytest.mark.parametrize("dtype, atol, rtol", READOUT_TOLERANCES)
@pytest.mark.parametrize("name", list(CASES))
def test_kernel_readout_and_usage_match_reference(name, dtype, atol, rtol):
    case = CASES[name]
    kernel = kernels()
    inputs = case_inputs(case, dtype)
    assert_top_k_unambiguous(inputs, case.top_k)
    got, usage = kernel.topk_readout_triton(*inputs, case.top_k, with_usage=True,
                                            config=kernel.TileConfig(**SMALL_CONFIG), splits=case.splits)
    assert got.dtype == torch.float32 and usage.dtype == torch.float32
    torch.testing.assert_close(got, ro.topk_readout_reference(*inputs, case.top_k), atol=atol, rtol=rtol)
    key_inputs = (*inputs[:4], inputs[5])
    torch.testing.assert_close(usage, ro.topk_usage_reference(*key_inputs, case.top_k), atol=atol, rtol=rtol)


@needs_kernel
@pytest.mark.parametrize("name", ["padded_three_splits", "fewer_valid_than_top_k_and_none", "top_1_key_dim_12"])
def test_plugin_kernel_matches_reference(name):
    """The TensorRT plugin's single kernel (all N in one program, its fixed config; fp32)."""
    case = CASES[name]
    inputs = case_inputs(case, torch.float32)
    assert_top_k_unambiguous(inputs, case.top_k)
    got = kernels().topk_readout_fused(*inputs, case.top_k)
    torch.testing.assert_close(got, ro.topk_readout_reference(*inputs, case.top_k),
                               atol=tolerance("readout", torch.float32), rtol=0)


def kernel_top_slots(inputs, top_k: int, splits: int) -> list[set[int]]:
    """Per (batch item, query), the slots the kernel keeps: the split kernel's keys, merged in torch."""
    kernel = kernels()
    keys = kernel.top_keys(*inputs[:4], inputs[5], top_k, kernel.TileConfig(**SMALL_CONFIG), splits)
    keys = keys.transpose(1, 2).flatten(2).sort(dim=2, descending=True).values[..., :top_k].cpu()
    slots = 0x7FFFFFFF - (keys & 0xFFFFFFFF)
    return [set(row[row != 0x7FFFFFFF].tolist()) for row in slots.flatten(0, 1)]


def reference_top_slots(inputs, top_k: int) -> list[set[int]]:
    sim = dense_similarity(*inputs[:4], inputs[5]).transpose(1, 2).flatten(0, 1)
    values, index = sim.topk(min(top_k, sim.shape[1]), dim=1)
    return [set(i[v > -math.inf].tolist()) for v, i in zip(values, index)]


def set_agreement(got: list[set[int]], expected: list[set[int]]) -> float:
    return sum(len(a & b) for a, b in zip(got, expected)) / sum(len(b) for b in expected)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_kernel_top_k_sets_agree_with_fp64_scores(dtype):
    """The slots the kernel keeps against the top-k of exact (fp64) scores of the same inputs: 400
    memory slots, Ck = 64, near ties left as they fall (the smallest relative gap here is ~1e-4)."""
    inputs = [t.to(DEVICE) for t in make_inputs(21, 1, 64, 16, 400, 4, dtype=dtype)]
    agreement = set_agreement(kernel_top_slots(inputs, 30, splits=2), reference_top_slots(inputs, 30))
    assert agreement == 1.0


@needs_kernel
def test_fp16_kernel_squares_large_keys_in_fp32():
    """fp16 memory keys of magnitude ~300 (``mk**2`` over fp16's 65504): the kernel keeps the top-k
    of the exact scores and reads what the fp32 reference reads (the official code squares in fp32)."""
    qk, qe, mk, ms, mv, valid = make_inputs(22, 1, 16, 16, 40, 4)
    mk = 300 * mk
    assert mk.abs().max() > 256
    inputs = [t.to(DEVICE) for t in (qk.half(), qe.half(), mk.half(), ms.half(), mv.half(), valid)]
    assert set_agreement(kernel_top_slots(inputs, 5, splits=2), reference_top_slots(inputs, 5)) == 1.0
    kernel = kernels()
    got = kernel.topk_readout_triton(*inputs, 5, config=kernel.TileConfig(**SMALL_CONFIG), splits=2)
    torch.testing.assert_close(got, ro.topk_readout_reference(*inputs, 5), atol=6e-6, rtol=0)


class LaunchRecorder:
    """Stands in for a ``@triton.jit`` kernel: records the positional arguments of each launch, then launches."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **options):
            self.launches.append(args)
            return self.kernel[grid](*args, **options)

        return launch


@needs_kernel
@pytest.mark.parametrize("value_layout", ["channel_major", "slot_major"])
def test_kernels_read_the_memory_where_it_lies(monkeypatch, value_layout):
    """The dispatcher hands the kernels the caller's memory tensors themselves (mixed dtypes: fp32
    queries, fp16 memory; values of either layout): no cast or layout copy of the memory per readout."""
    kernel = kernels()
    split, merge = LaunchRecorder(kernel._readout_split_kernel), LaunchRecorder(kernel._readout_merge_kernel)
    monkeypatch.setattr(kernel, "_readout_split_kernel", split)
    monkeypatch.setattr(kernel, "_readout_merge_kernel", merge)
    monkeypatch.setattr(ro, "_kernel_applies", lambda query_key, top_k: True)
    qk, qe, mk, ms, mv, valid = (t.to(DEVICE) for t in make_inputs(23, 1, 16, 16, 40, 8))
    mk, ms, mv = mk.half(), ms.half(), mv.half()
    if value_layout == "slot_major":
        mv = mv.transpose(1, 2).contiguous().transpose(1, 2)
    got = ro.topk_readout(qk, qe, mk, ms, mv, valid, 5)
    (split_args,), (merge_args,) = split.launches, merge.launches
    assert [t.data_ptr() for t in split_args[:5]] == [t.data_ptr() for t in (qk, qe, mk, ms, valid)]
    assert merge_args[1] is mv
    torch.testing.assert_close(got, ro.topk_readout_reference(qk, qe, mk, ms, mv, valid, 5), atol=6e-6, rtol=0)


@needs_kernel
def test_kernel_ties_go_to_the_lower_slot():
    qk, qe, mk, ms, mv, valid = (t.to(DEVICE) for t in make_inputs(6, 1, 16, 12, 40, 8))
    mk[:] = mk[:, :, :1]  # every slot has the same key and shrinkage: all scores are equal
    ms[:] = 2.0
    valid[0, 0] = False
    kernel = kernels()
    got = kernel.topk_readout_triton(qk, qe, mk, ms, mv, valid, 3, config=kernel.TileConfig(**SMALL_CONFIG),
                                     splits=2)
    expected = mv[:, :, 1:4].mean(dim=2, keepdim=True).expand_as(got)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@needs_kernel
def test_kernel_reads_zero_from_empty_memory():
    qk, qe, mk, ms, mv, valid = (t.to(DEVICE) for t in make_inputs(4, 2, 16, 10, 0, 8))
    got, usage = kernels().topk_readout_triton(qk, qe, mk, ms, mv, valid, 30, with_usage=True)
    assert got.shape == (2, 8, 10) and usage.shape == (2, 0) and got.abs().max() == 0


@needs_kernel
def test_kernel_rejects_what_it_does_not_support():
    kernel = kernels()
    inputs = make_inputs(10, 1, 16, 10, 50, 8)
    with pytest.raises(ValueError, match="top_k <= 64"):
        kernel.topk_readout_triton(*inputs, 65)
    with pytest.raises(ValueError, match="take float32 or float16 inputs"):
        kernel.topk_readout_triton(*[t.bfloat16() if t.is_floating_point() else t for t in inputs], 5)
    with pytest.raises(ValueError, match="block_n must be a power of two >= 16"):
        kernel.topk_readout_triton(*inputs, 5, config=kernel.TileConfig(16, 8, 4, 4))


@needs_kernel
@pytest.mark.skipif(os.environ.get("VOSRT_KERNEL_1080P") != "1", reason="one-off: set VOSRT_KERNEL_1080P=1")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_kernel_1080p_shaped_slice(dtype):
    """1080p: HW = 68 x 120 = 8160 query tokens against N = 5 x 8160 memory slots, Ck = 64, one
    object (V = 256), top-30; the first 32 queries, at the default config and split count."""
    hw, n_slots = 68 * 120, 5 * 68 * 120
    inputs = make_inputs(30, 1, 64, hw, n_slots, 256, dtype=dtype)
    inputs[0], inputs[1] = inputs[0][:, :, :32].contiguous(), inputs[1][:, :, :32].contiguous()
    inputs = [t.to(DEVICE) for t in inputs]
    started = time.perf_counter()
    got, usage = kernels().topk_readout_triton(*inputs, 30, with_usage=True)
    seconds = time.perf_counter() - started
    expected = ro.topk_readout_reference(*inputs, 30)
    error = (got - expected).abs().max().item()
    usage_error = (usage - ro.topk_usage_reference(*inputs[:4], inputs[5], 30)).abs().max().item()
    agreement = set_agreement(kernel_top_slots(inputs, 30, splits=None), reference_top_slots(inputs, 30))
    margins = top_k_margins(dense_similarity(*inputs[:4], inputs[5]), 30)
    print(f"1080p slice {dtype}: max |readout err| {error:.2e}, max |usage err| {usage_error:.2e}, top-30 set "
          f"agreement {agreement:.5f}, smallest relative k-th gap {margins.min().item():.2e}, {seconds:.0f} s")
    assert error <= 6e-6 and agreement >= 0.999


# --------------------------------------------------------------------------- references (plain torch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name", list(CASES))
def test_graph_formulation_matches_reference(name, dtype):
    """What the exported graphs compute (query-major similarity, gathered values) = the reference."""
    case = CASES[name]
    inputs = [t.cpu() for t in case_inputs(case, dtype)]
    assert_top_k_unambiguous(inputs, case.top_k)
    expected = ro.topk_readout_reference(*inputs, case.top_k)
    got = ro.topk_readout_gather(*inputs, case.top_k)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    key_inputs = (*inputs[:4], inputs[5])
    usage = ro.topk_usage_scatter(*key_inputs, case.top_k)
    torch.testing.assert_close(usage, ro.topk_usage_reference(*key_inputs, case.top_k), rtol=0, atol=1e-5)


def test_graph_formulation_reads_zero_without_valid_slots():
    inputs = make_inputs(12, 2, 8, 10, 40, 6, valid_counts=(40, 0))
    assert ro.topk_readout_gather(*inputs, 30)[1].abs().max() == 0
    assert ro.topk_usage_scatter(*inputs[:4], inputs[5], 30)[1].abs().max() == 0


def test_reference_matches_dense_softmax():
    inputs = make_inputs(7, 3, 4, 6, 9, 5, valid_counts=(9, 3, 0))
    assert_top_k_unambiguous(inputs, 4)
    got = ro.topk_readout_reference(*inputs, 4)  # batch item 1 has 3 valid slots, item 2 none
    torch.testing.assert_close(got.double(), dense_readout(*inputs, 4), rtol=0, atol=1e-5)
    assert got[2].abs().max() == 0


def test_reference_computes_fp16_inputs_in_fp32():
    inputs = make_inputs(8, 2, 8, 10, 40, 6, invalid_fraction=0.25, dtype=torch.float16)
    got = ro.topk_readout_reference(*inputs, 7)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), dense_readout(*inputs, 7), rtol=0, atol=1e-5)


@pytest.mark.parametrize("inputs", [
    pytest.param(lambda: make_inputs(9, 1, 8, 10, 50, 8, invalid_fraction=0.2), id="one_item"),
    pytest.param(lambda: make_inputs(7, 3, 4, 6, 40, 5, valid_counts=(40, 3, 0)), id="three_items_one_empty"),
])
def test_dispatchers_give_the_references_results_on_cpu_tensors(inputs):
    """On the CPU the dispatchers select with the official similarity (the same sums, so the same
    top-k) and sum the kept values by a weighted embedding_bag instead of the dense product: the
    result differs from the reference only in the summation order of the weighted values."""
    inputs = inputs()
    key_inputs = (*inputs[:4], inputs[5])
    expected, expected_usage = ro.topk_readout_reference(*inputs, 30), ro.topk_usage_reference(*key_inputs, 30)
    torch.testing.assert_close(ro.topk_readout(*inputs, 30), expected, rtol=0, atol=1e-6)
    readout, usage = ro.topk_readout_with_usage(*inputs, 30)
    torch.testing.assert_close(readout, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(usage, expected_usage, rtol=0, atol=1e-6)
    torch.testing.assert_close(ro.topk_usage(*key_inputs, 30), expected_usage, rtol=0, atol=1e-6)


def test_reference_rejects_mismatched_shapes():
    qk, qe, mk, ms, mv, valid = make_inputs(10, 1, 8, 10, 50, 8)
    with pytest.raises(ValueError, match="memory_shrinkage"):
        ro.topk_readout_reference(qk, qe, mk, ms[:, :, :-1], mv, valid, 30)


def test_reference_stays_fp32_under_autocast():
    inputs = make_inputs(11, 1, 8, 10, 50, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ro.topk_readout_reference(*inputs, 30)
    torch.testing.assert_close(got, ro.topk_readout_reference(*inputs, 30), rtol=0, atol=0)
