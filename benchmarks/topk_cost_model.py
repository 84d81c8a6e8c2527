"""Offline cost model of Cutie's top-K readout on an H100: the Triton split kernel (from its
compiled SASS) against a roofline of the torch path, at 480p and 1080p. No GPU needed.

1. Compiles the readout's split kernel for sm_90 exactly as a Python launch compiles it at the
   model shape (:mod:`vosrt.kernels.triton.variants`; run with the Triton of the GPU image, 3.6:
   ``tools/compile_kernels.sh`` sets up ``build/triton-3.6-venv``), disassembles it with the
   nvdisasm bundled with Triton, finds the memory-tile loop and, inside it, the selection round
   loop (the innermost loop holding the block barriers), and counts each one's instructions,
   block barriers (``BAR``) and warp shuffles (``SHFL``) per warp.
2. Replays the kernel's selection (:func:`vosrt.kernels.triton.select.add_tile`: threshold
   filter, then rounds of ``SEGMENTS`` winners per row) on random scores in torch, for the
   split count and tiles of each shape: rounds per tile, and keys entering each query's top-K.
3. Times: issue-bound (every warp instruction issued by one of the SM's 4 schedulers) and
   latency-bound (barriers, shuffles and the rest at stated latencies, two blocks per SM
   overlapping), the larger taken, times the waves of programs; against the torch path's
   roofline (the similarity matmul writing S, top-k reading S, the gather of the kept values:
   minimal bytes at HBM bandwidth, FLOPs at peak).

The selection the issue asks for is modelled by the same measured tile body (dots, scores, key
packing, threshold filter: the tile loop without its round loop) plus, instead of the block-wide
rounds, each kept key inserted by the warp holding its query (``INSERT_INSTRUCTIONS`` each, no
block barrier). Writes markdown to ``--output``.

    build/triton-3.6-venv/bin/python benchmarks/topk_cost_model.py --output benchmarks/results/topk-cost-model.md
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

# H100 SXM (assumptions, stated in the report)
SMS, SCHEDULERS, CLOCK_HZ = 132, 4, 1.755e9
HBM_BYTES_PER_S = 3.35e12
FP32_FLOPS, FP16_TENSOR_FLOPS = 67e12, 989e12
BARRIER_CYCLES, SHUFFLE_CYCLES, OTHER_CYCLES = 20, 24, 2  # dependent latency per instruction on one block's path
BLOCKS_PER_SM = 2  # the register cap every launch passes
INSERT_INSTRUCTIONS = 40  # one key into a warp-held sorted top-K (ballot, popc, shfl.up, select, loop)

CUTIE = dict(ck=64, values=2 * 256, top_k=30, frames=5)  # 2 objects of Cv = 256, max_mem_frames 5


@dataclass(frozen=True)
class Shape:
    name: str
    tokens: int  # HW = N / frames


SHAPES = (Shape("480p", 30 * 54), Shape("1080p", 68 * 120))


def load_compile_check():
    spec = importlib.util.spec_from_file_location("compile_kernels", REPO / "tools" / "compile_kernels.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- SASS


@dataclass
class LoopCounts:
    instructions: int
    barriers: int
    shuffles: int


def split_kernel_sass(dtype_name: str, shape: Shape) -> tuple[str, object]:
    """SASS (nvdisasm) of the default split kernel as launched at ``shape`` with a full memory."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget

    variants = load_compile_check().import_variants()
    label = f"cutie {shape.name} {CUTIE['frames']}/{CUTIE['frames']}"
    variant = next(v for v in variants.readout_variants() if not v.plugin and v.default and label in v.shapes
                   and v.name.startswith(f"readout_split {dtype_name} K32 "))
    target = GPUTarget("cuda", 90, 32)
    compiled = triton.compile(variant.source(target), target=target, options=variant.options())
    with tempfile.TemporaryDirectory() as folder:
        cubin = Path(folder) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        nvdisasm = str(Path(knobs.nvidia.ptxas.path).with_name("nvdisasm"))
        sass = subprocess.run([nvdisasm, "-c", str(cubin)], capture_output=True, text=True, check=True).stdout
    return sass, variant


def loop_counts(sass: str) -> tuple[LoopCounts, LoopCounts]:
    """(tile loop without its round loop, round loop) per warp, from the SASS' backward branches:
    the round loop is the nested loop with the most barriers, the tile loop the one around it."""
    labels, instructions = {}, []
    for line in sass.splitlines():
        label = re.match(r"^(\.L_x_\d+):", line.strip())
        if label:
            labels[label.group(1)] = len(instructions)
            continue
        found = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_.]+)(.*)", line)
        if found:
            instructions.append((found.group(3), found.group(4)))
    loops = []
    for index, (opcode, rest) in enumerate(instructions):
        target = re.search(r"`\((\.L_x_\d+)\)", rest)
        if opcode.startswith("BRA") and target and labels[target.group(1)] <= index:
            loops.append((labels[target.group(1)], index))

    def counts(start: int, end: int, skip: tuple[int, int] | None = None) -> LoopCounts:
        body = [op for i, (op, _) in enumerate(instructions[start:end + 1], start)
                if not (skip and skip[0] <= i <= skip[1])]
        return LoopCounts(len(body), sum(op.startswith("BAR") for op in body), sum(op.startswith("SHFL") for op in body))

    nested = [(a, b) for a, b in loops if any(c <= a and b <= d and (c, d) != (a, b) for c, d in loops)]
    rounds = max(nested, key=lambda loop: counts(*loop).barriers)
    tile = min(((c, d) for c, d in loops if c <= rounds[0] and rounds[1] <= d and (c, d) != rounds),
               key=lambda loop: loop[1] - loop[0])
    return counts(*tile, skip=rounds), counts(*rounds)


# --------------------------------------------------------------------------- selection replay


def replay_selection(n_split: int, splits: int, blocks: int, block_q: int = 16, block_n: int = 32, kept: int = 32,
                     segments: int = 8, seed: int = 0) -> tuple[float, float]:
    """(rounds per tile, keys entering a query's top-K per tile) of :func:`.select.add_tile` on iid
    random scores, over ``blocks`` query blocks and ``splits`` splits of ``n_split`` slots."""
    g = torch.Generator().manual_seed(seed)
    rounds = tiles = inserted = 0
    for _ in range(blocks * splits):
        running = torch.full((block_q, kept), -math.inf)
        scores = torch.randn(block_q, n_split, generator=g)
        for n0 in range(0, n_split, block_n):
            tile = scores[:, n0:n0 + block_n]
            tile = torch.nn.functional.pad(tile, (0, block_n - tile.shape[1]), value=-math.inf)
            tiles += 1
            live = tile > running.min(dim=1, keepdim=True).values
            inserted += int(live.sum())  # upper bound on insertions (a key may be displaced in the same tile)
            keys = torch.where(live, tile, torch.tensor(-math.inf))
            while bool(torch.isfinite(keys).any()):
                rounds += 1
                grouped = keys.view(block_q, segments, block_n // segments)
                winners = grouped.max(dim=2, keepdim=True).values
                keys = torch.where(grouped == winners, torch.tensor(-math.inf), grouped).view(block_q, block_n)
                running = torch.cat([running, winners.view(block_q, segments)], 1).topk(kept, dim=1).values
                keys = torch.where(keys > running.min(dim=1, keepdim=True).values, keys, torch.tensor(-math.inf))
    return rounds / tiles, inserted / tiles / block_q


# --------------------------------------------------------------------------- time model


def split_count(hw: int, n: int) -> int:
    """The launcher's split count on a 132-SM GPU (:func:`vosrt.kernels.triton.readout.split_count`)."""
    base, splits = math.ceil(hw / 16), 1
    while splits * 2 <= 16 and base * splits < 2 * SMS and n >= splits * 2 * 512:
        splits *= 2
    return splits


def kernel_seconds(programs: int, tiles_per_program: float, per_tile_warp: LoopCounts, warps: int = 4) -> dict:
    """Issue- and latency-bound times of ``programs`` blocks of ``warps`` warps, two per SM."""
    waves = math.ceil(programs / (SMS * BLOCKS_PER_SM))
    issue_cycles = BLOCKS_PER_SM * warps * per_tile_warp.instructions * tiles_per_program / SCHEDULERS
    other = per_tile_warp.instructions - per_tile_warp.barriers - per_tile_warp.shuffles
    latency_cycles = tiles_per_program * (per_tile_warp.barriers * BARRIER_CYCLES + per_tile_warp.shuffles
                                          * SHUFFLE_CYCLES + other * OTHER_CYCLES)
    issue, latency = waves * issue_cycles / CLOCK_HZ, waves * latency_cycles / CLOCK_HZ
    return dict(issue=issue, latency=latency, time=max(issue, latency), waves=waves)


def torch_roofline(hw: int, n: int, fp16: bool) -> dict:
    """The torch path at its roofline: similarity matmuls writing S ``[N, HW]`` (fp32), top-k reading
    S, softmax and gather of the kept values (values read once, readout written)."""
    ck, values, top_k = CUTIE["ck"], CUTIE["values"], CUTIE["top_k"]
    s_bytes = 4 * n * hw
    flops = 2 * 2 * ck * n * hw
    matmul = max(flops / (FP16_TENSOR_FLOPS if fp16 else FP32_FLOPS), s_bytes / HBM_BYTES_PER_S)
    topk = (s_bytes + 8 * hw * top_k) / HBM_BYTES_PER_S
    gather = (4 * values * n + 4 * values * hw + 8 * hw * top_k) / HBM_BYTES_PER_S
    return dict(matmul=matmul, topk=topk, gather=gather, total=matmul + topk + gather)


def report(dtype_name: str, replay_blocks: int) -> str:
    lines = []
    for shape in SHAPES:
        hw, n = shape.tokens, CUTIE["frames"] * shape.tokens
        sass, variant = split_kernel_sass(dtype_name, shape)
        tile, rounds = loop_counts(sass)
        splits = split_count(hw, n)
        chunk = math.ceil(math.ceil(n / splits) / 32) * 32
        tiles_per_program = math.ceil(chunk / 32)
        programs = math.ceil(hw / 16) * splits
        rounds_per_tile, inserted = replay_selection(chunk, splits, replay_blocks)
        per_tile = LoopCounts(tile.instructions + round(rounds_per_tile * rounds.instructions),
                              tile.barriers + round(rounds_per_tile * rounds.barriers),
                              tile.shuffles + round(rounds_per_tile * rounds.shuffles))
        before = kernel_seconds(programs, tiles_per_program, per_tile)
        queries_per_warp = 16 // 4
        warp_select = LoopCounts(tile.instructions + round(inserted * queries_per_warp * INSERT_INSTRUCTIONS),
                                 tile.barriers, tile.shuffles)
        after = kernel_seconds(programs, tiles_per_program, warp_select)
        torch_path = torch_roofline(hw, n, dtype_name == "fp16")
        lines.append(
            f"| {shape.name} | {dtype_name} | {hw} | {n} | {splits} | {programs} x {tiles_per_program} "
            f"| {tile.instructions} / {tile.barriers} / {tile.shuffles} | {rounds.instructions} / {rounds.barriers} / "
            f"{rounds.shuffles} | {rounds_per_tile:.2f} | {inserted:.3f} | {1e3 * before['issue']:.3f} / "
            f"{1e3 * before['latency']:.3f} | {1e3 * after['issue']:.3f} / {1e3 * after['latency']:.3f} "
            f"| {1e3 * torch_path['total']:.3f} | {torch_path['total'] / before['time']:.2f}x "
            f"| {torch_path['total'] / after['time']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path)
    parser.add_argument("--replay-blocks", type=int, default=4, help="query blocks replayed per shape")
    args = parser.parse_args(argv)
    import triton

    rows = "\n".join(report(dtype, args.replay_blocks) for dtype in ("fp32", "fp16"))
    table = (
        f"Computed by `benchmarks/topk_cost_model.py` (Triton {triton.__version__}, sm_90 SASS, no GPU).\n\n"
        "| shape | inputs | HW | N | splits | programs x tiles | tile loop w/o rounds: instr / BAR / SHFL "
        "per warp | one round: instr / BAR / SHFL per warp | rounds per tile | keys entering top-K per query "
        "per tile | now: issue / latency (ms) | warp-held top-K: issue / latency (ms) | torch roofline (ms) "
        "| torch / now | torch / warp-held |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n" + rows + "\n")
    print(table)
    if args.output:
        text = args.output.read_text() if args.output.exists() else ""
        start, end = "<!-- model:begin -->", "<!-- model:end -->"
        if start in text and end in text:
            text = text[:text.index(start) + len(start)] + "\n" + table + text[text.index(end):]
        else:
            text += f"{start}\n{table}{end}\n"
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
