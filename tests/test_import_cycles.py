"""The project's modules import each other one way only.

Every import statement counts, at module level or inside a function (a deferred import
hides a cycle from the interpreter, not from the design). The packages layer as
fasttalk (the project: settings, URLs, ASGI, Celery) -> stt (the service) -> monitoring
(metrics, registry, health checks, given what to watch): no package imports one above it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fasttalk", "stt", "monitoring")


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if "migrations" in parts:
                continue  # generated; they name models by string
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[:len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_names(module: str, path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, path, node)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return names


def import_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports."""
    modules = project_modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = {resolve(name) for name in imported_names(module, path)}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    packages: dict[str, set[str]] = {package: set() for package in PACKAGES}
    for module, targets in graph.items():
        for target in targets:
            if target.split(".")[0] != module.split(".")[0]:
                packages[module.split(".")[0]].add(target.split(".")[0])
    return packages


def test_the_checker_finds_a_cycle_when_there_is_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_checker_sees_every_kind_of_import(tmp_path):
    module = tmp_path / "x.py"
    module.write_text("import stt.audio\nfrom stt import protocol\ndef f():\n    from . import y\n")
    assert imported_names("pkg.x", module) == {"stt.audio", "stt", "stt.protocol", "pkg", "pkg.y"}


def test_the_graph_covers_the_project():
    graph = import_graph()
    assert {"stt.session.core", "monitoring.registry", "fasttalk.urls"} <= set(graph)
    assert "stt.session.state" in graph["stt.session.core"]


def test_no_module_imports_itself_back():
    assert cycles(import_graph()) == []


def test_packages_depend_one_way():
    assert cycles(package_graph(import_graph())) == []


def test_monitoring_imports_nothing_of_the_service_or_the_project():
    """It watches stt through what it is handed (monitoring/sources.py, the session's
    registry and metrics calls), so stt may use it freely."""
    assert package_graph(import_graph())["monitoring"] == set()
