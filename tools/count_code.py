"""Count lines of code and ONNX graph nodes: the figures of a simplification before and after.

``python tools/count_code.py lines [FOLDER ...]``: lines holding code in the Python files under
each folder (default: runtime export vosrt models), without blank lines, comments or docstrings.

``python tools/count_code.py nodes EXPORT_DIR [...]``: for each ``<stage>.onnx`` in each export
directory, its node count and the count per op type.
"""
from __future__ import annotations

import argparse
import ast
import io
import tokenize
from collections import Counter
from pathlib import Path

DEFAULT_FOLDERS = ("runtime", "export", "vosrt", "models")


def docstring_lines(source: str) -> set[int]:
    """Line numbers taken by module, class and function docstrings."""
    lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    return lines


def code_lines(source: str) -> int:
    """Lines of ``source`` holding at least one token that is not a comment, a newline or part of a docstring."""
    skip = docstring_lines(source)
    ignored = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
               tokenize.ENDMARKER, tokenize.ENCODING}
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in ignored:
            lines.update(line for line in range(token.start[0], token.end[0] + 1) if line not in skip)
    return len(lines)


def count_folders(folders: list[str]) -> dict[str, int]:
    return {folder: sum(code_lines(path.read_text()) for path in sorted(Path(folder).rglob("*.py")))
            for folder in folders}


def count_nodes(export_dir: Path) -> dict[str, Counter]:
    import onnx

    return {path.stem: Counter(node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node)
            for path in sorted(export_dir.glob("*.onnx"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("lines").add_argument("folders", nargs="*", default=list(DEFAULT_FOLDERS))
    sub.add_parser("nodes").add_argument("exports", nargs="+", type=Path)
    args = parser.parse_args(argv)
    if args.what == "lines":
        counts = count_folders(args.folders)
        for folder, n in counts.items():
            print(f"{folder:<10} {n:>6}")
        print(f"{'total':<10} {sum(counts.values()):>6}")
    else:
        for export_dir in args.exports:
            for stage, ops in count_nodes(export_dir).items():
                detail = ", ".join(f"{op} {n}" for op, n in sorted(ops.items()))
                print(f"{export_dir.name}/{stage}: {sum(ops.values())} nodes ({detail})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
