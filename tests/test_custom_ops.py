"""vosrt's custom ONNX ops (Cutie's vosrt::TopKReadout, JointFormer's vosrt::TopKJointAttention):
export, ONNX Runtime, TensorRT plugin."""
from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace
from typing import Tuple

import numpy as np
import onnx
import pytest
import torch

import vosrt
from helpers import GOLDEN_CONFIG, synthetic_frame, synthetic_mask
from vosrt.api import build_network
from vosrt.cli import export_engine_main, main
from vosrt.export.verify import compare_with_eager
from vosrt.kernels import trt_plugin
from vosrt.kernels.custom_ops import OPS, TOPK_JOINT_ATTENTION, TOPK_READOUT, topk_joint_attention_op, topk_readout_op
from vosrt.kernels.joint_attention import topk_joint_attention_reference
from vosrt.kernels.readout import topk_readout_reference, triton_available
from vosrt.runtime.backends.onnxruntime import OnnxRuntimeBackend, create_session
from vosrt.runtime.cutie.family import FAMILY as CUTIE
from vosrt.runtime.jointformer.family import FAMILY as JOINTFORMER
from vosrt.runtime.stages import example_inputs

MODEL = "cutie-small"
QUALIFIED_NAME = TOPK_READOUT.qualified_name
DECOMPOSED_READOUT_OPS = {"TopK"}  # only the readout ranks


@pytest.fixture(scope="module")
def exports(seeded_weights, cutie_export, tmp_path_factory):
    """{"standard": dir, "custom": dir}: fp32 exports of the seed-1 weights (top_k 30, max_mem_frames 3),
    the custom-op one through ``export-engine --custom-ops``."""
    weights = seeded_weights(MODEL)
    folder = tmp_path_factory.mktemp("custom-ops")
    standard = cutie_export(MODEL)
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


def readout_inputs(seed: int = 3, batch: int = 1, ck: int = 8, hw: int = 20, n: int = 60, v: int = 12):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, ck, hw, generator=g), torch.rand(batch, ck, hw, generator=g),
            torch.randn(batch, ck, n, generator=g), 1 + torch.rand(batch, 1, n, generator=g),
            torch.randn(batch, v, n, generator=g), torch.rand(batch, n, generator=g) > 0.2]


def joint_inputs(seed: int = 4, batch: int = 2, heads: int = 3, n: int = 10, m: int = 40, d: int = 16):
    g = torch.Generator().manual_seed(seed)
    return [*(torch.randn(batch, heads, n, d, generator=g) for _ in range(3)),
            *(torch.randn(batch, heads, m, d, generator=g) for _ in range(2)), torch.rand(batch, m, generator=g) > 0.3]


def test_custom_ops_are_their_references_eagerly():
    inputs = readout_inputs()
    torch.testing.assert_close(topk_readout_op(*inputs, 7), topk_readout_reference(*inputs, 7), rtol=0, atol=1e-5)
    inputs = joint_inputs()
    torch.testing.assert_close(topk_joint_attention_op(*inputs, 5), topk_joint_attention_reference(*inputs, 5),
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match="'every_frame' has no custom op"):
        topk_joint_attention_op(*inputs, 5, frame_tokens=20)
    with pytest.raises(ValueError, match="head_dim=8 but q has 16 channels"):
        TOPK_JOINT_ATTENTION.reference(*inputs, top_k=5, head_dim=8)


def test_onnxruntime_custom_op_matches_standard_graph_and_eager(exports, seeded_weights):
    model = build_network(MODEL, seeded_weights(MODEL))
    checks = compare_with_eager(exports["custom"], model, sizes=((128, 192),), objects=(1, 3), rel_tol=1e-4,
                                graphs=("memory_readout",))
    assert [(c.graph, c.num_objects) for c in checks] == [("memory_readout", 1), ("memory_readout", 3)]
    assert all(c.passed for c in checks), checks

    stage = CUTIE.stages["memory_readout"]
    inputs = example_inputs(stage, CUTIE.example_sizes(CUTIE.architecture(model), 240, 320, 2, 3))
    feed = {name: x.numpy() for name, x in zip(stage.input_names, inputs)}
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
        OnnxRuntimeBackend(exports["custom"])


def test_unknown_custom_op_is_rejected(exports, tmp_path):
    directory = shutil.copytree(exports["custom"], tmp_path / "other")
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["custom_ops"] = ["vosrt::Unknown"]
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="vosrt::Unknown have no ONNX Runtime implementation"):
        OnnxRuntimeBackend(directory)


def test_inspect_lists_custom_ops(exports, capsys):
    assert main(["inspect", str(exports["custom"])]) == 0
    assert f"custom ops {QUALIFIED_NAME}" in capsys.readouterr().out


def test_jointformer_custom_op_export_has_one_node_per_filtered_block(jointformer_export):
    custom, standard = jointformer_export("custom"), jointformer_export("fp32")
    assert json.loads((custom / "manifest.json").read_text())["custom_ops"] == [TOPK_JOINT_ATTENTION.qualified_name]
    assert json.loads((standard / "manifest.json").read_text())["custom_ops"] == []
    nodes = onnx.load(str(custom / "joint_propagation.onnx")).graph.node
    joint = [n for n in nodes if n.domain == "vosrt"]
    assert [n.op_type for n in joint] == ["TopKJointAttention"] * 11  # topk_block all_blocks: the 11 joint blocks
    assert all({a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} ==
               {"top_k": 30, "head_dim": 64, "plugin_namespace": b"vosrt", "aot": 1} for n in joint)
    assert not {"TopK", "Softmax"} & {n.op_type for n in nodes}
    for graph in ("query_encoder", "reference_encoder", "decoder"):  # no top-K filter over the cache there
        assert not [n for n in onnx.load(str(custom / f"{graph}.onnx")).graph.node if n.domain == "vosrt"]


def test_jointformer_custom_op_graph_matches_the_standard_ops_on_onnxruntime(jointformer_export):
    """A cache of 3 slots, the last one empty (padded tokens), 2 objects, at another size than the export's."""
    spec = JOINTFORMER.stages["joint_propagation"]
    inputs = example_inputs(spec, JOINTFORMER.example_sizes({}, 96, 128, 2, 3))
    feed = {name: x.numpy() for name, x in zip(spec.input_names, inputs)}
    outputs = {}
    for kind in ("fp32", "custom"):
        directory = jointformer_export(kind)
        custom_ops = json.loads((directory / "manifest.json").read_text())["custom_ops"]
        outputs[kind] = create_session(directory / "joint_propagation.onnx", ["CPUExecutionProvider"],
                                       custom_ops).run(None, feed)[0]
    assert outputs["custom"].shape == (2, 48, 768)
    error = np.abs(outputs["custom"] - outputs["fp32"]).max() / np.abs(outputs["fp32"]).max()
    print(f"joint_propagation custom op vs standard ops: max |err| / scale {error:.1e}")
    assert error <= 1e-4


def test_jointformer_session_over_custom_op_export_matches_standard(jointformer_export):
    sessions = {kind: vosrt.load("jointformer", backend="onnxruntime", export_dir=jointformer_export(kind),
                                 mem_every=1, max_mem_frames=2) for kind in ("fp32", "custom")}
    for i in range(2):  # frame 0 is memorised; frame 1 reads its slot, the others empty
        image, mask = (np.ascontiguousarray(a[::2, ::2]) for a in (synthetic_frame(i), synthetic_mask(0)))
        probs = {kind: s.step(image, mask if i == 0 else None) for kind, s in sessions.items()}
        np.testing.assert_allclose(probs["custom"], probs["fp32"], rtol=0, atol=1e-4, err_msg=f"frame {i}")


def test_trt_plugin_registration_needs_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", None)
    with pytest.raises(RuntimeError, match=r"need TensorRT >= 10\.9"):
        trt_plugin.register()


def test_every_custom_op_has_a_plugin_kernel():
    assert set(trt_plugin.KERNELS) == set(OPS)


class RecordedLaunch:
    """Stands in for a jitted kernel: ``kernel[grid](*args)`` records the grid and the arguments."""

    def __getitem__(self, grid):
        def launch(*args, **constants):
            self.grid, self.args = grid, args
        return launch


# (module of the op's Triton kernel, the kernel's name there, inputs, node attributes)
PLUGIN_CASES = {
    TOPK_READOUT.qualified_name: ("vosrt.kernels.triton.readout", "_readout_kernel",
                                  readout_inputs(batch=2, hw=12, n=50, v=6), {"top_k": 7}),
    TOPK_JOINT_ATTENTION.qualified_name: ("vosrt.kernels.triton.joint_attention", "_topk_joint_attention_kernel",
                                          joint_inputs(), {"top_k": 5, "head_dim": 16}),
}


@pytest.mark.skipif(not triton_available(), reason="needs triton")
@pytest.mark.parametrize("op_name", list(PLUGIN_CASES))
def test_trt_plugin_launch_passes_what_the_python_launcher_passes(op_name, monkeypatch):
    """The AOT launch's grid and integer arguments equal those the plugin's Python launcher passes
    the same kernel for contiguous inputs, whose arguments come as TensorRT passes them: inputs,
    scalars, output."""
    module_name, kernel_name, inputs, attributes = PLUGIN_CASES[op_name]
    recorded = RecordedLaunch()
    monkeypatch.setattr(importlib.import_module(module_name), kernel_name, recorded)
    plugin = trt_plugin.KERNELS[op_name]
    plugin.run(*inputs, **attributes)
    tensors = [isinstance(a, torch.Tensor) for a in recorded.args]
    scalars = [a for a in recorded.args if not isinstance(a, torch.Tensor)]
    assert tensors == [True] * len(plugin.op.inputs) + [False] * len(scalars) + [True]
    grid, expected = plugin.launch(*(SimpleNamespace(shape_expr=tuple(x.shape)) for x in inputs), **attributes)
    assert tuple(grid) == tuple(recorded.grid) and expected == scalars


def fake_tensorrt_plugin_api():
    """The types ``plugin_functions`` uses from ``tensorrt`` and ``tensorrt.plugin``."""
    class TensorDesc(SimpleNamespace):
        pass

    class Tensor(SimpleNamespace):
        pass

    class SymIntExprs(list):
        from_tuple = classmethod(lambda cls, values: cls(values))

    trtp = SimpleNamespace(TensorDesc=TensorDesc, Tensor=Tensor, SymIntExprs=SymIntExprs,
                           KernelLaunchParams=SimpleNamespace, SymInt32=lambda e: e,
                           from_shape_expr=lambda shape, dtype: TensorDesc(shape_expr=shape, dtype=dtype))
    return SimpleNamespace(float32="float32"), trtp


@pytest.mark.skipif(not triton_available(), reason="needs triton")  # the plugin's functions import its kernel
@pytest.mark.parametrize("op_name", list(PLUGIN_CASES))
def test_trt_plugin_functions_have_the_schema_tensorrt_reads(op_name, monkeypatch):
    """register/impl/aot_impl read the functions' signatures: tensors, then int attributes, then
    outputs and stream (JIT) or outputs and tactic (AOT); the AOT one returns the kernel and its launch."""
    trt, trtp = fake_tensorrt_plugin_api()
    plugin = trt_plugin.KERNELS[op_name]
    functions = trt_plugin.plugin_functions(trt, trtp, plugin)
    names = [*plugin.op.inputs, *plugin.op.attributes]
    signatures = {name: inspect.signature(f) for name, f in functions.items()}
    assert list(signatures["describe"].parameters) == names
    assert signatures["describe"].return_annotation is trtp.TensorDesc
    assert list(signatures["run"].parameters) == [*names, "outputs", "stream"]
    assert list(signatures["compile_for_engine"].parameters) == [*names, "outputs", "tactic"]
    assert signatures["compile_for_engine"].return_annotation == Tuple[bytes, bytes, SimpleNamespace, trtp.SymIntExprs]
    annotations = [p.annotation for p in signatures["describe"].parameters.values()]
    assert annotations == [trtp.TensorDesc] * len(plugin.op.inputs) + [int] * len(plugin.op.attributes)

    _, _, inputs, attributes = PLUGIN_CASES[op_name]
    descs = [trtp.TensorDesc(shape_expr=tuple(x.shape)) for x in inputs]
    out = functions["describe"](*descs, **attributes)
    expected = plugin.op.reference(*inputs, **attributes)
    assert list(out.shape_expr) == list(expected.shape) and out.dtype == "float32"
    monkeypatch.setattr(trt_plugin, "compile_ptx", lambda name, attrs: ("kernel", f"ptx of {name} {attrs}", 128, 1024))
    name, ptx, launch, scalars = functions["compile_for_engine"](*descs, *attributes.values(), (out,), 0)
    assert name == b"kernel" and ptx == f"ptx of {op_name} {attributes}".encode()
    grid, expected_scalars = plugin.launch(*descs, **attributes)
    assert (launch.grid_x, launch.grid_y, launch.block_x, launch.shared_mem) == (*grid, 128, 1024)
    assert list(scalars) == expected_scalars


AOT_COMPILE = """
import json, re, sys
from types import SimpleNamespace
import triton
from triton.backends.compiler import GPUTarget
from vosrt.kernels import trt_plugin
op_name, attributes, shapes = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
plugin, target = trt_plugin.KERNELS[op_name], GPUTarget("cuda", 90, 32)
name, ptx, threads, shared = trt_plugin.compile_ptx(op_name, attributes, target)
variant = plugin.variant(**attributes)
unpinned = triton.compile(variant.source(), target=target, options=variant.options()).asm["ptx"]
_, scalars = plugin.launch(*(SimpleNamespace(shape_expr=s) for s in shapes), **attributes)
print(json.dumps(dict(name=name, threads=threads, shared=shared, version=re.search(r"\\.version (\\S+)", ptx).group(1),
                      entry=trt_plugin.entry_parameters(ptx, name), scalars=len(scalars),
                      triton_entry=trt_plugin.entry_parameters(unpinned, name))))
"""


def parameter_kind(declaration: str) -> str:
    """A PTX ``.param`` declaration's kind: pointer (``.u64 .ptr``), int32 (``.u32``/``.s32``), or itself."""
    if ".ptr" in declaration and ".u64" in declaration:
        return "pointer"
    return "int32" if re.search(r"\.[us]32\b", declaration) else declaration


@pytest.mark.skipif(not triton_available(), reason="needs triton")
@pytest.mark.parametrize("op_name, attributes", [
    (TOPK_READOUT.qualified_name, {"top_k": 30}),
    (TOPK_JOINT_ATTENTION.qualified_name, {"top_k": 30, "head_dim": 64}),
    (TOPK_JOINT_ATTENTION.qualified_name, {"top_k": 180, "head_dim": 64}),
])
def test_trt_plugin_ptx_entry_declares_what_tensorrt_passes(op_name, attributes):
    """Compiled for sm_90 without a GPU (a fresh process: the kernel tests put triton in interpreter
    mode in this one), the plugin's PTX is ISA 8.4 and its ``.entry`` declares, in order, a pointer
    per input, an int32 per scalar of the plugin's launch and a pointer for the output: what
    TensorRT's AOT launch passes. Triton's own entry has two more pointers after the output (its
    global and profile scratch), which the plugin removes."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    shapes = json.dumps([list(x.shape) for x in PLUGIN_CASES[op_name][2]])
    done = subprocess.run([sys.executable, "-c", AOT_COMPILE, op_name, json.dumps(attributes), shapes], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["version"] == "8.4" and result["threads"] == 128 and 0 <= result["shared"] <= 48 * 1024
    inputs = len(OPS[op_name].inputs)
    expected = ["pointer"] * inputs + ["int32"] * result["scalars"] + ["pointer"]
    assert [parameter_kind(d) for d, _ in result["entry"]] == expected
    assert [n for _, n in result["entry"]] == [f"{result['name']}_param_{i}" for i in range(len(expected))]
    assert [parameter_kind(d) for d, _ in result["triton_entry"]] == expected + ["pointer", "pointer"]
