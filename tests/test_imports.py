"""The package's import graph: no cycle between modules, layers that import downwards.

The graph is read from the source with :mod:`ast`, so it sees every import: top-level,
inside functions (lazy) and under ``TYPE_CHECKING``. Its nodes are dyncal's modules
(``artifacts.run``, ``reports.compare``, a package's ``__init__`` as the package); the
layering test reads it at the granularity of the subpackages.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

import dyncal

PACKAGE = Path(dyncal.__file__).parent
LAYERED = ("artifacts", "calibrate", "analysis", "reports")
"""The subpackages no import cycle may pass through."""


def _subpackage(module: str) -> str:
    """The layer of a graph node: ``calibrate.policy`` -> ``calibrate``."""
    return module.split(".")[0]


def _imported(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, int]]:
    """Every dyncal module ``tree`` imports, at any depth, with its line."""
    out: list[tuple[str, int]] = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            out += [(a.name, n.lineno) for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            if n.level:  # relative: resolve against this module's package
                base = module.split(".")
                base = base[: len(base) - n.level + (1 if is_package else 0)]
                target = ".".join([*base, *([n.module] if n.module else [])])
            else:
                target = n.module or ""
            # ``from dyncal.reports import compare`` imports the submodule: name it, and the
            # graph keeps the longest prefix that is a module
            out += [(f"{target}.{a.name}", n.lineno) for a in n.names]
    return out


def package_graph(root: Path) -> dict[str, dict[str, str]]:
    """``{module: {imported module: "file:line" of one such import}}`` of the package at ``root``.

    Modules are named without the leading ``dyncal.`` (the package itself is ``dyncal``); an
    import of a name inside a module counts as an import of that module.
    """
    modules: dict[str, tuple[Path, bool]] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        is_package = rel.name == "__init__"
        modules[".".join(rel.parts[:-1] if is_package else rel.parts)] = (path, is_package)

    def node(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if not name:
            return None
        return name.partition(".")[2] or "dyncal"

    graph: dict[str, dict[str, str]] = {}
    for module, (path, is_package) in modules.items():
        source = node(module)
        assert source is not None
        edges = graph.setdefault(source, {})
        for target, line in _imported(ast.parse(path.read_text(encoding="utf-8")), module, is_package):
            imported = node(target) if target.split(".")[0] == "dyncal" else None
            if imported is not None and imported != source:
                edges.setdefault(imported, f"{path.relative_to(root.parent)}:{line}")
    return graph


def _layers(graph: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """The graph between subpackages (and top-level modules)."""
    layers: dict[str, dict[str, str]] = {}
    for a, out in graph.items():
        edges = layers.setdefault(_subpackage(a), {})
        for b, where in out.items():
            if _subpackage(b) != _subpackage(a):
                edges.setdefault(_subpackage(b), where)
    return layers


def cycle_through(graph: dict[str, dict[str, str]], start: str) -> list[str] | None:
    """A shortest import cycle ``[start, ..., start]`` through ``start``, or None."""
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in graph.get(node, {}):
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if nxt not in parent:
                parent[nxt] = node
                queue.append(nxt)
    return None


def _show(graph: dict[str, dict[str, str]], cycle: list[str]) -> str:
    return " -> ".join(f"{a} ({graph[a][b]})" for a, b in zip(cycle[:-1], cycle[1:], strict=True)) + f" -> {cycle[-1]}"


@pytest.fixture(scope="module")
def dyncal_graph() -> dict[str, dict[str, str]]:
    """The installed package's graph, read once for the tests that only read it."""
    return package_graph(PACKAGE)


def test_no_import_cycle_between_modules(dyncal_graph: dict[str, dict[str, str]]):
    """Every module, the CLI included; a cycle is a set of modules that import each other."""
    graph = dyncal_graph
    assert {"artifacts.run", "reports.pdf", "cli"} <= set(graph), "the graph misses a module: the walk is broken"
    for name in sorted(graph):
        cycle = cycle_through(graph, name)
        assert cycle is None, f"import cycle: {_show(graph, cycle)}"


def test_no_import_cycle_between_subpackages(dyncal_graph: dict[str, dict[str, str]]):
    layers = _layers(dyncal_graph)
    assert set(LAYERED) <= set(layers), "the graph misses a subpackage: the walk is broken"
    layers = {a: {b: w for b, w in out.items() if b != "cli"} for a, out in layers.items() if a != "cli"}
    for name in sorted(layers):
        cycle = cycle_through(layers, name)
        assert cycle is None, f"import cycle: {_show(layers, cycle)}"


def test_the_layers_import_downwards_only(dyncal_graph: dict[str, dict[str, str]]):
    # artifacts (the files) below calibrate (scores, solvers, frontier) below analysis
    # (stages, measurement) below reports; each imports only those below it
    graph = _layers(dyncal_graph)
    below = {"artifacts": (), "calibrate": ("artifacts",), "analysis": ("artifacts", "calibrate")}
    for name, allowed in below.items():
        upward = {n for n in graph[name] if n in LAYERED and n not in allowed}
        assert not upward, f"{name} imports {sorted(upward)}: " + ", ".join(graph[name][n] for n in sorted(upward))


def test_the_graph_sees_lazy_relative_and_type_checking_imports(tmp_path):
    root = tmp_path / "dyncal"
    for sub in ("artifacts", "calibrate"):
        (root / sub).mkdir(parents=True)
        (root / sub / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "artifacts" / "doc.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..calibrate import policy\n"
    )
    (root / "calibrate" / "policy.py").write_text("def f():\n    import dyncal.artifacts.doc\n")
    graph = package_graph(root)
    assert graph["artifacts.doc"] == {"calibrate.policy": "dyncal/artifacts/doc.py:3"}
    assert graph["calibrate.policy"] == {"artifacts.doc": "dyncal/calibrate/policy.py:2"}
    assert cycle_through(graph, "artifacts.doc") == ["artifacts.doc", "calibrate.policy", "artifacts.doc"]
    assert cycle_through(_layers(graph), "artifacts") == ["artifacts", "calibrate", "artifacts"]
    (root / "calibrate" / "policy.py").write_text("from dyncal import errors\n")
    assert cycle_through(package_graph(root), "artifacts.doc") is None
