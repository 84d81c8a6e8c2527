"""TensorRT plugins for vosrt's custom ONNX ops (:mod:`vosrt.kernels.custom_ops`), backed by their Triton kernels.

**Unverified on hardware.** Written to TensorRT's Python plugin API (``tensorrt.plugin``,
TensorRT >= 10.9 for the ahead-of-time implementation) but never built into an engine nor
run: the machines it was written on have no GPU and no TensorRT. What is checked on CPU:
this module imports without tensorrt, :func:`register` fails with a clear message without
it, the functions it registers have the signatures ``tensorrt.plugin`` validates, the
ahead-of-time launch passes each kernel the grid and scalars its Python launcher passes, and
:func:`compile_ptx` compiles each kernel to PTX for a given GPU target.

Use, in an engine builder::

    from vosrt.kernels import trt_plugin

    trt_plugin.register()   # then parse the graph and build, or deserialise the engine

Each op has a :class:`PluginKernel` (its kernel, compile-time constants, launch grid and
scalars, Python launcher), and the same code registers every one of them with two
implementations: ahead-of-time (the PTX of :func:`compile_ptx`, baked into the engine, which
then runs without Python, e.g. under ``trtexec``) and a just-in-time Python callback running
the Triton launcher on TensorRT's stream (the engine then needs this module registered at
run time). The exported nodes' ``aot=1`` attribute asks the ONNX parser for the former; a
network built through the API chooses with ``NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS``
or ``PREFER_JIT_PYTHON_PLUGINS``. The plugins take float32 inputs and bool masks, as the
exported graphs feed them (fp16 graphs keep the nodes in fp32).

Triton >= 3.3 kernels end with two hidden pointer parameters (global and profile scratch);
:func:`compile_ptx` checks that a kernel uses neither, but whether TensorRT's launch
tolerates their presence is untested.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Tuple

from . import joint_attention, readout
from .custom_ops import TOPK_JOINT_ATTENTION, TOPK_READOUT, CustomOp

NUM_WARPS = 4
# Block sizes of the engines' kernels. The readout's are topk_readout_triton's GPU defaults. The
# joint attention's BLOCK_M is 32, not its launcher's 64: for top_k <= 32 the kernel then takes
# 38 KiB of shared memory (72 KiB with 64, compiled for sm_90), under the 48 KiB a launch gets
# without an opt-in that TensorRT's ahead-of-time launch is not known to make. Larger top_k
# (e.g. the official 60..180) needs more.
READOUT_BLOCKS = dict(BLOCK_Q=16, BLOCK_N=64, BLOCK_V=8)
JOINT_BLOCKS = dict(BLOCK_Q=16, BLOCK_M=32)


@dataclass(frozen=True)
class PluginKernel:
    """How the plugin of ``op`` runs its Triton kernel. ``kernel()``: the jitted kernel;
    ``constants(**attributes)``: its compile-time constants; ``launch(*inputs, **attributes)``:
    from the inputs' ``shape_expr`` (TensorRT shape expressions; ints work too), the grid
    ``(x, y)`` and the integer scalars in kernel argument order (the kernel's arguments are
    the input pointers, these scalars, then the output pointer); ``run(*tensors, **attributes)``:
    the Python launcher on CUDA tensors. Pointers named in ``bool_pointers`` are bool, the
    others float32."""

    op: CustomOp
    kernel: Callable[[], Any]
    constants: Callable[..., dict[str, int]]
    launch: Callable[..., tuple[tuple, list]]
    run: Callable[..., Any]
    bool_pointers: tuple[str, ...] = ("valid_ptr",)
    num_warps: int = NUM_WARPS


def _cdiv(size, block: int):
    return (size + (block - 1)) // block


def _readout_launch(query_key, query_selection, memory_key, memory_shrinkage, memory_value, valid, *, top_k):
    """``topk_readout_triton``'s launch for contiguous inputs: grid (HW blocks, B); scalars
    ``HW, N, Ck, V, top_k`` and the strides of the inputs and the output."""
    batch, ck, hw = query_key.shape_expr
    n, v = memory_key.shape_expr[2], memory_value.shape_expr[1]
    strides = [ck * hw, hw, 1, ck * hw, hw, 1, ck * n, n, 1,
               n, 1,  # memory_shrinkage [B, 1, N]: batch and slot strides
               v * n, n, 1, n, 1, v * hw, hw, 1]
    return (_cdiv(hw, READOUT_BLOCKS["BLOCK_Q"]), batch), [hw, n, ck, v, top_k, *strides]


def _joint_launch(q, k, v, ref_k, ref_v, ref_valid, *, top_k, head_dim):
    """``topk_joint_attention_triton``'s launch for contiguous inputs: grid (N blocks, B * Hd);
    scalars ``N, M, Hd, top_k`` and the strides of the ``[B * Hd, tokens, D]`` views, the
    ``[B, M]`` mask and the output."""
    batch, heads, n, d = q.shape_expr
    m = ref_k.shape_expr[2]
    strides = [n * d, d, n * d, d, n * d, d, m * d, d, m * d, d, m, 1, n * d, d]
    return (_cdiv(n, JOINT_BLOCKS["BLOCK_Q"]), batch * heads), [n, m, heads, top_k, *strides]


KERNELS = {plugin.op.qualified_name: plugin for plugin in (
    PluginKernel(TOPK_READOUT, readout._jit_device_code,
                 lambda top_k: readout.kernel_constants(top_k, **READOUT_BLOCKS), _readout_launch,
                 lambda *tensors, top_k: readout.topk_readout_triton(*tensors, top_k, **READOUT_BLOCKS)),
    PluginKernel(TOPK_JOINT_ATTENTION, joint_attention._jit_kernel,
                 lambda top_k, head_dim: joint_attention.kernel_constants(top_k, head_dim, **JOINT_BLOCKS),
                 _joint_launch,
                 lambda *tensors, top_k, head_dim: joint_attention.topk_joint_attention_triton(
                     *tensors, top_k, **JOINT_BLOCKS)),
)}


def compile_ptx(op_name: str, attributes: dict[str, int], target=None) -> Tuple[str, str, int, int]:
    """Compile the kernel of ``op_name`` (a qualified name of :data:`KERNELS`) for the node
    ``attributes`` ahead of time.

    ``target``: a ``triton.backends.compiler.GPUTarget``; None takes the current GPU.
    Returns (kernel name, PTX, threads per block, dynamic shared memory bytes). Every
    integer argument is a 32-bit scalar without specialisation, as TensorRT passes them.
    """
    plugin = KERNELS[op_name]
    kernel = plugin.kernel()
    import triton
    from triton.compiler import ASTSource

    constants = plugin.constants(**attributes)
    signature = {name: "constexpr" if name in constants else
                 ("*i1" if name in plugin.bool_pointers else "*fp32") if name.endswith("_ptr") else "i32"
                 for name in kernel.arg_names}
    compiled = triton.compile(ASTSource(kernel, signature, constexprs=constants), target=target,
                              options={"num_warps": plugin.num_warps})
    metadata = compiled.metadata
    if getattr(metadata, "global_scratch_size", 0) or getattr(metadata, "profile_scratch_size", 0):
        raise RuntimeError(f"the compiled {op_name} kernel needs Triton scratch memory, which TensorRT does not pass")
    return metadata.name, compiled.asm["ptx"], metadata.num_warps * 32, metadata.shared


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
