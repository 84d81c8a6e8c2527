"""Re-run the whole table of bad-input and fault cases (``tests/bad_inputs.py``) and print, for
each case, whether it held, then the counts: data loss, silent wrong output, tracebacks, partial
files left (and other misses), overall and per issue item.

    python benchmarks/bad_inputs.py                 # every case (a few minutes on 2 cores)
    python benchmarks/bad_inputs.py --no-slow -k 18.2 --json counts.json

Needs the reference data beside the repository (``../shared``): seeded official-layout weights are
generated from its layouts, and the DAVIS judo clip is one of the cases.
"""
from __future__ import annotations

import argparse
import json
import runpy
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"
sys.path.insert(0, str(ROOT / "tests"))

from bad_inputs import CASES, KINDS, Verdict, counts, run_case, shared_networks  # noqa: E402


def seeded_weights(folder: Path) -> Callable[[str], Path]:
    """``weights(model)``: gen_weights.py seed-1 weights of ``model``, made on first use."""
    generate = runpy.run_path(str(REFERENCE / "gen_weights.py"))["main"]

    def weights(model: str) -> Path:
        path = folder / f"{model}-seed1.pth"
        if not path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            generate(str(REFERENCE / f"{model}.layout.json"), str(path), 1)
        return path
    return weights


def cutie_small_export(folder: Path, weights: Callable[[str], Path]) -> Callable[[], Path]:
    """``export()``: the cutie-small ONNX export (top_k 30, max_mem_frames 3), made on first use."""
    def export() -> Path:
        if not folder.exists():
            from vosrt.api import build_network
            from vosrt.export.onnx import export_onnx
            from vosrt.runtime.cutie.config import CutieSessionConfig

            export_onnx(build_network("cutie-small", weights("cutie-small")), "cutie-small", folder,
                        config=CutieSessionConfig(top_k=30, max_mem_frames=3), checkpoint=weights("cutie-small"),
                        progress=lambda _: None)
        return folder
    return export


def summary(verdicts: list[Verdict]) -> str:
    """The counts overall and per issue item, as a table."""
    items = sorted({v.case.item for v in verdicts})
    header = f"{'item':14} {'cases':>5} {'held':>5} " + " ".join(f"{kind:>{len(kind)}}" for kind in KINDS)
    lines = [header]
    for item, group in [(i, [v for v in verdicts if v.case.item == i]) for i in items] + [("all", verdicts)]:
        c = counts(group)
        lines.append(f"{item:14} {c['cases']:>5} {c['held']:>5} "
                     + " ".join(f"{c[kind]:>{len(kind)}}" for kind in KINDS))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", help="only the cases whose item or name contains this")
    parser.add_argument("--no-slow", action="store_true", help="leave out the cases that run a child process or export")
    parser.add_argument("--json", help="write the verdicts and counts here")
    args = parser.parse_args(argv)
    selected = [c for c in CASES if (not args.k or args.k in f"{c.item}-{c.name}") and not (args.no_slow and c.slow)]
    verdicts = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vosrt-bad-inputs-") as work:
        work = Path(work)
        weights = seeded_weights(work / "weights")
        export = cutie_small_export(work / "export", weights)
        with shared_networks():
            for index, case in enumerate(selected):
                root = work / "cases" / f"{index:03d}"
                root.mkdir(parents=True)
                verdict = run_case(case, root, weights, export)
                verdicts.append(verdict)
                found = "; ".join(f"{kind}: {detail}" for kind, detail in verdict.findings)
                print(f"{'held  ' if verdict.held else 'FAILED'} {case.item:12} {case.name} ({verdict.seconds:.1f} s)"
                      + (f"\n       {found[:400]}" if found else ""), flush=True)
    print(f"\n{len(verdicts)} cases in {time.perf_counter() - start:.0f} s\n{summary(verdicts)}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "counts": counts(verdicts),
            "cases": [{"item": v.case.item, "name": v.case.name, "held": v.held,
                       "findings": [list(f) for f in v.findings]} for v in verdicts]}, indent=2) + "\n")
    return 0 if all(v.held for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
