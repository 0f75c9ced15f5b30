"""``csv:PATH`` and ``parquet:PATH`` — your own interaction logs.

Why: most real data arrives as a table. The defaults expect columns ``user_id``,
``item_id`` and optionally ``rating`` and ``timestamp``; options name other columns, so no
renaming step is needed. Parsing is strict (see ``_parsing``): a malformed row is a
``DataError`` naming file and line, unless ``on_bad_lines=skip`` says to drop and count it.

    load("csv:ratings.csv")                                   # default column names
    load("csv:log.tsv?sep=tab&user=uid&item=movie&rating=stars&timestamp=ts")
    load("csv:log.csv", user="uid", rating_range="1,5")       # same, from Python
    load("parquet:events.parquet?user=visitor&item=sku")      # needs pyarrow

Options (URL query or keyword arguments):

* ``user``, ``item`` (default ``user_id``, ``item_id``): required columns.
* ``rating``, ``timestamp``: column names; default ``rating`` / ``timestamp`` if the file has
  them; ``none`` to ignore. A column named explicitly must exist.
* ``rating_range=LOW,HIGH``: ratings outside it are bad rows (always: NaN / inf).
* ``user_features``, ``item_features``: comma-separated columns kept as categorical string
  side features (``user_features=age,gender``).
* ``sep`` (CSV; default ``,``; ``tab`` or ``\\t`` for TSV), ``encoding`` (CSV; default
  ``utf-8-sig``, which also strips a byte-order mark), ``on_bad_lines=error|skip``.

CSV is read with the stdlib ``csv`` module (streaming, with line numbers, any line
endings, quoted fields) — no pandas — over ``iter_text_lines``, which decodes one line at
a time so a byte sequence invalid in ``encoding`` is reported at its own line. Parquet
needs ``pyarrow`` (the ``parquet`` extra); bad parquet rows are reported by 1-based row
number. IDs, ratings and timestamps follow the rules in ``_parsing`` (no control
characters in IDs, ASCII numbers, float32 ratings, int64 timestamps); a floating-point ID
column (pandas writes integer IDs with gaps as float64) gives ``1.0`` → ``"1"`` and NaN →
a missing ID.
"""

from __future__ import annotations

import codecs
import csv
import glob
import os
from pathlib import Path

import numpy as np

from tfrec_p5.data.errors import DataError
from tfrec_p5.data.interactions import ITEM, RATING, TIMESTAMP, USER, Interactions
from tfrec_p5.data.sources import register
from tfrec_p5.data.sources._parsing import (
    CONTROL_CHARS,
    MAX_ID_CHARS,
    BadLines,
    SkipLine,
    iter_text_lines,
    parse_id,
    parse_rating,
    parse_rating_range,
    parse_timestamp,
)

_NONE = ("", "none", "false")
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _names(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(value)


def _resolve_columns(header: list[str], path: str, user: str, item: str, rating, timestamp,
                     user_features, item_features) -> dict[str, str]:
    """Map canonical column → file column, checking that every named column exists."""
    available = set(header)

    def need(name: str, role: str) -> str:
        if name not in available:
            raise DataError(f"missing column '{name}' ({role}); the file has columns "
                            f"{header}", path=path, line=1, field=name)
        return name

    wanted = {USER: need(str(user), "user"), ITEM: need(str(item), "item")}
    for canon, given in ((RATING, rating), (TIMESTAMP, timestamp)):
        if given is None:
            if canon in available:
                wanted[canon] = canon
        elif str(given).strip().lower() not in _NONE:
            wanted[canon] = need(str(given), canon)
    for name in (*_names(user_features), *_names(item_features)):
        wanted[name] = need(name, "side feature")
    return wanted


def _side_kwargs(user_features, item_features) -> dict:
    uf, itf = _names(user_features), _names(item_features)
    return {"user_features": uf, "item_features": itf,
            "feature_kinds": {n: "categorical" for n in (*uf, *itf)}}


def _separator(sep: str) -> str:
    sep = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}.get(sep, sep)
    if len(sep) != 1:
        raise DataError(f"sep must be one character (or 'tab'), got {sep!r}", field="sep")
    return sep


def load_csv(path: str, user: str = USER, item: str = ITEM, rating: str | None = None,
             timestamp: str | None = None, sep: str = ",", rating_range=None,
             on_bad_lines: str = "error", encoding: str = "utf-8-sig", user_features=None,
             item_features=None, **options) -> Interactions:
    """Read a delimited text file with a header row (see module docstring)."""
    if options:
        raise DataError(f"unknown csv option(s) {sorted(options)}", path=path)
    file = Path(path)
    if not file.is_file():
        raise DataError("file not found", path=str(file))
    delimiter = _separator(str(sep))
    rrange = parse_rating_range(rating_range)
    bad = BadLines(file, on_bad_lines)
    try:
        codecs.lookup(str(encoding))
    except LookupError as err:
        raise DataError(f"unknown encoding {encoding!r}", path=str(file),
                        field="encoding") from err
    out: dict[str, list] = {}
    start = 1
    try:
        lines = (text for _, text in iter_text_lines(file, str(encoding), keepends=True))
        reader = csv.reader(lines, delimiter=delimiter, strict=True)
        header = next(reader, None)
        while header is not None and not any(h.strip() for h in header):
            start = reader.line_num + 1
            header = next(reader, None)  # leading blank lines
        if header is None:
            raise DataError("empty file: expected a header row and data rows",
                            path=str(file))
        header = [h.strip() for h in header]
        cols = _resolve_columns(header, str(file), user, item, rating, timestamp,
                                user_features, item_features)
        pos = {canon: header.index(name) for canon, name in cols.items()}
        out = {canon: [] for canon in cols}
        n_fields = len(header)
        start = reader.line_num + 1  # first line of the next record (quoted fields span)
        for row in reader:
            lineno, start = start, reader.line_num + 1
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            try:
                if len(row) != n_fields:
                    bad.bad(f"expected {n_fields} fields, got {len(row)}", lineno)
                values = {
                    USER: parse_id(row[pos[USER]], bad, lineno, cols[USER]),
                    ITEM: parse_id(row[pos[ITEM]], bad, lineno, cols[ITEM]),
                }
                if RATING in pos:
                    values[RATING] = parse_rating(row[pos[RATING]], bad, lineno, rrange,
                                                  cols[RATING])
                if TIMESTAMP in pos:
                    values[TIMESTAMP] = parse_timestamp(row[pos[TIMESTAMP]], bad, lineno,
                                                        cols[TIMESTAMP])
            except SkipLine:
                continue
            for canon, p in pos.items():
                out[canon].append(values[canon] if canon in values else row[p].strip())
    except csv.Error as err:  # e.g. a quote never closed: name the record's first line
        raise DataError(f"malformed CSV: {err}", path=str(file), line=start) from err
    bad.report()
    if not out[USER]:
        raise DataError("no data rows after the header", path=str(file))
    columns = {k: (np.asarray(v) if k not in (RATING, TIMESTAMP) else v)
               for k, v in out.items()}
    return Interactions.from_columns(columns, source=os.fspath(file), rating_range=rrange,
                                     **_side_kwargs(user_features, item_features))


def load_parquet(path: str, user: str = USER, item: str = ITEM, rating: str | None = None,
                 timestamp: str | None = None, rating_range=None, on_bad_lines: str = "error",
                 user_features=None, item_features=None, **options) -> Interactions:
    """Read a parquet file with pyarrow (see module docstring); ``path`` may also be a
    glob or a folder (its ``*.parquet`` files), read in name order into one table."""
    if options:
        raise DataError(f"unknown parquet option(s) {sorted(options)}", path=path)
    if not Path(path).is_file() and (glob.has_magic(path) or Path(path).is_dir()):
        pattern = os.path.join(path, "*.parquet") if Path(path).is_dir() else path
        files = sorted(glob.glob(pattern))
        if not files:
            raise DataError(f"no Parquet file matches {pattern!r}", path=path)
        return Interactions.concat(*(load_parquet(
            f, user, item, rating, timestamp, rating_range, on_bad_lines, user_features,
            item_features) for f in files))
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ImportError("parquet: sources need pyarrow; install it with "
                          "`pip install 'tfrec_p5[parquet]'` (or `pip install pyarrow`), or "
                          "convert the file to CSV and use csv:PATH") from err
    file = Path(path)
    if not file.is_file():
        raise DataError("file not found", path=str(file))
    try:
        schema = pq.read_schema(file)
        cols = _resolve_columns(list(schema.names), str(file), user, item, rating, timestamp,
                                user_features, item_features)
        table = pq.read_table(file, columns=list(dict.fromkeys(cols.values())))
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"cannot read parquet: {err}", path=str(file)) from err
    if table.num_rows == 0:
        raise DataError("empty file: no rows", path=str(file))
    rrange = parse_rating_range(rating_range)
    bad = BadLines(file, on_bad_lines)
    keep = np.ones(table.num_rows, dtype=bool)

    def flag(mask: np.ndarray, message: str, field: str) -> None:
        rows = np.flatnonzero(mask & keep)
        if len(rows) == 0:
            return
        if bad.policy == "error":
            raise DataError(f"row {rows[0] + 1}: {message} ({len(rows)} such row(s))",
                            path=str(file), field=field)
        bad.skipped += len(rows)
        bad.first = bad.first or f"{file}: row {rows[0] + 1}: {message} (field '{field}')"
        keep[rows] = False

    columns: dict[str, np.ndarray] = {}
    for canon, name in cols.items():
        col = table.column(name)
        if canon == RATING:
            try:
                values = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
            except pa.ArrowException as err:
                raise DataError(f"rating column is not numeric: {err}", path=str(file),
                                field=name) from err
            flag(np.isnan(values) & ~np.asarray(col.is_null()), "rating is NaN", name)
            flag(np.asarray(col.is_null()), "rating is missing", name)
            flag(np.isinf(values), "rating is not finite", name)
            with np.errstate(invalid="ignore"):
                flag(np.isfinite(values) & (np.abs(values) > _FLOAT32_MAX),
                     "rating is too large (ratings are stored as float32)", name)
            if rrange is not None:
                with np.errstate(invalid="ignore"):
                    out = ~((values >= rrange[0]) & (values <= rrange[1]))
                flag(out & np.isfinite(values), f"rating outside the declared range "
                     f"[{rrange[0]:g}, {rrange[1]:g}]", name)
        elif canon == TIMESTAMP:
            flag(np.asarray(col.is_null()), "timestamp is missing", name)
            try:
                if pa.types.is_timestamp(col.type):  # whole seconds since the epoch
                    col = col.cast(pa.timestamp("s")).cast(pa.int64())
                # nulls (flagged above) as 0: a null would turn the column into float64,
                # which rounds timestamps beyond 2**53
                values = pc.fill_null(col.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
            except pa.ArrowException as err:
                raise DataError(f"timestamp column is not integer: {err}", path=str(file),
                                field=name) from err
        else:
            if canon in (USER, ITEM) and pa.types.is_floating(col.type):
                # pandas stores integer IDs with gaps as float64: 1.0 -> "1", NaN -> missing
                nan = np.asarray(pc.fill_null(pc.is_nan(col), False))
                flag(nan, f"{name} is NaN (missing)", name)
                whole = pc.fill_null(pc.equal(col, pc.floor(col)), False)
                if pc.all(pc.or_(whole, pc.is_nan(col))).as_py():
                    try:
                        col = pc.if_else(pc.is_nan(col), None, col).cast(pa.int64())
                    except pa.ArrowException:
                        pass  # beyond int64: keep the float spelling
            try:
                strings = pc.utf8_trim_whitespace(col.cast(pa.string()))
            except pa.ArrowException as err:  # binary that is not UTF-8, nested types
                raise DataError(f"column {name!r} cannot be read as text: {err}",
                                path=str(file), field=name) from err
            values = np.asarray(strings.to_numpy(zero_copy_only=False))
            if canon in (USER, ITEM):
                empty = np.asarray(pc.fill_null(pc.equal(strings, ""), True))
                flag(empty, f"empty or missing {name}", name)
                flag(np.asarray(pc.fill_null(pc.greater(pc.utf8_length(strings),
                                                        MAX_ID_CHARS), False)),
                     f"{name} is longer than {MAX_ID_CHARS} characters", name)
                flag(np.asarray(pc.fill_null(pc.match_substring_regex(
                    strings, CONTROL_CHARS.pattern), False)),
                     f"{name} contains a control character", name)
            values = np.where(np.asarray(strings.is_null()), "", values).astype(str)
        columns[canon] = values
    bad.report()
    if not keep.all():
        columns = {k: v[keep] for k, v in columns.items()}
    if not keep.any():
        raise DataError("no valid rows", path=str(file))
    return Interactions.from_columns(columns, source=os.fspath(file), rating_range=rrange,
                                     **_side_kwargs(user_features, item_features))


register("csv", load_csv)
register("tsv", lambda path, **kw: load_csv(path, **{"sep": "\t", **kw}))
register("parquet", load_parquet)

__all__ = ["load_csv", "load_parquet"]
