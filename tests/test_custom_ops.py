"""The top-k readout as the custom ONNX op vosrt::TopKReadout: export, ONNX Runtime, TensorRT plugin."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch

import vosrt
from helpers import GOLDEN_CONFIG, synthetic_frame, synthetic_mask
from vosrt.api import build_model
from vosrt.cli import export_engine_main, main
from vosrt.export import onnx_export
from vosrt.export.cutie_graphs import SPECS, example_inputs
from vosrt.export.verify import compare_with_eager
from vosrt.kernels import trt_plugin
from vosrt.kernels.custom_op import QUALIFIED_NAME, topk_readout_op
from vosrt.kernels.topk_readout import topk_readout_reference, triton_available
from vosrt.runtime.onnxruntime_graphs import OnnxRuntimeGraphs, create_session

MODEL = "cutie-small"
DECOMPOSED_READOUT_OPS = {"TopK", "ScatterElements"}


@pytest.fixture(scope="module")
def exports(seeded_weights, tmp_path_factory):
    """{"standard": dir, "custom": dir}: fp32 exports of the seed-1 weights (top_k 30, capacity 3),
    the custom-op one through ``export-engine --custom-ops``."""
    weights = seeded_weights(MODEL)
    folder = tmp_path_factory.mktemp("custom-ops")
    standard = onnx_export.export_onnx(build_model(MODEL, weights), MODEL, folder / "standard", checkpoint=weights,
                                       top_k=30, max_mem_frames=3, progress=lambda _: None)
    assert export_engine_main([MODEL, "--weights", str(weights), "--format", "onnx", "--custom-ops", "--top-k", "30",
                               "--max-mem-frames", "3", "--output", str(folder / "custom")]) == 0
    return {"standard": standard, "custom": folder / "custom"}


def readout_nodes(directory):
    return onnx.load(str(directory / "memory_readout.onnx")).graph.node


def test_export_emits_one_custom_node_and_lists_it(exports):
    custom = [n for n in readout_nodes(exports["custom"]) if n.domain == "vosrt"]
    assert [n.op_type for n in custom] == ["TopKReadout"]
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in custom[0].attribute}
    assert attributes == {"top_k": 30, "plugin_namespace": b"vosrt", "aot": 1}
    assert not DECOMPOSED_READOUT_OPS & {n.op_type for n in readout_nodes(exports["custom"])}
    assert DECOMPOSED_READOUT_OPS <= {n.op_type for n in readout_nodes(exports["standard"])}
    onnx.checker.check_model(str(exports["custom"] / "memory_readout.onnx"), full_check=True)
    manifests = {kind: json.loads((d / "manifest.json").read_text()) for kind, d in exports.items()}
    assert manifests["custom"]["custom_ops"] == [QUALIFIED_NAME] and manifests["standard"]["custom_ops"] == []


def test_custom_op_is_the_readout_eagerly():
    g = torch.Generator().manual_seed(3)
    inputs = [torch.randn(1, 8, 20, generator=g), torch.rand(1, 8, 20, generator=g), torch.randn(1, 8, 60, generator=g),
              1 + torch.rand(1, 1, 60, generator=g), torch.randn(1, 12, 60, generator=g), torch.rand(1, 60, generator=g) > 0.2]
    torch.testing.assert_close(topk_readout_op(*inputs, 7), topk_readout_reference(*inputs, 7), rtol=0, atol=0)


def test_onnxruntime_custom_op_matches_standard_graph_and_eager(exports, seeded_weights):
    model = build_model(MODEL, seeded_weights(MODEL))
    checks = compare_with_eager(exports["custom"], model, sizes=((128, 192),), objects=(1, 3), rel_tol=1e-4,
                                graphs=("memory_readout",))
    assert [(c.graph, c.num_objects) for c in checks] == [("memory_readout", 1), ("memory_readout", 3)]
    assert all(c.passed for c in checks), checks

    inputs = example_inputs(model, "memory_readout", (240, 320), 2, 3)
    feed = {name: x.numpy() for name, x in zip(SPECS["memory_readout"].inputs, inputs)}
    outputs = {kind: create_session(d / "memory_readout.onnx", ["CPUExecutionProvider"],
                                    json.loads((d / "manifest.json").read_text())["custom_ops"]).run(None, feed)[0]
               for kind, d in exports.items()}
    scale = np.abs(outputs["standard"]).max()
    assert np.abs(outputs["custom"] - outputs["standard"]).max() <= 1e-5 * scale


def test_session_over_custom_op_export_matches_standard(exports, seeded_weights):
    sessions = {kind: vosrt.load(MODEL, weights=seeded_weights(MODEL), backend="onnxruntime", export_dir=d,
                                 **GOLDEN_CONFIG) for kind, d in exports.items()}
    for i in range(4):  # frame 0 is memorised, frames 1-3 are read from memory
        mask = synthetic_mask(0) if i == 0 else None
        probs = {kind: s.step(synthetic_frame(i), mask, objects=[1, 2] if i == 0 else None)
                 for kind, s in sessions.items()}
        assert probs["custom"].shape == probs["standard"].shape
        np.testing.assert_allclose(probs["custom"], probs["standard"], rtol=0, atol=1e-4, err_msg=f"frame {i}")


def test_missing_onnxruntime_extensions_is_a_clear_error(exports, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime_extensions", None)  # makes the import fail
    with pytest.raises(RuntimeError, match="needs onnxruntime-extensions"):
        OnnxRuntimeGraphs(exports["custom"])


def test_unknown_custom_op_is_rejected(exports, tmp_path):
    directory = shutil.copytree(exports["custom"], tmp_path / "other")
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["custom_ops"] = ["vosrt::Unknown"]
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="vosrt::Unknown have no ONNX Runtime implementation"):
        OnnxRuntimeGraphs(directory)


def test_inspect_lists_custom_ops(exports, capsys):
    assert main(["inspect", str(exports["custom"])]) == 0
    assert f"custom ops {QUALIFIED_NAME}" in capsys.readouterr().out


def test_trt_plugin_registration_needs_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", None)
    with pytest.raises(RuntimeError, match=r"needs TensorRT >= 10\.9"):
        trt_plugin.register()


def test_trt_plugin_scalars_are_the_kernel_strides():
    """The AOT launch's integer arguments equal what topk_readout_triton passes for contiguous tensors."""
    batch, ck, hw, n, v = 2, 8, 12, 50, 6
    desc = lambda *shape: SimpleNamespace(shape_expr=shape)  # noqa: E731 (ints stand in for shape expressions)
    sizes, strides = trt_plugin._kernel_scalars(desc(batch, ck, hw), desc(batch, ck, n), desc(batch, v, n))
    qk, mk, ms, mv = torch.zeros(batch, ck, hw), torch.zeros(batch, ck, n), torch.zeros(batch, 1, n), torch.zeros(batch, v, n)
    valid, out = torch.zeros(batch, n, dtype=torch.bool), torch.zeros(batch, v, hw)
    assert sizes == [hw, n, ck, v]
    assert strides == [*qk.stride(), *qk.stride(), *mk.stride(), ms.stride(0), ms.stride(2), *mv.stride(),
                       *valid.stride(), *out.stride()]


AOT_COMPILE = """
import json
from triton.backends.compiler import GPUTarget
from vosrt.kernels import topk_readout, trt_plugin
name, ptx, threads, shared = trt_plugin.compile_ptx(30, GPUTarget("cuda", 90, 32))
kernel = topk_readout._jit_device_code()
constants = topk_readout.kernel_constants(30, **trt_plugin.BLOCKS)
runtime_args = [a for a in kernel.arg_names if a not in constants]
print(json.dumps(dict(name=name, threads=threads, shared=shared, entry=f".entry {name}(" in ptx,
                      runtime_args=runtime_args)))
"""


@pytest.mark.skipif(not triton_available(), reason="needs triton")
def test_trt_plugin_kernel_compiles_ahead_of_time_for_sm90():
    """Triton compiles the kernel to PTX without a GPU; the AOT launch passes its arguments as
    6 inputs, the scalars, then the output. (A fresh process: the kernel tests put triton in
    interpreter mode in this one.)"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", AOT_COMPILE], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["name"] == "_topk_readout_kernel" and result["entry"]
    assert result["threads"] == trt_plugin.NUM_WARPS * 32 and result["shared"] >= 0
    sizes, strides = trt_plugin._kernel_scalars(*(SimpleNamespace(shape_expr=(1, 1, 1)) for _ in range(3)))
    args = result["runtime_args"]
    assert len(args) == 6 + len(sizes) + 1 + len(strides) + 1
    assert args[:6] == ["qk_ptr", "qe_ptr", "mk_ptr", "ms_ptr", "mv_ptr", "valid_ptr"] and args[-1] == "out_ptr"
