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

from collections.abc import Callable
from urllib.parse import parse_qsl

from tfrec_p5.data.errors import DataError
from tfrec_p5.data.interactions import Interactions
from tfrec_p5.data.sources.synthetic import synthetic

_REGISTRY: dict[str, Callable[..., Interactions]] = {}


def register(scheme: str, loader: Callable[..., Interactions]) -> None:
    """Make ``load(f"{scheme}:PATH?opt=value")`` call ``loader(PATH, opt="value")``."""
    _REGISTRY[scheme] = loader


def _coerce(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def parse_spec(spec: str) -> tuple[str, str, dict]:
    """``"csv:a.csv?user=uid"`` → ``("csv", "a.csv", {"user": "uid"})``."""
    head, qmark, query = spec.partition("?") if ":" not in spec.split("?")[0] else (spec, "", "")
    if qmark:  # "synthetic?num_users=10": no path
        scheme, path = head, ""
    else:
        scheme, _, rest = spec.partition(":")
        path, _, query = rest.partition("?")
    options = {k: _coerce(v) for k, v in parse_qsl(query, keep_blank_values=True)}
    return scheme, path, options


def load(spec: str = "synthetic", **options) -> Interactions:
    """Load the interactions a spec names (see module docstring)."""
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


__all__ = ["load", "parse_spec", "register", "synthetic"]
