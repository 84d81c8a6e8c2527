"""JointFormer's top-K joint attention: the Triton kernel vs the torch reference.

Without a CUDA GPU the kernel runs in Triton's interpreter on CPU tensors (tiny shapes);
``test_topk_readout`` sets TRITON_INTERPRET=1 at import, before triton is first imported,
and says when that was too late.
"""
from __future__ import annotations

import pytest
import torch

from test_topk_readout import DEVICE, needs_kernel
from vosrt.kernels.joint_attention import topk_joint_attention_reference, topk_joint_attention_triton


def make_inputs(seed: int, batch: int, heads: int, n: int, m: int, d: int, valid_counts=None):
    """(q, k, v, ref_k, ref_v, ref_valid) on DEVICE; ``valid_counts[b]`` valid reference tokens in item b."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, n, d, generator=g) for _ in range(3))
    ref_k, ref_v = (torch.randn(batch, heads, m, d, generator=g) for _ in range(2))
    valid = torch.ones(batch, m, dtype=torch.bool)
    if valid_counts is not None:
        valid[:] = False
        for b, count in enumerate(valid_counts):
            valid[b, torch.randperm(m, generator=g)[:count]] = True
    return [t.to(DEVICE) for t in (q, k, v, ref_k, ref_v, valid)]


@needs_kernel
@pytest.mark.parametrize("n, m, top_k, valid_counts", [
    (10, 40, 5, None),        # queries not a multiple of BLOCK_Q, top_k not a power of two
    (8, 24, 8, [24, 13]),     # padded reference slots
    (6, 16, 7, [16, 3]),      # fewer valid reference tokens than top_k
    (5, 0, 4, None),          # no reference memory: plain self-attention
])
def test_kernel_matches_reference(n, m, top_k, valid_counts):
    q, k, v, ref_k, ref_v, valid = make_inputs(0, 2, 2, n, m, 16, valid_counts)
    expected = topk_joint_attention_reference(q, k, v, ref_k, ref_v, valid, top_k)
    got = topk_joint_attention_triton(q, k, v, ref_k, ref_v, valid, top_k, BLOCK_Q=4, BLOCK_M=8, num_warps=1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@needs_kernel
def test_kernel_rejects_non_power_of_two_heads():
    q, k, v, ref_k, ref_v, valid = make_inputs(1, 1, 1, 4, 8, 12)
    with pytest.raises(ValueError, match="powers of two"):
        topk_joint_attention_triton(q, k, v, ref_k, ref_v, valid, 4)
