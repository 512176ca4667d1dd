"""The house: lower levels never import higher ones, and no modules import each other in a cycle.

Every import in portnn's source counts, those inside functions too: a lazy import
is still a dependency. The levels, bottom up:

* foundation: backends, checks, math (functional, losses, metrics, optim, init), data;
* ``portnn.nn``: the module protocol, the layers, the combinators;
* the tools that use models: train (the step, the loop, callbacks, strategies), io, export, estimators, testing, ...;
* the entry points: the package itself and the CLI.
"""

from __future__ import annotations

import ast
from pathlib import Path

import portnn

PACKAGE = Path(portnn.__file__).parent

FOUNDATION = {
    "_checks", "_guard", "_rwlock", "_signals", "_tree", "_version", "backend", "data",
    "datasets", "functional", "init", "losses", "metrics", "weights",
    "optim", "optim.base", "optim.optimizers", "optim.schedules", "optim.transforms",
    "metric_base", "class_scores",
}
ENTRY = {"portnn", "portnn.__main__", "portnn.cli"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _exists(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def import_graph() -> dict[str, set[str]]:
    """portnn module -> the portnn modules it imports (anywhere in its source)."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != "portnn":
                    continue
                for alias in node.names:  # "from . import training" imports a module
                    full = f"{target}.{alias.name}"
                    found.add(full if _exists(full) else target)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.split(".")[0] == "portnn")
        graph[name] = found - {name}
    return graph


def level(name: str) -> int:
    if name in ENTRY or name.startswith("portnn.cli."):
        return 3
    if name == "portnn.nn" or name.startswith("portnn.nn."):
        return 1
    if name.removeprefix("portnn.") in FOUNDATION:
        return 0
    return 2


def test_no_module_imports_one_above_it():
    upward = [
        f"{name} (level {level(name)}) imports {dep} (level {level(dep)})"
        for name, deps in import_graph().items()
        for dep in sorted(deps)
        if level(dep) > level(name)
    ]
    assert not upward, "\n".join(upward)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for dep in sorted(graph.get(name, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        state[name] = 2
        path.pop()
        return None

    for name in sorted(graph):
        if name not in state:
            found = visit(name)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    # a package's __init__ gathers its modules; a module importing its own package is the cycle
    found = _cycle(graph)
    assert found is None, "import cycle: " + " -> ".join(found)


def test_the_checker_sees_lazy_imports_and_cycles(tmp_path):
    # the two checks above are only as good as the graph: it must see imports inside functions
    graph = import_graph()
    assert "portnn.nn.summary" not in graph["portnn.nn.module"] or level("portnn.nn.summary") == 1
    assert "portnn.io" in graph["portnn.export"]  # a function-level import in export_onnx
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert level("portnn.train.loop") > level("portnn.nn.layers") > level("portnn.losses")
