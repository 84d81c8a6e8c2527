"""fp16 graphs: fp16 weights and activations, with fp32 where the official code keeps fp32."""
from __future__ import annotations

import warnings
from pathlib import Path

import onnx

from vosrt.kernels.custom_ops import OPS
from vosrt.runtime.family import Fp16Policy

# Ops every fp16 graph keeps in fp32, as the official code keeps them out of autocast:
# the similarity / top-k / softmax path and the normalisations that would overflow.
FP32_OPS = ["TopK", "Softmax", "ScatterElements", "ReduceSum", "ReduceMean", "Exp", "Log", "Pow",
            "LayerNormalization", "Sigmoid", "Tanh", "Sqrt", "Div", "Range", "Sin", "Cos",
            *(op.op_type for op in OPS.values())]


def convert_to_fp16(path: Path, policy: Fp16Policy) -> None:
    """Rewrite the graph at ``path`` in fp16 (fp32 graph inputs and outputs), keeping
    :data:`FP32_OPS` and the score nodes of ``policy`` in fp32."""
    from onnxruntime.transformers import float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # notes on tiny weights rounded to the fp16 range
        model = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=FP32_OPS,
                                                 node_block_list=score_nodes(model.graph, policy))
    OnnxModel(model).topological_sort()  # the converter appends its input casts at the end
    onnx.save(model, str(path))


def score_nodes(graph: onnx.GraphProto, policy: Fp16Policy) -> list[str]:
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
