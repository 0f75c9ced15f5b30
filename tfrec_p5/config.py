"""``Config``: what every hyper-parameter dataclass shares (strict dicts, JSON, replace).

Why: configs travel as JSON (``--config FILE.json``, export metadata, backbone manifests).
A typo in a key must fail loudly instead of silently training the default, and a config
must survive ``to_dict`` → JSON → ``from_dict`` unchanged.

    @dataclass
    class MyConfig(Config):
        dim: int = 32

    MyConfig.from_dict({"dim": 64})          # MyConfig(dim=64)
    MyConfig.from_dict({"dimm": 64})         # ValueError: unknown config key(s) ['dimm']
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any, TypeVar

C = TypeVar("C", bound="Config")


def _plain(value: Any) -> Any:
    """Tuples → lists (JSON's shape), recursively."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class Config:
    """Mixin for ``@dataclass`` configs; nested dataclass fields become nested dicts."""

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], values: Mapping[str, Any]) -> C:
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
