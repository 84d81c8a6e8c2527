"""TensorRT plugin for the ``vosrt::TopKReadout`` node, backed by the Triton top-K readout kernel.

**Unverified on hardware.** Written to TensorRT's Python plugin API (``tensorrt.plugin``,
TensorRT >= 10.9 for the ahead-of-time implementation) but never built into an engine nor
run: the machines it was written on have no GPU and no TensorRT. What is checked on CPU:
this module imports without tensorrt, :func:`register` fails with a clear message without
it, and :func:`compile_ptx` compiles the kernel to PTX for a given GPU target.

Use, in an engine builder::

    from vosrt.kernels import trt_plugin

    trt_plugin.register()   # then parse the graph and build, or deserialise the engine

The plugin has two implementations: ahead-of-time (the PTX of :func:`compile_ptx`, baked
into the engine, which then runs without Python, e.g. under ``trtexec``) and a just-in-time
Python callback running :func:`~vosrt.kernels.topk_readout.topk_readout_triton` on
TensorRT's stream (the engine then needs this module registered at run time). The exported
node's ``aot=1`` attribute asks the ONNX parser for the former; a network built through the
API chooses with ``NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS`` or
``PREFER_JIT_PYTHON_PLUGINS``. The plugin takes float32 inputs and a bool ``valid``, as
the exported graphs feed it (fp16 graphs keep the node in fp32).

Triton >= 3.3 kernels end with two hidden pointer parameters (global and profile scratch);
:func:`compile_ptx` checks that this kernel uses neither, but whether TensorRT's launch
tolerates their presence is untested.

No ``from __future__ import annotations`` here: ``tensorrt.plugin`` reads the type hints of
the decorated functions as objects.
"""
import functools
from typing import Tuple

from .custom_op import QUALIFIED_NAME
from .topk_readout import kernel_constants

# Block sizes and warps of the engine's kernel: topk_readout_triton's GPU defaults.
BLOCKS = dict(BLOCK_Q=16, BLOCK_N=64, BLOCK_V=8)
NUM_WARPS = 4
_POINTERS = {"valid_ptr": "*i1"}  # every other *_ptr argument is float32


def compile_ptx(top_k: int, target=None) -> Tuple[str, str, int, int]:
    """Compile the readout kernel for ``top_k`` ahead of time.

    ``target``: a ``triton.backends.compiler.GPUTarget``; None takes the current GPU.
    Returns (kernel name, PTX, threads per block, dynamic shared memory bytes). Every
    integer argument is a 32-bit scalar without specialisation, as TensorRT passes them.
    """
    from .topk_readout import _jit_device_code

    kernel = _jit_device_code()
    import triton
    from triton.compiler import ASTSource

    constants = kernel_constants(top_k, **BLOCKS)
    signature = {name: "constexpr" if name in constants else
                 _POINTERS.get(name, "*fp32") if name.endswith("_ptr") else "i32" for name in kernel.arg_names}
    compiled = triton.compile(ASTSource(kernel, signature, constexprs=constants), target=target,
                              options={"num_warps": NUM_WARPS})
    metadata = compiled.metadata
    if getattr(metadata, "global_scratch_size", 0) or getattr(metadata, "profile_scratch_size", 0):
        raise RuntimeError("the compiled readout kernel needs Triton scratch memory, which TensorRT does not pass")
    return metadata.name, compiled.asm["ptx"], metadata.num_warps * 32, metadata.shared


def _kernel_scalars(query_key, memory_key, memory_value) -> Tuple[list, list]:
    """Shape expressions for the kernel's integer arguments: ``[HW, N, Ck, V]`` (top_k follows
    them) and the strides of its contiguous I/O tensors, in argument order."""
    batch_ck_hw = query_key.shape_expr
    ck, hw = batch_ck_hw[1], batch_ck_hw[2]
    n, v = memory_key.shape_expr[2], memory_value.shape_expr[1]
    return [hw, n, ck, v], [
        ck * hw, hw, 1,  # query_key
        ck * hw, hw, 1,  # query_selection
        ck * n, n, 1,  # memory_key
        n, 1,  # memory_shrinkage [B, 1, N]: batch and slot strides
        v * n, n, 1,  # memory_value
        n, 1,  # valid
        v * hw, hw, 1,  # readout
    ]


def _define(trt, trtp) -> None:
    """Register the plugin's description and its two implementations with ``tensorrt.plugin``."""

    @trtp.register(QUALIFIED_NAME)
    def describe(query_key: trtp.TensorDesc, query_selection: trtp.TensorDesc, memory_key: trtp.TensorDesc,
                 memory_shrinkage: trtp.TensorDesc, memory_value: trtp.TensorDesc, valid: trtp.TensorDesc,
                 top_k: int) -> trtp.TensorDesc:
        shape = query_key.shape_expr
        return trtp.from_shape_expr((shape[0], memory_value.shape_expr[1], shape[2]), dtype=trt.float32)

    @trtp.impl(QUALIFIED_NAME)
    def run(query_key: trtp.Tensor, query_selection: trtp.Tensor, memory_key: trtp.Tensor,
            memory_shrinkage: trtp.Tensor, memory_value: trtp.Tensor, valid: trtp.Tensor, top_k: int,
            outputs: Tuple[trtp.Tensor], stream: int) -> None:
        import torch

        from .topk_readout import topk_readout_triton

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            inputs = [torch.as_tensor(t, device="cuda") for t in
                      (query_key, query_selection, memory_key, memory_shrinkage, memory_value, valid)]
            torch.as_tensor(outputs[0], device="cuda").copy_(topk_readout_triton(*inputs, top_k, **BLOCKS))

    @trtp.aot_impl(QUALIFIED_NAME)
    def compile_for_engine(query_key: trtp.TensorDesc, query_selection: trtp.TensorDesc,
                           memory_key: trtp.TensorDesc, memory_shrinkage: trtp.TensorDesc,
                           memory_value: trtp.TensorDesc, valid: trtp.TensorDesc, top_k: int,
                           outputs: Tuple[trtp.TensorDesc], tactic: int
                           ) -> Tuple[bytes, bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]:
        name, ptx, threads, shared = compile_ptx(top_k)
        sizes, strides = _kernel_scalars(query_key, memory_key, memory_value)
        launch = trtp.KernelLaunchParams()
        launch.grid_x = trtp.cdiv(sizes[0], BLOCKS["BLOCK_Q"])
        launch.grid_y = query_key.shape_expr[0]
        launch.block_x = threads
        launch.shared_mem = shared
        scalars = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in [*sizes, top_k, *strides]])
        return name.encode(), ptx.encode(), launch, scalars


@functools.cache
def register() -> None:
    """Register ``vosrt::TopKReadout`` with TensorRT (once per process). Raises RuntimeError
    when tensorrt, or its ahead-of-time Python plugin API (TensorRT >= 10.9), is missing."""
    try:
        import tensorrt as trt
        import tensorrt.plugin as trtp
    except ImportError as exc:
        raise RuntimeError(f"the {QUALIFIED_NAME} TensorRT plugin needs TensorRT >= 10.9 with its Python plugin "
                           "API (pip install 'vosrt[gpu]' on a machine with an NVIDIA GPU)") from exc
    if not hasattr(trtp, "aot_impl"):
        raise RuntimeError(f"TensorRT {trt.__version__} has no ahead-of-time Python plugins; "
                           f"the {QUALIFIED_NAME} plugin needs TensorRT >= 10.9")
    _define(trt, trtp)

