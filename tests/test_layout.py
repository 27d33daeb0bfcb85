"""The package's shape, checked from its source: no import cycles between pollen's modules
(``TYPE_CHECKING`` imports included: a cycle a type checker sees is a cycle a reader sees),
only ``pollen.store`` talks to Redis, and the producer-side modules never import the worker.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pollen"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    """Every pollen module ``path`` imports, at any depth of its body (lazy imports too)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {m for m in found if m.split(".")[0] == "pollen"}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        # "from pollen.worker import steps" names a module; "from pollen.x import f" names x
        graph[name] = {m for m in _imports(path, name) if m in modules and m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Groups of modules that reach each other through imports (each group once, sorted).

    A package ``__init__`` that re-exports its own submodules is not a cycle of the design,
    so edges from a package to its own submodules are left out.
    """
    edges = {
        name: {t for t in targets if not (t.startswith(name + ".") and _is_package(name))}
        for name, targets in graph.items()
    }
    reach = {name: _reachable(edges, name) for name in edges}
    groups = {
        tuple(sorted({name} | {other for other in reach[name] if name in reach[other]}))
        for name in edges
        if name in reach[name]
    }
    return sorted(list(group) for group in groups)


def _reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(edges.get(start, ()))
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo += edges.get(current, ())
    return seen


def _is_package(name: str) -> bool:
    return (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()


def test_no_import_cycles_between_modules() -> None:
    assert _cycles(_graph()) == []


def test_cycle_finder_finds_a_cycle() -> None:
    """The check above can fail: a planted cycle is reported."""
    graph = {"pollen.a": {"pollen.b"}, "pollen.b": {"pollen.c"}, "pollen.c": {"pollen.a"}}
    assert _cycles(graph) == [["pollen.a", "pollen.b", "pollen.c"]]


def test_only_the_store_imports_redis() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        if name.startswith(("pollen.store", "pollen.local")):  # local starts a Redis server
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(n == "redis" or n.startswith("redis.") for n in names):
                offenders.append(name)
    assert sorted(set(offenders)) == []


@pytest.mark.parametrize(
    "module",
    [
        "pollen.client",
        "pollen.contract",
        "pollen.payloads",
        "pollen.models",
        "pollen.settings",
        "pollen.errors",
    ],
)
def test_producer_modules_never_import_the_worker(module: str) -> None:
    seen = _reachable(_graph(), module)
    assert not {
        m for m in seen if m.startswith(("pollen.worker", "pollen.simulator", "pollen.dashboard"))
    }


def test_the_dashboard_reads_through_the_producer_client_and_the_store() -> None:
    """The dashboard is a face over ``AsyncPollen`` and the store's operations: it never
    reaches into the worker, the simulator or the local processes."""
    graph = _graph()
    dashboard = {name for name in graph if name.startswith("pollen.dashboard")}
    assert {"pollen.dashboard.app", "pollen.dashboard.views"} <= dashboard
    seen = set().union(*(_reachable(graph, name) for name in dashboard))
    assert not {
        m for m in seen if m.startswith(("pollen.worker", "pollen.simulator", "pollen.local"))
    }
