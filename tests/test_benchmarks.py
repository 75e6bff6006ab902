"""The benchmarks use the library only through its public API: no private names, no patching."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.rglob("*.py"))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _root(node: ast.expr) -> tuple[str | None, list[str]]:
    """The name an attribute chain starts from, and the attribute names along it."""
    attrs = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    return (node.id if isinstance(node, ast.Name) else None), attrs[::-1]


def violations(source: str) -> list[str]:
    """Every private import from ``inducer``, private attribute of a name bound to ``inducer``,
    assignment to an attribute of one, and private method override of a class from ``inducer``."""
    tree = ast.parse(source)
    bound: set[str] = set()  # names bound to inducer modules or objects imported from them
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "inducer":
                    if any(_private(part) for part in alias.name.split(".")):
                        found.append(f"line {node.lineno}: import {alias.name}")
                    bound.add(alias.asname or "inducer")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "inducer":
            for alias in node.names:
                if any(_private(part) for part in [*node.module.split("."), alias.name]):
                    found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
                bound.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            root, attrs = _root(node)
            if root in bound and _private(node.attr):
                found.append(f"line {node.lineno}: {root}.{'.'.join(attrs)}")
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Attribute) and _root(target)[0] in bound:
                found.append(f"line {node.lineno}: assigns {_root(target)[0]}.{'.'.join(_root(target)[1])}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr":
            if node.args and _root(node.args[0])[0] in bound:
                found.append(f"line {node.lineno}: setattr on {_root(node.args[0])[0]}")
        if isinstance(node, ast.ClassDef) and any(_root(b)[0] in bound for b in node.bases):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and _private(item.name):
                    found.append(f"line {item.lineno}: {node.name} overrides {item.name}")
    return sorted(set(found))


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(BENCHMARKS)))
def test_benchmark_uses_only_public_inducer_names(path):
    problems = violations(path.read_text())
    assert not problems, f"{path.relative_to(BENCHMARKS.parent)} reaches into inducer's internals: {problems}"


@pytest.mark.parametrize(
    "source",
    [
        "from inducer.sizing.presets import _Counter",
        "from inducer import _private_module",
        "import inducer._hidden",
        "from inducer import base_models as models\nmodels._smollm_folder()",
        "import inducer\ninducer.training._log",
        "from inducer import training\ntraining.encode_split = lambda: None",
        "import inducer.training.trainer\ninducer.training.encode_split = None",
        "from inducer import training\nsetattr(training, 'encode_split', None)",
        "from inducer.training.trainer import Trainer\n"
        "class T(Trainer):\n    def _log(self, r):\n        pass",
    ],
)
def test_checker_catches(source):
    assert violations(source)


@pytest.mark.parametrize(
    "source",
    [
        "import inducer\ninducer.attach\ninducer.__version__",
        "from inducer.app.compare import pick_lr, LR_GRIDS",
        "import torch\ntorch._C\nconfig._attn_implementation = 'sdpa'",
        "from inducer.training.trainer import Trainer\n"
        "class T(Trainer):\n    def __init__(self):\n        pass",
    ],
)
def test_checker_allows(source):
    assert not violations(source)


def _documented(module: str, name: str) -> bool:
    import inducer

    if module == "inducer":
        return name in inducer.__all__ or name == "__version__"
    return name in inducer.SUBMODULE_API.get(module, ())


def undocumented(source: str) -> list[str]:
    """Every name the source takes from inducer that is neither in ``inducer.__all__`` nor in
    ``inducer.SUBMODULE_API`` (imports, and attribute chains from a name bound to inducer)."""
    import inducer

    tree = ast.parse(source)
    _mark_parents(tree)  # only whole attribute chains are checked, not their prefixes
    found, roots = [], {}  # roots: local name -> the inducer module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "inducer":
                    roots[alias.asname or "inducer"] = alias.name if alias.asname else "inducer"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "inducer":
            for alias in node.names:
                if not _documented(node.module, alias.name):
                    found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
    modules = set(inducer.SUBMODULE_API) | {m.rpartition(".")[0] for m in inducer.SUBMODULE_API}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or isinstance(getattr(node, "parent", None), ast.Attribute):
            continue
        root, attrs = _root(node)
        if root not in roots:
            continue
        module = roots[root]
        for depth, attr in enumerate(attrs):  # walk down submodules, then one documented name
            candidate = f"{module}.{attr}"
            if candidate in modules and depth < len(attrs) - 1:
                module = candidate
                continue
            if not _documented(module, attr):
                found.append(f"line {node.lineno}: {root}.{'.'.join(attrs[:depth + 1])}")
            break
    return sorted(set(found))


def _mark_parents(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            child.parent = node


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(BENCHMARKS)))
def test_benchmarks_use_only_the_documented_api(script):
    assert undocumented(script.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("source", [
    "from inducer.runtime.state import task_head_names",
    "import inducer\ninducer.runtime.seams.install(model)",
    "import inducer\ninducer.training.trainer.cpu_processes()",
    "from inducer.core import kernels",
])
def test_the_api_check_catches(source):
    assert undocumented(source)


def test_every_documented_entry_point_exists_has_a_docstring_and_is_in_the_docs():
    import importlib

    import inducer

    api_page = (BENCHMARKS.parent / "docs" / "api.md").read_text(encoding="utf-8")
    for module, names in inducer.SUBMODULE_API.items():
        loaded = importlib.import_module(module)
        assert f"`{module}`" in api_page, module
        for name in names:
            value = getattr(loaded, name)
            assert (getattr(value, "__doc__", None) or "").strip(), f"{module}.{name}"
