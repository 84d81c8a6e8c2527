"""``vosrt.kernels`` keeps triton out of the process until a kernel runs, and exports its interface."""
from __future__ import annotations

import inspect
import subprocess
import sys

import vosrt.kernels


def test_importing_the_package_and_its_ops_does_not_import_triton():
    code = ("import sys, vosrt.kernels, vosrt.kernels.custom_ops, vosrt.kernels.trt_plugin; "
            "print('triton' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"


def test_public_interface():
    readout = ["query_key", "query_selection", "memory_key", "memory_shrinkage", "memory_value", "valid", "top_k"]
    usage = [p for p in readout if p != "memory_value"]
    joint = ["q", "k", "v", "ref_k", "ref_v", "ref_valid", "top_k", "frame_tokens"]
    expected = {
        "anisotropic_similarity": ["query_key", "query_selection", "memory_key", "memory_shrinkage"],
        "topk_readout": readout, "topk_readout_reference": readout, "topk_readout_gather": readout,
        "topk_readout_with_usage": readout,
        "topk_usage": usage, "topk_usage_reference": usage, "topk_usage_scatter": usage,
        "topk_joint_attention": joint, "topk_joint_attention_reference": joint,
    }
    assert sorted(vosrt.kernels.__all__) == sorted(expected)
    for name, parameters in expected.items():
        assert list(inspect.signature(getattr(vosrt.kernels, name)).parameters) == parameters, name
