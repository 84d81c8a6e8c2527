"""Parity of the eager torch backend with the official Cutie outputs (../shared/reference)."""
from __future__ import annotations

import pytest

import vosrt
from helpers import (GOLDEN_CONFIG, GOLDEN_MAX_DPROB, LONG_TERM_GOLDEN_CONFIG, assert_golden, run_golden_clip,
                     run_long_term_golden_clip)


@pytest.mark.parametrize("model", ["cutie-small", "cutie-base"])
def test_torch_backend_reproduces_official_outputs(model, seeded_weights):
    session = vosrt.load(model, weights=seeded_weights(model), backend="torch", device="cpu", **GOLDEN_CONFIG)
    assert_golden(run_golden_clip(session, model), GOLDEN_MAX_DPROB[model, "torch"])


# ONNX Runtime is compared on the first 8 frames (consolidations on frames 3, 5 and 7): its similarity
# is one matmul whose fp32 rounding differs from torch's by ~2e-5, and this clip's static background
# gives many exactly tied or near-tied memory tokens (7-12% of the queries have their 30th and 31st
# scores within 1e-4). From frame 8 on, 1-2% of the queries keep another top-30 set and the clip
# drifts from the official outputs (the reference README: random-weight clips diverge after such ties).
@pytest.mark.parametrize("backend, frames", [("torch", 12), ("onnxruntime", 8)])
def test_long_term_memory_reproduces_official_outputs(backend, frames, seeded_weights, cutie_export):
    """Consolidation on frames 3, 5, 7, 9, 11 and eviction on frame 9, as the official MemoryManager."""
    export_dir = cutie_export("cutie-small") if backend == "onnxruntime" else None
    session = vosrt.load("cutie-small", weights=seeded_weights("cutie-small"), backend=backend, export_dir=export_dir,
                         **LONG_TERM_GOLDEN_CONFIG)
    assert_golden(run_long_term_golden_clip(session, frames), GOLDEN_MAX_DPROB["cutie-small-lt-evict", backend])
    # 64 prototypes per consolidation; before the one on frame 9, the 192 are evicted down to 136
    assert session._memory.buckets[0].long_size == {12: 200, 8: 192}[frames]
