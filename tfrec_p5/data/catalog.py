"""Who exists: the item and user catalogs, beyond who has interactions.

Why a catalog of its own: interactions only name the items someone chose. A shop lists
items before anyone buys them, and a sign-up form describes a user before their first
click. Item and user metadata (MovieLens ``u.item`` / ``u.user``, Amazon's
``*_item2attributes.json``, or any CSV / Parquet file with an ID column and feature
columns) therefore define the catalog: an entity it lists without any training
interaction still gets a vocabulary row and a representation from its features
(``Vocabularies.build(train, catalog=...)``, ``SideFeatures.build``).

    catalog = load_catalog("movielens:../shared/data/ml-100k")   # u.item + u.user
    catalog.items.item_id[:3], catalog.items.item_features        # 1682 movies
    items = read_entities("items.csv?text=title&multi=genres", "item")
    table = attach_features(table, Catalog(items=items))          # features on every row

A catalog table is an ``Interactions`` with one row per entity: the ID column, the other
side's ID column empty, and the feature columns declared as that side's features (the
shape ``Interactions.item_rows()`` returns), so every function that reads item features
from a table reads them from a catalog too.

``read_entities`` reads a file (``csv:``/``parquet:`` prefix optional; the extension
decides otherwise). Options after ``?``: ``id=COLUMN`` (default ``item_id`` /
``user_id``), ``text=a,b`` (tokenized text), ``numeric=a,b`` (floats; empty = unknown),
``multi=a,b`` (several values in one cell separated by ``|``), ``features=a,b`` (the
feature columns to keep; default every other column), ``sep`` and ``encoding`` (CSV).
Every other feature column is categorical (its values as strings; empty = unknown).
"""

from __future__ import annotations

import csv
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfrec_p5.data.errors import DataError
from tfrec_p5.data.interactions import ITEM, USER, Interactions
from tfrec_p5.data.sources import catalog_loader, parse_spec
from tfrec_p5.data.sources._parsing import BadLines, SkipLine, check_id, iter_text_lines

__all__ = ["Catalog", "attach_features", "load_catalog", "read_entities"]

SIDES = {"item": ITEM, "user": USER}
MULTI_SEP = "|"
_READ_OPTIONS = ("id", "text", "numeric", "multi", "features", "sep", "encoding")


@dataclass(frozen=True)
class Catalog:
    """The item and user tables that say who exists (either may be ``None``).

    ``items``: one row per item (``item_id`` + item feature columns, ``user_id`` empty);
    ``users``: one row per user (``user_id`` + user feature columns, ``item_id`` empty).
    """

    items: Interactions | None = None
    users: Interactions | None = None

    def __bool__(self) -> bool:
        return self.items is not None or self.users is not None

    def replaced(self, items: Interactions | None = None,
                 users: Interactions | None = None) -> Catalog:
        """This catalog with the given sides replaced (``None`` keeps a side)."""
        return Catalog(items if items is not None else self.items,
                       users if users is not None else self.users)

    def new_ids(self, train: Interactions) -> dict[str, np.ndarray]:
        """``{"item": ids, "user": ids}``: catalog entities with no row in ``train``."""
        out = {}
        for side, table, column in (("item", self.items, ITEM), ("user", self.users, USER)):
            ids = np.asarray([] if table is None else table.columns[column], dtype=str)
            out[side] = np.setdiff1d(ids, np.asarray(train.columns[column], dtype=str))
        return out


def load_catalog(spec: str) -> Catalog:
    """The catalog a data spec's own metadata describes (MovieLens ``u.item`` /
    ``u.user``, Amazon item attributes), or an empty ``Catalog`` for formats without any.

        load_catalog("amazon:../shared/data/amazon/Beauty.txt").items   # attributes
    """
    loader, path, options = catalog_loader(spec)
    return Catalog() if loader is None else loader(path, **options)


def _names(value) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(str(v) for v in value)


def _read_csv(path: Path, sep: str, encoding: str) -> tuple[list[str], list[list[str]]]:
    sep = {"tab": "\t", "\\t": "\t"}.get(sep, sep)
    rows: list[list[str]] = []
    header: list[str] | None = None
    lines = (text for _, text in iter_text_lines(path, encoding, keepends=True))
    for row in csv.reader(lines, delimiter=sep):
        if header is None:
            header = [h.strip() for h in row]
            continue
        if row:
            rows.append(row)
    if header is None:
        raise DataError("empty file: expected a header row", path=str(path))
    for lineno, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise DataError(f"{len(row)} fields, the header has {len(header)}",
                            path=str(path), line=lineno)
    return header, rows


def _read_parquet(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ImportError("parquet files need pyarrow: pip install 'tfrec_p5[parquet]'") \
            from err
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for unreadable files
        raise DataError(f"cannot read parquet: {err}", path=str(path)) from err
    header = list(table.column_names)
    columns = [["" if v is None else str(v) for v in table.column(n).to_pylist()]
               for n in header]
    return header, [list(r) for r in zip(*columns, strict=True)] if columns else []


def _multi_column(cells: list[str]) -> np.ndarray:
    """``"a|b"`` cells → a string ``[n, k]`` matrix padded with ``""`` (a multi-categorical
    column of ``Interactions``). The values stay names, so the ``score_new_items``
    signature and ``add-items`` take them exactly as this file wrote them."""
    split = [[v.strip() for v in c.split(MULTI_SEP) if v.strip()] for c in cells]
    out = np.full((len(cells), max([1, *map(len, split)])), "", dtype=object)
    for r, row in enumerate(split):
        out[r, :len(row)] = row
    return out.astype(str)


def _numeric_column(cells: list[str], path: Path, name: str) -> np.ndarray:
    out = np.empty(len(cells), dtype=np.float32)
    for r, cell in enumerate(cells):
        try:
            out[r] = float(cell) if cell.strip() else np.nan
        except ValueError:
            raise DataError(f"{cell!r} is not a number", path=str(path), line=r + 2,
                            field=name) from None
    return out


def read_entities(spec: str | os.PathLike, side: str) -> Interactions:
    """One row per item (``side="item"``) or user (``"user"``) from a CSV / Parquet file.

    Why strings by default: an unknown column is safest read as a category (a brand, a
    country); say ``numeric=`` / ``text=`` / ``multi=`` for the columns that are more.
    Duplicate or malformed IDs are a ``DataError`` naming file and line.

        items = read_entities("items.csv?text=title&multi=genres&numeric=year", "item")
        users = read_entities("parquet:users.parquet?id=uid", "user")
    """
    if side not in SIDES:
        raise ValueError(f"side must be one of {sorted(SIDES)}, got {side!r}")
    text = os.fspath(spec)
    scheme, path, options = parse_spec(text) if ":" in text.split("?")[0] else \
        ("", *parse_spec("file:" + text)[1:])
    unknown = sorted(set(options) - set(_READ_OPTIONS))
    if unknown:
        raise DataError(f"unknown option(s) {unknown}; known: {list(_READ_OPTIONS)}",
                        path=path)
    file = Path(path)
    if not file.is_file():
        raise DataError("file not found", path=str(file))
    kind = scheme if scheme in ("csv", "parquet") else (
        "parquet" if file.suffix.lower() in (".parquet", ".pq") else "csv")
    if scheme not in ("", "file", "csv", "parquet"):
        raise DataError(f"a catalog file is csv: or parquet:, not {scheme}:", path=path)
    header, rows = _read_parquet(file) if kind == "parquet" else _read_csv(
        file, str(options.get("sep", ",")), str(options.get("encoding", "utf-8-sig")))
    id_column = str(options.get("id", SIDES[side]))
    if id_column not in header:
        raise DataError(f"no ID column '{id_column}' (set it with ?id=COLUMN); the file has "
                        f"{header}", path=str(file), line=1, field=id_column)
    features = _names(options.get("features")) or tuple(
        h for h in header if h != id_column)
    text_cols, numeric_cols, multi_cols = (_names(options.get(k))
                                           for k in ("text", "numeric", "multi"))
    for name in (*features, *text_cols, *numeric_cols, *multi_cols):
        if name not in header or name == id_column:
            raise DataError(f"'{name}' is not a feature column of the file (columns: "
                            f"{header})", path=str(file), line=1, field=name)
    clash = set(text_cols) & set(numeric_cols) | set(text_cols) & set(multi_cols) \
        | set(numeric_cols) & set(multi_cols)
    if clash:
        raise DataError(f"column(s) {sorted(clash)} given more than one kind", path=str(file))
    undeclared = [n for n in (*text_cols, *numeric_cols, *multi_cols) if n not in features]
    if undeclared:
        raise DataError(f"column(s) {undeclared} have a kind but are not in features=",
                        path=str(file))
    bad = BadLines(file, "error")
    at = header.index(id_column)
    ids: list[str] = []
    first: dict[str, int] = {}
    for lineno, row in enumerate(rows, start=2):
        try:
            value = check_id(row[at].strip(), bad, lineno, id_column)
            if value in first:
                bad.bad(f"ID {value!r} already had a row at line {first[value]} (one row "
                        f"per {side})", lineno, id_column)
        except SkipLine:  # pragma: no cover - on_bad_lines is "error"
            continue
        first[value] = lineno
        ids.append(value)
    columns: dict[str, np.ndarray] = {
        SIDES[side]: np.asarray(ids, dtype=str),
        SIDES["user" if side == "item" else "item"]: np.full(len(ids), "", dtype=str)}
    kinds = {}
    for name in features:
        cells = [row[header.index(name)] for row in rows]
        if name in numeric_cols:
            columns[name], kinds[name] = _numeric_column(cells, file, name), "numeric"
        elif name in multi_cols:
            columns[name], kinds[name] = _multi_column(cells), "multi_categorical"
        else:
            columns[name] = np.asarray([c.strip() for c in cells], dtype=str)
            kinds[name] = "text" if name in text_cols else "categorical"
    declared = {"item_features" if side == "item" else "user_features": tuple(features)}
    return Interactions(columns, os.fspath(file), feature_kinds=kinds, **declared)


def _unknown_like(column: np.ndarray, n: int) -> np.ndarray:
    """``n`` rows of the column's "unknown" value (-1 padding, NaN, "" or False)."""
    if column.ndim == 2:
        fill = "" if column.dtype.kind in "US" else -1
        return np.full((n, column.shape[1]), fill, dtype=column.dtype)
    if np.issubdtype(column.dtype, np.floating):
        return np.full(n, np.nan, dtype=column.dtype)
    if column.dtype.kind in "US":
        return np.full(n, "", dtype=column.dtype)
    return np.zeros(n, dtype=column.dtype)


def attach_features(table: Interactions, catalog: Catalog) -> Interactions:
    """``table`` with each catalog side's features on every row (gathered by ID) and
    declared as that side's features, so training reads them like a source's own.

    Why replace rather than keep a column the table already has: the catalog file is the
    newer description the user handed in; keeping two would let one ID carry two values.
    An ID the catalog does not list gets the "unknown" value (-1 / NaN / "").
    """
    columns = dict(table.columns)
    declared = {"item": list(table.item_features), "user": list(table.user_features)}
    kinds = dict(table.feature_kinds)
    for side, source in (("item", catalog.items), ("user", catalog.users)):
        if source is None:
            continue
        id_column = SIDES[side]
        names = source.item_features if side == "item" else source.user_features
        order = np.argsort(source.columns[id_column], kind="stable")
        keys = source.columns[id_column][order]
        ids = np.asarray(table.columns[id_column], dtype=str)
        pos = np.clip(np.searchsorted(keys, ids), 0, max(len(keys) - 1, 0))
        found = keys[pos] == ids if len(keys) else np.zeros(len(ids), bool)
        rows = order[pos]
        for name in names:
            if name in (*declared["user" if side == "item" else "item"],):
                raise DataError(f"'{name}' describes the other side in the data; rename "
                                "the catalog column", path=source.source or None, field=name)
            values = source.columns[name]
            out = values[rows] if len(values) else _unknown_like(values, len(ids))
            if not found.all():
                out = out.copy()
                out[~found] = _unknown_like(values, int((~found).sum()))
            columns[name] = out
            kinds[name] = source.feature_kinds[name]
            if name not in declared[side]:
                declared[side].append(name)
    return dataclasses.replace(table, columns=columns, item_features=tuple(declared["item"]),
                               user_features=tuple(declared["user"]), feature_kinds=kinds)
