"""Every public name has a docstring, and the API reference page of its subpackage shows it.

Why: the API reference (``make docs``, ``docs/api/``) is generated from the docstrings, so
a public name without one is a blank entry, and a name the page does not list is missing
from the reference altogether. "Public" means listed in ``__all__`` of ``tfrec_p5`` or of
one of its ``SUBPACKAGES``. Everything is read from the source with ``ast``, as the
documentation build reads it: nothing is imported (no TensorFlow), so this takes well under
a second. A name is followed through ``from ... import`` re-exports and through the lazy
``_EXPORTS`` tables of ``tfrec_p5.tasks`` / ``tfrec_p5.pretraining`` to where it is defined;
a constant's docstring is the string literal right after its assignment (what mkdocstrings
shows), a subpackage's is its ``__init__`` docstring.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


@cache
def _tree(module: str) -> ast.Module:
    path = REPO.joinpath(*module.split("."))
    file = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return ast.parse(file.read_text(encoding="utf-8"), filename=str(file))


def _literal(module: str, node: ast.expr):
    """The value of a literal ``__all__`` / ``SUBPACKAGES`` / ``_EXPORTS`` expression:
    constants, lists, tuples, dicts, ``*NAME`` and ``sorted(NAME)`` of module-level names."""
    if isinstance(node, ast.Name):
        return _literal(module, _assigned(module, node.id))
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "sorted":
        return sorted(_literal(module, node.args[0]))
    if isinstance(node, ast.List | ast.Tuple):
        values = []
        for elt in node.elts:
            if isinstance(elt, ast.Starred):
                values.extend(_literal(module, elt.value))
            else:
                values.append(_literal(module, elt))
        return values
    return ast.literal_eval(node)


def _assigned(module: str, name: str) -> ast.expr:
    for stmt in _tree(module).body:
        if isinstance(stmt, ast.Assign) and any(getattr(t, "id", None) == name
                                                for t in stmt.targets):
            return stmt.value
        if isinstance(stmt, ast.AnnAssign) and getattr(stmt.target, "id", None) == name:
            return stmt.value
    raise AssertionError(f"{module} assigns no {name}")


def public_names(module: str) -> list[str]:
    return list(_literal(module, _assigned(module, "__all__")))


SUBPACKAGES = tuple(_literal("tfrec_p5", _assigned("tfrec_p5", "SUBPACKAGES")))
PACKAGES = ("tfrec_p5", *(f"tfrec_p5.{name}" for name in SUBPACKAGES))


def _is_module(module: str) -> bool:
    path = REPO.joinpath(*module.split("."))
    return (path / "__init__.py").is_file() or path.with_suffix(".py").is_file()


def _binds(module: str, name: str) -> bool:
    """Whether ``module``'s top level defines, assigns or imports ``name``."""
    for stmt in _tree(module).body:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound = {stmt.name}
        elif isinstance(stmt, ast.Assign):
            bound = {getattr(t, "id", None) for t in stmt.targets}
        elif isinstance(stmt, ast.AnnAssign):
            bound = {getattr(stmt.target, "id", None)}
        elif isinstance(stmt, ast.ImportFrom | ast.Import):
            bound = {a.asname or a.name for a in stmt.names}
        else:
            continue
        if name in bound:
            return True
    return False


def definition(module: str, name: str) -> tuple[str, str]:
    """``(module where name is defined, its docstring or "")``, following re-exports."""
    body = _tree(module).body
    for i, stmt in enumerate(body):
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) \
                and stmt.name == name:
            return module, ast.get_docstring(stmt) or ""
        targets = (stmt.targets if isinstance(stmt, ast.Assign)
                   else [stmt.target] if isinstance(stmt, ast.AnnAssign) else [])
        if any(getattr(t, "id", None) == name for t in targets):
            after = body[i + 1] if i + 1 < len(body) else None
            doc = (after.value.value if isinstance(after, ast.Expr)
                   and isinstance(after.value, ast.Constant)
                   and isinstance(after.value.value, str) else "")
            return module, doc
        if isinstance(stmt, ast.ImportFrom) and stmt.level == 0:
            for alias in stmt.names:
                if (alias.asname or alias.name) == name:
                    # What Python binds: a name the module itself binds wins over a
                    # submodule of the same name (``data.sources.synthetic`` the function).
                    if _binds(stmt.module, alias.name) or not _is_module(
                            f"{stmt.module}.{alias.name}"):
                        return definition(stmt.module, alias.name)
                    target = f"{stmt.module}.{alias.name}"
                    return target, ast.get_docstring(_tree(target)) or ""
    if module == "tfrec_p5" and name in SUBPACKAGES:
        target = f"tfrec_p5.{name}"
        return target, ast.get_docstring(_tree(target)) or ""
    try:
        lazy = _literal(module, _assigned(module, "_EXPORTS"))
    except AssertionError:
        lazy = {}
    if name in lazy:
        return definition(f"{module}.{lazy[name]}", name)
    raise AssertionError(f"{module}.{name} is in __all__ but defined nowhere")


PUBLIC = [(package, name) for package in PACKAGES for name in public_names(package)]


def test_every_subpackage_is_listed():
    found = {p.name for p in (REPO / "tfrec_p5").iterdir()
             if (p / "__init__.py").is_file()}
    assert found == set(SUBPACKAGES), "tfrec_p5.SUBPACKAGES is out of date"


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_have_docstrings(package):
    assert (ast.get_docstring(_tree(package)) or "").strip(), f"{package} has no docstring"


def test_every_public_name_has_a_docstring():
    missing = [f"{package}.{name} (defined in {where})"
               for package, name in PUBLIC
               for where, doc in [definition(package, name)] if not doc.strip()]
    assert not missing, "public names without a docstring:\n  " + "\n  ".join(missing)


def _shadowed(module: str, name: str) -> bool:
    """Whether ``from pkg import name`` in ``module`` names a function or class that shares
    its name with the submodule ``pkg.name``: griffe (static) takes the submodule, so
    ``::: module`` would not show it and the page needs its own directive for it."""
    for stmt in _tree(module).body:
        if isinstance(stmt, ast.ImportFrom) and stmt.level == 0:
            for alias in stmt.names:
                if (alias.asname or alias.name) == name:
                    return (_is_module(f"{stmt.module}.{alias.name}")
                            and _binds(stmt.module, alias.name))
    return False


def _page(package: str) -> Path:
    return DOCS / "api" / ("index.md" if package == "tfrec_p5"
                           else f"{package.removeprefix('tfrec_p5.')}.md")


@pytest.mark.parametrize("package", PACKAGES)
def test_api_page_shows_every_public_name(package):
    """A page shows a name through ``::: package`` (mkdocstrings renders the members of a
    literal ``__all__``), through ``members:`` under ``::: package`` or under the module
    that defines it, or through its own ``::: module.name`` directive; a subpackage
    through its own page."""
    page = _page(package)
    assert page.is_file(), f"no API page {page.relative_to(REPO)} for {package}"
    text = page.read_text(encoding="utf-8")
    shown = set(re.findall(r"^::: *([\w.]+)", text, re.M))
    listed = set(re.findall(r"^ +- *([\w.]+) *$", text, re.M))  # members: lists
    literal = _assigned(package, "__all__")
    static_all = isinstance(literal, ast.List | ast.Tuple) and all(
        isinstance(elt, ast.Constant) for elt in literal.elts)
    missing = []
    for name in public_names(package):
        where, _ = definition(package, name)
        if package in shown and (static_all or name in listed) \
                and not _shadowed(package, name):
            continue
        if where in PACKAGES and _page(where).is_file():
            continue
        if not ({f"{package}.{name}", f"{where}.{name}"} & shown
                or (where in shown and name in listed)):
            missing.append(name)
    assert not missing, (f"{page.relative_to(REPO)} does not show {', '.join(missing)}: "
                         f"add a '::: module.name' line for each")


def test_examples_render_as_code():
    """A docstring whose body is *only* an indented example loses that indentation when
    it is cleaned (``inspect.cleandoc``), so the site would show the code as prose (and
    ``x["k"](y)`` as a broken link): start the body with a sentence."""
    bad = []
    for file in sorted((REPO / "tfrec_p5").rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            body = getattr(node, "body", None)
            if not (isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef
                               | ast.AsyncFunctionDef) and body
                    and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                continue
            rest = [line for line in body[0].value.value.splitlines()[1:] if line.strip()]
            if rest and min(len(s) - len(s.lstrip()) for s in rest) > body[0].col_offset:
                bad.append(f"{file.relative_to(REPO)}:{body[0].lineno}")
    assert not bad, "docstrings whose example would render as prose:\n  " + "\n  ".join(bad)
