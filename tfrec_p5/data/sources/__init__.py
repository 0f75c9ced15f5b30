"""Data sources: each turns a spec string into the same ``Interactions`` table.

    load("synthetic")                     # built-in, offline
    load("movielens:../shared/data/ml-100k")
    load("amazon:../shared/data/amazon/Beauty.txt")
    load("csv:ratings.csv?user=uid&item=movie&rating=stars")
    load("parquet:events.parquet")
    load("tfds:movielens/100k-ratings")

Extension point: ``register("myformat", fn)`` where ``fn(path: str, **options)`` returns an
``Interactions``; then ``load("myformat:PATH?key=value")`` works everywhere, CLI included.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from urllib.parse import parse_qsl

from tfrec_p5.data.errors import DataError
from tfrec_p5.data.interactions import Interactions
from tfrec_p5.data.sources.synthetic import synthetic

_REGISTRY: dict[str, Callable[..., Interactions]] = {}
_CATALOGS: dict[str, Callable] = {}


def register(scheme: str, loader: Callable[..., Interactions],
             catalog: Callable | None = None) -> None:
    """Make ``load(f"{scheme}:PATH?opt=value")`` call ``loader(PATH, opt="value")``.

    ``catalog(PATH, opt="value")``, when the format has item / user metadata files, returns
    the ``tfrec_p5.data.catalog.Catalog`` they describe (``load_catalog``).
    """
    _REGISTRY[scheme] = loader
    if catalog is not None:
        _CATALOGS[scheme] = catalog


def catalog_loader(spec: str) -> tuple[Callable | None, str, dict]:
    """``(catalog function or None, path, options)`` of a data spec's scheme."""
    scheme, path, options = parse_spec(spec)
    if scheme != "synthetic" and scheme not in _REGISTRY:
        _load_builtin_loaders()
    return _CATALOGS.get(scheme), path, options


def _coerce(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


#: ``key=value`` pairs joined by ``&``: what may follow the ``?`` that starts options.
_OPTIONS = re.compile(r"([A-Za-z_][A-Za-z0-9_]*=[^&]*(&[A-Za-z_][A-Za-z0-9_]*=[^&]*)*)?")


def _split_options(text: str) -> tuple[str, str]:
    """``(path, options)``: options start at the first ``?`` followed only by
    ``key=value`` pairs, so a ``?`` inside a file name (``what?.csv``) stays in the path;
    ``??`` is a literal ``?`` wherever it stands (``a??b=1.csv`` is the file
    ``a?b=1.csv``)."""
    marker = "\x00"
    text = text.replace("??", marker)
    for at in (i for i, c in enumerate(text) if c == "?"):
        if _OPTIONS.fullmatch(text[at + 1:]):
            return text[:at].replace(marker, "?"), text[at + 1:].replace(marker, "?")
    return text.replace(marker, "?"), ""


def parse_spec(spec: str) -> tuple[str, str, dict]:
    """``"csv:a.csv?user=uid"`` → ``("csv", "a.csv", {"user": "uid"})``."""
    if ":" not in spec.split("?")[0]:  # "synthetic?num_users=10": no path
        scheme, query = _split_options(spec)
        path = ""
    else:
        scheme, _, rest = spec.partition(":")
        path, query = _split_options(rest)
    options = {k: _coerce(v) for k, v in parse_qsl(query, keep_blank_values=True)}
    return scheme, path, options


def resolve_spec(spec: str) -> str:
    """``spec`` with its path made absolute (unchanged when it names no existing path), so
    a command run later from another folder finds the same file.

        resolve_spec("csv:ratings.csv?user=uid")   # 'csv:/home/me/ratings.csv?user=uid'
    """
    scheme, path, _ = parse_spec(spec)
    if not path or os.path.isabs(path) or not os.path.exists(path):
        return spec
    _, query = _split_options(spec.partition(":")[2])
    absolute = os.path.abspath(path).replace("?", "??")
    return f"{scheme}:{absolute}" + (f"?{query}" if query else "")


def load(spec: str = "synthetic", **options) -> Interactions:
    """Load the interactions a spec names, as one ``Interactions`` table.

    One string names any data (the CLI's ``--data`` is this spec), so every command and
    notebook takes any source. Schemes: ``synthetic``, ``movielens``, ``amazon``, ``csv``,
    ``parquet``, ``tfds`` and those added with ``register``; keyword ``options`` override
    the spec's ``?key=value`` pairs:

        load("synthetic")                                   # built-in, offline
        load("movielens:../shared/data/ml-100k")
        load("csv:ratings.csv?user=uid&item=movie&rating=stars")
        load("synthetic", num_users=500, num_items=300)
    """
    scheme, path, spec_options = parse_spec(spec)
    spec_options.update(options)
    if scheme == "synthetic":
        return synthetic(**spec_options)
    if scheme not in _REGISTRY:
        _load_builtin_loaders()
    if scheme not in _REGISTRY:
        known = ", ".join(sorted(["synthetic", *_REGISTRY]))
        raise DataError(f"unknown data spec {spec!r}: scheme {scheme!r} is not one of {known}",
                        field="data")
    return _REGISTRY[scheme](path, **spec_options)


def _load_builtin_loaders() -> None:
    """Import the built-in file/TFDS sources on first use (they register themselves)."""
    import importlib

    for module in ("movielens", "amazon", "tabular", "tfds_source"):
        try:
            importlib.import_module(f"tfrec_p5.data.sources.{module}")
        except ModuleNotFoundError as err:
            if err.name != f"tfrec_p5.data.sources.{module}":
                raise


__all__ = ["catalog_loader", "load", "parse_spec", "register", "resolve_spec", "synthetic"]
