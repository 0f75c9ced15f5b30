"""``amazon:PATH`` — the S3-Rec / P5 sequential format (Amazon Beauty, Sports, Toys...).

Why: the P5 paper's sequential and retrieval tables use these files; reading them as-is
lets our numbers compare with the paper's. Each line is one user's whole history in time
order, whitespace separated: ``user item item ...``. There are no ratings and no times, so
``timestamp`` is the position in the user's sequence (0, 1, 2, ...), which is all that
``leave_one_out`` and ``history_dataset`` need.

    table = load("amazon:../shared/data/amazon/Beauty.txt")
    split = leave_one_out(table)            # P5 protocol: last item -> test

If a sibling ``<Name>_item2attributes.json`` exists (S3-Rec's ``{"item": [attr, ...]}``), its
attribute IDs become the item feature ``item_attributes`` (int64 ``[n, k]``, padded with
-1, ``multi_categorical``); items without attributes get an all ``-1`` row. Options:
``attributes=PATH`` picks another file, ``attributes=none`` skips it,
``on_bad_lines=skip`` drops malformed lines (counted in a log line) instead of failing.

The file is UTF-8 (a byte-order mark is removed); any whitespace separates fields; IDs
follow the rules of ``_parsing`` (no control characters, at most ``MAX_ID_CHARS``); an item
may repeat in a user's sequence (it is a history), a user may not have two lines.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from tfrec_p5.data.catalog import Catalog
from tfrec_p5.data.errors import DataError
from tfrec_p5.data.interactions import ITEM, TIMESTAMP, USER, Interactions
from tfrec_p5.data.sources import register
from tfrec_p5.data.sources._parsing import (
    CONTROL_CHARS,
    MAX_ID_CHARS,
    BadLines,
    SkipLine,
    check_id,
    iter_text_lines,
)

ATTRIBUTES = "item_attributes"


def _attributes_path(path: Path, attributes: str | None) -> Path | None:
    if attributes is None:
        candidate = path.with_name(f"{path.stem}_item2attributes.json")
        return candidate if candidate.exists() else None
    if str(attributes).lower() in ("", "none", "false", "0"):
        return None
    candidate = Path(attributes)
    if not candidate.exists():
        raise DataError("attributes file not found", path=str(candidate))
    return candidate


def _read_attributes(path: Path) -> dict[str, list[int]]:
    try:
        with open(path, encoding="utf-8-sig") as f:
            obj = json.load(f)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read item attributes: {err}", path=str(path)) from err
    if not isinstance(obj, dict):
        raise DataError("item attributes must be a JSON object {item: [attribute, ...]}",
                        path=str(path))
    out: dict[str, list[int]] = {}
    for item, attrs in obj.items():
        if not isinstance(attrs, list) or not all(
                isinstance(a, int) and not isinstance(a, bool) and a >= 0 for a in attrs):
            raise DataError(f"item {item!r}: attributes must be a list of non-negative "
                            f"integers, got {attrs!r:.80}", path=str(path), field=ATTRIBUTES)
        out[str(item)] = attrs
    return out


def load_amazon(path: str, attributes: str | None = None, on_bad_lines: str = "error",
                **options) -> Interactions:
    """Parse an S3-Rec sequential file (see module docstring)."""
    if options:
        raise DataError(f"unknown amazon option(s) {sorted(options)}; known: attributes, "
                        "on_bad_lines", path=path)
    file = Path(path)
    if not file.is_file():
        raise DataError("file not found", path=str(file))
    bad = BadLines(file, on_bad_lines)
    users: list[str] = []
    lengths: list[int] = []
    items: list[str] = []
    first_line: dict[str, int] = {}
    for lineno, line in iter_text_lines(file, "utf-8-sig"):
        parts = line.split()
        if not parts:
            continue
        try:
            if (CONTROL_CHARS.search("".join(parts))
                    or max(len(p) for p in parts) > MAX_ID_CHARS):
                for i, part in enumerate(parts):  # name the offending field
                    check_id(part, bad, lineno, "item_id" if i else "user_id")
            if len(parts) < 2:
                bad.bad(f"user {parts[0]!r} has no items (expected 'user item item ...')",
                        lineno)
            if parts[0] in first_line:
                bad.bad(f"user {parts[0]!r} already had a line at line "
                        f"{first_line[parts[0]]} (one line per user, in time order)",
                        lineno, "user_id")
        except SkipLine:
            continue
        first_line[parts[0]] = lineno
        users.append(parts[0])
        lengths.append(len(parts) - 1)
        items.extend(parts[1:])
    bad.report()
    if not users:
        raise DataError("empty file: no 'user item ...' lines", path=str(file))
    counts = np.asarray(lengths, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    columns: dict[str, np.ndarray] = {
        USER: np.repeat(np.asarray(users), counts),
        ITEM: np.asarray(items),
        TIMESTAMP: np.arange(len(items), dtype=np.int64) - np.repeat(starts, counts),
    }
    kwargs: dict = {}
    attr_path = _attributes_path(file, attributes)
    if attr_path is not None:
        attrs = _read_attributes(attr_path)
        uniq, inverse = np.unique(columns[ITEM], return_inverse=True)
        width = max([1, *(len(attrs.get(i, ())) for i in uniq)])
        table = np.full((len(uniq), width), -1, dtype=np.int64)
        for row, item in enumerate(uniq):
            a = attrs.get(item, ())
            table[row, :len(a)] = a
        columns[ATTRIBUTES] = table[inverse.reshape(-1)]
        kwargs = {"item_features": (ATTRIBUTES,),
                  "feature_kinds": {ATTRIBUTES: "multi_categorical"}}
    return Interactions.from_columns(columns, source=os.fspath(file), **kwargs)


def amazon_catalog(path: str, attributes: str | None = None, on_bad_lines: str = "error",
                   **options) -> Catalog:
    """Every item of the attributes file (bought or not) with its ``item_attributes``;
    an empty ``Catalog`` without an attributes file. Options as ``load_amazon``.

        amazon_catalog("../shared/data/amazon/Beauty.txt").items.item_id[:3]
    """
    if options:
        raise DataError(f"unknown amazon option(s) {sorted(options)}; known: attributes, "
                        "on_bad_lines", path=path)
    attr_path = _attributes_path(Path(path), attributes)
    if attr_path is None:
        return Catalog()
    attrs = _read_attributes(attr_path)
    items = np.asarray(sorted(attrs), dtype=str)
    width = max([1, *(len(a) for a in attrs.values())])
    table = np.full((len(items), width), -1, dtype=np.int64)
    for row, item in enumerate(items):
        table[row, :len(attrs[item])] = attrs[item]
    return Catalog(items=Interactions.from_columns(
        {USER: np.full(len(items), "", dtype=str), ITEM: items, ATTRIBUTES: table},
        source=os.fspath(attr_path), item_features=(ATTRIBUTES,),
        feature_kinds={ATTRIBUTES: "multi_categorical"}))


register("amazon", load_amazon, catalog=amazon_catalog)

__all__ = ["amazon_catalog", "load_amazon"]
