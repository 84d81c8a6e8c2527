"""TensorRT plugins for vosrt's custom ONNX ops (:mod:`vosrt.kernels.custom_ops`), backed by their Triton kernels.

**Unverified on hardware.** Written to TensorRT's Python plugin API (``tensorrt.plugin``,
TensorRT >= 10.9 for the ahead-of-time implementation) but never built into an engine nor
run: the machines it was written on have no GPU and no TensorRT. What is checked on CPU:
this module imports without tensorrt (and without importing triton), :func:`register` fails
with a clear message without it, the functions it registers have the signatures
``tensorrt.plugin`` validates, the ahead-of-time launch passes each kernel the grid and scalars
its Python launcher passes, and the PTX of :func:`compile_ptx` declares exactly the parameters
that launch passes.

Use, in an engine builder::

    from vosrt.kernels import trt_plugin

    trt_plugin.register()   # then parse the graph and build, or deserialise the engine

Each op has a :class:`PluginKernel` (the kernel variant to compile for the node's attributes,
its launch grid and scalars, and a Python launcher), and the same code registers every one of
them with two implementations: ahead-of-time (the PTX of :func:`compile_ptx`, baked into the
engine, which then runs without Python, e.g. under ``trtexec``) and a just-in-time Python
callback running the same kernel at the same configuration on TensorRT's stream (the engine
then needs this module registered at run time). The exported nodes' ``aot=1`` attribute asks
the ONNX parser for the former; a network built through the API chooses with
``NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS`` or ``PREFER_JIT_PYTHON_PLUGINS``.
The plugins take float32 inputs and bool masks, as the exported graphs feed them (fp16 graphs
keep the nodes in fp32), and run single-launch kernels at fixed configurations
(:data:`vosrt.kernels.triton.readout.FUSED_CONFIG`, the first config of each top-K bucket of
:func:`vosrt.kernels.triton.joint_attention.bucket_config`): an ahead-of-time plugin launches
one kernel, gets no scratch memory, and cannot autotune.

**The PTX.** TensorRT hands the PTX to the driver, which JIT-compiles it for the GPU: its
``.version`` must not be newer than the driver's CUDA version supports. :data:`PTX_VERSION`
pins it to ISA 8.4 (CUDA 12.4), which a 580-series driver (CUDA 13.0, PTX ISA up to 9.0) and
JetPack 6 (CUDA 12.6, up to 8.5) accept; without the pin Triton writes the newest ISA its own
ptxas knows (8.7 for Triton 3.6, newer for later releases). TensorRT launches an ahead-of-time
kernel with the input pointers, the ``SymInt32`` extra arguments and the output pointers, in
that order, and nothing else (``tensorrt.plugin`` has no pointer-typed extra argument); Triton
>= 3.3 appends hidden ``global_scratch`` and (>= 3.5) ``profile_scratch`` pointer parameters to
every kernel entry. :func:`compile_ptx` checks the compiled kernel needs neither (zero scratch
sizes, parameters never read) and removes them from the ``.entry`` declaration, so the entry
declares exactly what TensorRT passes.
"""
from __future__ import annotations

import functools
import inspect
import re
from dataclasses import dataclass
from typing import Any, Callable, Tuple

from .custom_ops import TOPK_JOINT_ATTENTION, TOPK_READOUT, CustomOp

PTX_VERSION = 84
SHARED_MEMORY_LIMIT = 48 * 1024  # a launch without the opt-in, which TensorRT's AOT launch is not known to make


@dataclass(frozen=True)
class PluginKernel:
    """How the plugin of ``op`` runs its Triton kernel. ``variant(**attributes)``: the
    :class:`vosrt.kernels.triton.variants.Variant` to compile for the node's attributes;
    ``launch(*inputs, **attributes)``: from the inputs' ``shape_expr`` (TensorRT shape
    expressions; ints work too), the grid ``(x, y)`` and the integer scalars in kernel argument
    order (the kernel's arguments are the input pointers, these scalars, then the output
    pointer); ``run(*tensors, **attributes)``: the same kernel and configuration launched from
    Python on CUDA tensors."""

    op: CustomOp
    variant: Callable[..., Any]
    launch: Callable[..., tuple[tuple, list]]
    run: Callable[..., Any]


def _contiguous_strides(shape) -> tuple:
    """Strides of a contiguous tensor of ``shape`` (ints or shape expressions)."""
    strides = [1]
    for size in reversed(shape[1:]):
        strides.insert(0, strides[0] * size)
    return tuple(strides)


def _readout_variant(*, top_k: int):
    from .triton.variants import readout_plugin_variant

    return readout_plugin_variant(top_k)


def _readout_launch(query_key, query_selection, memory_key, memory_shrinkage, memory_value, valid, *, top_k):
    """The single readout kernel's grid (HW blocks, B) and scalars for contiguous inputs."""
    from .triton.readout import fused_launch

    batch, ck, hw = query_key.shape_expr
    names = ("qk", "qe", "mk", "ms", "mv", "valid")
    inputs = (query_key, query_selection, memory_key, memory_shrinkage, memory_value, valid)
    strides = {name: _contiguous_strides(x.shape_expr) for name, x in zip(names, inputs)}
    strides["out"] = _contiguous_strides((batch, memory_value.shape_expr[1], hw))
    return fused_launch(hw, memory_key.shape_expr[2], ck, memory_value.shape_expr[1], top_k, batch, strides)


def _readout_run(*tensors, top_k):
    from .triton.readout import topk_readout_fused

    return topk_readout_fused(*tensors, top_k)


def _joint_variant(*, top_k: int, head_dim: int):
    from .triton.variants import joint_attention_plugin_variant

    return joint_attention_plugin_variant(top_k, head_dim)


def _joint_launch(q, k, v, ref_k, ref_v, ref_valid, *, top_k, head_dim):
    """The joint-attention kernel's grid (N blocks, B * Hd) and scalars for contiguous inputs."""
    from .triton import joint_attention

    batch, heads, n, _ = q.shape_expr
    names = ("q", "k", "v", "ref_k", "ref_v", "ref_valid")
    strides = {name: _contiguous_strides(x.shape_expr) for name, x in zip(names, (q, k, v, ref_k, ref_v, ref_valid))}
    strides["out"] = strides["q"]
    block_q = joint_attention.plugin_config(top_k).block_q
    return joint_attention.launch(n, ref_k.shape_expr[2], heads, top_k, batch, block_q, strides)


def _joint_run(*tensors, top_k, head_dim):
    from .triton import joint_attention

    return joint_attention.topk_joint_attention_triton(*tensors, top_k, config=joint_attention.plugin_config(top_k))


KERNELS = {plugin.op.qualified_name: plugin for plugin in (
    PluginKernel(TOPK_READOUT, _readout_variant, _readout_launch, _readout_run),
    PluginKernel(TOPK_JOINT_ATTENTION, _joint_variant, _joint_launch, _joint_run),
)}


def compile_ptx(op_name: str, attributes: dict[str, int], target=None) -> Tuple[str, str, int, int]:
    """Compile the kernel of ``op_name`` (a qualified name of :data:`KERNELS`) for the node
    ``attributes`` ahead of time (:func:`compile_variant`).

    ``target``: a ``triton.backends.compiler.GPUTarget``; None takes the current GPU. Returns
    (kernel name, PTX, threads per block, dynamic shared memory bytes). Raises RuntimeError when
    the kernel needs more than :data:`SHARED_MEMORY_LIMIT` of shared memory.
    """
    compiled, ptx = compile_variant(KERNELS[op_name].variant(**attributes), target)
    metadata = compiled.metadata
    if metadata.shared > SHARED_MEMORY_LIMIT:
        raise RuntimeError(f"the compiled {op_name} kernel needs {metadata.shared} B of shared memory, "
                           f"over the {SHARED_MEMORY_LIMIT} B a launch gets without an opt-in")
    return metadata.name, ptx, metadata.num_warps * 32, metadata.shared


def compile_variant(variant, target=None):
    """Compile a :class:`vosrt.kernels.triton.variants.Variant` for a plugin: PTX ISA
    :data:`PTX_VERSION`, checked to need no Triton scratch memory. Returns (the compiled kernel,
    its PTX with the entry's parameters cut to the launch's: the inputs, scalars and output)."""
    import triton

    compiled = triton.compile(variant.source(), target=target, options=dict(variant.options(), ptx_version=PTX_VERSION))
    metadata = compiled.metadata
    if getattr(metadata, "global_scratch_size", 0) or getattr(metadata, "profile_scratch_size", 0):
        raise RuntimeError(f"{variant.name} needs Triton scratch memory, which TensorRT does not pass")
    launched = len([a for a in variant.kernel.arg_names if a not in variant.constants])
    return compiled, drop_unused_parameters(compiled.asm["ptx"], metadata.name, launched)


def entry_parameters(ptx: str, name: str) -> list[tuple[str, str]]:
    """The ``.entry name`` parameters of ``ptx``: (declaration without the name, name) in order."""
    entry = re.search(rf"\.entry\s+{re.escape(name)}\s*\((.*?)\)", ptx, re.S)
    if entry is None:
        raise ValueError(f"no .entry {name} in the PTX")
    declarations = [d.strip() for d in entry.group(1).split(",") if d.strip()]
    return [tuple(d.rsplit(None, 1)) for d in declarations]


def drop_unused_parameters(ptx: str, name: str, keep: int) -> str:
    """``ptx`` with the ``.entry name`` parameters after the first ``keep`` removed from its
    declaration. Raises ValueError if the kernel body reads one of them."""
    entry = re.search(rf"(\.entry\s+{re.escape(name)}\s*\()(.*?)(\))", ptx, re.S)
    parameters = entry_parameters(ptx, name)
    for _, parameter in parameters[keep:]:
        if len(re.findall(rf"\b{re.escape(parameter)}\b", ptx)) > 1:
            raise ValueError(f"{name} reads its parameter {parameter}, which TensorRT's launch does not pass")
    kept = ",\n".join(f"\t{declaration} {parameter}" for declaration, parameter in parameters[:keep])
    return ptx[:entry.start(2)] + "\n" + kept + "\n" + ptx[entry.end(2):]


def _signature(op: CustomOp, tensor_type, extra: dict[str, Any], returns) -> inspect.Signature:
    """``(<inputs>: tensor_type, <attributes>: int, <extra>) -> returns``: the schema ``tensorrt.plugin``
    reads from a registered function."""
    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
    names = {**dict.fromkeys(op.inputs, tensor_type), **dict.fromkeys(op.attributes, int), **extra}
    return inspect.Signature([inspect.Parameter(n, keyword, annotation=t) for n, t in names.items()],
                             return_annotation=returns)


def _with_signature(op: CustomOp, signature: inspect.Signature, body: Callable) -> Callable:
    """A function of ``signature`` that calls ``body(inputs, attributes, **extra)``."""

    def function(*args, **kwargs):
        arguments = signature.bind(*args, **kwargs).arguments
        inputs = [arguments.pop(n) for n in op.inputs]
        attributes = {n: arguments.pop(n) for n in op.attributes}
        return body(inputs, attributes, **arguments)

    function.__signature__ = signature
    function.__name__ = f"{op.op_type}_plugin"
    return function


def plugin_functions(trt, trtp, plugin: PluginKernel) -> dict[str, Callable]:
    """The plugin's ``describe`` (output descriptor), ``run`` (JIT) and ``compile_for_engine``
    (AOT) functions, with the signatures ``tensorrt.plugin.register / impl / aot_impl`` expect."""
    op = plugin.op

    def describe(inputs, attributes):
        return trtp.from_shape_expr(tuple(op.output_sizes([t.shape_expr for t in inputs])), dtype=trt.float32)

    def run(inputs, attributes, outputs, stream):
        import torch

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            tensors = [torch.as_tensor(t, device="cuda") for t in inputs]
            torch.as_tensor(outputs[0], device="cuda").copy_(plugin.run(*tensors, **attributes))

    def compile_for_engine(inputs, attributes, outputs, tactic):
        name, ptx, threads, shared = compile_ptx(op.qualified_name, attributes)
        (grid_x, grid_y), scalars = plugin.launch(*inputs, **attributes)
        launch = trtp.KernelLaunchParams()
        launch.grid_x, launch.grid_y = grid_x, grid_y
        launch.block_x = threads
        launch.shared_mem = shared
        return name.encode(), ptx.encode(), launch, trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in scalars])

    signatures = {
        "describe": _signature(op, trtp.TensorDesc, {}, trtp.TensorDesc),
        "run": _signature(op, trtp.Tensor, {"outputs": Tuple[trtp.Tensor], "stream": int}, None),
        "compile_for_engine": _signature(op, trtp.TensorDesc, {"outputs": Tuple[trtp.TensorDesc], "tactic": int},
                                         Tuple[bytes, bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]),
    }
    bodies = {"describe": describe, "run": run, "compile_for_engine": compile_for_engine}
    return {name: _with_signature(op, signatures[name], bodies[name]) for name in bodies}


def _define(trt, trtp, plugin: PluginKernel) -> None:
    """Register one plugin's description and its two implementations with ``tensorrt.plugin``."""
    functions = plugin_functions(trt, trtp, plugin)
    name = plugin.op.qualified_name
    trtp.register(name)(functions["describe"])
    trtp.impl(name)(functions["run"])
    trtp.aot_impl(name)(functions["compile_for_engine"])


@functools.cache
def register() -> None:
    """Register every op of :data:`KERNELS` with TensorRT (once per process). Raises RuntimeError
    when tensorrt, or its ahead-of-time Python plugin API (TensorRT >= 10.9), is missing."""
    try:
        import tensorrt as trt
        import tensorrt.plugin as trtp
    except ImportError as exc:
        raise RuntimeError("vosrt's TensorRT plugins need TensorRT >= 10.9 with its Python plugin API "
                           "(pip install 'vosrt[gpu]' on a machine with an NVIDIA GPU)") from exc
    if not hasattr(trtp, "aot_impl"):
        raise RuntimeError(f"TensorRT {trt.__version__} has no ahead-of-time Python plugins; "
                           "vosrt's plugins need TensorRT >= 10.9")
    for plugin in KERNELS.values():
        _define(trt, trtp, plugin)
