"""The import graph of rankrobust/ and analysis/: the core never imports analysis, and nothing is circular.

DESIGN.md: dependencies point one way (data → components → config → train →
experiment → analysis → sweeps → cli) and the core never imports ``analysis/``.
The graph is read from the source with `ast` (nothing is imported):

- nodes are the modules under rankrobust/ and analysis/ (``pkg/__init__.py`` is ``pkg``);
- an edge is an absolute ``import rankrobust.x`` / ``from analysis.y import z``
  (or a relative import resolved to one), anywhere in the file, including
  imports inside functions (lazy imports are still dependencies), and
  ``importlib.import_module("literal")``;
- imports under ``if TYPE_CHECKING:`` are ignored (never executed);
- ``from pkg import name`` points to ``pkg.name`` when that is a module, else to ``pkg``;
- the implicit import of parent packages (``import a.b.c`` also runs ``a/__init__``)
  is not an edge: the package facades re-export their children, and counting
  them would make every child "depend" on its siblings.

The *core* is everything under rankrobust/ except the wiring layer,
rankrobust/cli.py and rankrobust/sweeps/ (they hand the analysis probes to runs).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

ROOTS = ("rankrobust", "analysis")
WIRING = ("rankrobust.cli", "rankrobust.sweeps")


# ---------------------------------------------------------------------------- the graph
def module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_sources(root: Path = REPO) -> dict[str, tuple[str, bool]]:
    """module name → (source text, is a package) for every .py under the ROOTS."""
    out = {}
    for top in ROOTS:
        for path in sorted((root / top).rglob("*.py")):
            out[module_name(path, root)] = (path.read_text(), path.name == "__init__.py")
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    """Collects the imported module names of one module (absolute, relative resolved)."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.found: list[tuple[str, str | None]] = []  # (module, imported name or None)

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:  # `else:` of a TYPE_CHECKING test does run
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append((alias.name, None))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        for alias in node.names:
            self.found.append((target, alias.name))

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            self.found.append((node.args[0].value, None))
        self.generic_visit(node)


def import_graph(sources: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """module → the modules of ``sources``' ROOTS it imports (see the module docstring for the rules)."""
    known = set(sources)
    graph: dict[str, set[str]] = {}
    for module, (text, is_package) in sources.items():
        visitor = _Imports(module, is_package)
        visitor.visit(ast.parse(text, filename=module))
        edges = set()
        for target, name in visitor.found:
            if target.split(".")[0] not in ROOTS:
                continue
            edges.add(f"{target}.{name}" if name and f"{target}.{name}" in known else target)
        edges.discard(module)  # `from pkg import x` inside pkg/__init__ resolving to itself
        graph[module] = edges
    return graph


def is_core(module: str) -> bool:
    return module.split(".")[0] == "rankrobust" and not any(
        module == w or module.startswith(w + ".") for w in WIRING)


def core_violations(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(core module, analysis module it imports), sorted."""
    return sorted((m, t) for m, targets in graph.items() if is_core(m)
                  for t in targets if t.split(".")[0] == "analysis")


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, …, a]``) per strongly connected component that has one (Tarjan, then a DFS inside)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:  # recursion depth ≤ number of modules (≈ 60)
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    cycles = []
    for comp in components:
        members = set(comp)
        if len(comp) == 1 and comp[0] not in graph[comp[0]]:
            continue
        start = comp[0]
        path, seen = [start], {start}

        def walk(v: str) -> list[str] | None:
            for w in sorted(graph[v] & members):
                if w == start:
                    return path + [start]
                if w not in seen:
                    seen.add(w)
                    path.append(w)
                    found = walk(w)
                    if found:
                        return found
                    path.pop()
            return None

        cycles.append(walk(start))
    return cycles


def describe(cycles: list[list[str]]) -> str:
    return "; ".join(" → ".join(c) for c in cycles)


# ---------------------------------------------------------------------------- the real code
@pytest.fixture(scope="module")
def sources():
    return read_sources()


@pytest.fixture(scope="module")
def graph(sources):
    return import_graph(sources)


def test_graph_sees_the_known_edges(graph):
    """Sanity: the parser finds top-level, from-package and lazy (in-function) imports."""
    assert "rankrobust.config" in graph["rankrobust.train"]
    assert "rankrobust.runs" in graph["rankrobust.store"]  # `from rankrobust import runs`
    assert "analysis.probes" in graph["rankrobust.cli"]
    assert "rankrobust.train" not in graph["rankrobust.probes"]  # under `if TYPE_CHECKING:`
    assert len(graph) >= 30


def test_core_never_imports_analysis(graph):
    bad = core_violations(graph)
    assert not bad, "the core imports the analysis layer (wire it in rankrobust/cli.py or rankrobust/sweeps/ " \
                    "through a probe instead): " + ", ".join(f"{m} → {t}" for m, t in bad)


def test_package_facade_exports_no_analysis_module():
    """``rankrobust/__init__`` imports lazily through a name → module table the AST cannot follow."""
    import rankrobust

    assert all(m.split(".")[0] == "rankrobust" for m in rankrobust._EXPORTS.values())


def test_no_import_cycles(graph):
    cycles = find_cycles(graph)
    assert not cycles, f"import cycles: {describe(cycles)}"


# ---------------------------------------------------------------------------- the checks catch what they should
def with_source(sources, module: str, extra: str) -> dict[str, tuple[str, bool]]:
    text, is_package = sources[module]
    return {**sources, module: (text + "\n" + extra + "\n", is_package)}


@pytest.mark.parametrize("extra", [
    "import analysis.fairness",
    "from analysis import fairness",
    "from analysis.fairness import fairness_report",
    "def _lazy():\n    from analysis.fairness import fairness_report\n    return fairness_report",
    "import importlib\n_m = importlib.import_module('analysis.fairness')",
])
def test_core_check_catches_an_analysis_import_in_train(sources, extra):
    bad = core_violations(import_graph(with_source(sources, "rankrobust.train", extra)))
    assert ("rankrobust.train", "analysis.fairness") in bad


def test_core_check_ignores_type_checking_and_wiring_layer(sources):
    guarded = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import analysis.fairness"
    assert core_violations(import_graph(with_source(sources, "rankrobust.train", guarded))) == []
    typing_attr = "import typing\nif typing.TYPE_CHECKING:\n    import analysis.fairness\nelse:\n    import analysis.plots"
    bad = core_violations(import_graph(with_source(sources, "rankrobust.train", typing_attr)))
    assert bad == [("rankrobust.train", "analysis.plots")]  # the else branch runs
    assert core_violations(import_graph(with_source(sources, "rankrobust.sweeps.runner", "import analysis.fairness"))) == []


def test_cycle_check_on_synthetic_graphs():
    synthetic = {
        "rankrobust": ("", True),
        "rankrobust.a": ("import rankrobust.b", False),
        "rankrobust.b": ("def f():\n    from rankrobust import c", False),
        "rankrobust.c": ("from . import a", False),
        "rankrobust.d": ("import rankrobust.a\nimport numpy", False),
        "analysis.e": ("from rankrobust.d import x", False),
    }
    graph = import_graph(synthetic)
    assert graph["rankrobust.c"] == {"rankrobust.a"}  # relative import resolved
    assert find_cycles(graph) == [["rankrobust.a", "rankrobust.b", "rankrobust.c", "rankrobust.a"]]
    assert describe(find_cycles(graph)) == "rankrobust.a → rankrobust.b → rankrobust.c → rankrobust.a"
    acyclic = {**synthetic, "rankrobust.c": ("import numpy", False)}
    assert find_cycles(import_graph(acyclic)) == []
    assert find_cycles({"x": {"x"}}) == [["x", "x"]]


def test_cycle_check_catches_a_back_edge_in_the_real_graph(sources):
    cyclic = with_source(sources, "rankrobust.train", "def _late():\n    import rankrobust.experiment")
    cycles = find_cycles(import_graph(cyclic))
    assert any({"rankrobust.train", "rankrobust.experiment"} <= set(c) for c in cycles), describe(cycles)
