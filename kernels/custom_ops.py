"""vosrt's custom ONNX ops: one description per op, and the machinery that exports it as one node.

Each :class:`CustomOp` says what a node is: its name in the ``vosrt`` domain, its tensor
inputs (float32, or bool where marked), its integer attributes, the output shape, and the
torch function it computes. :func:`exporting` turns a description into a function that
computes the op eagerly and, traced by ``torch.onnx.export(..., dynamo=False)``, becomes a
single node instead of the standard-op decomposition::

    out = vosrt::<op_type>(*inputs, <attribute>=<int>, ...)

The node says what to compute, not how: each backend registers its implementation of every
op in :data:`OPS` before loading a graph that has it (ONNX Runtime:
:mod:`vosrt.runtime.backends.onnxruntime_custom_ops`; TensorRT: :mod:`vosrt.kernels.trt_plugin`).
Nodes also carry the attributes by which TensorRT's ONNX parser maps a node to a Python
plugin: ``plugin_namespace="vosrt"`` and ``aot=1`` (use the ahead-of-time implementation);
ONNX Runtime ignores them.

The ops:

* ``vosrt::TopKReadout`` (Cutie's memory readout, attribute ``top_k``):
  :func:`~vosrt.kernels.readout.topk_readout` of float32 ``[B, Ck, HW]``, ``[B, Ck, HW]``,
  ``[B, Ck, N]``, ``[B, 1, N]``, ``[B, V, N]`` and bool ``[B, N]`` -> float32 ``[B, V, HW]``.
* ``vosrt::TopKJointAttention`` (JointFormer's joint attention with the top-K reference filter
  over all reference frames, attributes ``top_k`` and ``head_dim``):
  :func:`~vosrt.kernels.joint_attention.topk_joint_attention` of float32 q, k, v
  ``[B, Hd, N, D]``, ref_k, ref_v ``[B, Hd, M, D]`` and bool ref_valid ``[B, M]`` -> float32
  ``[B, Hd, N, D]``. ``head_dim`` (= D) is redundant with the shapes; it is there so that a
  TensorRT plugin can compile its kernel, whose D is a compile-time constant, before shapes are known.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .joint_attention import topk_joint_attention, topk_joint_attention_reference
from .readout import topk_readout, topk_readout_reference

DOMAIN = "vosrt"


@dataclass(frozen=True)
class CustomOp:
    """One custom op. ``reference(*tensors, **attributes)`` is the plain-torch definition (what
    ONNX Runtime runs); ``eager`` the same with the Triton kernel on CUDA (what the exporting
    function computes); ``output_sizes(input_sizes)`` the output's sizes from the inputs'
    (entries may be None: dynamic). The output is float32."""

    op_type: str
    inputs: tuple[str, ...]
    bool_inputs: frozenset[str]
    attributes: tuple[str, ...]
    reference: Callable[..., torch.Tensor]
    eager: Callable[..., torch.Tensor]
    output_sizes: Callable[[Sequence[list]], list]

    @property
    def qualified_name(self) -> str:
        return f"{DOMAIN}::{self.op_type}"


def _joint_reference(q, k, v, ref_k, ref_v, ref_valid, *, top_k: int, head_dim: int) -> torch.Tensor:
    if q.shape[-1] != head_dim:
        raise ValueError(f"vosrt::TopKJointAttention: head_dim={head_dim} but q has {q.shape[-1]} channels per head")
    return topk_joint_attention_reference(q, k, v, ref_k, ref_v, ref_valid, top_k)


def _joint_eager(q, k, v, ref_k, ref_v, ref_valid, top_k: int, head_dim: int) -> torch.Tensor:
    return topk_joint_attention(q, k, v, ref_k, ref_v, ref_valid, top_k).float()


TOPK_READOUT = CustomOp(
    "TopKReadout", ("query_key", "query_selection", "memory_key", "memory_shrinkage", "memory_value", "valid"),
    frozenset({"valid"}), ("top_k",),
    reference=lambda *tensors, top_k: topk_readout_reference(*tensors, top_k), eager=topk_readout,
    output_sizes=lambda sizes: [sizes[0][0], sizes[4][1], sizes[0][2]])
TOPK_JOINT_ATTENTION = CustomOp(
    "TopKJointAttention", ("q", "k", "v", "ref_k", "ref_v", "ref_valid"), frozenset({"ref_valid"}),
    ("top_k", "head_dim"), reference=_joint_reference, eager=_joint_eager, output_sizes=lambda sizes: list(sizes[0]))
OPS = {op.qualified_name: op for op in (TOPK_READOUT, TOPK_JOINT_ATTENTION)}


def exporting(op: CustomOp) -> Callable[..., torch.Tensor]:
    """``fn(*tensors, *attributes)`` (in ``op``'s order) that computes ``op.eager`` and exports
    as one ``op`` node."""

    def symbolic(g, *args):
        tensors, attributes = args[:len(op.inputs)], args[len(op.inputs):]
        named = {f"{name}_i": value for name, value in zip(op.attributes, attributes)}
        out = g.op(op.qualified_name, *tensors, **named, plugin_namespace_s=DOMAIN, aot_i=1)
        # ONNX shape inference knows nothing of the node: declare its float32 output here.
        sizes = op.output_sizes([t.type().varyingSizes() for t in tensors])
        out.setType(tensors[0].type().with_dtype(torch.float32).with_sizes(sizes))
        return out

    function = type(f"_{op.op_type}", (torch.autograd.Function,), {
        "forward": staticmethod(lambda ctx, *args: op.eager(*args)), "symbolic": staticmethod(symbolic)})
    return function.apply


topk_readout_op = exporting(TOPK_READOUT)
_joint_attention_op = exporting(TOPK_JOINT_ATTENTION)


def topk_joint_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ref_k: torch.Tensor,
                            ref_v: torch.Tensor, ref_valid: torch.Tensor, top_k: int,
                            frame_tokens: int | None = None) -> torch.Tensor:
    """:func:`~vosrt.kernels.joint_attention.topk_joint_attention` (same arguments, ``[B, Hd,
    N, D]`` float32 out) that exports as one ``vosrt::TopKJointAttention`` node; the top-K runs
    over all reference frames (``frame_tokens`` None: the official ``topk_range='all_frames'``)."""
    if frame_tokens is not None:
        raise ValueError("vosrt::TopKJointAttention keeps the top-K over all reference frames "
                         "(topk_range='all_frames'); 'every_frame' has no custom op")
    if ref_valid is None:
        raise ValueError("vosrt::TopKJointAttention takes ref_valid (bool [B, M]); pass an all-True mask")
    return _joint_attention_op(q, k, v, ref_k, ref_v, ref_valid, top_k, int(q.shape[-1]))  # D: static in a graph
