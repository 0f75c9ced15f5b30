"""``Config``: what every hyper-parameter dataclass shares (strict dicts, JSON, replace).

Why: configs travel as JSON (``--config FILE.json``, export metadata, backbone manifests).
A typo in a key must fail loudly instead of silently training the default, and a config
must survive ``to_dict`` → JSON → ``from_dict`` unchanged.

    @dataclass
    class MyConfig(Config):
        dim: int = 32

    MyConfig.from_dict({"dim": 64})          # MyConfig(dim=64)
    MyConfig.from_dict({"dimm": 64})         # ValueError: unknown config key(s) ['dimm']
    MyConfig(dim=-4)                         # ValueError: MyConfig.dim must be >= 1, got -4

Every field is checked against its annotation (``learning_rate: "fast"`` is refused, not
carried into training) and against a range chosen by its name: sizes, counts and rates
must be positive (``POSITIVE``), regularizers and patience non-negative
(``NON_NEGATIVE``), dropout-like shares below 1 (``BELOW_ONE``). A subclass that defines
``__post_init__`` calls ``super().__post_init__()`` once its own normalization is done.

An option that does nothing for the chosen variant cannot be set: a config class lists
them in ``INERT_UNLESS`` (``{field: (switch, values that use it)}``), and a field set
away from its default while its switch has another value is refused:

    UnifiedConfig(retrieval_loss="squared", temperature=0.1)
    # ValueError: UnifiedConfig.temperature does nothing with retrieval_loss='squared'
    # (it is used when retrieval_loss is 'softmax')
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

C = TypeVar("C", bound="Config")


def _plain(value: Any) -> Any:
    """Tuples → lists (JSON's shape), recursively."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


#: Fields that must be > 0 (integers: >= 1); a tuple's every element, likewise.
POSITIVE = frozenset({
    "embedding_dim", "tower_output_dim", "feature_dim", "ffn_dim", "max_text_tokens",
    "hidden_units", "ranking_hidden_units", "batch_size", "eval_batch_size",
    "next_item_batch_size", "epochs", "min_epochs", "steps_per_execution", "learning_rate",
    "max_len", "num_blocks", "num_heads", "num_negatives", "num_hard_negatives", "top_k",
    "list_size", "lists_per_user", "min_count", "max_minutes", "temperature",
    "text_min_count", "ema_momentum", "catalog_sample",
})
#: Fields that must be >= 0 (a mapping's every value, likewise).
NON_NEGATIVE = frozenset({
    "dropout", "history_dropout", "weight_decay", "l2", "bias_l2", "retrieval_l2",
    "patience", "history_len", "unobserved_weight", "popularity_weight",
    "validation_fraction", "backbone_lr_scale", "auto_labels_per_user", "bias_prior",
    "weights", "item_id_dropout", "user_id_dropout",
})
#: Shares that must be < 1.
BELOW_ONE = frozenset({"dropout", "history_dropout", "validation_fraction", "ema_momentum",
                       "item_id_dropout", "user_id_dropout"})
RENAMED_KEYS = {"refit_full": "refit"}
"""Config keys that were renamed: ``from_dict`` reads the old name as the new one and
says so (``FutureWarning``); ``refit_full`` and ``refit`` named one idea."""


def _type_name(kind: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false",
            str: "a string"}.get(kind, getattr(kind, "__name__", str(kind)))


def _check_type(owner: str, name: str, value: Any, kind: Any) -> None:
    """Raise ``ValueError`` naming ``owner.name`` unless ``value`` fits annotation ``kind``."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                _check_type(owner, name, value, option)
                return
            except ValueError as err:
                errors.append(err)
        raise errors[0]
    if kind is Any:
        return
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ValueError(f"{owner}.{name} must be a list, got {value!r}")
        for element in value:
            _check_type(owner, name, element, typing.get_args(kind)[0])
        return
    if origin in (dict, Mapping) or kind is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{owner}.{name} must be an object / dict, got {value!r}")
        args = typing.get_args(kind)
        for element in value.values():
            if args:
                _check_type(owner, name, element, args[1])
        return
    if isinstance(kind, type) and issubclass(kind, Config):
        if not isinstance(value, kind):
            raise ValueError(f"{owner}.{name} must be a {kind.__name__}, got {value!r}")
        return
    ok = {int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, int | float) and not isinstance(value, bool),
          bool: isinstance(value, bool), str: isinstance(value, str)}.get(kind, True)
    if not ok:
        raise ValueError(f"{owner}.{name} must be {_type_name(kind)}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise ValueError(f"{owner}.{name} must be finite, got {value!r}")


def _admits_float(kind: Any) -> bool:
    """Whether annotation ``kind`` takes a float anywhere (``float``, ``float | None``,
    ``tuple[float, ...]``): such a field's lower bound reads "> 0", an integer's ">= 1"."""
    return kind is float or kind is Any or any(_admits_float(k) for k in typing.get_args(kind))


def _numbers(value: Any) -> list[float]:
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, int | float) and not isinstance(v, bool)]
    return [value] if isinstance(value, int | float) and not isinstance(value, bool) else []


class Config:
    """Mixin for ``@dataclass`` configs; nested dataclass fields become nested dicts."""

    #: ``{field: (switch, values of the switch under which the field is used)}``.
    INERT_UNLESS: ClassVar[Mapping[str, tuple[str, tuple[Any, ...]]]] = {}

    def __post_init__(self) -> None:
        self.check_values()
        self.check_variant()

    def check_variant(self) -> None:
        """Refuse a field set away from its default when the chosen variant ignores it."""
        defaults = {f.name: f.default if f.default is not dataclasses.MISSING
                    else f.default_factory()  # type: ignore[misc]
                    for f in dataclasses.fields(self)  # type: ignore[arg-type]
                    if f.default is not dataclasses.MISSING
                    or f.default_factory is not dataclasses.MISSING}
        for name, (switch, used_with) in self.INERT_UNLESS.items():
            value, chosen = getattr(self, name), getattr(self, switch)
            if chosen not in used_with and name in defaults and value != defaults[name]:
                wanted = " or ".join(repr(v) for v in used_with)
                raise ValueError(f"{type(self).__name__}.{name} does nothing with "
                                 f"{switch}={chosen!r} (it is used when {switch} is "
                                 f"{wanted})")

    def check_values(self) -> None:
        """Refuse a field of the wrong type or out of its range, naming it (``ValueError``)."""
        owner = type(self).__name__
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            _check_type(owner, f.name, value, hints.get(f.name, Any))
            for number in _numbers(value):
                if f.name in POSITIVE and number <= 0:
                    bound = "> 0" if _admits_float(hints.get(f.name, Any)) else ">= 1"
                    raise ValueError(f"{owner}.{f.name} must be {bound}, got {value!r}")
                if f.name in NON_NEGATIVE and number < 0:
                    raise ValueError(f"{owner}.{f.name} must be >= 0, got {value!r}")
                if f.name in BELOW_ONE and number >= 1:
                    raise ValueError(f"{owner}.{f.name} must be below 1, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], values: Mapping[str, Any]) -> C:
        values = dict(values)
        for old, new in RENAMED_KEYS.items():
            if old in values and hasattr(cls, "__dataclass_fields__") and \
                    new in cls.__dataclass_fields__:  # type: ignore[attr-defined]
                if new in values:
                    raise ValueError(f"{cls.__name__}: both {old!r} and its new name "
                                     f"{new!r} are set; keep {new!r}")
                warnings.warn(f"{cls.__name__}: config key {old!r} is now {new!r} (same "
                              "meaning); read as such", FutureWarning, stacklevel=2)
                values[new] = values.pop(old)
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} config key(s) {unknown}; known keys: "
                             f"{sorted(known)}")
        return cls(**dict(values))

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls: type[C], path: str | os.PathLike) -> C:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))
