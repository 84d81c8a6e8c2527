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
# measured over the test cases in the interpreter. Readout: 9.5e-7 (readout) and 1.9e-6 (usage)
# at fp32 and fp16 alike (fp16 inputs are exact in fp32; the kernel adds the fp16 rounding
# residues of its dot operands). Joint attention: 5.7e-7 at fp32; 5.9e-4 at fp16 (fp16 output,
# p rounded to fp16 for p @ v).
READOUT_TOLERANCES = [
    pytest.param(torch.float32, 6e-6, 0.0, id="fp32"),
    pytest.param(torch.float16, 6e-6, 0.0, id="fp16"),
]
JOINT_TOLERANCES = [
    pytest.param(torch.float32, 2e-6, 0.0, id="fp32"),
    pytest.param(torch.float16, 2e-3, 0.0, id="fp16"),
]
