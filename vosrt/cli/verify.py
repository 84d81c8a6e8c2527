"""``vosrt verify``: each ONNX graph against the eager fp32 model, or each engine against its ONNX graph."""
from __future__ import annotations

import argparse

from .options import argument, parse_counts, parse_resolution


def add_parser(sub) -> None:
    p = sub.add_parser("verify", help="compare each ONNX graph with the eager fp32 model, or each TensorRT engine "
                                      "with its ONNX graph on ONNX Runtime (Polygraphy)")
    p.add_argument("directory", help="an ONNX export, or an engine directory (DIR/tensorrt) to check the engines")
    p.add_argument("--weights", help="the checkpoint the graphs were exported from (default: the manifest's)")
    p.add_argument("--rel-tol", type=float,
                   help="max |error| / max |reference output| allowed for every output (default: for fp32 graphs "
                        "1e-4; for fp16 graphs each output's measured tolerance; engines: 1e-2 fp32, 5e-2 fp16)")
    p.add_argument("--sizes", type=argument(_parse_sizes), default=None,
                   help="HxW frame sizes to check ONNX graphs at, comma-separated (default 128x192,240x320; "
                        "engines run at their profile's resolution)")
    p.add_argument("--objects", type=argument(parse_counts), default=None,
                   help="object counts to check, e.g. 1,3 (default: 1,3; engines: 1 and their max objects)")
    p.set_defaults(run=run)


def _parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    return tuple(parse_resolution(size) for size in text.split(","))


def run(args: argparse.Namespace) -> None:
    from vosrt.api import build_network
    from vosrt.export.verify import (DEFAULT_OBJECTS, DEFAULT_SIZES, compare_engines_with_onnxruntime,
                                     compare_with_eager)
    from vosrt.runtime import artifacts

    objects = tuple(args.objects) if args.objects else None
    if artifacts.is_engine_dir(args.directory):
        if args.sizes:
            raise ValueError("--sizes applies to ONNX exports: engines run at their profile's resolution")
        checks = compare_engines_with_onnxruntime(args.directory, objects=objects, rel_tol=args.rel_tol)
        reference = "their ONNX graphs on ONNX Runtime"
    else:
        manifest = artifacts.read_manifest(args.directory)
        weights = args.weights or (manifest.get("checkpoint") or {}).get("path")
        checks = compare_with_eager(args.directory, build_network(manifest["model"], weights),
                                    sizes=args.sizes or DEFAULT_SIZES, objects=objects or DEFAULT_OBJECTS,
                                    rel_tol=args.rel_tol)
        reference = "the eager fp32 model"
    print(f"{'graph':18} {'size':9} {'K':>2} {'output':14} {'max|err|':>9} {'rel':>9} {'tol':>8} {'top-k!=':>8}")
    for c in checks:
        differ = "" if c.topk_differ is None else f"{c.topk_differ:.2%}"
        print(f"{c.graph:18} {c.size[0]}x{c.size[1]:<5} {c.num_objects:>2} {c.output:14} {c.max_abs_error:9.2e} "
              f"{c.relative_error:9.2e} {c.tolerance:8.1e} {differ:>8} {'ok' if c.passed else 'FAIL'}")
    failed = [c for c in checks if not c.passed]
    if failed:
        raise ValueError(f"{len(failed)} of {len(checks)} outputs exceed their tolerance (tol: max |error| / "
                         f"max |reference|; top-k!=: queries whose kept set differs from the eager fp32 model's)")
    print(f"all {len(checks)} outputs within their tolerance of {reference}"
          + ("; top-k!=: queries whose kept set differs from the eager fp32 model's" if any(
              c.topk_differ is not None for c in checks) else ""))
