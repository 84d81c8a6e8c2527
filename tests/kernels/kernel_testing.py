"""Shared by the kernel tests. Without a CUDA GPU the Triton kernels run in Triton's interpreter on CPU tensors.

Triton picks between compiling and interpreting when it is first imported, so importing this module
sets TRITON_INTERPRET=1 at collection, before any kernel module imports triton; if something
imported triton earlier in compile mode, the kernel tests skip and say so (set
TRITON_INTERPRET=1 in the environment to avoid that). With a GPU the compiled kernels run.
"""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_TRITON_IMPORTED_TOO_EARLY = (DEVICE == "cpu" and "triton" in sys.modules
                              and os.environ.get("TRITON_INTERPRET") != "1")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"

if importlib.util.find_spec("triton") is None:
    KERNEL_SKIP_REASON = "triton is not installed"
elif _TRITON_IMPORTED_TOO_EARLY:
    KERNEL_SKIP_REASON = "no GPU, and triton was imported before TRITON_INTERPRET=1 was set: set it in the environment"
else:
    KERNEL_SKIP_REASON = None

needs_kernel = pytest.mark.skipif(KERNEL_SKIP_REASON is not None, reason=str(KERNEL_SKIP_REASON))

# Largest |kernel - fp32 torch reference| per (op, path the kernel's dots run), about 3x what was
# measured or modelled over the test cases (in the comments), none measured on a GPU yet:
# - ieee: fp32 products, Triton's interpreter (dots exact in fp32): measured there.
# - tf32x3, tf32: the interpreter's fp32 figure plus the operand rounding of that path, emulated on
#   the CPU over the same cases (dot_precision.py; test_dot_precision.py re-measures it). tf32x3 adds
#   less than fp32 accumulation's own noise; plain tf32 (10-bit mantissas) is 2000x looser.
# - fp16: the interpreter's figure: fp16 operands are exact in fp32 (the kernel adds the fp16 rounding
#   residues of its dot operands), as on tensor cores, which accumulate in fp32 (in their own order).
TOLERANCES = {
    ("readout", "ieee"): 6e-6,  # 9.5e-7 readout, 1.9e-6 usage
    ("readout", "tf32x3"): 8e-6,  # + 5.8e-7 readout, 4.9e-7 usage (emulated)
    ("readout", "tf32"): 6e-3,  # 1.9e-3 readout, 1.2e-3 usage (emulated)
    ("readout", "fp16"): 6e-6,  # 9.5e-7 readout, 1.9e-6 usage
    ("joint", "ieee"): 2e-6,  # 5.7e-7
    ("joint", "tf32x3"): 4e-6,  # + 4.8e-7 (emulated)
    ("joint", "tf32"): 4e-3,  # 1.2e-3 (emulated)
    ("joint", "fp16"): 2e-3,  # 5.9e-4 (fp16 output, p rounded to fp16 for p @ v)
}


def dot_path(dtype: torch.dtype) -> str:
    """The path the kernels' dots run for inputs of ``dtype`` here: ``fp16`` operands; fp32 operands in
    the interpreter (``ieee``: exact) or, compiled for a GPU, at the kernels' own ``PRECISION``."""
    if dtype == torch.float16:
        return "fp16"
    if DEVICE == "cpu" or KERNEL_SKIP_REASON is not None:
        return "ieee"
    from vosrt.kernels.triton.tuning import dot_types

    return dot_types(dtype)["PRECISION"]


def tolerance(op: str, dtype: torch.dtype) -> float:
    return TOLERANCES[op, dot_path(dtype)]


# (dtype, atol, rtol) of a kernel against its fp32 torch reference, on the path the dots run here.
READOUT_TOLERANCES = [
    pytest.param(torch.float32, tolerance("readout", torch.float32), 0.0, id="fp32"),
    pytest.param(torch.float16, tolerance("readout", torch.float16), 0.0, id="fp16"),
]
JOINT_TOLERANCES = [
    pytest.param(torch.float32, tolerance("joint", torch.float32), 0.0, id="fp32"),
    pytest.param(torch.float16, tolerance("joint", torch.float16), 0.0, id="fp16"),
]
