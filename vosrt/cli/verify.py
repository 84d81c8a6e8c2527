"""``vosrt verify``: each ONNX graph against the eager model, or each engine against its ONNX graph."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("verify", help="compare each ONNX graph with the eager model, or each TensorRT engine with "
                                      "its ONNX graph on ONNX Runtime (Polygraphy)")
    p.add_argument("directory", help="an ONNX export, or an engine directory (DIR/tensorrt) to check the engines")
    p.add_argument("--weights", help="the checkpoint the graphs were exported from (default: the manifest's)")
    p.add_argument("--rel-tol", type=float, help="max |error| / max |reference output| allowed (default: 1e-4 "
                                                 "for ONNX vs eager; engines: 1e-2 fp32, 5e-2 fp16)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from polygraphy.logger import G_LOGGER

    from vosrt.api import build_network
    from vosrt.export.verify import ENGINE_REL_TOL, compare_engines_with_onnxruntime, compare_with_eager
    from vosrt.runtime import artifacts

    G_LOGGER.module_severity = G_LOGGER.ERROR
    if artifacts.is_engine_dir(args.directory):
        manifest = artifacts.read_manifest(args.directory, artifacts.ENGINE_FORMAT)
        rel_tol = args.rel_tol or ENGINE_REL_TOL[manifest["precision"]]
        checks = compare_engines_with_onnxruntime(args.directory, rel_tol=rel_tol)
        reference = "ONNX Runtime"
    else:
        manifest = artifacts.read_manifest(args.directory)
        weights = args.weights or (manifest.get("checkpoint") or {}).get("path")
        rel_tol = args.rel_tol or 1e-4
        checks = compare_with_eager(args.directory, build_network(manifest["model"], weights), rel_tol=rel_tol)
        reference = "the eager model"
    print(f"{'graph':18} {'size':9} {'K':>2} {'output':14} {'max|err|':>9} {'rel':>9}")
    for c in checks:
        print(f"{c.graph:18} {c.size[0]}x{c.size[1]:<5} {c.num_objects:>2} {c.output:14} "
              f"{c.max_abs_error:9.2e} {c.relative_error:9.2e} {'ok' if c.passed else 'FAIL'}")
    failed = [c for c in checks if not c.passed]
    if failed:
        raise ValueError(f"{len(failed)} of {len(checks)} outputs exceed rel-tol {rel_tol}")
    print(f"all {len(checks)} outputs within {rel_tol} of {reference}")
