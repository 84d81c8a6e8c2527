"""Top-K memory readout: the Triton kernel vs the torch reference, and the reference vs a dense softmax.

Without a CUDA GPU the kernel runs in Triton's interpreter on CPU tensors. Triton
chooses between compiling and interpreting when it decorates functions, its own
included, so TRITON_INTERPRET must be set before triton is first imported. The kernel
module imports triton only at the first launch, so setting it here, at collection,
is early enough unless another module imported triton before; the kernel tests are
then skipped (set TRITON_INTERPRET=1 in the environment to avoid that). With a GPU
the compiled kernel runs instead.
"""

import math
import os
import sys
from typing import NamedTuple

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TRITON_IMPORTED_TOO_EARLY = (
    DEVICE == "cpu" and "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
)
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

from vosrt.kernels import readout as tr  # noqa: E402

if not tr.triton_available():
    KERNEL_SKIP_REASON = "triton is not installed"
elif TRITON_IMPORTED_TOO_EARLY:
    KERNEL_SKIP_REASON = "no GPU, and triton was imported before TRITON_INTERPRET=1 was set: set it in the environment"
else:
    KERNEL_SKIP_REASON = None
needs_kernel = pytest.mark.skipif(KERNEL_SKIP_REASON is not None, reason=str(KERNEL_SKIP_REASON))

TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3}


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


def assert_top_k_unambiguous(inputs, top_k):
    """The k-th and (k+1)-th best valid scores of every query differ clearly (torch.topk's ties are unspecified)."""
    sim = dense_similarity(*inputs[:4], inputs[5]).sort(dim=1, descending=True).values
    if sim.shape[1] <= top_k:
        return
    kth, next_ = sim[:, top_k - 1], sim[:, top_k]
    contested = torch.isfinite(next_)
    margin = (kth - next_ - 1e-4 * (1 + kth.abs()))[contested]
    assert margin.numel() == 0 or margin.min() > 0, "near-tie at the top-k boundary"


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
    blocks: dict = {}  # kernel block sizes


CASES = {
    "two_n_blocks": Case(0, 1, 1, 8, 8, 10, 50, 30, blocks=dict(BLOCK_Q=16, BLOCK_N=32)),
    "padded_five_n_blocks": Case(7, 2, 2, 8, 16, 40, 300, 30, dict(invalid_fraction=0.3),
                                 dict(BLOCK_Q=16, BLOCK_N=64)),
    "n_below_top_k_block_n_raised": Case(2, 2, 4, 8, 12, 20, 20, 30, blocks=dict(BLOCK_Q=8, BLOCK_N=16)),
    "fewer_valid_than_top_k": Case(3, 2, 3, 8, 8, 24, 100, 30, dict(valid_counts=(12, 0)),
                                   dict(BLOCK_Q=16, BLOCK_N=32, BLOCK_V=16)),
    "small_k_slot_major_values": Case(6, 1, 2, 4, 16, 33, 130, 5, dict(slot_major=True),
                                      dict(BLOCK_Q=16, BLOCK_N=16)),
    "top_1": Case(5, 1, 1, 8, 8, 17, 70, 1, blocks=dict(BLOCK_Q=16, BLOCK_N=16, BLOCK_V=4)),
}


def case_inputs(case, dtype):
    options = dict(case.inputs)
    slot_major = options.pop("slot_major", False)
    inputs = make_inputs(case.seed, case.batch, case.ck, case.hw, case.n_slots, case.objects * case.value_dim,
                         dtype=dtype, **options)
    if slot_major:  # values stored [B, N, V], passed as a [B, V, N] view
        inputs[4] = inputs[4].transpose(1, 2).contiguous().transpose(1, 2)
    return inputs


@needs_kernel
@pytest.mark.skipif(DEVICE != "cpu", reason="a GPU is present: the kernel is compiled")
def test_kernel_runs_in_the_interpreter():
    from triton.runtime.interpreter import InterpretedFunction

    assert isinstance(tr._jit_device_code(), InterpretedFunction)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name", list(CASES))
def test_triton_matches_reference(name, dtype):
    case = CASES[name]
    inputs = [t.to(DEVICE) for t in case_inputs(case, dtype)]
    assert_top_k_unambiguous(inputs, case.top_k)
    expected = tr.topk_readout_reference(*inputs, case.top_k)
    got = tr.topk_readout_triton(*inputs, case.top_k, **case.blocks)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert (got - expected).abs().max().item() <= TOLERANCE[dtype]


@needs_kernel
def test_triton_ties_go_to_the_lower_slot():
    qk, qe, mk, ms, mv, valid = (t.to(DEVICE) for t in make_inputs(6, 1, 8, 12, 40, 8))
    mk[:] = mk[:, :, :1]  # every slot has the same key and shrinkage: all scores are equal
    ms[:] = 2.0
    valid[0, 0] = False
    got = tr.topk_readout_triton(qk, qe, mk, ms, mv, valid, 3, BLOCK_Q=16, BLOCK_N=16)
    expected = mv[:, :, 1:4].mean(dim=2, keepdim=True).expand_as(got)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name", list(CASES))
def test_graph_formulation_matches_reference(name, dtype):
    """What the exported graphs compute (query-major similarity, gathered values) = the reference."""
    case = CASES[name]
    inputs = case_inputs(case, dtype)
    assert_top_k_unambiguous(inputs, case.top_k)
    expected = tr.topk_readout_reference(*inputs, case.top_k)
    got = tr.topk_readout_gather(*inputs, case.top_k)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-5
    key_inputs = (*inputs[:4], inputs[5])
    usage = tr.topk_usage_scatter(*key_inputs, case.top_k)
    torch.testing.assert_close(usage, tr.topk_usage_reference(*key_inputs, case.top_k), rtol=0, atol=1e-5)


def test_graph_formulation_reads_zero_without_valid_slots():
    inputs = make_inputs(12, 2, 8, 10, 40, 6, valid_counts=(40, 0))
    assert tr.topk_readout_gather(*inputs, 30)[1].abs().max() == 0
    assert tr.topk_usage_scatter(*inputs[:4], inputs[5], 30)[1].abs().max() == 0


def test_reference_matches_dense_softmax():
    inputs = make_inputs(7, 3, 4, 6, 9, 5, valid_counts=(9, 3, 0))
    assert_top_k_unambiguous(inputs, 4)
    got = tr.topk_readout_reference(*inputs, 4)  # batch item 1 has 3 valid slots, item 2 none
    torch.testing.assert_close(got.double(), dense_readout(*inputs, 4), rtol=0, atol=1e-5)
    assert got[2].abs().max() == 0


def test_reference_computes_fp16_inputs_in_fp32():
    inputs = make_inputs(8, 2, 8, 10, 40, 6, invalid_fraction=0.25, dtype=torch.float16)
    got = tr.topk_readout_reference(*inputs, 7)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), dense_readout(*inputs, 7), rtol=0, atol=1e-5)


def test_dispatcher_uses_reference_for_cpu_tensors(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the Triton kernel must not be dispatched for CPU tensors")

    monkeypatch.setattr(tr, "topk_readout_triton", fail)
    inputs = make_inputs(9, 1, 8, 10, 50, 8, invalid_fraction=0.2)
    torch.testing.assert_close(tr.topk_readout(*inputs, 30), tr.topk_readout_reference(*inputs, 30))


def test_reference_rejects_mismatched_shapes():
    qk, qe, mk, ms, mv, valid = make_inputs(10, 1, 8, 10, 50, 8)
    with pytest.raises(ValueError, match="memory_shrinkage"):
        tr.topk_readout_reference(qk, qe, mk, ms[:, :, :-1], mv, valid, 30)


@pytest.mark.skipif(not tr.triton_available(), reason="needs triton")
def test_triton_rejects_block_sizes_that_are_not_powers_of_two():
    with pytest.raises(ValueError, match="BLOCK_N"):
        tr.topk_readout_triton(*make_inputs(10, 1, 8, 10, 50, 8), 30, BLOCK_N=48)


def test_reference_stays_fp32_under_autocast():
    inputs = make_inputs(11, 1, 8, 10, 50, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = tr.topk_readout_reference(*inputs, 30)
    torch.testing.assert_close(got, tr.topk_readout_reference(*inputs, 30), rtol=0, atol=0)
