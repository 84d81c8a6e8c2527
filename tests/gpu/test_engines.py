"""TensorRT engines on a GPU: each engine against ONNX Runtime, the golden clips through engines,
and fp16 engines per stage on real frames. They need TensorRT and an NVIDIA GPU (marked ``tensorrt``)."""
from __future__ import annotations

import pytest

import vosrt
from helpers import GOLDEN_CONFIG, GPU_MAX_DPROB, JOINTFORMER_GOLDEN_CONFIG, assert_golden, run_golden_clip
from stage_errors import assert_fp16_noise, davis_frames, record_calls, stage_errors
from vosrt.cli import main
from vosrt.export.profile import BuildOptions, EngineProfile
from vosrt.export.tensorrt import build_engines
from vosrt.runtime.backends.tensorrt import TensorRTBackend
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
    """fp16 engines of seed-1 cutie-small for the DAVIS examples (480x854, 4 objects, 3 memory frames)."""
    return build_engines(cutie_export("cutie-small", "fp16"), options=BuildOptions(EngineProfile(4, (480, 854))),
                         progress=lambda _: None)


def test_fp16_engines_stay_within_rounding_of_fp32(fp16_engines, seeded_weights):
    """Each fp16 engine on the inputs an fp32 eager session recorded on judo (three objects joining on
    frames 0, 5 and 8), against that session's outputs (tests/stage_errors.py says why not whole clips)."""
    session = vosrt.load("cutie-small", weights=seeded_weights("cutie-small"), device="cuda", top_k=30,
                         max_mem_frames=3)
    calls = record_calls(session, davis_frames("judo", [(0, [1]), (1, None), (5, [2]), (6, None), (8, [3]), (9, None)]))
    assert_fp16_noise(stage_errors(TensorRTBackend(fp16_engines, "cuda")._run, calls))
