"""Parity of the eager torch backend with the official Cutie outputs (../shared/reference)."""
from __future__ import annotations

import pytest

import vosrt
from helpers import GOLDEN_CONFIG, assert_golden, run_golden_clip


@pytest.mark.parametrize("model", ["cutie-small", "cutie-base"])
def test_torch_backend_reproduces_official_outputs(model, seeded_weights):
    session = vosrt.load(model, weights=seeded_weights(model), backend="torch", device="cpu", **GOLDEN_CONFIG)
    assert_golden(run_golden_clip(session, model))
