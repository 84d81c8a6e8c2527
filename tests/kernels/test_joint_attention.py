"""JointFormer's top-K joint attention: the Triton kernel against the torch reference (Triton's
interpreter without a GPU), and the launch constraints of its dots."""
from __future__ import annotations

import pytest
import torch

from kernel_testing import DEVICE, JOINT_TOLERANCES, needs_kernel
from vosrt.kernels.joint_attention import topk_joint_attention, topk_joint_attention_reference


def make_inputs(seed: int, batch: int, heads: int, n: int, m: int, d: int, valid_counts=None,
                dtype: torch.dtype = torch.float32):
    """(q, k, v, ref_k, ref_v, ref_valid) on DEVICE; ``valid_counts[b]`` valid reference tokens in item b."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, n, d, generator=g) for _ in range(3))
    ref_k, ref_v = (torch.randn(batch, heads, m, d, generator=g) for _ in range(2))
    valid = torch.ones(batch, m, dtype=torch.bool)
    if valid_counts is not None:
        valid[:] = False
        for b, count in enumerate(valid_counts):
            valid[b, torch.randperm(m, generator=g)[:count]] = True
    return [t.to(dtype).to(DEVICE) for t in (q, k, v, ref_k, ref_v)] + [valid.to(DEVICE)]


def kernels():
    from vosrt.kernels.triton import joint_attention as kernel

    return kernel


SMALL_CONFIG = dict(block_q=16, block_n=16, segments=8, num_warps=4)  # dot blocks valid on a GPU

CASES = {  # n, m, top_k, valid_counts, head size
    "queries_past_one_block_top_5": (20, 40, 5, None, 16),
    "padded_reference": (8, 24, 8, [24, 13], 16),
    "fewer_valid_than_top_k": (6, 16, 7, [16, 3], 16),
    "no_reference_memory": (5, 0, 4, None, 16),
    "top_1_head_size_24": (17, 50, 1, None, 24),
    "top_100_bucket_128": (16, 200, 100, None, 32),
}


@needs_kernel
@pytest.mark.parametrize("dtype, atol, rtol", JOINT_TOLERANCES)
@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_reference(name, dtype, atol, rtol):
    n, m, top_k, valid_counts, d = CASES[name]
    inputs = make_inputs(0, 2, 2, n, m, d, valid_counts, dtype)
    expected = topk_joint_attention_reference(*[t.float() if t.is_floating_point() else t for t in inputs], top_k)
    kernel = kernels()
    got = kernel.topk_joint_attention_triton(*inputs, top_k, config=kernel.TileConfig(**SMALL_CONFIG))
    assert got.dtype == dtype and got.shape == expected.shape
    torch.testing.assert_close(got.float(), expected, atol=atol, rtol=rtol)


@needs_kernel
def test_kernel_ties_go_to_the_lower_index():
    q, k, v, ref_k, ref_v, valid = make_inputs(3, 1, 1, 16, 40, 16)
    ref_k[:] = ref_k[:, :, :1]  # every reference token scores the same
    valid[0, 0] = False
    kernel = kernels()
    got = kernel.topk_joint_attention_triton(q, k, v, ref_k, ref_v, valid, 3, config=kernel.TileConfig(**SMALL_CONFIG))
    # the three lowest valid indices are kept
    expected = topk_joint_attention_reference(q, k, v, ref_k[:, :, 1:4], ref_v[:, :, 1:4], None, 3)
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=0)


@needs_kernel
def test_launcher_rejects_dot_blocks_below_16():
    """Triton 3.6 rejects a tl.dot with M, N or K < 16 on NVIDIA GPUs (its interpreter and 3.9 accept
    them). The old launcher took BLOCK_M=8 (K = 8 in ``p @ v``), and its test used it."""
    kernel = kernels()
    inputs = make_inputs(1, 1, 1, 8, 24, 16)
    for config in (kernel.TileConfig(16, 8, 8, 4), kernel.TileConfig(8, 16, 8, 4)):
        with pytest.raises(ValueError, match="power of two >= 16"):
            kernel.topk_joint_attention_triton(*inputs, 4, config=config)


@needs_kernel
def test_every_launchable_configuration_has_dot_blocks_of_16():
    """Each compile-time constant that is an M, N or K of a tl.dot, over every variant the code can
    launch (what tools/compile_kernels.py compiles)."""
    from vosrt.kernels.triton.variants import all_variants

    dot_blocks = ("BLOCK_Q", "BLOCK_N", "BLOCK_M", "CK_BLOCK", "D_BLOCK")
    checked = 0
    for variant in all_variants():
        for name in dot_blocks:
            if name in variant.constants and "merge" not in variant.name:  # the merge kernel has no dot
                assert variant.constants[name] >= 16, f"{variant.name}: {name}={variant.constants[name]}"
                checked += 1
    assert checked > 0


def test_dispatcher_runs_the_reference_on_cpu_tensors():
    inputs = [t.cpu() for t in make_inputs(2, 1, 2, 6, 30, 16)]
    torch.testing.assert_close(topk_joint_attention(*inputs, 5), topk_joint_attention_reference(*inputs, 5),
                               rtol=0, atol=0)
