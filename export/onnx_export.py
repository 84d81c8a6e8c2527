"""Export Cutie's four graphs to ONNX, with a manifest, checked by ``onnx.checker``.

The output directory holds ``<graph>.onnx`` for each graph of :data:`SPECS` and
``manifest.json``. It is written to a temporary sibling directory first and moved into
place only when every graph has been exported and checked, so a failure leaves nothing.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import onnx
import torch

import vosrt
from vosrt.models.cutie import CONFIGS, Cutie

from .cutie_graphs import SPECS, example_inputs, graph_modules

MANIFEST = "manifest.json"
# Ops kept in fp32 in fp16 graphs, as the official code keeps them out of autocast:
# the similarity / top-k / softmax path and the normalisations that would overflow.
FP32_OPS = ["TopK", "Softmax", "ScatterElements", "ReduceSum", "ReduceMean", "Exp", "Log", "Pow",
            "LayerNormalization", "Sigmoid", "Tanh", "Sqrt", "Div"]
EXPORT_SIZE = (128, 192)  # any multiple of 16 works: H and W are dynamic axes


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_onnx(model: Cutie, model_name: str, output: str | Path, *, checkpoint: str | Path | None = None,
                top_k: int = 30, max_mem_frames: int = 5, fp16: bool = False, opset: int = 17,
                progress: Callable[[str], None] = print) -> Path:
    """Export ``model`` to ``output`` (a directory, replaced if it exists). Returns its path."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        graphs = {}
        for name, module in graph_modules(model.eval(), top_k).items():
            progress(f"exporting {name} ({'fp16' if fp16 else 'fp32'}, opset {opset})")
            path = staging / f"{name}.onnx"
            _export_graph(module, model, name, path, opset, max_mem_frames)
            if fp16:
                _convert_to_fp16(path)
            onnx.checker.check_model(str(path), full_check=True)
            graphs[name] = _describe(path, name)
        manifest = {
            "format": "vosrt-onnx/1", "model": model_name, "vosrt_version": vosrt.__version__,
            "torch_version": torch.__version__, "onnx_version": onnx.__version__, "opset": opset,
            "precision": "fp16" if fp16 else "fp32", "top_k": top_k, "max_mem_frames": max_mem_frames,
            "architecture": asdict(model.cfg),
            "checkpoint": {"path": str(Path(checkpoint).resolve()), "sha256": sha256(checkpoint)} if checkpoint else None,
            "graphs": graphs,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def _export_graph(module: torch.nn.Module, model: Cutie, name: str, path: Path, opset: int, capacity: int) -> None:
    spec = SPECS[name]
    inputs = example_inputs(model, name, EXPORT_SIZE, num_objects=2, capacity=capacity)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic, expected here
        torch.onnx.export(module, inputs, str(path), input_names=list(spec.inputs), output_names=list(spec.outputs),
                          dynamic_axes=spec.dynamic, opset_version=opset, dynamo=False)


def _convert_to_fp16(path: Path) -> None:
    """fp16 weights and activations, fp32 graph inputs/outputs and fp32 for :data:`FP32_OPS`."""
    from onnxconverter_common import float16

    model = float16.convert_float_to_float16(onnx.load(str(path)), keep_io_types=True, op_block_list=FP32_OPS)
    onnx.save(model, str(path))


def _describe(path: Path, name: str) -> dict:
    graph = onnx.load(str(path), load_external_data=False).graph
    return {"file": path.name, "sha256": sha256(path),
            "inputs": [_tensor_info(v) for v in graph.input], "outputs": [_tensor_info(v) for v in graph.output]}


def _tensor_info(value: onnx.ValueInfoProto) -> dict:
    tensor = value.type.tensor_type
    shape = [d.dim_param or d.dim_value for d in tensor.shape.dim]
    return {"name": value.name, "shape": shape, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name}


def read_manifest(directory: str | Path) -> dict:
    """The manifest of an export directory, with a clear error when it is not one."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a vosrt export (no {MANIFEST}); create one with export-engine")
    manifest = json.loads(path.read_text())
    missing = [n for n in SPECS if n not in manifest.get("graphs", {}) or
               not (Path(directory) / manifest["graphs"][n]["file"]).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} lacks the graph(s) {', '.join(missing)}; export it again")
    if manifest.get("model") not in CONFIGS:
        raise ValueError(f"{directory} holds an unknown model {manifest.get('model')!r}")
    return manifest
