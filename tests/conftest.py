"""Shared fixtures: the ../shared reference data and seeded official-layout weights."""
from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from helpers import REFERENCE, require_shared


@pytest.fixture(scope="session")
def seeded_weights(tmp_path_factory):
    """``seeded_weights(model, seed)`` -> path of gen_weights.py weights for the official layout."""
    require_shared()
    gen = runpy.run_path(str(REFERENCE / "gen_weights.py"))
    folder = tmp_path_factory.mktemp("weights")
    made: dict[tuple[str, int], Path] = {}

    def make(model: str, seed: int = 1) -> Path:
        if (model, seed) not in made:
            path = folder / f"{model}-seed{seed}.pth"
            gen["main"](str(REFERENCE / f"{model}.layout.json"), str(path), seed)
            made[model, seed] = path
        return made[model, seed]

    return make
