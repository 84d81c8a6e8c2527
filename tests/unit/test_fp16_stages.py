"""The fp16 check the GPU tests make (tests/stage_errors.py), on the CPU under fp16 autocast: each
stage of the torch fp16 mode, fed the inputs an fp32 session recorded on real frames, stays within
fp16 rounding of fp32; and the check fails for a stage that is wrong. (The official AMP runs each
stage under the same autocast, so per stage it is the same computation.)"""
from __future__ import annotations

import pytest

import vosrt
from stage_errors import FP16_BOUNDS, assert_fp16_noise, davis_frames, fp16_torch_backend, record_calls, stage_errors

MODEL = "cutie-small"


@pytest.fixture(scope="module")
def recorded(seeded_weights):
    """An fp32 session of cutie-small at 120 px and the stage calls it made on 4 judo frames (objects 1 and 2
    join on frames 0 and 5: two buckets)."""
    session = vosrt.load(MODEL, weights=seeded_weights(MODEL), max_internal_size=120)
    return session, record_calls(session, davis_frames("judo", [(0, [1]), (1, None), (5, [2]), (6, None)]))


def test_fp16_mode_stays_within_rounding_of_fp32(recorded):
    session, calls = recorded
    assert {stage.name for stage, _, _ in calls} >= {"image_encoder", "mask_encoder", "memory_readout", "mask_decoder"}
    assert_fp16_noise(stage_errors(fp16_torch_backend(MODEL, session)._run, calls))


def test_the_check_fails_for_a_stage_that_is_off(recorded):
    """A decoder whose fp16 output is 10% off (e.g. an fp32 region lost): outside the bounds."""
    session, calls = recorded
    fp16 = fp16_torch_backend(MODEL, session)

    def off(stage, inputs):
        outputs = fp16._run(stage, inputs)
        return [x * 1.1 for x in outputs] if stage.name == "mask_decoder" else outputs

    with pytest.raises(AssertionError, match="mask_decoder/prob"):
        assert_fp16_noise(stage_errors(off, calls), FP16_BOUNDS)
