"""Interaction logs larger than memory: sharded Parquet files read as a stream.

Why: the in-memory table (``Interactions``) holds every ID as a numpy string, so a log of
100M events needs ~10 GB before training starts, in every process. A streamed log keeps
only what training needs between passes (the vocabularies and one offset per row group)
and reads the files again on every epoch, one row group at a time, in a ``tf.data``
pipeline; memory then grows with the vocabularies, not with the number of events.

    log = open_log("parquet:logs/*.parquet")       # a glob, a folder or one file
    scan = log.scan(LogSplit(test=0.2, validation=0.1, seed=42))   # one counting pass
    scan.rows                                      # {"fit": ..., "validation": ..., "test": ...}
    fit = log.dataset(scan, ("fit",), batch_size=8192, shuffle=True, seed=42)

The split is a function of the row's position, so no pass has to remember it: row ``r``
(files in name order, rows in file order) is test when ``u(r) < test``, validation when
``u(r) < test + validation * (1 - test)``, else fit, where ``u`` is a seeded SplitMix64
hash mapped to [0, 1). Every pass, every process and ``tfrec-p5 evaluate`` later put a row
in the same part, and test rows never reach a vocabulary or a training batch.

The counting pass builds the vocabularies from the training rows (fit + validation), most
frequent first like ``Vocabulary.build``, so an ID seen only in test rows is the OOV row,
as in the in-memory pipeline. Shuffling is by row group order and a buffer of
``shuffle_rows`` rows (default 1M) permuted at once: not a full shuffle, so a log sorted
by user should be written in row groups well below the buffer size.

Columns: ``user`` and ``item`` (any string or integer type; ``user_id`` / ``item_id`` by
default) and ``rating`` (numeric; ``rating`` by default, ``rating=none`` for implicit
feedback). Needs ``pyarrow`` (the ``parquet`` extra).
"""

from __future__ import annotations

import glob
import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import tensorflow as tf

from tfrec_p5.data.errors import DataError
from tfrec_p5.data.interactions import ITEM, RATING, USER
from tfrec_p5.data.pipeline import Vocabularies
from tfrec_p5.data.vocabulary import Vocabulary

__all__ = ["PARTS", "LogScan", "LogSplit", "ParquetLog", "open_log", "row_uniform"]

PARTS = ("fit", "validation", "test")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_MERGE_ROWS = 4_000_000  # partial vocabulary counts merged when they reach this many


def row_uniform(rows: np.ndarray, seed: int) -> np.ndarray:
    """A seeded uniform [0, 1) number per row position (SplitMix64 of ``rows + seed·φ``).

    Why a hash, not a generator: a streamed row's part must not depend on which rows were
    read before it, in which process or in which order.

        row_uniform(np.arange(3), seed=42)      # the same three numbers on every call
    """
    with np.errstate(over="ignore"):
        z = np.asarray(rows, np.uint64) + np.uint64(seed % 2**64) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


@dataclass(frozen=True)
class LogSplit:
    """A random split of a streamed log by row position (see the module).

    * ``test``: share of all rows held out for testing (0 for none).
    * ``validation``: share of the remaining training rows held out for early stopping
      and the epoch count of a refit (0 for none), like ``RatingConfig.validation_fraction``.
    * ``seed``: the hash seed; the same seed gives the same parts.
    """

    test: float = 0.2
    validation: float = 0.1
    seed: int = 42

    def __post_init__(self) -> None:
        for name in ("test", "validation"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise DataError(f"LogSplit.{name} must be in [0, 1), got {value}", field=name)

    def parts(self, rows: np.ndarray) -> np.ndarray:
        """Part index (``PARTS``: 0 fit, 1 validation, 2 test) of each row position."""
        u = row_uniform(rows, self.seed)
        out = np.zeros(len(u), np.int8)
        out[u < self.test + self.validation * (1.0 - self.test)] = 1
        out[u < self.test] = 2
        return out


@dataclass(frozen=True)
class LogScan:
    """What the counting pass learned: part sizes, vocabularies and rating statistics.

    ``rows``: rows per part; ``vocabs``: from the training rows (fit + validation);
    ``rating_mean``: mean rating of the fit rows; ``rating_range``: lowest and highest
    training rating (``None`` without ratings). ``id_values`` holds each vocabulary's IDs
    in the files' own type and vocabulary order, for the lookup while streaming.
    """

    split: LogSplit
    rows: dict[str, int]
    vocabs: Vocabularies
    rating_mean: float | None
    rating_range: tuple[float, float] | None
    id_values: tuple[Any, Any]

    def batches(self, parts: Sequence[str], batch_size: int) -> int:
        """Batches one pass over ``parts`` yields (the last one may be partial)."""
        return math.ceil(sum(self.rows[p] for p in parts) / batch_size)


@dataclass(frozen=True)
class ParquetLog:
    """Parquet files of one interaction log, read as a stream (``open_log``).

    ``groups`` lists every row group as ``(file index, group index, first row)``, the
    first row counted over all files in order.
    """

    files: tuple[str, ...]
    groups: tuple[tuple[int, int, int], ...]
    rows: int
    user: str = USER
    item: str = ITEM
    rating: str | None = RATING

    @property
    def columns(self) -> list[str]:
        return [self.user, self.item] + ([self.rating] if self.rating else [])

    def fingerprint(self) -> str:
        """BLAKE2b (hex) of the files' names, sizes and row counts: changes when a file is
        added, removed or rewritten (a resumed run and ``evaluate`` compare it)."""
        digest = hashlib.blake2b(digest_size=16)
        for index, name in enumerate(self.files):
            rows = sum(1 for f, _, _ in self.groups if f == index)
            digest.update(f"{os.path.basename(name)}|{os.path.getsize(name)}|{rows}\n"
                          .encode())
        digest.update(f"{self.rows}|{self.columns}".encode())
        return digest.hexdigest()

    def _read(self, handles: dict, group: int) -> tuple[Any, np.ndarray]:
        """The columns of row group ``group`` and each row's global position."""
        file_index, group_index, first = self.groups[group]
        if file_index not in handles:
            handles.clear()  # one open file at a time
            handles[file_index] = _parquet().ParquetFile(self.files[file_index])
        table = handles[file_index].read_row_group(group_index, columns=self.columns)
        return table, np.arange(first, first + table.num_rows, dtype=np.int64)

    def _check(self, table, group: int) -> None:
        """Refuse nulls and non-finite ratings, naming the file and row."""
        file_index, _, first = self.groups[group]
        for name in self.columns:
            column = table.column(name)
            if column.null_count:
                row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
                raise DataError(f"row {row + 1 + first - self._file_first(file_index)}: "
                                f"missing value in column '{name}'", field=name,
                                path=self.files[file_index])
        if self.rating:
            ratings = table.column(self.rating).to_numpy()
            bad = np.flatnonzero(~np.isfinite(ratings))
            if len(bad):
                row = int(bad[0]) + 1 + first - self._file_first(file_index)
                raise DataError(f"row {row}: rating {ratings[bad[0]]} is not a finite "
                                "number", field=self.rating, path=self.files[file_index])

    def _part_rows(self, handles: dict, group: int, split: LogSplit,
                   parts: Sequence[str]) -> Any:
        """Row group ``group``'s rows that ``split`` puts in ``parts``."""
        pa, _ = _arrow()
        table, positions = self._read(handles, group)
        wanted = [PARTS.index(p) for p in parts]
        return table.filter(pa.array(np.isin(split.parts(positions), wanted)))

    def raw_batches(self, split: LogSplit, parts: Sequence[str]
                    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """``(user IDs, item IDs, ratings)`` of the rows of ``parts``, one row group at a
        time, IDs as strings (what an export's signatures take), in file order.

        Why no scan: evaluating an export needs the test rows, not a vocabulary.
        """
        handles: dict = {}
        for group in range(len(self.groups)):
            table = self._part_rows(handles, group, split, parts)
            if not table.num_rows:
                continue
            ids = [np.asarray(table.column(name).cast("string").to_numpy(
                zero_copy_only=False), str) for name in (self.user, self.item)]
            yield (*ids, table.column(self.rating).to_numpy().astype(np.float32)
                   if self.rating else None)

    def _file_first(self, file_index: int) -> int:
        return next(first for f, _, first in self.groups if f == file_index)

    def scan(self, split: LogSplit, min_count: int = 1) -> LogScan:
        """One counting pass: rows per part, vocabularies of the training rows (IDs seen
        fewer than ``min_count`` times there map to the OOV row), rating statistics."""
        pa, pc = _arrow()
        counts = {USER: [], ITEM: []}
        pending = {USER: 0, ITEM: 0}
        rows = dict.fromkeys(PARTS, 0)
        fit_sum, low, high = 0.0, math.inf, -math.inf
        handles: dict = {}
        for group in range(len(self.groups)):
            table, positions = self._read(handles, group)
            self._check(table, group)
            parts = split.parts(positions)
            for i, part in enumerate(PARTS):
                rows[part] += int(np.count_nonzero(parts == i))
            train = table.filter(pa.array(parts < 2))
            for key, name in ((USER, self.user), (ITEM, self.item)):
                counted = pc.value_counts(train.column(name)).flatten()
                counts[key].append(pa.table({"id": counted[0], "n": counted[1]}))
                pending[key] += len(counted[0])
                if pending[key] >= _MERGE_ROWS:
                    counts[key] = [_merge(counts[key])]
                    pending[key] = len(counts[key][0])
            if self.rating and train.num_rows:
                ratings = train.column(self.rating).to_numpy().astype(np.float64)
                fit_sum += float(ratings[parts[parts < 2] == 0].sum())
                low, high = min(low, float(ratings.min())), max(high, float(ratings.max()))
        if rows["fit"] == 0:
            raise DataError("no training rows in the log after the split", path=self.files[0])
        vocabs, id_values = [], []
        for key in (USER, ITEM):
            merged = _merge(counts[key])
            merged = merged.filter(pc.greater_equal(merged.column("n"), min_count))
            ids = merged.column("id").combine_chunks()
            tokens = np.asarray(ids.cast(pa.string()).to_numpy(zero_copy_only=False), str)
            order = np.lexsort((tokens, -merged.column("n").to_numpy()))
            vocabs.append(Vocabulary(tokens[order], name=key))
            id_values.append(ids.take(pa.array(order)))
        return LogScan(split, rows, Vocabularies(*vocabs),
                       fit_sum / rows["fit"] if self.rating else None,
                       (low, high) if self.rating and low <= high else None,
                       tuple(id_values))

    def dataset(self, scan: LogScan, parts: Sequence[str], batch_size: int, *,
                shuffle: bool = False, seed: int | None = None, pointwise: bool = True,
                shuffle_rows: int = 1_000_000, distributed: bool = False) -> tf.data.Dataset:
        """Batches of the rows of ``parts`` (``PARTS`` names), one pass per epoch.

        ``pointwise``: ``({"user_id", "item_id"}, rating)`` like ``pointwise_dataset``;
        else ``{"user_id", "item_id"[, "rating"]}`` like ``retrieval_dataset``. IDs are
        vocabulary indices (OOV 0). ``shuffle``: a new row group order and buffer
        permutation each epoch, seeded. ``distributed`` (``mirrored`` / ``multi_worker``):
        every worker streams the same global batches (re-batched by a ``batch`` op that
        ``tf.distribute`` splits) and keeps its slice of each (``AutoShardPolicy.DATA``),
        so every worker takes the same steps and none holds more than a buffer of rows.
        """
        unknown = sorted(set(parts) - set(PARTS))
        if unknown:
            raise DataError(f"unknown part(s) {unknown}; parts are {list(PARTS)}")
        if pointwise and not self.rating:
            raise DataError("pointwise batches need a rating column", path=self.files[0])
        ids = tf.TensorSpec([None], tf.int64)
        ratings = tf.TensorSpec([None], tf.float32)
        keys = {USER: ids, ITEM: ids}
        signature = ((keys, ratings) if pointwise
                     else {**keys, **({RATING: ratings} if self.rating else {})})

        def generate(draw: np.int64) -> Iterator:
            rng = np.random.default_rng([int(seed or 0), int(draw) % 2**63])
            for user, item, rating in self.batches(scan, parts, batch_size,
                                                   rng if shuffle else None, shuffle_rows):
                features = {USER: user, ITEM: item}
                if pointwise:
                    yield features, rating
                else:
                    yield {**features, **({RATING: rating} if rating is not None else {})}

        draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
        ds = draws.flat_map(lambda draw: tf.data.Dataset.from_generator(
            generate, args=(draw,), output_signature=signature))
        if distributed:  # a `batch` op tf.distribute can split: every worker a slice of
            ds = ds.unbatch().batch(batch_size)  # every batch, so all take the same steps
        ds = ds.apply(tf.data.experimental.assert_cardinality(
            scan.batches(parts, batch_size))).prefetch(tf.data.AUTOTUNE)
        if distributed:
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = \
                tf.data.experimental.AutoShardPolicy.DATA
            ds = ds.with_options(options)
        return ds

    def batches(self, scan: LogScan, parts: Sequence[str], batch_size: int,
                rng: np.random.Generator | None = None, shuffle_rows: int = 1_000_000
                ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """``(user, item, rating)`` numpy batches of the rows of ``parts``: vocabulary
        indices (int64, OOV 0) and float32 ratings (``None`` without a rating column).
        ``rng``: shuffled as ``dataset(shuffle=True)`` describes; ``None``: file order.

            for users, items, ratings in log.batches(scan, ("test",), 1 << 20): ...
        """
        pa, pc = _arrow()
        order = np.arange(len(self.groups))
        if rng is not None:
            rng.shuffle(order)
        handles: dict = {}
        buffer: list[tuple] = []
        buffered = 0
        for position, group in enumerate(order):
            table = self._part_rows(handles, int(group), scan.split, parts)
            columns = []
            for name, values in zip((self.user, self.item), scan.id_values, strict=True):
                column = table.column(name)
                if column.type != values.type:
                    column = column.cast(values.type)
                index = pc.index_in(column, value_set=values)
                columns.append(index.fill_null(-1).to_numpy().astype(np.int64) + 1)
            columns.append(table.column(self.rating).to_numpy().astype(np.float32)
                           if self.rating else None)
            buffer.append(tuple(columns))
            buffered += table.num_rows
            last = position == len(order) - 1
            if buffered < shuffle_rows and not last:
                continue
            user, item = (np.concatenate([b[i] for b in buffer]) for i in (0, 1))
            rating = np.concatenate([b[2] for b in buffer]) if self.rating else None
            if rng is not None:
                perm = rng.permutation(len(user))
                user, item = user[perm], item[perm]
                rating = rating[perm] if rating is not None else None
            full = len(user) if last else len(user) // batch_size * batch_size
            for start in range(0, full, batch_size):
                stop = min(start + batch_size, full)
                yield (user[start:stop], item[start:stop],
                       rating[start:stop] if rating is not None else None)
            buffer = [(user[full:], item[full:],
                       rating[full:] if rating is not None else None)]
            buffered = len(user) - full


def _merge(tables: list) -> Any:
    """Partial ``(id, n)`` counts → one table, the counts of equal IDs summed."""
    pa, _ = _arrow()
    combined = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    summed = combined.group_by("id").aggregate([("n", "sum")])
    return pa.table({"id": summed.column("id"), "n": summed.column("n_sum")})


def _arrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
    except ImportError as err:  # an optional dependency, not a cycle
        raise DataError("streamed Parquet logs need pyarrow: pip install "
                        "'tfrec-p5[parquet]'") from err
    return pa, pc


def _parquet() -> Any:
    _arrow()
    import pyarrow.parquet as pq

    return pq


def open_log(spec: str) -> ParquetLog:
    """The Parquet log of ``spec``: ``parquet:PATH[?user=COL&item=COL&rating=COL|none]``,
    ``PATH`` a glob (``logs/*.parquet``), a folder (its ``*.parquet`` files) or a file.

        open_log("parquet:logs/part-*.parquet?user=visitor&item=sku&rating=none")
    """
    scheme, _, rest = spec.partition(":")
    if scheme != "parquet" or not rest:
        raise DataError(f"a streamed log is 'parquet:PATH' (a glob, folder or file), got "
                        f"{spec!r}")
    path, _, query = rest.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - {"user", "item", "rating"})
    if unknown:
        raise DataError(f"unknown option(s) {unknown} for a streamed log; known: "
                        "['item', 'rating', 'user']", path=path)
    pattern = os.path.join(path, "*.parquet") if os.path.isdir(path) else path
    files = tuple(sorted(glob.glob(pattern)))
    if not files:
        raise DataError(f"no Parquet file matches {pattern!r}", path=path)
    pq = _parquet()
    rating = options.get("rating", RATING)
    rating = None if rating.lower() in ("", "none") else rating
    user, item = options.get("user", USER), options.get("item", ITEM)
    groups, first = [], 0
    for index, name in enumerate(files):
        meta = pq.ParquetFile(name).metadata
        names = set(meta.schema.names)
        for column, role in ((user, "user"), (item, "item"), (rating, "rating")):
            if column is not None and column not in names:
                if role == "rating" and "rating" not in options and index == 0:
                    rating = None  # no rating column by default: implicit feedback
                    continue
                raise DataError(f"missing column '{column}' ({role}); the file has columns "
                                f"{sorted(names)}", path=name, field=column)
        for g in range(meta.num_row_groups):
            groups.append((index, g, first))
            first += meta.row_group(g).num_rows
    return ParquetLog(files, tuple(groups), first, user, item, rating)
