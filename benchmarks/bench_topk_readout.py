"""GPU micro-benchmark of the top-K kernels against their torch paths.

**Readout** (Cutie): the Triton kernels (:func:`vosrt.kernels.topk_readout` on CUDA: split +
merge, autotuned) against both torch paths, :func:`~vosrt.kernels.topk_readout_reference` (the
official dense formulation) and :func:`~vosrt.kernels.topk_readout_gather` (what the exported
graphs compute), at 480p (HW = 30 x 54 = 1620 query tokens; N = 1, 5, 10 memory frames of 1620
slots; 1 and 4 objects; fp32 and fp16 inputs) and 1080p (HW = 68 x 120 = 8160; N = 5 frames),
Ck = 64, value dim 256 per object, top-30. **Joint attention** (JointFormer): the kernel against
:func:`~vosrt.kernels.topk_joint_attention_reference`, 12 heads of 64, N = 1620 current tokens,
M = 5 x 1620 reference tokens, top-30 and top-180.

Each row: median milliseconds by ``triton.testing.do_bench``, achieved TFLOP/s and GB/s of the
kernel on the work the op needs (readout: the similarity, 2 N HW 2 Ck flops, plus the kept
values, 2 k V HW; joint attention: the scores of every token plus ``p @ v`` of the current and
kept tokens; the inputs read once and the output written once), the roofline bound of that
work on the device (``PEAKS``: dense fp16 tensor-core rate for fp16, the fp32 non-tensor rate
for fp32 as ../shared/docs/peers.md (c) bounds the official fp32 path, and DRAM bandwidth; an
H100 SXM's figures from peers.md), and the largest difference from the reference output.

    python benchmarks/bench_topk_readout.py --budget-s 300 --json benchmarks/results/topk-kernels-<gpu>.json

``run(budget_s)`` is the same for the GPU acceptance script: it returns the rows measured
before the budget ran out (and the cases left out). Without a CUDA GPU it measures nothing:
``run`` says so in its result and the command prints one line and exits with status 0.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from vosrt.kernels import (topk_joint_attention, topk_joint_attention_reference, topk_readout, topk_readout_gather,
                           topk_readout_reference)

KEY_CHANNELS = 64
VALUE_CHANNELS_PER_OBJECT = 256
TOP_K = 30
RESOLUTIONS = {"480p": 30 * 54, "1080p": 68 * 120}
READOUT_CASES = ([("480p", frames, objects, dtype) for dtype in ("fp16", "fp32") for objects in (1, 4)
                  for frames in (1, 5, 10)]
                 + [("1080p", 5, objects, dtype) for dtype in ("fp16", "fp32") for objects in (1, 4)])
JOINT_CASES = [(top_k, dtype) for dtype in ("fp16", "fp32") for top_k in (30, 180)]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
# name substring -> (fp16 tensor TFLOP/s dense, fp32 non-tensor TFLOP/s, DRAM TB/s); the first that matches.
PEAKS = {"H100": (989.0, 66.9, 3.35), "H200": (989.0, 66.9, 4.8)}
NO_GPU = "bench_topk_readout: no CUDA GPU, nothing measured (the kernels' timings need one)"


def readout_inputs(hw: int, n_slots: int, objects: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Random readout inputs on the GPU (shapes as in :mod:`vosrt.kernels.readout`), values slot-major."""
    kwargs = dict(device="cuda", dtype=dtype)
    values = torch.randn(1, n_slots, objects * VALUE_CHANNELS_PER_OBJECT, **kwargs).transpose(1, 2)
    return [torch.randn(1, KEY_CHANNELS, hw, **kwargs), torch.rand(1, KEY_CHANNELS, hw, **kwargs).clamp_(0.01, 0.99),
            torch.randn(1, KEY_CHANNELS, n_slots, **kwargs), 1 + 4 * torch.rand(1, 1, n_slots, **kwargs), values,
            torch.ones(1, n_slots, device="cuda", dtype=torch.bool)]


def readout_work(inputs: list[torch.Tensor]) -> tuple[float, float]:
    """(flops, bytes) the top-K readout needs: the similarity and the kept values; every input read
    once and the fp32 output written once."""
    qk, _, mk, _, mv, _ = inputs
    hw, n_slots, values = qk.shape[2], mk.shape[2], mv.shape[1]
    flops = 2.0 * n_slots * hw * 2 * KEY_CHANNELS + 2.0 * TOP_K * values * hw
    return flops, sum(t.numel() * t.element_size() for t in inputs) + 4.0 * values * hw


def roofline_ms(flops: float, nbytes: float, dtype: str) -> float | None:
    """The work's lower bound in ms on this device from ``PEAKS`` (None for an unlisted device)."""
    name = torch.cuda.get_device_name()
    peaks = next((p for key, p in PEAKS.items() if key in name), None)
    if peaks is None:
        return None
    tensor_fp16, cuda_fp32, tbps = peaks
    rate = tensor_fp16 if dtype == "fp16" else cuda_fp32
    return max(flops / (rate * 1e12), nbytes / (tbps * 1e12)) * 1e3


def timed(fn: Callable[[], torch.Tensor]) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, return_mode="median")


def bench_readout(resolution: str, frames: int, objects: int, dtype: str) -> dict:
    """One readout row: kernel, dense reference and gather path."""
    hw = RESOLUTIONS[resolution]
    inputs = readout_inputs(hw, frames * hw, objects, DTYPES[dtype])
    expected = topk_readout_reference(*inputs, TOP_K)
    error = (topk_readout(*inputs, TOP_K) - expected).abs().max().item()  # also autotunes, once per shape
    ms = {name: timed(lambda f=f: f(*inputs, TOP_K)) for name, f in
          (("kernel", topk_readout), ("reference", topk_readout_reference), ("gather", topk_readout_gather))}
    flops, nbytes = readout_work(inputs)
    return dict(kind="readout", resolution=resolution, frames=frames, objects=objects, dtype=dtype, hw=hw,
                n_slots=frames * hw, kernel_ms=ms["kernel"], reference_ms=ms["reference"], gather_ms=ms["gather"],
                speedup_vs_reference=ms["reference"] / ms["kernel"], speedup_vs_gather=ms["gather"] / ms["kernel"],
                kernel_tflops=flops / ms["kernel"] / 1e9, kernel_gbps=nbytes / ms["kernel"] / 1e6,
                roofline_ms=roofline_ms(flops, nbytes, dtype), max_abs_error=error)


def bench_joint(top_k: int, dtype: str, heads: int = 12, head_dim: int = 64, frames: int = 5) -> dict:
    """One joint-attention row at 480p: kernel against the reference."""
    n = RESOLUTIONS["480p"]
    kwargs = dict(device="cuda", dtype=DTYPES[dtype])
    q, k, v = (torch.randn(1, heads, n, head_dim, **kwargs) for _ in range(3))
    ref_k, ref_v = (torch.randn(1, heads, frames * n, head_dim, **kwargs) for _ in range(2))
    valid = torch.ones(1, frames * n, device="cuda", dtype=torch.bool)
    inputs = (q, k, v, ref_k, ref_v, valid)
    error = (topk_joint_attention(*inputs, top_k).float() - topk_joint_attention_reference(*inputs, top_k).float())
    ms = {name: timed(lambda f=f: f(*inputs, top_k)) for name, f in
          (("kernel", topk_joint_attention), ("reference", topk_joint_attention_reference))}
    flops = 2.0 * heads * n * head_dim * ((frames * n + n) + (n + top_k))  # scores of every token; p @ v of the kept
    nbytes = sum(t.numel() * t.element_size() for t in inputs) + q.numel() * q.element_size()
    return dict(kind="joint_attention", top_k=top_k, dtype=dtype, heads=heads, n=n, m=frames * n,
                kernel_ms=ms["kernel"], reference_ms=ms["reference"],
                speedup_vs_reference=ms["reference"] / ms["kernel"],
                kernel_tflops=flops / ms["kernel"] / 1e9, roofline_ms=roofline_ms(flops, nbytes, dtype),
                max_abs_error=error.abs().max().item())


def run(budget_s: float) -> dict:
    """Measure the cases in order until ``budget_s`` seconds have passed; returns ``{"device", "rows",
    "left_out"}``, or ``{"skipped": reason}`` without a CUDA GPU."""
    if not torch.cuda.is_available():
        return dict(skipped=NO_GPU)
    started = time.perf_counter()
    cases = ([(bench_readout, case) for case in READOUT_CASES] + [(bench_joint, case) for case in JOINT_CASES])
    rows, left_out = [], []
    for bench, case in cases:
        if time.perf_counter() - started > budget_s:
            left_out.append([bench.__name__, *case])
            continue
        rows.append(bench(*case))
        torch.cuda.empty_cache()
    return dict(device=torch.cuda.get_device_name(), top_k=TOP_K, rows=rows, left_out=left_out)


def print_rows(result: dict) -> None:
    print(result["device"])
    for row in result["rows"]:
        label = (f"readout {row['resolution']} T={row['frames']} obj={row['objects']} {row['dtype']}"
                 if row["kind"] == "readout" else f"joint top-{row['top_k']} {row['dtype']}")
        torch_paths = f"ref {row['reference_ms']:.3f} ms" + (f", gather {row['gather_ms']:.3f} ms"
                                                             if "gather_ms" in row else "")
        bound = f", bound {row['roofline_ms']:.3f} ms" if row["roofline_ms"] else ""
        print(f"{label:40s} kernel {row['kernel_ms']:.3f} ms ({row['kernel_tflops']:.1f} TFLOP/s{bound}); "
              f"{torch_paths}; max |err| {row['max_abs_error']:.1e}")
    for case in result["left_out"]:
        print("left out (budget):", *case)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=600.0, help="stop starting cases after this many seconds")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    result = run(args.budget_s)
    if "skipped" in result:
        print(result["skipped"])
        return 0
    print_rows(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
