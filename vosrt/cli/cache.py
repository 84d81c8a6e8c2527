"""``vosrt cache``: what vosrt keeps in its cache (checkpoints, ONNX exports), their sizes, and clearing it."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("cache", help="list what vosrt keeps in its cache ($VOSRT_CACHE or ~/.cache/vosrt) with the "
                                     "sizes, or clear it",
                       description="List the downloaded checkpoints and the ONNX exports made for backend="
                                   "'onnxruntime' without --export-dir, with their sizes and the total; --clear "
                                   "removes them (all, or only exports or checkpoints).")
    p.add_argument("--clear", nargs="?", const="all", choices=("all", "exports", "checkpoints"),
                   help="remove everything in the cache (default all), or only the exports or the checkpoints")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from vosrt import cache

    if args.clear is None:
        print(cache.listing())
        return
    removed = cache.clear(args.clear)
    print(f"removed {len(removed)} item(s), {cache.human(sum(e.size for e in removed))}, from {cache.cache_dir()}")
