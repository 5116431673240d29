"""The layout stays readable: no import cycles between the modules of moe/ and dashboard/, small modules and
small functions. Each checker is also run on a tiny synthetic package, so a test that cannot fail is caught."""
from __future__ import annotations

import ast
import pathlib
from dataclasses import dataclass

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("moe", "dashboard")
MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 60


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    kind: str  # "top" (runs at import), "lazy" (inside a function: `where` names it), "typing" (TYPE_CHECKING)
    where: str = ""

    def label(self) -> str:
        return {"top": "", "lazy": f" (lazy, in {self.where})", "typing": " (TYPE_CHECKING only)"}[self.kind]


def module_files(root: pathlib.Path, packages=PACKAGES) -> dict[str, pathlib.Path]:
    """Dotted module name -> file, for every .py under the packages (subpackages included)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, scope: str = "", typing: bool = False):
    """(node, enclosing function or "", under TYPE_CHECKING) for every import statement, nested ones too."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, scope, typing
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _imports(node, f"{scope}.{node.name}" if scope else f"{node.name}()", typing)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), scope, True)
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), scope, typing)
        else:
            yield from _imports(node, scope, typing)


def _targets(node: ast.Import | ast.ImportFrom, name: str, is_package: bool, known) -> list[str]:
    """The modules of `known` that one import statement of module `name` loads by name."""
    if isinstance(node, ast.Import):
        out = []
        for alias in node.names:  # `import a.b.c` names a.b.c: the deepest module we know
            parts = alias.name.split(".")
            hits = [".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in known]
            out += hits[:1]
        return out
    if node.level:  # relative: from the module's package, up level - 1
        package = name.split(".") if is_package else name.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, *([node.module] if node.module else [])])
    else:
        base = node.module or ""
    # `from pkg import sub` where sub is a submodule is an edge to the submodule, else to pkg itself
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            if f"{base}.{a.name}" in known or base in known]


def import_graph(root: pathlib.Path, packages=PACKAGES) -> list[Edge]:
    """Every import edge between the modules of `packages` under `root` (self-edges left out)."""
    files = module_files(root, packages)
    edges = []
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node, scope, typing in _imports(tree):
            kind = "typing" if typing else ("lazy" if scope else "top")
            for target in _targets(node, name, path.name == "__init__.py", files):
                if target != name:
                    edges.append(Edge(name, target, kind, scope))
    return edges


def strongly_connected(nodes, edges: list[Edge]) -> list[list[str]]:
    """Tarjan's components with more than one module (a self-edge is not counted as a cycle)."""
    succ = {n: sorted({e.target for e in edges if e.source == n}) for n in nodes}
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):  # recursion depth is bounded by the number of modules (~100)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in succ.get(v, []):
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

    for n in sorted(nodes):
        if n not in index:
            visit(n)
    return sorted(found)


def describe(component: list[str], edges: list[Edge]) -> str:
    """One readable cycle per component: `a -> b (lazy, in f()) -> a`, then the component's other edges."""
    inside = [e for e in edges if e.source in component and e.target in component]
    start = component[0]
    paths, seen = {start: []}, {start}
    frontier = [start]
    while frontier:  # shortest path from start back to start, inside the component
        nxt = []
        for v in frontier:
            for e in (e for e in inside if e.source == v):
                if e.target == start:
                    path = [*paths[v], e]
                    cycle = " -> ".join([start, *(f"{p.target}{p.label()}" for p in path)])
                    rest = sorted({f"{x.source} -> {x.target}{x.label()}" for x in inside} -
                                  {f"{p.source} -> {p.target}{p.label()}" for p in path})
                    return cycle + ("" if not rest else "\n    also: " + "; ".join(rest))
                if e.target not in seen:
                    seen.add(e.target)
                    paths[e.target] = [*paths[v], e]
                    nxt.append(e.target)
        frontier = nxt
    raise AssertionError(f"{component} is not strongly connected")


def cycles(root: pathlib.Path, packages=PACKAGES, kinds=("top", "lazy", "typing")) -> list[str]:
    edges = [e for e in import_graph(root, packages) if e.kind in kinds]
    return [describe(c, edges) for c in strongly_connected(module_files(root, packages), edges)]


# --- the repository

def test_no_import_cycle_at_import_time():
    """Module-level imports only: a cycle here is a bug (an ImportError depending on which module loads first)."""
    found = cycles(ROOT, kinds=("top",))
    assert not found, "import cycles at import time:\n  " + "\n  ".join(found)


def test_no_import_cycle_even_through_lazy_imports():
    """A lazy import (inside a function) hides a cycle from the interpreter, not from the reader."""
    found = cycles(ROOT)
    assert not found, "import cycles (lazy imports included):\n  " + "\n  ".join(found)


def _sizes(root: pathlib.Path, packages=PACKAGES) -> tuple[list[str], list[str]]:
    long_modules, long_functions = [], []
    for name, path in module_files(root, packages).items():
        text = path.read_text()
        lines = len(text.splitlines())
        rel = path.relative_to(root).as_posix()
        if lines > MAX_MODULE_LINES:
            long_modules.append(f"{rel}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{rel}:{node.lineno} {node.name}: {length} lines")
    return long_modules, long_functions


def test_no_module_over_350_lines():
    long_modules, _ = _sizes(ROOT)
    assert not long_modules, "modules over 350 lines:\n  " + "\n  ".join(long_modules)


def test_no_function_over_60_lines():
    _, long_functions = _sizes(ROOT)
    assert not long_functions, "functions over 60 lines:\n  " + "\n  ".join(long_functions)


# --- the checkers fail when they should

def _package(tmp_path: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    for rel, text in {"pkg/__init__.py": "", **files}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def test_the_cycle_check_finds_a_cycle_through_every_import_form(tmp_path):
    root = _package(tmp_path, {
        "pkg/a.py": "from pkg import b\n",                   # a submodule imported by name from its package
        "pkg/sub/__init__.py": "",
        "pkg/b.py": "import pkg.sub.c\n",                    # a dotted absolute import
        "pkg/sub/c.py": "from ..a import thing\n",            # a relative import two levels up
        "pkg/d.py": "import os\nfrom pkg.a import thing\n",  # imports into the cycle, not part of it
    })
    found = cycles(root, packages=("pkg",), kinds=("top",))
    assert found == ["pkg.a -> pkg.b -> pkg.sub.c -> pkg.a"]
    with pytest.raises(AssertionError, match="pkg.a -> pkg.b -> pkg.sub.c -> pkg.a"):
        assert not found, "import cycles at import time:\n  " + "\n  ".join(found)


def test_a_lazy_import_cycle_is_reported_as_lazy_and_only_in_the_design_check(tmp_path):
    root = _package(tmp_path, {
        "pkg/main.py": "import pkg.sub\n\ndef run():\n    from pkg.sub import helper\n",
        "pkg/sub.py": "from pkg.main import flag\n",
        "pkg/types.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.other import T\n",
        "pkg/other.py": "from . import types\n",
    })
    assert cycles(root, packages=("pkg",), kinds=("top",)) == ["pkg.main -> pkg.sub -> pkg.main"]
    root.joinpath("pkg/main.py").write_text("def run():\n    from pkg.sub import helper\n")
    assert cycles(root, packages=("pkg",), kinds=("top",)) == []
    assert cycles(root, packages=("pkg",)) == ["pkg.main -> pkg.sub (lazy, in run()) -> pkg.main",
                                               "pkg.other -> pkg.types -> pkg.other (TYPE_CHECKING only)"]


def test_no_cycle_is_reported_for_a_package_that_has_none(tmp_path):
    root = _package(tmp_path, {
        "pkg/__init__.py": "from pkg.a import A\nfrom pkg.b import B\n",  # the package re-exports: no cycle
        "pkg/a.py": "A = 1\n",
        "pkg/b.py": "from pkg.a import A\nfrom pkg import a\nB = A\n",
    })
    assert cycles(root, packages=("pkg",)) == []
    assert {(e.source, e.target) for e in import_graph(root, ("pkg",))} == {
        ("pkg", "pkg.a"), ("pkg", "pkg.b"), ("pkg.b", "pkg.a")}


def test_the_size_check_names_a_long_module_and_a_long_function(tmp_path):
    body = "\n".join(f"        x{i} = {i}" for i in range(MAX_FUNCTION_LINES))  # def line + 60 = 61 lines
    root = _package(tmp_path, {
        "pkg/long.py": "def short():\n    return 1\n\n\nclass K:\n    def long(self):\n" + body + "\n",
        "pkg/big.py": "x = 1\n" * (MAX_MODULE_LINES + 1),
        "pkg/fits.py": "x = 1\n" * MAX_MODULE_LINES,
    })
    long_modules, long_functions = _sizes(root, ("pkg",))
    assert long_modules == [f"pkg/big.py: {MAX_MODULE_LINES + 1} lines"]
    assert long_functions == [f"pkg/long.py:6 long: {MAX_FUNCTION_LINES + 1} lines"]
