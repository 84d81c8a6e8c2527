"""The kernel tests' tolerances per dot path (kernel_testing.TOLERANCES) against the operand rounding of
each path, emulated on the test cases (dot_precision.py): each tolerance covers its path's error with
room, and is not looser than the model asks."""
from __future__ import annotations

import pytest
import torch

import dot_precision
import test_joint_attention as joint_tests
import test_readout as readout_tests
from kernel_testing import DEVICE, TOLERANCES, dot_path
from vosrt.kernels import readout as ro
from vosrt.kernels.joint_attention import topk_joint_attention_reference

INTERPRETER_FP32 = {"readout": 1.9e-6, "joint": 5.7e-7}  # largest errors measured in the interpreter (ieee)


def emulated_error(op: str, path: str) -> float:
    """Largest |emulated kernel on ``path`` - fp32 reference| over the op's test cases (readout and usage)."""
    worst = 0.0
    if op == "readout":
        for case in readout_tests.CASES.values():
            inputs = readout_tests.case_inputs(case, torch.float32)
            got, usage = dot_precision.readout(*inputs, case.top_k, path)
            expected = ro.topk_readout_reference(*inputs, case.top_k).double()
            expected_usage = ro.topk_usage_reference(*inputs[:4], inputs[5], case.top_k).double()
            worst = max(worst, (got - expected).abs().max().item(), (usage - expected_usage).abs().max().item())
        return worst
    for n, m, top_k, valid_counts, d in joint_tests.CASES.values():
        inputs = joint_tests.make_inputs(0, 2, 2, n, m, d, valid_counts, torch.float32)
        expected = topk_joint_attention_reference(*inputs, top_k).double()
        worst = max(worst, (dot_precision.joint_attention(*inputs, top_k, path) - expected).abs().max().item())
    return worst


def test_tf32_rounding_is_to_nearest_with_ten_mantissa_bits():
    one = torch.tensor([1 + 2**-11, 1 + 2**-12, -(1 + 2**-11), 1 + 3 * 2**-11], dtype=torch.float32)
    assert dot_precision.round_tf32(one).tolist() == [1 + 2**-10, 1.0, -(1 + 2**-10), 1 + 2 * 2**-10]
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(0))
    relative = ((dot_precision.round_tf32(x) - x) / x).abs().max().item()
    assert 2**-12 < relative <= 2**-11


@pytest.mark.parametrize("op", ["readout", "joint"])
@pytest.mark.parametrize("path", ["tf32x3", "tf32"])
def test_each_paths_tolerance_covers_its_emulated_rounding(op, path):
    """The tolerance >= 2x (interpreter's fp32 error + the path's emulated error) and <= 20x that."""
    expected = INTERPRETER_FP32[op] + emulated_error(op, path)
    print(f"{op} {path}: emulated {emulated_error(op, path):.2e}, expected {expected:.2e}, "
          f"tolerance {TOLERANCES[op, path]:.0e}")
    assert 2 * expected <= TOLERANCES[op, path] <= 20 * expected


def test_ieee_emulation_matches_the_fp32_reference_to_rounding():
    """The emulation itself (products summed in float64) agrees with the fp32 reference at fp32 noise."""
    assert emulated_error("readout", "ieee") < 2e-6 and emulated_error("joint", "ieee") < 2e-6


def test_every_path_the_kernels_run_here_has_a_tolerance():
    paths = {dot_path(torch.float32), dot_path(torch.float16)}
    assert paths <= {path for _, path in TOLERANCES}
    if DEVICE == "cpu":
        assert dot_path(torch.float32) == "ieee"  # the interpreter's dots are exact in fp32
    else:
        from vosrt.kernels.triton.tuning import dot_types

        assert dot_path(torch.float32) == dot_types(torch.float32)["PRECISION"]
