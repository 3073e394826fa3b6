"""The import rules of ``streamer/``: no circle (lazy imports included), and layers kept apart."""

from __future__ import annotations

import ast
from pathlib import Path

import streamer


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(root: Path, path: Path, known: set[str]) -> set[str]:
    name = module_name(root, path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*pkg, base] if base else pkg)
            # ``from pkg import submodule`` imports the submodule, not the package's names
            # (a parent package's __init__ always runs first, and is no edge here).
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        for dotted in targets:
            target = dotted
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_module_of_streamer_imports_itself_back() -> None:
    assert cycles(_graph()) == []


def _graph() -> dict[str, set[str]]:
    root = Path(streamer.__file__).parent
    files = sorted(root.rglob("*.py"))
    known = {module_name(root, f) for f in files}
    return {module_name(root, f): imports(root, f, known) for f in files}


def _third_party(path: Path) -> set[str]:
    """The top-level names of what ``path`` imports from outside streamer, lazy imports included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name.partition(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.partition(".")[0])
    return found


# What every actor may import: the actor base class and the addresses between actors.
SHARED_ACTOR_MODULES = {"streamer.actors", "streamer.actors.base", "streamer.actors.routing"}


def test_no_actor_module_imports_another_actor_module() -> None:
    graph = _graph()
    actors = {name for name in graph if name.startswith("streamer.actors.")}
    crossing = {
        (name, target)
        for name in actors - SHARED_ACTOR_MODULES
        for target in graph[name]
        if target in actors - SHARED_ACTOR_MODULES
    }
    assert crossing == set()


def test_core_imports_no_pykka_and_no_prometheus_client() -> None:
    core = Path(streamer.__file__).parent / "core"
    offending = {
        (str(path.relative_to(core)), name)
        for path in sorted(core.rglob("*.py"))
        for name in _third_party(path) & {"pykka", "prometheus_client"}
    }
    assert offending == set()
