"""Command line: ``vosrt segment | bench | eval | export | inspect | verify | doctor`` and ``export-engine``.

Errors a user can fix (bad paths, wrong masks, wrong checkpoints, no GPU) print one line and
exit with status 2; they never show a traceback. Each command lives in its own module, which
imports torch only when the command runs.
"""
from __future__ import annotations

import argparse
import sys

from . import bench, doctor, evaluation, export, inspect, segment, verify

USER_ERRORS = (ValueError, FileNotFoundError, RuntimeError, OSError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vosrt", description="Video object segmentation for deployment.")
    sub = parser.add_subparsers(dest="command", required=True)
    segment.add_parser(sub)
    bench.add_parser(sub)
    evaluation.add_parser(sub)
    export.add_arguments(sub.add_parser("export", help="export ONNX graphs (and engines): same as export-engine"))
    inspect.add_parser(sub)
    verify.add_parser(sub)
    doctor.add_parser(sub)
    return parser


def export_engine_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="export-engine", description="Export a model's ONNX graphs and build "
                                                                       "TensorRT engines from them.")
    export.add_arguments(parser)
    parser.set_defaults(command="export")
    return parser


def export_engine_main(argv: list[str] | None = None) -> int:
    """``export-engine MODEL ...``: the same as ``vosrt export MODEL ...``."""
    return _run(export_engine_parser(), sys.argv[1:] if argv is None else argv)


def main(argv: list[str] | None = None) -> int:
    return _run(build_parser(), sys.argv[1:] if argv is None else argv)


def _run(parser: argparse.ArgumentParser, argv: list[str]) -> int:
    args = parser.parse_args(argv)
    args.argv = list(argv)
    try:
        args.run(args)
    except USER_ERRORS as err:
        print(f"{parser.prog} {args.command}: error: {err}" if parser.prog == "vosrt" else
              f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
