"""Command line: ``vosrt segment | bench | eval | export | inspect | verify | doctor | cache | export-triton`` and ``export-engine``.

Errors a user can fix (bad paths, wrong masks, wrong checkpoints, no GPU) print one line and
exit with status 2; they never show a traceback. Warnings (:class:`VosrtWarning`) print one line
each. Ctrl-C exits with 130 and SIGTERM with 143, both after the command has removed what it had
half-written (and, for ``segment``, saying how far it got). Each command lives in its own module,
which imports torch only when the command runs.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Iterator

from vosrt.runtime.geometry import VosrtWarning
from vosrt.runtime.safe_write import Terminated, sigterm_as_interrupt

from . import bench, cache, doctor, evaluation, export, inspect, segment, serving, verify

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
    cache.add_parser(sub)
    serving.add_parser(sub)
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
    prefix = f"{parser.prog} {args.command}" if parser.prog == "vosrt" else parser.prog
    try:
        with sigterm_as_interrupt(), _one_line_warnings(prefix):
            args.run(args)
    except USER_ERRORS as err:
        print(f"{prefix}: error: {err}", file=sys.stderr)
        return 2
    except Terminated as stop:
        print(f"terminated{_progress(stop)}", file=sys.stderr)
        return 143
    except KeyboardInterrupt as stop:
        print(f"interrupted{_progress(stop)}", file=sys.stderr)
        return 130
    return 0


def _progress(stop: KeyboardInterrupt) -> str:
    """``: <how far the run got>`` when the command recorded it (``progress``), else nothing."""
    progress = getattr(stop, "progress", None)
    return f": {progress}" if progress else ""


@contextlib.contextmanager
def _one_line_warnings(prefix: str) -> Iterator[None]:
    """Within the block, each :class:`VosrtWarning` prints as ``PREFIX: warning: MESSAGE``."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, VosrtWarning):
            print(f"{prefix}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always", VosrtWarning)
        warnings.showwarning = show
        yield


if __name__ == "__main__":
    sys.exit(main())
