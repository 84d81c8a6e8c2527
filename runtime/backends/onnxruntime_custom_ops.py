"""ONNX Runtime (CPU) implementation of vosrt's custom ONNX ops, through onnxruntime-extensions.

onnxruntime-extensions runs Python functions as ops (``PyOp``), on the CPU only, and only in
its own domain (``ai.onnx.contrib``). :func:`onnxruntime_model` therefore moves the vosrt
nodes of a graph into that domain, in memory (the file keeps ``vosrt::<op>``), and
:func:`enable_custom_ops` registers the implementations with a session's options. Every op
of :data:`vosrt.kernels.custom_ops.OPS` runs its torch ``reference``.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch

from vosrt.kernels.custom_ops import DOMAIN, OPS, CustomOp


def _extensions():
    try:
        import onnxruntime_extensions
    except ImportError as exc:
        raise RuntimeError("this export uses custom ops (exported with --custom-ops); running it on ONNX Runtime "
                           "needs onnxruntime-extensions: pip install 'vosrt[export]'") from exc
    return onnxruntime_extensions


@functools.cache
def _register_python_ops() -> str:
    """Declare every op as a PyOp once per process; returns the custom-op library to load into a session."""
    ext = _extensions()
    for op in OPS.values():
        inputs = [ext.PyOp.dt_bool if name in op.bool_inputs else ext.PyOp.dt_float for name in op.inputs]
        ext.onnx_op(op_type=op.op_type, inputs=inputs, outputs=[ext.PyOp.dt_float],
                    attrs=dict.fromkeys(op.attributes, ext.PyOp.dt_int64))(_numpy_function(op))
    return ext.get_library_path()


def _numpy_function(op: CustomOp) -> Callable[..., np.ndarray]:
    """``op``'s reference on numpy arrays (the inputs in order, attributes as keywords) -> float32 array."""

    def compute(*arrays: np.ndarray, **attributes: int) -> np.ndarray:
        tensors = (torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)
        with torch.inference_mode():
            return op.reference(*tensors, **attributes).numpy()

    compute.__name__ = f"{op.op_type}_numpy"
    return compute


def enable_custom_ops(options, custom_ops: list[str]) -> None:
    """Make ``options`` (an ``onnxruntime.SessionOptions``) able to run ``custom_ops``
    (qualified names, as in a manifest's ``custom_ops``)."""
    unknown = sorted(set(custom_ops) - set(OPS))
    if unknown:
        raise ValueError(f"custom op(s) {', '.join(unknown)} have no ONNX Runtime implementation in this vosrt "
                         f"(it has {', '.join(OPS)})")
    if custom_ops:
        options.register_custom_ops_library(_register_python_ops())


def onnxruntime_model(path: str | Path) -> bytes:
    """The ONNX model at ``path`` with its vosrt-domain nodes moved to the PyOp domain, serialised."""
    model = onnx.load(str(path))
    target = _extensions().default_opset_domain()
    for node in model.graph.node:
        if node.domain == DOMAIN:
            node.domain = target
    imports = [o for o in model.opset_import if o.domain not in (DOMAIN, target)]
    del model.opset_import[:]
    model.opset_import.extend(imports + [onnx.helper.make_opsetid(target, 1)])
    return model.SerializeToString()
