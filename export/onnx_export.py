"""Export Cutie's or JointFormer's graphs to ONNX, with a manifest, checked by ``onnx.checker``.

The output directory holds ``<graph>.onnx`` for each graph of the model's ``SPECS``
(:mod:`.cutie_graphs`, :mod:`.jointformer_graphs`) and ``manifest.json`` (JointFormer: also
the initial compressed-memory token, ``initial_summary.npy``). It is written to a temporary
sibling directory first and moved into place only when every graph has been exported and
checked, so a failure leaves nothing.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx
import torch

import vosrt
from vosrt.kernels.custom_op import OP_TYPE, QUALIFIED_NAME, topk_readout_op
from vosrt.kernels.topk_readout import topk_readout_reference
from vosrt.models.cutie import CONFIGS, Cutie
from vosrt.models.jointformer import MODEL_NAME as JOINTFORMER
from vosrt.models.jointformer import JointFormer, TopKConfig

from . import cutie_graphs, jointformer_graphs
from .cutie_graphs import graph_modules

MANIFEST = "manifest.json"
# Ops kept in fp32 in fp16 graphs, as the official code keeps them out of autocast:
# the similarity / top-k / softmax path and the normalisations that would overflow.
FP32_OPS = ["TopK", "Softmax", "ScatterElements", "ReduceSum", "ReduceMean", "Exp", "Log", "Pow",
            "LayerNormalization", "Sigmoid", "Tanh", "Sqrt", "Div", "Range", "Sin", "Cos", OP_TYPE]
EXPORT_SIZE = (128, 192)  # any multiple of 16 works: H and W are dynamic axes
INITIAL_SUMMARY = "initial_summary.npy"  # JointFormer: the compressed-memory token of a new object [1, 1, C]


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_onnx(model: Cutie | JointFormer, model_name: str, output: str | Path, *,
                checkpoint: str | Path | None = None, top_k: int = 30, max_mem_frames: int = 5, fp16: bool = False,
                opset: int = 17, custom_ops: bool = False, topk: TopKConfig | None = None,
                progress: Callable[[str], None] = print) -> Path:
    """Export ``model`` to ``output`` (a directory, replaced if it exists). Returns its path.

    ``custom_ops`` (Cutie): the top-k readout becomes one ``vosrt::TopKReadout`` node (see
    :mod:`vosrt.kernels.custom_op`) instead of standard ops; the manifest's ``custom_ops``
    lists the custom ops a loader must register. ``topk`` (JointFormer): the top-K options
    (default: the official ones with ``top_k``); ``max_mem_frames`` there is only the cache
    size of the example inputs (the reference token axis is dynamic).
    """
    output = Path(output)
    jointformer = isinstance(model, JointFormer)
    if jointformer and custom_ops:
        raise ValueError("custom ops are Cutie's top-k readout; JointFormer exports standard ONNX ops")
    if jointformer and fp16:
        raise ValueError("JointFormer exports fp32 graphs only in this version (its runtime runs fp32 only)")
    topk = topk or TopKConfig(top_k)
    if jointformer and topk.topk_range != "all_frames":
        raise ValueError("JointFormer exports with topk_range='all_frames' only in this version")
    with staged_directory(output) as staging:
        graphs = {}
        if jointformer:
            modules = jointformer_graphs.graph_modules(model, topk)
        else:
            modules = graph_modules(model.eval(), top_k, topk_readout_op if custom_ops else topk_readout_reference)
        for name, module in modules.items():
            progress(f"exporting {name} ({'fp16' if fp16 else 'fp32'}, opset {opset})")
            path = staging / f"{name}.onnx"
            _export_graph(module, model, graph_family(model_name), name, path, opset, max_mem_frames)
            if fp16:
                _convert_to_fp16(path)
            onnx.checker.check_model(str(path), full_check=True)
            graphs[name] = _describe(path, name)
        manifest = {
            "format": "vosrt-onnx/1", "model": model_name, "vosrt_version": vosrt.__version__,
            "torch_version": torch.__version__, "onnx_version": onnx.__version__, "opset": opset,
            "precision": "fp16" if fp16 else "fp32", "top_k": topk.top_k if jointformer else top_k,
            "max_mem_frames": max_mem_frames,
            "architecture": jointformer_graphs.architecture(model) if jointformer else asdict(model.cfg),
            "checkpoint": {"path": str(Path(checkpoint).resolve()), "sha256": sha256(checkpoint)} if checkpoint else None,
            "graphs": graphs, "custom_ops": [QUALIFIED_NAME] if custom_ops else [],
        }
        if jointformer:
            manifest["topk"] = asdict(topk)
            manifest["initial_summary"] = INITIAL_SUMMARY
            np.save(staging / INITIAL_SUMMARY, model.initial_summary(1).detach().numpy())
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return output


def graph_family(model_name: str):
    """The module that describes a model's graphs (``SPECS``, ``example_inputs``, ``graph_modules``)."""
    return jointformer_graphs if model_name == JOINTFORMER else cutie_graphs


@contextlib.contextmanager
def staged_directory(output: Path) -> Iterator[Path]:
    """A new temporary sibling of ``output`` to write into: when the block completes it replaces
    ``output``; when it raises, it is removed and ``output`` is left as it was."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        yield staging
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _export_graph(module: torch.nn.Module, model: Cutie | JointFormer, family, name: str, path: Path, opset: int,
                  capacity: int) -> None:
    spec = family.SPECS[name]
    inputs = family.example_inputs(model, name, EXPORT_SIZE, num_objects=2, capacity=capacity)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic, expected here
        torch.onnx.export(module, inputs, str(path), input_names=list(spec.inputs), output_names=list(spec.outputs),
                          dynamic_axes=spec.dynamic, opset_version=opset, dynamo=False)


def _convert_to_fp16(path: Path) -> None:
    """fp16 weights and activations, fp32 graph inputs/outputs and fp32 for :data:`FP32_OPS`."""
    from onnxruntime.transformers import float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # notes on tiny weights rounded to the fp16 range
        model = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=FP32_OPS,
                                                 node_block_list=_similarity_nodes(model.graph))
    OnnxModel(model).topological_sort()  # the converter appends its input casts at the end
    onnx.save(model, str(path))


def _similarity_nodes(graph: onnx.GraphProto) -> list[str]:
    """The nodes that compute what TopK ranks (the query-memory similarity): in fp16 its
    ``-|m|^2 + 2 m.q - |q|^2`` terms cancel badly, so it stays in fp32."""
    producer = {out: node for node in graph.node for out in node.output}
    pending = [name for node in graph.node if node.op_type == "TopK" for name in node.input]
    found: set[str] = set()
    while pending:
        node = producer.get(pending.pop())
        if node is not None and node.name not in found:
            found.add(node.name)
            pending.extend(node.input)
    return sorted(found)


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
    missing = [n for n in graph_family(manifest.get("model")).SPECS if n not in manifest.get("graphs", {}) or
               not (Path(directory) / manifest["graphs"][n]["file"]).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} lacks the graph(s) {', '.join(missing)}; export it again")
    if manifest.get("model") not in (*CONFIGS, JOINTFORMER):
        raise ValueError(f"{directory} holds an unknown model {manifest.get('model')!r}")
    return manifest
