"""Autotuning happens once per memory capacity, never again as a session's memory fills up: the
kernels' tuning keys hold the capacity of the buffer the memory is a view of, not its filled
slots. Timing is replaced by a stand-in that counts the configs it times (the kernels run in
Triton's interpreter without a GPU)."""
from __future__ import annotations

import pytest
import torch

from kernel_testing import DEVICE, needs_kernel


@pytest.fixture
def timed_configs(monkeypatch) -> list[int]:
    """Turns autotuning on for any device, with a fresh cache; each timing runs the config once
    and appends 1 to the returned list."""
    import triton.testing

    from vosrt.kernels.triton import tuning

    timed: list[int] = []

    def stand_in(run, **_):
        run()
        timed.append(1)
        return float(len(timed))

    monkeypatch.setattr(tuning, "_TUNED", {})
    monkeypatch.setattr(tuning, "times_configs", lambda device: True)
    monkeypatch.setattr(triton.testing, "do_bench", stand_in)
    return timed


def memory_buffers(capacity: int, ck: int, values: int, dtype=torch.float32) -> list[torch.Tensor]:
    """A session's preallocated memory: key ``[1, Ck, capacity]``, shrinkage, values ``[1, V, capacity]``, valid."""
    g = torch.Generator().manual_seed(0)
    return [t.to(DEVICE) for t in (torch.randn(1, ck, capacity, generator=g).to(dtype),
                                   (1 + torch.rand(1, 1, capacity, generator=g)).to(dtype),
                                   torch.randn(1, values, capacity, generator=g).to(dtype),
                                   torch.zeros(1, capacity, dtype=torch.bool))]


@needs_kernel
def test_readout_tunes_once_while_the_memory_fills(timed_configs):
    from vosrt.kernels.triton import readout

    hw, capacity = 16, 64
    key, shrinkage, value, valid = memory_buffers(capacity, 16, 4, torch.float16)  # fp16: two configs to time
    query_key, query_selection = (torch.rand(1, 16, hw).half().to(DEVICE) for _ in range(2))
    for filled in (16, 32, 48, 64):  # one more memory frame of 16 tokens each readout
        valid[:, :filled] = True
        readout.topk_readout_triton(query_key, query_selection, key[:, :, :filled], shrinkage[:, :, :filled],
                                    value[:, :, :filled], valid[:, :filled], 5)
    assert len(timed_configs) == len(readout.SPLIT_CONFIGS[torch.float16]) == 2


@needs_kernel
def test_joint_attention_tunes_once_while_the_references_fill(timed_configs):
    from vosrt.kernels.triton import joint_attention

    heads, n, d, capacity = 1, 16, 16, 64
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, heads, n, d, generator=g).to(DEVICE) for _ in range(3))
    ref_k, ref_v = (torch.randn(1, heads, capacity, d, generator=g).to(DEVICE) for _ in range(2))
    ref_valid = torch.zeros(1, capacity, dtype=torch.bool, device=DEVICE)
    for filled in (32, 48, 64):
        ref_valid[:, :filled] = True
        joint_attention.topk_joint_attention_triton(q, k, v, ref_k[:, :, :filled], ref_v[:, :, :filled],
                                                    ref_valid[:, :filled], 8)
    assert len(timed_configs) == len(joint_attention.bucket_config(joint_attention.k_pad(8)))


@needs_kernel
def test_a_larger_capacity_is_tuned_again(timed_configs):
    from vosrt.kernels.triton import readout

    query_key, query_selection = (torch.rand(1, 16, 16).half().to(DEVICE) for _ in range(2))
    for capacity in (32, 64):
        key, shrinkage, value, valid = memory_buffers(capacity, 16, 4, torch.float16)
        valid[:, :32] = True
        readout.topk_readout_triton(query_key, query_selection, key[:, :, :32], shrinkage[:, :, :32],
                                    value[:, :, :32], valid[:, :32], 5)
    assert len(timed_configs) == 2 * len(readout.SPLIT_CONFIGS[torch.float16])
