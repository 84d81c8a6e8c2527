"""The running top-K of :mod:`vosrt.kernels.triton.select` against ``torch.topk``, through a
small test kernel that streams rows of scores tile by tile (Triton's interpreter without a GPU)."""
from __future__ import annotations

import pytest
import torch

from kernel_testing import DEVICE, needs_kernel

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from vosrt.kernels.triton import select  # noqa: E402


@triton.jit
def _stream(scores_ptr, n, out_ptr, ROWS: tl.constexpr, TILE: tl.constexpr, K: tl.constexpr,
            SEGMENTS: tl.constexpr):
    """Feed each row of ``scores`` ``[ROWS, n]`` to a running top-K, TILE columns at a time; store its slots."""
    rows = tl.arange(0, ROWS)
    running = select.empty_rows(ROWS, K)
    for n0 in range(0, n, TILE):
        cols = n0 + tl.arange(0, TILE)
        score = tl.load(scores_ptr + rows[:, None] * n + cols[None, :], mask=cols[None, :] < n, other=0.0)
        live = (cols[None, :] < n) & (score > float("-inf"))
        keys = select.pack_keys(score, tl.broadcast_to(cols[None, :], score.shape))
        running = select.add_tile(running, tl.where(live, keys, select.EMPTY), SEGMENTS)
    score, slot = select.unpack_keys(running)
    tl.store(out_ptr + rows[:, None] * K + tl.arange(0, K)[None, :], tl.where(score > float("-inf"), slot, -1))


def streamed_top_slots(scores: torch.Tensor, kept: int, tile: int, segments: int) -> torch.Tensor:
    """Slots ``[rows, kept]`` (best first; -1 where a row has fewer scores) of each row's best
    ``kept`` finite scores by :func:`select.add_tile`, fed ``tile`` columns at a time."""
    out = torch.empty(scores.shape[0], kept, dtype=torch.int32, device=scores.device)
    _stream[(1,)](scores, scores.shape[1], out, ROWS=scores.shape[0], TILE=tile, K=kept, SEGMENTS=segments)
    return out


@needs_kernel
@pytest.mark.parametrize("n, kept, tile, segments", [
    (300, 32, 64, 8),   # several tiles, several rounds per tile
    (50, 64, 16, 16),   # fewer scores than kept: the tail stays empty
    (100, 2, 16, 8),    # more winners per round than kept
    (1000, 16, 32, 4),  # long stream
])
def test_running_top_k_matches_torch_topk(n, kept, tile, segments):
    scores = torch.randn(16, n, generator=torch.Generator().manual_seed(n)).to(DEVICE)
    scores[3, ::3] = float("-inf")  # padded slots never enter
    got = streamed_top_slots(scores, kept, tile, segments).long().cpu()
    values, index = scores.cpu().topk(min(kept, n), dim=1)
    expected = torch.where(values > float("-inf"), index, -1)
    assert torch.equal(got[:, :expected.shape[1]], expected)
    assert bool((got[:, expected.shape[1]:] == -1).all())


@needs_kernel
def test_equal_scores_keep_the_lowest_slots():
    scores = torch.zeros(16, 100, device=DEVICE)
    scores[:, 50] = 1.0
    got = streamed_top_slots(scores, 16, 32, 8).long().cpu()
    assert torch.equal(got, torch.tensor([50] + list(range(15))).expand(16, 16))
