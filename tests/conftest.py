"""Shared fixtures: the ../shared reference data and seeded official-layout weights."""
from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from helpers import REFERENCE, require_shared
from vosrt.cli import export_engine_main


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


@pytest.fixture(scope="session")
def jointformer_export(seeded_weights, tmp_path_factory):
    """``jointformer_export(variant)`` -> the directory ``export-engine jointformer --format onnx
    --max-mem-frames 2`` writes for the seed-1 weights (default top-K options), exported once per
    session: variant ``"fp32"``, ``"custom"`` (``--custom-ops``) or ``"fp16"`` (``--fp16``)."""
    flags = {"fp32": [], "custom": ["--custom-ops"], "fp16": ["--fp16"]}
    made: dict[str, Path] = {}

    def make(variant: str) -> Path:
        if variant not in made:
            output = tmp_path_factory.mktemp("jointformer") / variant
            argv = ["jointformer", "--weights", str(seeded_weights("jointformer")), "--format", "onnx",
                    "--max-mem-frames", "2", "--output", str(output), *flags[variant]]
            assert export_engine_main(argv) == 0
            made[variant] = output
        return made[variant]

    return make
