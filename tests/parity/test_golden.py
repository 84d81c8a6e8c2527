"""Parity of the eager torch backend with the official Cutie outputs (../shared/reference)."""
from __future__ import annotations

import pytest

import vosrt
from helpers import (GOLDEN_CONFIG, GOLDEN_MAX_DPROB, LONG_TERM_GOLDEN_CONFIG, assert_golden, run_golden_clip,
                     run_long_term_golden_clip)


@pytest.mark.parametrize("model", ["cutie-small", "cutie-base"])
def test_torch_backend_reproduces_official_outputs(model, seeded_weights):
    # As for ONNX Runtime (tests/parity/test_onnx.py): pixels whose two most likely labels are within
    # 1e-4 (random weights: at most ~0.5% of a frame) are left out of the mIoU; |dprob| is checked everywhere.
    session = vosrt.load(model, weights=seeded_weights(model), backend="torch", device="cpu", **GOLDEN_CONFIG)
    assert_golden(run_golden_clip(session, model), GOLDEN_MAX_DPROB[model, "torch"], ignore_ties=True)


# Compared on the first 8 frames (consolidations on frames 3, 5 and 7). This clip's static
# background gives many exactly tied or near-tied memory tokens (7-12% of the queries have their 30th
# and 31st scores within 1e-4), and from frame 8 on which of them a top-30 keeps depends on fp32
# rounding that follows the memory's layout and the summation order: the eager backend with the
# official token order, and ONNX Runtime, keep another set for 1-2% of the queries and the clip
# drifts (to max |dprob| 3.4e-2 by frame 11), as the reference README says random-weight clips do
# after such ties. The eviction itself is checked against the official bookkeeping in
# tests/unit/test_long_term.py.
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_long_term_memory_reproduces_official_outputs(backend, seeded_weights, cutie_export):
    """Consolidations on frames 3, 5 and 7 as the official MemoryManager makes them."""
    export_dir = cutie_export("cutie-small") if backend == "onnxruntime" else None
    session = vosrt.load("cutie-small", weights=seeded_weights("cutie-small"), backend=backend, export_dir=export_dir,
                         **LONG_TERM_GOLDEN_CONFIG)
    assert_golden(run_long_term_golden_clip(session, 8), GOLDEN_MAX_DPROB["cutie-small-lt-evict", backend])
    assert session._memory.buckets[0].long_size == 3 * 64  # a consolidation makes 64 prototypes
