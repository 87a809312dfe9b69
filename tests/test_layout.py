"""The host layer's shape, as the README's layout promises it: no import circles inside the package, no
Python file over 500 lines and no function over 80 (package, benchmarks, training scripts). The control:
the same measures find a circle and an overlong function in code written to have them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "extrap_kernels"
MEASURED = [PACKAGE, ROOT / "benchmarks", ROOT / "python"]
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80


def python_files() -> list[Path]:
    return sorted(p for folder in MEASURED for p in folder.rglob("*.py"))


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """(name, lines) of each function longer than `limit` lines, decorators and signature included."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            lines = node.end_lineno - first + 1
            if lines > limit:
                found.append((node.name, lines))
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The package modules that `path` imports (relative imports resolved; `from . import x` counts x)."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + (node.module.split(".") if node.module else []))
            out.add(target)
            out.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return out


def import_graph(files: list[Path]) -> dict[str, set[str]]:
    """Module -> the package modules it imports, less its own ancestor packages (a submodule's import runs
    them first anyway, so `from .. import lamb` is an edge to lamb, not to the package)."""
    modules = {module_name(p): p for p in files}

    def ancestor(m: str, name: str) -> bool:
        return m == name or name.startswith(m + ".")

    return {
        name: {m for m in imports_of(path) if m in modules and not ancestor(m, name)} for name, path in modules.items()
    }


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles (strongly connected components of more than one module), by Tarjan's algorithm."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    assert circles(import_graph(sorted(PACKAGE.rglob("*.py")))) == []


def test_no_long_files():
    lines = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in python_files()}
    long = {name: n for name, n in lines.items() if n > MAX_FILE_LINES}
    assert long == {}


def test_no_long_functions():
    long = {str(p.relative_to(ROOT)): found for p in python_files() if (found := long_functions(p.read_text()))}
    assert long == {}


@pytest.mark.parametrize("limit", [3, 4])
def test_the_measures_find_what_they_measure(limit):
    """Control: a circle of two modules and a function of 4 lines are found (and a limit of 4 passes it)."""
    assert circles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert circles({"a": {"b"}, "b": set()}) == []
    source = "def f(x):\n    y = x\n    z = y\n    return z\n"
    assert long_functions(source, limit) == ([("f", 4)] if limit == 3 else [])
