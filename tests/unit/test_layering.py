"""The layering of the code folders: kernels <- models <- runtime <- export <- vosrt (each may
import only the folders before it), no import cycle between files, and what must not import torch."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("kernels", "models", "runtime", "export", "vosrt")  # the folders, lowest first


def _module_name(path: Path) -> str:
    """``runtime/cutie/family.py`` -> ``vosrt.runtime.cutie.family``; ``vosrt/api.py`` -> ``vosrt.api``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts if parts[0] == "vosrt" else ["vosrt", *parts])


def _imports(source: str, module: str, is_package: bool = False) -> set[str]:
    """The vosrt modules the ``source`` of ``module`` imports, at module level or inside functions,
    relative imports resolved."""
    package = module if is_package else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("vosrt")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            if base.startswith("vosrt"):
                found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return found


def _layer(module: str) -> int:
    """The layer of a vosrt module; the bare ``vosrt`` namespace (a lazy ``__init__``) is below all."""
    parts = module.split(".")
    if parts == ["vosrt"]:
        return -1
    return LAYERS.index(parts[1]) if parts[1] in LAYERS[:-1] else len(LAYERS) - 1


def test_each_folder_imports_only_the_folders_below_it():
    violations = []
    for folder in LAYERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            module = _module_name(path)
            imports = _imports(path.read_text(), module, path.name == "__init__.py")
            violations += [f"{path.relative_to(ROOT)} imports {target}" for target in sorted(imports)
                           if _layer(target) > LAYERS.index(folder)]
    assert not violations, "\n".join(violations)


def test_the_layering_check_sees_upward_imports():
    """The check itself: upward imports inside a function, and relative ones, are found."""
    found = _imports("def f():\n    from vosrt.runtime import stages\n", "vosrt.kernels.probe")
    assert "vosrt.runtime.stages" in found and _layer("vosrt.runtime") > _layer("vosrt.kernels.probe")
    assert _imports("from ...export import onnx\n", "vosrt.runtime.cutie.probe") >= {"vosrt.export.onnx"}


def _module_files() -> dict[str, Path]:
    return {_module_name(path): path for folder in LAYERS for path in sorted((ROOT / folder).rglob("*.py"))}


def _file_imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """{module: the modules of this repository it imports when it runs}: ``from package import name``
    imports the module ``name`` where that is a file, else the package; imports under
    ``if TYPE_CHECKING:`` are for annotations only and do not count."""
    graph = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
                node.body = []
        package = (module if path.name == "__init__.py" else module.rsplit(".", 1)[0]).split(".")
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                parent = package[:len(package) - node.level + 1] if node.level else []
                base = ".".join(parent + ([node.module] if node.module else []))
                submodules = {f"{base}.{alias.name}" for alias in node.names} & set(modules)
                found |= submodules or {base}
        graph[module] = {name for name in found if name in modules and name != module}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph`` (each as the modules along it), one per strongly connected
    group of modules (Tarjan's algorithm)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_no_import_cycle_between_files():
    """Inside functions too: a file that imports another which imports it back is one unit split in two."""
    cycles = import_cycles(_file_imports(_module_files()))
    assert not cycles, "\n".join(" <-> ".join(cycle) for cycle in cycles)


def test_the_cycle_check_sees_cycles():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("code", [
    "import vosrt",
    "from vosrt.cli import build_parser, export_engine_parser; build_parser().format_help(); "
    "export_engine_parser().format_help()",
])
def test_the_package_and_the_command_line_help_do_not_import_torch(code):
    check = f"import sys; {code}; assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:5]"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
