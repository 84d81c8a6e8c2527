"""The fp16 pass on small graphs: which nodes compute in fp32, where the Casts go, and the island check."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper
from torch import nn

from vosrt.export.fp16 import (CAST_PREFIX, FP16, FP32, check_fp32_islands, convert_to_fp16, fp32_islands,
                               node_precisions)
from vosrt.models.common import fp32_region, to_fp32
from vosrt.runtime.family import Fp16Policy

POLICY = Fp16Policy()
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.onnx's TorchScript exporter


class Ranker(nn.Module):
    """A projection (fp16), then a region of the model in fp32: a scoring layer, top-k and softmax."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 16)
        self.score = nn.Linear(16, 12)

    def forward(self, x: torch.Tensor):
        h = self.proj(x).relu()
        with fp32_region(h):
            top = self.score(to_fp32(h)).topk(4, dim=-1).values
            return h, torch.softmax(top * 3.0, dim=-1)


@pytest.fixture()
def ranker_graphs(tmp_path):
    """(fp32 model, fp16 model, path of the fp16 graph) of :class:`Ranker`."""
    torch.manual_seed(0)
    path = tmp_path / "ranker.onnx"
    with torch.inference_mode():
        torch.onnx.export(Ranker().eval(), (torch.randn(2, 5, 16),), str(path), input_names=["x"],
                          output_names=["features", "weights"], opset_version=17, dynamo=False)
    fp32 = onnx.load(str(path))
    convert_to_fp16(path, POLICY)
    return fp32, onnx.load(str(path)), path


def test_the_model_region_stays_fp32_and_the_rest_runs_in_fp16(ranker_graphs):
    fp32, fp16, _ = ranker_graphs
    matmuls = [n.name for n in fp32.graph.node if n.op_type == "MatMul"]
    islands = fp32_islands(fp32, POLICY)
    assert matmuls[0] not in islands and matmuls[1] in islands  # proj runs in fp16, score in the region
    assert {n.op_type for n in fp32.graph.node if n.name in islands} >= {"MatMul", "TopK", "Mul", "Softmax"}
    precisions = node_precisions(fp32, POLICY)
    assert [precisions[name] for name in matmuls] == [FP16, FP32]
    assert precisions[next(n.name for n in fp32.graph.node if n.op_type == "Relu")] == FP16  # follows its input
    # The converted graph: fp32 in and out, the projection's weight stored in fp16, the region's in fp32.
    assert {v.name: v.type.tensor_type.elem_type for v in (*fp16.graph.input, *fp16.graph.output)} == {
        "x": FP32, "features": FP32, "weights": FP32}
    weights = {t.name: t.data_type for t in fp16.graph.initializer}
    proj, score = (n for n in fp16.graph.node if n.op_type == "MatMul")
    assert (weights[proj.input[1]], weights[score.input[1]]) == (FP16, FP32)
    assert check_fp32_islands(fp16, POLICY) == []


def test_casts_go_where_a_node_reads_the_other_precision(ranker_graphs):
    _, fp16, _ = ranker_graphs
    casts = {n.name: (n.input[0], n.output[0]) for n in fp16.graph.node if n.op_type == "Cast"}
    inserted = {name for name in casts if name.startswith(CAST_PREFIX)}
    # x -> fp16 for the projection, the fp16 features -> the fp32 graph output, which the model's
    # own .float() (the third Cast) reads.
    assert inserted == {f"{CAST_PREFIX}x/to_fp16", f"{CAST_PREFIX}features/to_fp32"}
    assert casts[f"{CAST_PREFIX}features/to_fp32"] == ("features/fp16", "features")
    assert len(casts) == 3


def test_the_fp16_graph_computes_what_the_fp32_graph_does(ranker_graphs, tmp_path):
    fp32, _, path = ranker_graphs
    x = np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32)
    (features, weights), (features16, weights16) = (
        ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})
        for model in (fp32.SerializeToString(), str(path)))
    assert features16.dtype == weights16.dtype == np.float32
    np.testing.assert_allclose(features16, features, rtol=0, atol=2e-3 * np.abs(features).max())
    np.testing.assert_allclose(weights16, weights, rtol=0, atol=2e-3)


def _round_trip_after(model: onnx.ModelProto, op_type: str) -> onnx.ModelProto:
    """``model`` with its ``op_type`` node's first output cast to fp16 and back before its consumers
    read it (what converters that cast every blocked node's output back to fp16 do)."""
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    index, node = next((i, n) for i, n in enumerate(broken.graph.node) if n.op_type == op_type)
    value = node.output[0]
    for consumer in broken.graph.node:
        consumer.input[:] = [f"{value}/back" if v == value else v for v in consumer.input]
    broken.graph.node.insert(index + 1, helper.make_node("Cast", [value], [f"{value}/half"], name="down", to=FP16))
    broken.graph.node.insert(index + 2, helper.make_node("Cast", [f"{value}/half"], [f"{value}/back"], name="up",
                                                         to=FP32))
    return broken


def test_the_check_finds_a_round_trip_inside_an_island(ranker_graphs):
    _, fp16, _ = ranker_graphs
    broken = _round_trip_after(fp16, "TopK")
    problems = check_fp32_islands(broken, POLICY)
    topk, mul = (next(n.name for n in fp16.graph.node if n.op_type == op) for op in ("TopK", "Mul"))
    assert problems == [f"{topk} -> {mul} through a Cast to fp16"]


def test_the_check_finds_an_island_node_computing_in_fp16(ranker_graphs):
    _, fp16, _ = ranker_graphs
    broken = onnx.ModelProto()
    broken.CopyFrom(fp16)
    softmax = next(n for n in broken.graph.node if n.op_type == "Softmax")
    index = list(broken.graph.node).index(softmax)
    broken.graph.node.insert(index, helper.make_node("Cast", [softmax.input[0]], ["scores/half"], name="half", to=FP16))
    softmax.input[0] = "scores/half"
    broken.graph.node.append(helper.make_node("Cast", [softmax.output[0]], ["weights/fp32"], name="back", to=FP32))
    weights = next(o for o in broken.graph.output if o.name == "weights")
    softmax.output[0] = "weights/half"
    broken.graph.node[-1].input[0], broken.graph.node[-1].output[0] = "weights/half", weights.name
    problems = check_fp32_islands(broken, POLICY)
    assert any(p.startswith(f"{softmax.name} (Softmax) computes in fp16") for p in problems), problems


def test_the_conversion_refuses_a_graph_that_fails_the_check(ranker_graphs, monkeypatch, tmp_path):
    fp32, _, _ = ranker_graphs
    path = tmp_path / "again.onnx"
    onnx.save(fp32, str(path))
    from vosrt.export import fp16

    assigned = fp16._node_precision
    monkeypatch.setattr(fp16, "_node_precision",  # a pass that forgets the softmax; the check does not
                        lambda graph, node, *args: FP16 if node.op_type == "Softmax" else assigned(graph, node, *args))
    with pytest.raises(RuntimeError, match=r"rounds fp32 island values to fp16: .*Softmax\) computes in fp16"):
        convert_to_fp16(path, POLICY)
    assert onnx.load(str(path)) == fp32  # nothing written


def test_scores_of_keeps_the_scores_from_their_matmul_on(tmp_path):
    """A family policy's scores: the Softmax's input from the MatMul that computes it, not the
    layers before (JointFormer's attention: q and k in fp16, q.k and the softmax in fp32)."""
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qk = nn.Linear(8, 16)

        def forward(self, x):
            q, k = self.qk(x).chunk(2, dim=-1)
            return torch.softmax(q @ k.transpose(1, 2) * 0.35, dim=-1)

    path = tmp_path / "attention.onnx"
    torch.onnx.export(Attention().eval(), (torch.randn(1, 6, 8),), str(path), opset_version=17, dynamo=False)
    model = onnx.load(str(path))
    scores = fp32_islands(model, Fp16Policy(scores_of=("Softmax",)))
    kinds = sorted(n.op_type for n in model.graph.node if n.name in scores)
    assert kinds == ["MatMul", "Mul", "Softmax"]  # q.k, the scale, the softmax; not the projection
    assert fp32_islands(model, POLICY) == set()
