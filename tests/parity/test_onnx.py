"""ONNX export, the ONNX Runtime backend, and the export CLI."""
from __future__ import annotations

import collections
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
from vosrt.runtime.artifacts import read_manifest
from vosrt.runtime.backends.onnxruntime import create_session
from vosrt.runtime.cutie.family import FAMILY
from vosrt.runtime.cutie.family import STAGES as SPECS
from vosrt.runtime.stages import example_inputs

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


# Per graph of an fp16 Cutie export: the weight layers and matrix products (and TopK) that run in fp32,
# the official fp32 regions: the top-K readout and usage (the similarity, the weighted sum), the sensory
# updates (GRU), the object summaries and the final logits. Every other one runs in fp16.
CUTIE_FP32_LAYERS = {
    "image_encoder": {},
    "mask_encoder": {"Conv": 1, "MatMul": 4, "Einsum": 1},
    "memory_readout": {"MatMul": 2, "TopK": 1},
    "memory_usage": {"MatMul": 1, "TopK": 1},
    "mask_decoder": {"Conv": 2},
}


def _layer_precisions(path) -> tuple[collections.Counter, collections.Counter]:
    """(fp32, fp16) counts of the Conv, MatMul, Gemm, Einsum and TopK nodes of the graph at ``path``, by output type."""
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(path))).graph
    dtypes = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.output]}
    layers = [n for n in graph.node if n.op_type in ("Conv", "MatMul", "Gemm", "Einsum", "TopK")]
    return tuple(collections.Counter(n.op_type for n in layers if dtypes[n.output[0]] == dtype)
                 for dtype in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16))


def test_fp16_export_keeps_the_official_fp32_regions(seeded_weights, cutie_export):
    """fp16 graphs: convolutions and matrix products in fp16 but for the official fp32 regions; fp32
    graph inputs and outputs; each output within its default fp16 tolerance of the eager fp32 model."""
    directory = cutie_export("cutie-small", "fp16")
    for name, spec in SPECS.items():
        fp32, fp16 = _layer_precisions(directory / f"{name}.onnx")
        assert fp32 == collections.Counter(CUTIE_FP32_LAYERS[name]), name
        assert name == "memory_usage" or fp16["Conv"] + fp16["MatMul"] > 0, name
        graph = onnx.load(str(directory / f"{name}.onnx")).graph
        assert onnx.TensorProto.FLOAT16 not in {v.type.tensor_type.elem_type for v in [*graph.input, *graph.output]}
    checks = compare_with_eager(directory, build_network("cutie-small", seeded_weights("cutie-small")),
                                sizes=((128, 192),), objects=(2,))
    worst = max(checks, key=lambda c: c.relative_error / c.tolerance)
    print(f"fp16: worst {worst.graph}/{worst.output}: {worst.relative_error:.2e} (tolerance {worst.tolerance})")
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]
    assert {c.topk_differ for c in checks if c.graph in ("memory_readout", "memory_usage")} == {0.0}


def test_verify_holds_fp16_graphs_to_their_measured_tolerances(cutie_export, capsys):
    """``vosrt verify`` on fp16 graphs: one table, each output against its fp16 tolerance, the share
    of queries whose top-K set differs from fp32; the fp32 tolerance is a one-line failure."""
    directory = str(cutie_export("cutie-small", "fp16"))
    assert main(["verify", directory, "--sizes", "128x192", "--objects", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["graph", "size", "K", "output", "max|err|", "rel", "tol", "top-k!="]
    assert len(lines) == 1 + 13 + 1 and lines[-1].startswith("all 13 outputs within their tolerance of the eager")
    readout = next(line.split() for line in lines if line.startswith("memory_readout"))
    assert readout[-3:] == ["5.0e-03", "0.00%", "ok"]
    assert main(["verify", directory, "--sizes", "128x192", "--objects", "2", "--rel-tol", "1e-4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "outputs exceed their tolerance" in err


def test_engine_comparisons_keep_polygraphy_quiet(cutie_export, capfd):
    """The engine check runs Polygraphy's runners (TensorRT: not here), which log every inference:
    inside the check nothing of it is printed."""
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.comparator import Comparator

    from vosrt.export.verify import _quiet_polygraphy

    stage = SPECS["memory_usage"]
    directory = cutie_export("cutie-small")
    inputs = example_inputs(stage, FAMILY.example_sizes(read_manifest(directory)["architecture"], 64, 64, 1, 2))
    runner = OnnxrtRunner(create_session(directory / "memory_usage.onnx", ["CPUExecutionProvider"]))
    with _quiet_polygraphy():
        Comparator.run([runner], data_loader=[{n: x.numpy() for n, x in zip(stage.input_names, inputs)}])
    assert capfd.readouterr() == ("", "")


def test_fp16_graphs_of_a_confident_decoder_give_no_nan(seeded_weights, tmp_path):
    """The final logits x40 (a decoder as confident as a trained one): in fp16, 1 - 1e-7 rounds to 1,
    so the soft aggregation must run in fp32 or its Div/Log give NaN (issue 18, item 3)."""
    network = build_network("cutie-small", seeded_weights("cutie-small"))
    with torch.no_grad():
        for parameter in network.mask_decoder.pred.parameters():
            parameter.mul_(40)
    probs = {}
    for fp16 in (False, True):
        directory = onnx_export.export_onnx(network, "cutie-small", tmp_path / f"fp16-{fp16}", fp16=fp16,
                                            progress=lambda _: None)
        session = vosrt.load("cutie-small", backend="onnxruntime", export_dir=directory, fp16=fp16)
        probs[fp16] = [session.step(synthetic_frame(i), synthetic_mask(0) if i == 0 else None) for i in range(4)]
    for i, prob in enumerate(probs[True]):
        assert np.isfinite(prob).all(), f"frame {i}: {np.isnan(prob).sum()} NaN of {prob.size}"
    # The first propagated frame: 0.12% of the labels differ (random weights x40 make many pixels
    # near ties, and later frames drift apart through the memory as fp32 runs of other orders do).
    assert (probs[True][1].argmax(0) != probs[False][1].argmax(0)).mean() <= 0.01


def test_export_dir_must_fit_the_session(exports, seeded_weights):
    with pytest.raises(ValueError, match="exported with top_k=30"):
        vosrt.load("cutie-small", weights=seeded_weights("cutie-small"), backend="onnxruntime",
                   export_dir=exports("cutie-small"), top_k=20)
    with pytest.raises(ValueError, match="holds cutie-small, not cutie-base"):
        vosrt.load("cutie-base", weights=seeded_weights("cutie-base"), backend="onnxruntime",
                   export_dir=exports("cutie-small"))


def test_export_engine_cli(seeded_weights, tmp_path, capsys):
    """Without TensorRT the default --format engine keeps the ONNX graphs, says how to build the
    engines on the target and exits 0 (one export: --format onnx writes the same graphs)."""
    weights = str(seeded_weights("cutie-small"))
    out = tmp_path / "onnx"
    assert export_engine_main(["cutie-small", "--weights", weights, "--output", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{n}.onnx" for n in SPECS] + ["manifest.json"])
    printed, err = capsys.readouterr()
    assert "exporting memory_readout" in printed and "Traceback" not in err
    assert "note: no engines built: building TensorRT engines needs" in printed
    assert "must be built on the target" in printed and "trtexec --onnx=" in printed

    assert main(["inspect", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "input  memory_valid" in printed and "settings top_k 30" in printed
    assert "input  memory_value       float32  [B, K, 256, N]" in printed  # fixed dimensions as numbers


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
