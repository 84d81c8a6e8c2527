"""Offline GPU compile check of every Triton kernel configuration vosrt can launch.

Compiles each variant of :func:`vosrt.kernels.triton.variants.all_variants` for sm_90
(H100/H200) and sm_87 (Jetson AGX Orin) without a GPU, with the Triton of the environment it
runs in (CI pins the Triton NVIDIA GPU images ship, 3.6, in a venv of its own:
``tools/compile_kernels.sh``), runs that Triton's ptxas with ``-v`` on the PTX for registers
and spills, and writes a table. Python launches are compiled with the specialisation Triton's
launcher gives their arguments at Cutie's and JointFormer's shapes (480p and 1080p), so the
registers are those of the code that runs.

It fails (exit status 1) when a variant does not compile, or any variant (each is a config the
autotuner may pick, or a plugin's) spills registers or fits fewer than 2 blocks per SM, or a
variant needs more shared memory than its launch gets: 48 KiB for a TensorRT plugin (no
opt-in), the opt-in limit for a Python launch (227 KiB on sm_90, 163 KiB on sm_87; Triton's
launcher opts in). Plugin variants are compiled the way the plugin compiles them
(:func:`vosrt.kernels.trt_plugin.compile_variant`: PTX ISA pinned, hidden scratch parameters
removed, integer arguments unspecialised as TensorRT passes them), so ptxas also checks that PTX.

    python tools/compile_kernels.py --output benchmarks/results/kernel-compile-sm90-sm87.md
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import re
import subprocess
import sys
import tempfile
import time
import types
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Arch:
    """Per-SM limits of a GPU architecture (CUDA occupancy calculator values)."""

    capability: int
    name: str
    registers: int = 65536
    register_unit: int = 256  # registers are allocated per warp in units of 256
    max_warps: int = 64
    max_blocks: int = 32
    shared_per_sm: int = 228 * 1024
    shared_opt_in: int = 227 * 1024
    shared_reserved: int = 1024  # per block

    @property
    def ptxas_arch(self) -> str:
        return f"sm_{self.capability}a" if self.capability >= 90 else f"sm_{self.capability}"


ARCHS = (Arch(90, "sm_90 (H100/H200)"),
         Arch(87, "sm_87 (Jetson AGX Orin)", max_warps=48, max_blocks=16, shared_per_sm=164 * 1024,
              shared_opt_in=163 * 1024))
PLUGIN_SHARED = 48 * 1024
MIN_BLOCKS = 2


def import_variants():
    """``vosrt.kernels.triton.variants`` from this checkout, without importing ``vosrt`` itself
    (whose dependencies this check's environment need not have)."""
    if "vosrt" not in sys.modules:
        package = types.ModuleType("vosrt")
        package.__path__ = [str(REPO / "vosrt")]
        sys.modules["vosrt"] = package
    spec = importlib.util.spec_from_file_location("vosrt.kernels", REPO / "kernels" / "__init__.py",
                                                  submodule_search_locations=[str(REPO / "kernels")])
    kernels = importlib.util.module_from_spec(spec)
    sys.modules["vosrt.kernels"] = kernels
    spec.loader.exec_module(kernels)
    from vosrt.kernels.triton import variants

    return variants


def blocks_per_sm(arch: Arch, registers: int, warps: int, shared: int) -> int:
    """Resident blocks per SM, limited by registers, warps, blocks and shared memory."""
    per_warp = -(-registers * 32 // arch.register_unit) * arch.register_unit
    by_registers = (arch.registers // per_warp) // warps
    by_shared = arch.shared_per_sm // (shared + arch.shared_reserved) if shared else arch.max_blocks
    return min(by_registers, arch.max_warps // warps, arch.max_blocks, by_shared)


def ptxas_usage(log: str) -> dict[str, int]:
    """Registers, spill stores/loads and static shared memory from a ptxas ``-v`` log."""
    def number(pattern: str) -> int:
        found = re.search(pattern, log)
        return int(found.group(1)) if found else 0

    return dict(registers=number(r"Used (\d+) registers"), spill_stores=number(r"(\d+) bytes spill stores"),
                spill_loads=number(r"(\d+) bytes spill loads"), static_shared=number(r"(\d+) bytes smem"))


def ptxas_log(ptx: str, arch: Arch) -> str:
    """Triton's ptxas ``-v`` on ``ptx`` (the plugin's PTX, which Triton did not assemble itself)."""
    from triton import knobs

    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "kernel.ptx"
        source.write_text(ptx)
        done = subprocess.run([knobs.nvidia.ptxas.path, "-v", f"--gpu-name={arch.ptxas_arch}", str(source),
                               "-o", str(Path(folder) / "kernel.cubin")], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"ptxas failed: {done.stderr.strip()[-500:]}")
    return done.stderr


def compile_with_log(variant, target):
    """``triton.compile`` the variant as its launch does; returns (compiled, PTX, ptxas -v log). Triton
    runs ptxas -v itself and prints the log with ``dump_ptxas_log`` (on a cache miss: ``main`` points
    the cache at an empty folder)."""
    import triton
    from triton import knobs

    knobs.nvidia.dump_ptxas_log = True
    with contextlib.redirect_stdout(io.StringIO()) as log:
        compiled = triton.compile(variant.source(target), target=target, options=variant.options())
    return compiled, compiled.asm["ptx"], log.getvalue()


def check(job: tuple[int, int]) -> dict:
    """Compile variant ``job[0]`` for ``ARCHS[job[1]]``: its table row and failures."""
    variants = import_variants()
    from triton.backends.compiler import GPUTarget

    variant = list(variants.all_variants())[job[0]]
    arch = ARCHS[job[1]]
    row = dict(name=variant.name, arch=arch.name, warps=variant.num_warps, stages=variant.num_stages,
               maxnreg=variant.maxnreg, plugin=variant.plugin, default=variant.default, failures=[],
               launch=f"{variant.describe()}; {len(variant.shapes)} launch shapes" if not variant.plugin
               else "TensorRT: integers unspecialised")
    started = time.perf_counter()
    try:
        target = GPUTarget("cuda", arch.capability, 32)
        if variant.plugin:
            from vosrt.kernels import trt_plugin

            compiled, ptx = trt_plugin.compile_variant(variant, target)
            log = ptxas_log(ptx, arch)
        else:
            compiled, ptx, log = compile_with_log(variant, target)
        row.update(ptxas_usage(log), shared=compiled.metadata.shared,
                   ptx_version=re.search(r"\.version (\S+)", ptx).group(1))
    except Exception as exc:  # a config that does not compile is a result, reported in the table
        row["failures"].append(f"does not compile: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}")
        return row
    row["seconds"] = time.perf_counter() - started
    shared = row["shared"] + row["static_shared"]
    row["blocks"] = blocks_per_sm(arch, row["registers"], variant.num_warps, shared)
    limit = PLUGIN_SHARED if variant.plugin else arch.shared_opt_in
    if shared > limit:
        row["failures"].append(f"needs {shared} B shared memory, over the {limit} B its launch gets")
    if row["spill_stores"] or row["spill_loads"]:
        row["failures"].append(f"spills {row['spill_stores']} B stores / {row['spill_loads']} B loads")
    if row["blocks"] < MIN_BLOCKS:
        row["failures"].append(f"fits {row['blocks']} block(s) per SM, under {MIN_BLOCKS}")
    return row


def table(rows: list[dict], triton_version: str, seconds: float) -> str:
    """The markdown report."""
    lines = [
        "# Triton kernel compile check: sm_90 and sm_87",
        "",
        f"Written by `tools/compile_kernels.py` with Triton {triton_version} (its ptxas, `-v`), no GPU, "
        f"{len(rows)} compiles in {seconds:.0f} s. Every kernel configuration the code can launch: each "
        "autotuning config, each top-K bucket, fp32 and fp16 inputs, and the TensorRT plugins' configs "
        "(plugin: compiled as the plugin compiles, PTX ISA pinned, scratch parameters removed, integer "
        "arguments unspecialised as TensorRT passes them). Python launches are specialised as Triton's "
        "launcher specialises them (`launch`: arguments that became constants, integers divisible by 16, "
        "pointers not 16-byte aligned; recorded from the launchers at Cutie's and JointFormer's shapes at "
        "480p and 1080p, every memory fill from one frame to the capacity: `vosrt.kernels.triton.variants`). "
        "`default`: launched without autotuning. "
        "Register cap: the `.maxnreg` every launch passes, two blocks per SM (255 at 4 warps). "
        "Shared memory: Triton's dynamic shared memory plus ptxas' static. Blocks/SM: by registers "
        "(allocated per warp in units of 256), warps, blocks and shared memory (1 KiB reserved per block).",
        "",
        "Fails on: a config that does not compile; spills or fewer than 2 blocks/SM at any config (the "
        "autotuner may pick each); shared memory over what the launch gets (48 KiB for a plugin; Python "
        "launches opt in up to 227 KiB on sm_90, 163 KiB on sm_87).",
        "",
        "| kernel | arch | warps | stages | default | plugin | PTX | registers (cap) | spill st/ld (B) | shared (B) "
        "| blocks/SM | result | launch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "registers" not in row:
            lines.append(f"| {row['name']} | {row['arch']} | {row['warps']} | {row['stages']} | "
                         f"{'yes' if row['default'] else ''} | {'yes' if row['plugin'] else ''} | | | | | | "
                         f"FAIL: {'; '.join(row['failures'])} | {row['launch']} |")
            continue
        result = "FAIL: " + "; ".join(row["failures"]) if row["failures"] else "ok"
        lines.append(f"| {row['name']} | {row['arch']} | {row['warps']} | {row['stages']} | "
                     f"{'yes' if row['default'] else ''} | {'yes' if row['plugin'] else ''} | {row['ptx_version']} | "
                     f"{row['registers']} ({row['maxnreg']}) | {row['spill_stores']}/{row['spill_loads']} | "
                     f"{row['shared'] + row['static_shared']} | {row['blocks']} | {result} | {row['launch']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="write the markdown table here")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="parallel compiles (default: CPUs)")
    parser.add_argument("--match", default="", help="only variants whose name contains this")
    args = parser.parse_args(argv)
    variants = import_variants()
    import triton

    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="vosrt-compile-check-")  # every variant compiles
    chosen = [i for i, v in enumerate(variants.all_variants()) if args.match in v.name]
    jobs = [(i, a) for i in chosen for a in range(len(ARCHS))]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        rows = list(pool.map(check, jobs))
    seconds = time.perf_counter() - started
    report = table(rows, triton.__version__, seconds)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report)
    failed = [row for row in rows if row["failures"]]
    for row in failed:
        print(f"FAIL {row['name']} on {row['arch']}: {'; '.join(row['failures'])}")
    print(f"compile_kernels: {len(rows)} compiles (Triton {triton.__version__}) in {seconds:.0f} s, "
          f"{len(failed)} failing" + (f"; table in {args.output}" if args.output else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
