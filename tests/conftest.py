"""Shared fixtures: the ../shared reference data, seeded official-layout weights, and the rules
that turn missing prerequisites into skips, or into failures where CI asks for them.

``VOSRT_REQUIRE_SHARED=1`` (set by .ci/run): a test that needs ../shared fails instead of
skipping when it is missing. ``VOSRT_REQUIRE_GPU=1`` (set by the GPU acceptance run): tests
marked ``gpu`` or ``tensorrt`` fail instead of skipping without an NVIDIA GPU (and TensorRT).

The quick tier, ``pytest -m "not slow"``, leaves out every test that needs full-size networks
(the seeded official-layout weights or their exports) besides those marked ``slow`` by hand.
"""
from __future__ import annotations

import importlib.util
import os
import runpy
from pathlib import Path

import pytest

from helpers import REFERENCE, require_shared


FULL_SIZE_FIXTURES = {"seeded_weights", "cutie_export", "jointformer_export"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if FULL_SIZE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def pytest_runtest_setup(item: pytest.Item) -> None:
    import torch

    missing = []
    if item.get_closest_marker("gpu") or item.get_closest_marker("tensorrt"):
        if not torch.cuda.is_available():
            missing.append("an NVIDIA GPU")
    if item.get_closest_marker("tensorrt") and importlib.util.find_spec("tensorrt") is None:
        missing.append("TensorRT")
    if missing:
        reason = f"needs {' and '.join(missing)}"
        if os.environ.get("VOSRT_REQUIRE_GPU") == "1":
            pytest.fail(f"{reason}, and VOSRT_REQUIRE_GPU=1 asks for every GPU test to run")
        pytest.skip(reason)


@pytest.fixture(autouse=True)
def fp32_without_tf32(request):
    """Tests marked ``gpu`` or ``tensorrt`` hold GPU results to eager fp32 torch on the GPU: there
    fp32 is fp32, without TF32 (PyTorch rounds cuDNN convolutions' inputs to TF32 by default)."""
    if not (request.node.get_closest_marker("gpu") or request.node.get_closest_marker("tensorrt")):
        yield
        return
    import torch

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


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
    session: variant ``"fp32"``, ``"custom"`` (``--custom-ops``), ``"fp16"`` (``--fp16``) or
    ``"custom-fp16"`` (both)."""
    from vosrt.cli import export_engine_main

    flags = {"fp32": [], "custom": ["--custom-ops"], "fp16": ["--fp16"], "custom-fp16": ["--custom-ops", "--fp16"]}
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


@pytest.fixture(scope="session")
def cutie_export(seeded_weights, tmp_path_factory):
    """``cutie_export(model, variant="fp32")`` -> an export of the seed-1 weights with top_k 30 and
    max_mem_frames 3 (the golden settings), written once per session: ``"fp32"``, ``"fp16"``,
    ``"custom"`` (custom ops) or ``"custom-fp16"``."""
    from vosrt.api import build_network
    from vosrt.export.onnx import export_onnx
    from vosrt.runtime.cutie.config import CutieSessionConfig

    made: dict[tuple[str, str], Path] = {}

    def make(model: str, variant: str = "fp32") -> Path:
        if (model, variant) not in made:
            weights = seeded_weights(model)
            made[model, variant] = export_onnx(
                build_network(model, weights), model, tmp_path_factory.mktemp("onnx") / f"{model}-{variant}",
                config=CutieSessionConfig(top_k=30, max_mem_frames=3), checkpoint=weights, fp16="fp16" in variant,
                custom_ops="custom" in variant, progress=lambda _: None)
        return made[model, variant]

    return make
