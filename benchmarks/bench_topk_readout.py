"""Micro-benchmark: fused Triton top-K readout vs the torch reference on a CUDA GPU.

Cutie at 480x854 reads 30x54 = 1620 query tokens against N = T * 1620 memory slots
(T memory frames) with Ck = 64 key channels and V = objects * 256 value channels.
For each T, object count and input dtype this times both implementations with
``triton.testing.do_bench`` (median ms) and prints a table with the speed-up and the
kernel's achieved bandwidth, counting the bytes of the memory keys, shrinkage and
values and of the query keys and selection read once and of the fp32 output written
once (the valid mask is left out). ``max_err`` is the largest absolute difference
between the two outputs; a rare near-tie at the top-k boundary can make one query
pick a different slot there.

Run from the repository root::

    python benchmarks/bench_topk_readout.py --json benchmarks/results/topk_readout.json

Options pick the sweep (``--frames 1,5,10,20 --objects 1,8 --dtypes fp16``), the
kernel's block sizes, and ``--peak-gbps`` where the device's peak bandwidth cannot be
queried. Without a CUDA GPU it exits with status 1 and a one-line message.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

try:
    import triton.testing
except ImportError:  # reported by main()
    triton = None

from vosrt.kernels.readout import topk_readout_reference, topk_readout_triton

QUERY_TOKENS = 30 * 54  # 480x854 at stride 16
KEY_CHANNELS = 64
VALUE_CHANNELS_PER_OBJECT = 256
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def int_list(text: str) -> list[int]:
    """``"1,2,8"`` or a range ``"1-20"`` -> list of ints."""
    if "-" in text:
        first, last = (int(x) for x in text.split("-"))
        return list(range(first, last + 1))
    return [int(x) for x in text.split(",")]


def dtype_list(text: str) -> list[str]:
    """``"fp32,fp16"`` -> names checked against DTYPES."""
    names = text.split(",")
    unknown = sorted(set(names) - set(DTYPES))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown dtype(s) {unknown}; choose from {list(DTYPES)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int_list, default=int_list("1-20"), help="memory frames T (default 1-20)")
    parser.add_argument("--objects", type=int_list, default=int_list("1-8"), help="objects (default 1-8)")
    parser.add_argument("--dtypes", type=dtype_list, default=list(DTYPES), help="fp32,fp16")
    parser.add_argument("--top-k", type=int, default=30)
    parser.add_argument("--block-q", type=int, default=16)
    parser.add_argument("--block-n", type=int, default=64)
    parser.add_argument("--block-v", type=int, default=8)
    parser.add_argument("--num-warps", type=int, default=4)
    parser.add_argument("--peak-gbps", type=float, help="peak DRAM bandwidth, if it cannot be queried")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def make_inputs(frames: int, objects: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Random readout inputs on the GPU for T = frames memory frames (see topk_readout's docstring)."""
    n_slots, hw, ck = frames * QUERY_TOKENS, QUERY_TOKENS, KEY_CHANNELS
    kwargs = dict(device="cuda", dtype=dtype)
    return [
        torch.randn(1, ck, hw, **kwargs),
        torch.rand(1, ck, hw, **kwargs).clamp_(0.01, 0.99),
        torch.randn(1, ck, n_slots, **kwargs),
        1 + 4 * torch.rand(1, 1, n_slots, **kwargs),
        torch.randn(1, objects * VALUE_CHANNELS_PER_OBJECT, n_slots, **kwargs),
        torch.ones(1, n_slots, device="cuda", dtype=torch.bool),
    ]


def bytes_moved(inputs: list[torch.Tensor]) -> int:
    """Bytes of the float inputs read once plus the fp32 ``[B, V, HW]`` output written once."""
    qk, _, _, _, mv, _ = inputs
    read = sum(t.numel() * t.element_size() for t in inputs[:5])
    return read + qk.shape[0] * mv.shape[1] * qk.shape[2] * 4


def peak_gbps(override: float | None) -> float | None:
    """The device's peak DRAM bandwidth in GB/s: ``override`` if given, else queried, else None."""
    if override is not None:
        return override
    try:
        return triton.testing.get_dram_gbps()
    except Exception:  # a triton or driver that does not report it
        return None


def bench_one(frames: int, objects: int, dtype_name: str, args: argparse.Namespace) -> dict:
    """Time reference and kernel on one configuration; returns a result row."""
    inputs = make_inputs(frames, objects, DTYPES[dtype_name])
    blocks = dict(BLOCK_Q=args.block_q, BLOCK_N=args.block_n, BLOCK_V=args.block_v, num_warps=args.num_warps)
    triton_out = topk_readout_triton(*inputs, args.top_k, **blocks)
    max_err = (triton_out - topk_readout_reference(*inputs, args.top_k)).abs().max().item()
    ref_ms = triton.testing.do_bench(lambda: topk_readout_reference(*inputs, args.top_k), return_mode="median")
    triton_ms = triton.testing.do_bench(lambda: topk_readout_triton(*inputs, args.top_k, **blocks),
                                        return_mode="median")
    return dict(frames=frames, objects=objects, dtype=dtype_name, n_slots=inputs[2].shape[2],
                values=inputs[4].shape[1], ref_ms=ref_ms, triton_ms=triton_ms, speedup=ref_ms / triton_ms,
                triton_gbps=bytes_moved(inputs) / triton_ms / 1e6, max_err=max_err)


def print_row(row: dict, peak: float | None) -> None:
    pct = f"{100 * row['triton_gbps'] / peak:6.1f}%" if peak else "      -"
    print(f"{row['frames']:>3} {row['objects']:>4} {row['dtype']:>5} {row['n_slots']:>6} {row['values']:>5} "
          f"{row['ref_ms']:>9.3f} {row['triton_ms']:>9.3f} {row['speedup']:>7.2f}x {row['triton_gbps']:>8.1f} "
          f"{pct} {row['max_err']:>9.2e}", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_topk_readout: no CUDA GPU available; this benchmark needs one")
    if triton is None:
        sys.exit("bench_topk_readout: triton is not installed; pip install 'vosrt[kernels]'")
    device = torch.cuda.get_device_name()
    peak = peak_gbps(args.peak_gbps)
    print(f"{device}; peak DRAM bandwidth: {f'{peak:.0f} GB/s' if peak else 'unknown (pass --peak-gbps)'}; "
          f"HW={QUERY_TOKENS} Ck={KEY_CHANNELS} top_k={args.top_k}")
    print("  T  obj dtype      N     V    ref ms trit. ms speed-up     GB/s  %peak   max_err")
    rows = []
    for dtype_name in args.dtypes:
        for objects in args.objects:
            for frames in args.frames:
                rows.append(bench_one(frames, objects, dtype_name, args))
                print_row(rows[-1], peak)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = dict(device=device, peak_gbps=peak, query_tokens=QUERY_TOKENS, key_channels=KEY_CHANNELS,
                    top_k=args.top_k, block_q=args.block_q, block_n=args.block_n, block_v=args.block_v,
                    num_warps=args.num_warps)
        args.json.write_text(json.dumps(dict(meta, results=rows), indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
