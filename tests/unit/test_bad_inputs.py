"""Every case of the bad-input table (``tests/bad_inputs.py``): a one-line error or the documented
behaviour; no data loss, no silent wrong output, no traceback, nothing partial left."""
from __future__ import annotations

import pytest

from bad_inputs import CASES, run_case, shared_networks
from helpers import require_shared


@pytest.fixture(scope="module")
def shared_weights_and_export(seeded_weights, cutie_export):
    require_shared()
    with shared_networks():
        yield seeded_weights, lambda: cutie_export("cutie-small")


@pytest.mark.parametrize("case", [pytest.param(c, id=f"{c.item}-{c.name}", marks=[pytest.mark.slow] if c.slow else [])
                                  for c in CASES])
def test_case(case, shared_weights_and_export, tmp_path):
    weights, export = shared_weights_and_export
    verdict = run_case(case, tmp_path, weights, export)
    assert verdict.held, "\n".join(f"{kind}: {detail}" for kind, detail in verdict.findings)
