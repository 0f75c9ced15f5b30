"""The package's layers: data flows one way, and the command line sits on top.

Builds the import graph of ``tfrec_p5`` from the source (every ``import``, at module level
or inside a function) and fails on any cycle, and on any import of ``tfrec_p5.cli`` from
outside ``tfrec_p5/cli/``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tfrec_p5"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Modules ``name`` imports; ``from pkg import sub`` counts as importing ``pkg.sub``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def import_graph() -> dict[str, set[str]]:
    """``{module: {imported tfrec_p5 modules}}`` (self-imports and parents dropped)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for target in _imports(name, path):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                targets.add(target)
        graph[name] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_graph_sees_function_level_imports(tmp_path):
    """The checker itself: an import inside a function is an edge like any other."""
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from tfrec_p5.cli import main\n    import tfrec_p5.data\n")
    assert _imports("tfrec_p5.x", path) >= {"tfrec_p5.cli.main", "tfrec_p5.data"}
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert _cycles(import_graph()) == []


def test_only_the_cli_imports_the_cli():
    """``tfrec_p5.__main__`` (``python -m tfrec_p5``) is the program entry above the CLI."""
    top = ("tfrec_p5.cli", "tfrec_p5.__main__")
    offenders = sorted(name for name, targets in import_graph().items()
                       if not (name in top or name.startswith("tfrec_p5.cli."))
                       and any(t == "tfrec_p5.cli" or t.startswith("tfrec_p5.cli.")
                               for t in targets))
    assert offenders == []


def test_no_package_import_hides_in_a_function_below_the_cli():
    """Below the command line every ``tfrec_p5`` import is at module level, so the graph
    above is the whole truth. (The CLI imports lazily on purpose: ``tfrec-p5 --help`` must
    answer without loading TensorFlow.)"""
    hidden = []
    for name, path in _modules().items():
        if name == "tfrec_p5.cli" or name.startswith("tfrec_p5.cli."):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                hidden += [f"{name}:{inner.lineno}" for inner in ast.walk(node)
                           if isinstance(inner, ast.ImportFrom) and inner.module
                           and inner.module.startswith("tfrec_p5")]
    assert hidden == []


def test_training_calls_fit_from_one_module_only():
    """Every trainer runs ``model.fit`` through ``tfrec_p5.training.loop.fit``, so resume,
    early stopping and the other callbacks behave the same for every task. (A class's own
    ``fit``, e.g. ``MostPopular.fit``, is not Keras training.)"""
    callers = set()
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == "fit" and not (
                        isinstance(node.func.value, ast.Name)
                        and node.func.value.id[:1].isupper()):
                callers.add(name)
    assert callers == {"tfrec_p5.training.loop"}


def test_training_imports_no_higher_layer():
    """The training layer sits below the trainers that call it and the CLI and export."""
    above = ("tfrec_p5.models", "tfrec_p5.pretraining", "tfrec_p5.export", "tfrec_p5.cli")
    offenders = sorted((name, target) for name, targets in import_graph().items()
                       if name.startswith("tfrec_p5.training") for target in targets
                       if target.startswith(above))
    assert offenders == []
