"""The top-K readout as one custom ONNX node, ``vosrt::TopKReadout``.

:func:`topk_readout_op` computes :func:`~vosrt.kernels.topk_readout.topk_readout` eagerly;
traced by ``torch.onnx.export(..., dynamo=False)`` it becomes a single node instead of the
standard-op decomposition (MatMul, TopK, Softmax, ScatterElements, MatMul)::

    readout = vosrt::TopKReadout(query_key, query_selection, memory_key, memory_shrinkage,
                                 memory_value, valid, top_k=<int>)

with the shapes of :mod:`vosrt.kernels.topk_readout`: float32 ``[B, Ck, HW]``,
``[B, Ck, HW]``, ``[B, Ck, N]``, ``[B, 1, N]``, ``[B, V, N]``, bool ``[B, N]`` in, float32
``[B, V, HW]`` out. The node says what to compute, not how: each backend registers its
implementation before loading a graph that has it (ONNX Runtime:
:mod:`vosrt.runtime.onnxruntime_custom_ops`; TensorRT: :mod:`vosrt.kernels.trt_plugin`).
It also carries the attributes by which TensorRT's ONNX parser maps a node to a Python
plugin: ``plugin_namespace="vosrt"`` and ``aot=1`` (use the ahead-of-time implementation);
ONNX Runtime ignores them.
"""
from __future__ import annotations

import torch

from .topk_readout import topk_readout

DOMAIN = "vosrt"
OP_TYPE = "TopKReadout"
QUALIFIED_NAME = f"{DOMAIN}::{OP_TYPE}"


class _TopKReadout(torch.autograd.Function):
    """Eager: :func:`topk_readout`. ONNX (TorchScript exporter): one ``vosrt::TopKReadout`` node."""

    @staticmethod
    def forward(ctx, *inputs):
        return topk_readout(*inputs)

    @staticmethod
    def symbolic(g, query_key, query_selection, memory_key, memory_shrinkage, memory_value, valid, top_k):
        readout = g.op(QUALIFIED_NAME, query_key, query_selection, memory_key, memory_shrinkage, memory_value, valid,
                       top_k_i=top_k, plugin_namespace_s=DOMAIN, aot_i=1)
        # ONNX shape inference knows nothing of the node: declare [B, V, HW] float32 here.
        batch, _, queries = query_key.type().varyingSizes()
        values = memory_value.type().varyingSizes()[1]
        readout.setType(query_key.type().with_dtype(torch.float32).with_sizes([batch, values, queries]))
        return readout


def topk_readout_op(*inputs: torch.Tensor | int) -> torch.Tensor:
    """:func:`topk_readout` (same arguments: the six tensors, then ``top_k``; returns ``[B, V, HW]``
    float32) that exports as one ``vosrt::TopKReadout`` node."""
    return _TopKReadout.apply(*inputs)
