"""TensorRT engines on a GPU: each engine against ONNX Runtime, the golden clips through engines,
and fp16 engines on real clips. They need TensorRT and an NVIDIA GPU (marked ``tensorrt``)."""
from __future__ import annotations

import numpy as np
import pytest

import vosrt
from helpers import (GOLDEN_CONFIG, GPU_MAX_DPROB, JOINTFORMER_GOLDEN_CONFIG, assert_golden, davis_label_maps,
                     mean_iou, run_golden_clip)
from vosrt.cli import main
from vosrt.export.profile import BuildOptions, EngineProfile
from vosrt.export.tensorrt import build_engines
from vosrt.runtime.registry import MODELS

pytestmark = pytest.mark.tensorrt


@pytest.fixture(scope="module")
def engines(cutie_export):
    """Engines of the fp32 cutie-small export for the synthetic clip (240x320, 3 objects)."""
    return build_engines(cutie_export("cutie-small"), options=BuildOptions(EngineProfile(3, (240, 320))),
                         progress=lambda _: None)


@pytest.fixture(scope="module")
def jointformer_engines(jointformer_export):
    """Engines of the fp32 JointFormer export for the synthetic clip (240x320, 3 objects, max_mem_frames 2)."""
    return build_engines(jointformer_export("fp32"), options=BuildOptions(EngineProfile(3, (240, 320))),
                         progress=lambda _: None)


@pytest.mark.parametrize("model", ["cutie-small", "jointformer"])
def test_engines_match_onnxruntime(model, request):
    from vosrt.export.verify import compare_engines_with_onnxruntime

    directory = request.getfixturevalue("engines" if model == "cutie-small" else "jointformer_engines")
    checks = compare_engines_with_onnxruntime(directory)
    assert {c.graph for c in checks} == set(MODELS[model].family.stages)
    worst = max(checks, key=lambda c: c.relative_error)
    print(f"{model}: worst {worst.graph}/{worst.output}: rel error {worst.relative_error:.2e}")
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]


def test_jointformer_tensorrt_backend_reproduces_official_outputs(jointformer_engines):
    session = vosrt.load("jointformer", backend="tensorrt", device="cuda", export_dir=jointformer_engines,
                         **JOINTFORMER_GOLDEN_CONFIG)
    assert_golden(run_golden_clip(session, "jointformer", num_frames=20), GPU_MAX_DPROB)
    assert main(["verify", str(jointformer_engines)]) == 0


def test_tensorrt_backend_reproduces_official_outputs(engines):
    for cuda_graph in (False, True):
        session = vosrt.load("cutie-small", backend="tensorrt", device="cuda", export_dir=engines,
                             cuda_graph=cuda_graph, **GOLDEN_CONFIG)
        assert_golden(run_golden_clip(session, "cutie-small"), GPU_MAX_DPROB, ignore_ties=True)
    assert main(["verify", str(engines)]) == 0


@pytest.fixture(scope="module")
def fp16_engines(cutie_export):
    """fp16 engines of seed-1 cutie-small for the DAVIS examples (480x854, 4 objects)."""
    return build_engines(cutie_export("cutie-small", "fp16"), options=BuildOptions(EngineProfile(4, (480, 854))),
                         progress=lambda _: None)


@pytest.mark.slow
@pytest.mark.parametrize("clip", ["judo", "bike"])
def test_fp16_engines_match_fp32_eager_on_real_clips(fp16_engines, seeded_weights, clip):
    weights = seeded_weights("cutie-small")
    reference = davis_label_maps(vosrt.load("cutie-small", weights=weights, device="cuda"), clip)
    session = vosrt.load("cutie-small", backend="tensorrt", device="cuda", export_dir=fp16_engines, fp16=True,
                         cuda_graph=True)
    ious = [mean_iou(a, b) for a, b in zip(davis_label_maps(session, clip), reference)]
    print(f"{clip}: fp16 engines vs fp32 eager, per-frame mIoU min {min(ious):.4f} mean {np.mean(ious):.4f}")
    assert min(ious) >= 0.97
