"""The package's imports point one way: no import circle, counting imports inside functions and the
package ``__init__`` that importing a submodule runs.

Every ``import`` / ``from ... import`` of an ``inducer`` module, wherever it sits (module level, inside
a function, under ``try``), is an edge; only ``if TYPE_CHECKING:`` blocks, which never run, are left
out. A circle (a strongly connected set of modules) fails the test, naming its modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "inducer"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(child) for statement in node.body for child in ast.walk(statement)}
    return skipped


def import_graph() -> dict[str, set[str]]:
    """Module -> the inducer modules it imports (a package's ``__init__`` is the package's name)."""
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in paths}
    for name, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skipped = _type_checking_nodes(tree)
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the module's package, climbing level - 1
                    base = package[: len(package) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module
                for alias in node.names:
                    if f"{target}.{alias.name}" in paths:  # from package import submodule
                        graph[name].add(f"{target}.{alias.name}")
                    elif target in paths:
                        graph[name].add(target)
            elif isinstance(node, ast.Import):
                graph[name] |= {alias.name for alias in node.names if alias.name in paths}
    # Importing inducer.a.b first runs the package inducer.a's __init__: an edge to it too, unless the
    # importer is inside that package (its __init__ is then already running).
    for name, targets in graph.items():
        for target in list(targets):
            parts = target.split(".")
            for depth in range(2, len(parts)):
                package = ".".join(parts[:depth])
                if package in paths and not (name == package or name.startswith(package + ".")):
                    targets.add(package)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected sets of more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm; the package is shallow enough to recurse
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_scanner_finds_a_circle_through_a_function_level_import():
    graph = {"a": {"b"}, "b": set(), "c": {"c"}}
    assert circles(graph) == [["c"]]
    graph["b"].add("a")
    assert sorted(circles(graph)) == [["a", "b"], ["c"]]
    assert "inducer.runtime.adapter" in import_graph()["inducer.io.adapter_format"]  # a real edge is seen


def test_the_package_has_no_import_circle():
    assert circles(import_graph()) == []


# The layers, bottom first (docs/architecture.md): a module imports only its own layer and those below.
# The package root (the lazy public API), inducer.peft and __main__ are entry points above them all.
LAYERS = ("version", "errors", "core", "methods", "runtime", "io", "sizing", "data", "training", "app",
          "integrations", "serve", "cli")
ENTRY_POINTS = ("inducer", "inducer.peft", "inducer.__main__")


def _layer(module: str) -> int:
    if module in ENTRY_POINTS:
        return len(LAYERS)
    return LAYERS.index(module.split(".")[1])


def test_every_module_is_in_a_layer():
    assert [m for m in import_graph() if m not in ENTRY_POINTS and m.split(".")[1] not in LAYERS] == []


def test_imports_point_down_the_layers():
    graph = import_graph()
    upward = sorted((a, b) for a, targets in graph.items() for b in targets if _layer(b) > _layer(a))
    assert upward == []
