"""ONNX export, the ONNX Runtime backend, and the export CLI."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

import vosrt
from helpers import GOLDEN_CONFIG, GOLDEN_MAX_DPROB, assert_golden, run_golden_clip, synthetic_frame, synthetic_mask
from vosrt.api import build_network
from vosrt.cli import export_engine_main, main
from vosrt.export import onnx as onnx_export
from vosrt.export.verify import compare_with_eager
from vosrt.runtime.cutie.family import STAGES as SPECS

MODELS = ["cutie-small", "cutie-base"]


@pytest.fixture(scope="module")
def exports(cutie_export):
    """``exports(model)`` -> fp32 export directory of the seed-1 weights (top_k 30, max_mem_frames 3)."""
    return cutie_export


def test_graphs_pass_the_full_checker_and_manifest_describes_them(exports):
    directory = exports("cutie-small")
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["model"] == "cutie-small" and manifest["precision"] == "fp32"
    assert manifest["settings"] == {"top_k": 30} and manifest["max_mem_frames"] == 3
    assert len(manifest["checkpoint"]["sha256"]) == 64
    for name, spec in SPECS.items():
        onnx.checker.check_model(str(directory / f"{name}.onnx"), full_check=True)
        graph = manifest["graphs"][name]
        assert [t["name"] for t in graph["inputs"]] == list(spec.input_names)
        assert [t["name"] for t in graph["outputs"]] == list(spec.output_names)
    sensory = next(t for t in manifest["graphs"]["mask_decoder"]["inputs"] if t["name"] == "sensory")
    assert sensory["shape"] == ["B", "K", 256, "h", "w"] and sensory["dtype"] == "float32"


@pytest.mark.parametrize("model", MODELS)
def test_each_graph_matches_eager(model, exports, seeded_weights):
    checks = compare_with_eager(exports(model), build_network(model, seeded_weights(model)),
                                sizes=((128, 192), (240, 320)), objects=(1, 3), rel_tol=1e-4)
    assert {(c.graph, c.size, c.num_objects) for c in checks} == {
        (g, s, k) for g in SPECS for s in ((128, 192), (240, 320)) for k in (1, 3)}
    worst = max(checks, key=lambda c: c.relative_error)
    print(f"{model}: worst {worst.graph}/{worst.output} rel error {worst.relative_error:.2e}")
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]


@pytest.mark.parametrize("model", MODELS)
def test_onnxruntime_backend_reproduces_official_outputs(model, exports, seeded_weights):
    session = vosrt.load(model, weights=seeded_weights(model), backend="onnxruntime", export_dir=exports(model),
                         **GOLDEN_CONFIG)
    # Some objects are a dozen pixels wide with these random weights: near-tie pixels (top-2
    # probabilities within 1e-4, under 1% of a frame) are left out of the IoU; the flips that
    # ORT's different summation order causes all sit there. |dprob| is checked everywhere.
    assert_golden(run_golden_clip(session, model), GOLDEN_MAX_DPROB[model, "onnxruntime"], ignore_ties=True)


def test_onnxruntime_backend_runs_the_long_term_memory(exports, seeded_weights):
    """The memory_usage graph drives consolidation and eviction as the eager usage does."""
    options = dict(mem_every=1, max_internal_size=64, use_long_term=True, long_term_max_mem_frames=3,
                   long_term_min_mem_frames=2, long_term_num_prototypes=8, long_term_max_num_tokens=40,
                   long_term_buffer_tokens=8)  # 24 tokens per frame: a consolidation per frame, evictions from frame 6
    weights = seeded_weights("cutie-small")
    sessions = [vosrt.load("cutie-small", weights=weights, **options),
                vosrt.load("cutie-small", weights=weights, backend="onnxruntime", export_dir=exports("cutie-small"),
                           **options)]
    for i in range(12):
        eager, ort = (s.step(synthetic_frame(i), synthetic_mask(0) if i == 0 else None) for s in sessions)
        np.testing.assert_allclose(ort, eager, atol=1e-2)
    eager, ort = (s._memory.buckets[0] for s in sessions)
    assert ort.long_size == eager.long_size == 32
    torch.testing.assert_close(ort.use_count, eager.use_count, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(ort.key, eager.key, rtol=1e-3, atol=1e-4)


def test_fp16_export_keeps_the_similarity_in_fp32(seeded_weights, cutie_export):
    """fp16 graphs: conv/matmul in fp16, the similarity that top-k ranks and the softmax in fp32
    (as the official code under autocast), fp32 graph inputs and outputs."""
    model = build_network("cutie-small", seeded_weights("cutie-small"))
    directory = cutie_export("cutie-small", "fp16")
    readout = onnx.shape_inference.infer_shapes(onnx.load(str(directory / "memory_readout.onnx")))
    dtypes = {v.name: v.type.tensor_type.elem_type for v in [*readout.graph.value_info, *readout.graph.input]}
    topk = [n for n in readout.graph.node if n.op_type == "TopK"]
    assert topk and all(dtypes[n.input[0]] == onnx.TensorProto.FLOAT for n in topk)
    assert any(dtypes.get(n.output[0]) == onnx.TensorProto.FLOAT16 for n in readout.graph.node if n.op_type == "MatMul")
    checks = compare_with_eager(directory, model, sizes=((128, 192),), objects=(2,), rel_tol=1e-2,
                                graphs=("image_encoder", "mask_encoder", "mask_decoder"))
    worst = max(checks, key=lambda c: c.relative_error)
    print(f"fp16: worst {worst.graph}/{worst.output} rel error {worst.relative_error:.2e}")
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]


def test_export_dir_must_fit_the_session(exports, seeded_weights):
    with pytest.raises(ValueError, match="exported with top_k=30"):
        vosrt.load("cutie-small", weights=seeded_weights("cutie-small"), backend="onnxruntime",
                   export_dir=exports("cutie-small"), top_k=20)
    with pytest.raises(ValueError, match="holds cutie-small, not cutie-base"):
        vosrt.load("cutie-base", weights=seeded_weights("cutie-base"), backend="onnxruntime",
                   export_dir=exports("cutie-small"))


def test_export_engine_cli(seeded_weights, tmp_path, capsys):
    weights = str(seeded_weights("cutie-small"))
    out = tmp_path / "onnx"
    assert export_engine_main(["cutie-small", "--weights", weights, "--format", "onnx", "--output", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{n}.onnx" for n in SPECS] + ["manifest.json"])
    assert "exporting memory_readout" in capsys.readouterr().out

    assert main(["inspect", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "input  memory_valid" in printed and "settings top_k 30" in printed
    assert "input  memory_value       float32  [B, K, 256, N]" in printed  # fixed dimensions as numbers

    # Without TensorRT the default --format engine stops after the ONNX graphs with a clear message.
    assert export_engine_main(["cutie-small", "--weights", weights, "--output", str(tmp_path / "eng")]) == 2
    err = capsys.readouterr().err
    assert "must be built on the target" in err and "trtexec --onnx=" in err and "Traceback" not in err


def test_failed_export_leaves_nothing(seeded_weights, tmp_path, monkeypatch):
    def broken(path, policy):
        raise RuntimeError("conversion failed")

    monkeypatch.setattr(onnx_export, "convert_to_fp16", broken)
    out = tmp_path / "half"
    with pytest.raises(RuntimeError, match="conversion failed"):
        onnx_export.export_onnx(build_network("cutie-small", seeded_weights("cutie-small")), "cutie-small", out,
                                fp16=True, progress=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_inspect_rejects_other_directories(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    assert "is not an ONNX export (export-engine --format onnx): it has no manifest.json" in capsys.readouterr().err
