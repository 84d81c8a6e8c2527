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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx
import torch

import vosrt
from vosrt.kernels.custom_ops import DOMAIN, OPS, topk_joint_attention_op, topk_readout_op
from vosrt.kernels import topk_readout_gather
from vosrt.models.cutie import CONFIGS, Cutie
from vosrt.models.jointformer import MODEL_NAME as JOINTFORMER
from vosrt.models.jointformer import JointFormer, TopKConfig

from . import cutie_graphs, jointformer_graphs
from .cutie_graphs import graph_modules

MANIFEST = "manifest.json"
# Ops kept in fp32 in fp16 graphs, as the official code keeps them out of autocast:
# the similarity / top-k / softmax path and the normalisations that would overflow.
FP32_OPS = ["TopK", "Softmax", "ScatterElements", "ReduceSum", "ReduceMean", "Exp", "Log", "Pow",
            "LayerNormalization", "Sigmoid", "Tanh", "Sqrt", "Div", "Range", "Sin", "Cos",
            *(op.op_type for op in OPS.values())]
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

    ``custom_ops``: Cutie's top-k readout becomes one ``vosrt::TopKReadout`` node, and each
    top-K filtered joint block of JointFormer one ``vosrt::TopKJointAttention`` node (see
    :mod:`vosrt.kernels.custom_ops`), instead of standard ops; the manifest's ``custom_ops``
    lists the custom ops the graphs hold, which a loader must register. ``fp16``: fp16
    weights and activations, with the ops of :data:`FP32_OPS` and the score paths of
    :data:`FP16_POLICIES` kept in fp32. ``topk`` (JointFormer): the top-K options (default:
    the official ones with ``top_k``); ``max_mem_frames`` there is only the cache size of the
    example inputs (the reference token axis is dynamic).
    """
    output = Path(output)
    jointformer = isinstance(model, JointFormer)
    topk = topk or TopKConfig(top_k)
    if jointformer:
        _check_jointformer_options(topk, custom_ops)
    family = graph_family(model_name)
    with staged_directory(output) as staging:
        graphs, used_ops = {}, set()
        for name, module in _graph_modules(model, top_k, topk, custom_ops).items():
            progress(f"exporting {name} ({'fp16' if fp16 else 'fp32'}, opset {opset})")
            path = staging / f"{name}.onnx"
            _export_graph(module, model, family, name, path, opset, max_mem_frames)
            graphs[name], graph_ops = _finish_graph(path, FP16_POLICIES[family] if fp16 else None)
            used_ops |= graph_ops
        manifest = {
            "format": "vosrt-onnx/1", "model": model_name, "vosrt_version": vosrt.__version__,
            "torch_version": torch.__version__, "onnx_version": onnx.__version__, "opset": opset,
            "precision": "fp16" if fp16 else "fp32", "top_k": topk.top_k if jointformer else top_k,
            "max_mem_frames": max_mem_frames,
            "architecture": jointformer_graphs.architecture(model) if jointformer else asdict(model.cfg),
            "checkpoint": {"path": str(Path(checkpoint).resolve()), "sha256": sha256(checkpoint)} if checkpoint else None,
            "graphs": graphs, "custom_ops": sorted(used_ops),
        }
        if jointformer:
            manifest["topk"] = asdict(topk)
            manifest["initial_summary"] = INITIAL_SUMMARY
            np.save(staging / INITIAL_SUMMARY, model.initial_summary(1).detach().numpy())
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return output


def _check_jointformer_options(topk: TopKConfig, custom_ops: bool) -> None:
    """ValueError for top-K options the JointFormer export does not handle."""
    if topk.topk_range != "all_frames":
        raise ValueError("JointFormer exports with topk_range='all_frames' only in this version")
    if custom_ops and not topk.filtered_blocks():
        raise ValueError("--custom-ops makes each top-K filtered joint block one node, and topk_block='None' "
                         "filters none: export without --custom-ops")


def _graph_modules(model: Cutie | JointFormer, top_k: int, topk: TopKConfig, custom_ops: bool
                   ) -> dict[str, torch.nn.Module]:
    """The graphs to export, with the custom-op or the standard-op top-K."""
    if isinstance(model, JointFormer):
        return jointformer_graphs.graph_modules(model, topk, topk_joint_attention_op if custom_ops else None)
    return graph_modules(model.eval(), top_k, topk_readout_op if custom_ops else topk_readout_gather)


def _finish_graph(path: Path, fp16_policy: Fp16Policy | None) -> tuple[dict, set[str]]:
    """Convert the exported graph at ``path`` to fp16 (with a policy) and check it; returns its
    manifest entry and the qualified names of the custom ops it holds."""
    if fp16_policy is not None:
        _convert_to_fp16(path, fp16_policy)
    onnx.checker.check_model(str(path), full_check=True)
    graph = onnx.load(str(path), load_external_data=False).graph
    return _describe(path, graph), {f"{DOMAIN}::{n.op_type}" for n in graph.node if n.domain == DOMAIN}


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


@dataclass(frozen=True)
class Fp16Policy:
    """What an fp16 graph keeps in fp32 besides :data:`FP32_OPS`: the nodes that compute the
    inputs of every ``roots`` node (the scores that TopK ranks and Softmax normalises), walking
    up the graph; ``stop_at`` ops (the layers with weights, and Shape, whose output does not
    depend on the values) end the walk: they stay fp32, the nodes computing their inputs do not."""

    roots: tuple[str, ...]
    stop_at: tuple[str, ...] = ()


FP16_POLICIES = {  # per graph family
    # Cutie: the whole query-memory similarity; its -|m|^2 + 2 m.q - |q|^2 terms cancel badly in fp16.
    cutie_graphs: Fp16Policy(roots=("TopK",)),
    # JointFormer: every attention's scores from their q.k MatMul on (the top-K and the softmax over
    # [current-frame ; kept reference] scores), and the soft aggregation from the decoder's last
    # conv on; q, k and the layers before them run in fp16.
    jointformer_graphs: Fp16Policy(roots=("TopK", "Softmax"), stop_at=("MatMul", "Gemm", "Conv", "Shape")),
}


def _convert_to_fp16(path: Path, policy: Fp16Policy) -> None:
    """fp16 weights and activations, fp32 graph inputs/outputs, fp32 for :data:`FP32_OPS` and
    for the score nodes of ``policy``."""
    from onnxruntime.transformers import float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # notes on tiny weights rounded to the fp16 range
        model = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=FP32_OPS,
                                                 node_block_list=_score_nodes(model.graph, policy))
    OnnxModel(model).topological_sort()  # the converter appends its input casts at the end
    onnx.save(model, str(path))


def _score_nodes(graph: onnx.GraphProto, policy: Fp16Policy) -> list[str]:
    """Names of the nodes that compute the inputs of ``policy.roots`` nodes, up to ``policy.stop_at`` ops."""
    producer = {out: node for node in graph.node for out in node.output}
    pending = [name for node in graph.node if node.op_type in policy.roots for name in node.input]
    found: set[str] = set()
    while pending:
        node = producer.get(pending.pop())
        if node is not None and node.name not in found:
            found.add(node.name)
            if node.op_type not in policy.stop_at:
                pending.extend(node.input)
    return sorted(found)


def _describe(path: Path, graph: onnx.GraphProto) -> dict:
    """The manifest entry of the graph saved at ``path``."""
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
