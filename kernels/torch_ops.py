"""vosrt's top-K attentions as torch library ops, for ``torch.compile`` and AOTInductor packages.

Two ops, made with :func:`torch.library.triton_op`:

* ``vosrt::topk_readout(query_key, query_selection, memory_key, memory_shrinkage, memory_value,
  valid, top_k) -> [B, V, HW]`` float32 (Cutie; shapes as in :mod:`vosrt.kernels.readout`);
* ``vosrt::topk_joint_attention(q, k, v, ref_k, ref_v, ref_valid, top_k) -> [B, Hd, N, D]`` in
  ``q``'s dtype (JointFormer, ``topk_range='all_frames'``; as in :mod:`vosrt.kernels.joint_attention`).

On CUDA an op launches the single-program Triton kernel (the TensorRT plugin's, at its fixed
tile configuration: a compiled graph cannot autotune) through :func:`torch.library.wrap_triton`;
on any other device it computes the torch formulation the ONNX exports use. ``torch.compile``
and AOTInductor trace the op's body (``torch._functorch.config.decompose_custom_triton_ops``, on
by default): on the CPU the torch formulation becomes part of the compiled graph, on CUDA the
Triton kernel is compiled into it (into the ``.pt2`` package for AOTInductor). A package
therefore needs nothing of vosrt to run; the runtime still imports this module before loading
one, so a package exported with the decomposition off (the op kept as one node, run through
the dispatcher) loads too.

Importing this module imports torch, not triton (the CUDA path imports the kernels when traced
or run on a GPU).
"""
from __future__ import annotations

import torch
from torch.library import triton_op, wrap_triton

from .joint_attention import topk_joint_attention_reference
from .readout import topk_readout_gather


@triton_op("vosrt::topk_readout", mutates_args=())
def topk_readout(query_key: torch.Tensor, query_selection: torch.Tensor, memory_key: torch.Tensor,
                 memory_shrinkage: torch.Tensor, memory_value: torch.Tensor, valid: torch.Tensor,
                 top_k: int) -> torch.Tensor:
    """Cutie's top-K readout ``[B, V, HW]`` float32 (see the module docstring)."""
    if query_key.device.type != "cuda":
        return topk_readout_gather(query_key, query_selection, memory_key, memory_shrinkage, memory_value, valid,
                                   top_k).float()
    from .triton import readout as kernel

    tensors = [t.float().contiguous() for t in (query_key, query_selection, memory_key, memory_shrinkage,
                                                memory_value)]
    batch, ck, hw = query_key.shape
    out = torch.empty(batch, memory_value.shape[1], hw, device=query_key.device, dtype=torch.float32)
    strides = {name: t.stride() for name, t in zip(("qk", "qe", "mk", "ms", "mv", "valid", "out"),
                                                   (*tensors, valid, out))}
    grid, scalars = kernel.fused_launch(hw, memory_key.shape[2], ck, memory_value.shape[1], top_k, batch, strides)
    config = kernel.FUSED_CONFIG
    wrap_triton(kernel._readout_kernel)[grid](*tensors, valid, *scalars, out, **kernel.fused_constants(top_k, ck),
                                              num_warps=config.num_warps, num_stages=config.num_stages)
    return out


@triton_op("vosrt::topk_joint_attention", mutates_args=())
def topk_joint_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ref_k: torch.Tensor, ref_v: torch.Tensor,
                         ref_valid: torch.Tensor, top_k: int) -> torch.Tensor:
    """JointFormer's top-K joint attention ``[B, Hd, N, D]`` (see the module docstring)."""
    if q.device.type != "cuda":
        return topk_joint_attention_reference(q, k, v, ref_k, ref_v, ref_valid, top_k)
    from .triton import joint_attention as kernel

    dtype = torch.float16 if all(t.dtype == torch.float16 for t in (q, k, v, ref_k, ref_v)) else torch.float32
    tensors = dict(q=q.to(dtype), k=k.to(dtype), v=v.to(dtype), ref_k=ref_k.to(dtype), ref_v=ref_v.to(dtype),
                   ref_valid=ref_valid)
    tensors["out"] = torch.empty_like(tensors["q"])
    batch, heads, n, d = q.shape
    config = kernel.plugin_config(top_k)
    grid, scalars = kernel.launch(n, ref_k.shape[2], heads, top_k, batch, config.block_q,
                                  {name: t.stride() for name, t in tensors.items()})
    wrap_triton(kernel._topk_joint_attention_kernel)[grid](
        *(tensors[name] for name in ("q", "k", "v", "ref_k", "ref_v", "ref_valid")), *scalars, tensors["out"],
        **kernel.kernel_constants(top_k, d, dtype, config), num_warps=config.num_warps, num_stages=config.num_stages)
    return tensors["out"].to(q.dtype)


def joint_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ref_k: torch.Tensor, ref_v: torch.Tensor,
                    ref_valid: torch.Tensor | None, top_k: int, frame_tokens: int | None = None) -> torch.Tensor:
    """:func:`topk_joint_attention` with the arguments of the model's attention hook (``frame_tokens``
    must be None: the op keeps the top-K over all reference frames)."""
    if frame_tokens is not None:
        raise ValueError("the compiled joint attention keeps the top-K over all reference frames "
                         "(topk_range='all_frames'); 'every_frame' runs eagerly only")
    if ref_valid is None:
        ref_valid = torch.ones(q.shape[0], ref_k.shape[2], dtype=torch.bool, device=q.device)
    return topk_joint_attention(q, k, v, ref_k, ref_v, ref_valid, top_k)
