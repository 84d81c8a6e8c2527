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

# (dtype, atol, rtol) of a kernel against its fp32 torch reference, about 3x the largest error
# measured on the test cases in the interpreter (fp32: 3e-7; fp16: 5.8e-4 for the readout, whose
# dot operands 2 qk qe and mk^2 are rounded to fp16; 6e-4 for the joint attention, whose p @ v
# runs on fp16 p).
TOLERANCES = [
    pytest.param(torch.float32, 1e-6, 1e-5, id="fp32"),
    pytest.param(torch.float16, 2e-3, 2e-3, id="fp16"),
]
