"""The in-memory interactions table every source returns and every later step reads.

Why one table: sources differ (MovieLens files, TFDS, Amazon sequences, CSV, synthetic),
but vocabularies, splits and tf.data pipelines should not care where rows came from.
Each row is one user-item event; side features ride along as extra columns, named as the
source names them (MovieLens uses the TFDS feature names).

    table = Interactions.from_columns({"user_id": ["u1", "u2"], "item_id": ["i9", "i9"],
                                       "rating": [4.0, 2.0]})
    train = table.take(np.array([0]))

Column conventions:

* ``user_id``, ``item_id``: numpy unicode arrays (always present).
* ``rating``: float32 (optional, explicit feedback); ``timestamp``: int64 (optional).
* Side features: any numpy array with one row per interaction. Multi-valued features
  (e.g. ``movie_genres``) are int64 ``[n, k]`` arrays padded with ``-1``, or string
  ``[n, k]`` arrays padded with ``""`` (values kept as names, e.g. from ``--items``).
* ``user_features`` / ``item_features`` say which side columns describe the user / the
  item (constant per ID), so towers can look them up by ID.
* ``feature_kinds`` says how a tower should read each side column: ``"categorical"``
  (one value, embedded), ``"multi_categorical"`` (padded int list, mean of embeddings),
  ``"text"`` (string, tokenized on whitespace) or ``"numeric"`` (normalized float).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from tfrec_p5.data.errors import DataError

USER = "user_id"
ITEM = "item_id"
RATING = "rating"
TIMESTAMP = "timestamp"
RATING_MASK = "rating_mask"
"""Batch key of the 0/1 row mask: which rows' ratings the rating loss may see."""
FEATURE_KINDS = ("categorical", "multi_categorical", "text", "numeric")


@dataclass(frozen=True)
class Interactions:
    """Columns of equal length, one row per interaction."""

    columns: Mapping[str, np.ndarray]
    source: str = ""
    user_features: tuple[str, ...] = ()
    item_features: tuple[str, ...] = ()
    rating_range: tuple[float, float] | None = None
    tfds_names: Mapping[str, str] = field(default_factory=dict)
    feature_kinds: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in (USER, ITEM):
            if name not in self.columns:
                raise DataError(f"missing required column '{name}'", path=self.source or None,
                                field=name)
        n = len(self.columns[USER])
        for name, col in self.columns.items():
            if len(col) != n:
                raise DataError(
                    f"column '{name}' has {len(col)} rows, expected {n}",
                    path=self.source or None, field=name)
        for name in (*self.user_features, *self.item_features):
            if name not in self.columns:
                raise DataError(f"declared side feature '{name}' is not a column",
                                path=self.source or None, field=name)
            kind = self.feature_kinds.get(name)
            if kind not in FEATURE_KINDS:
                raise DataError(f"side feature '{name}' has kind {kind!r}; expected one of "
                                f"{FEATURE_KINDS}", path=self.source or None, field=name)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_columns(cls, columns: Mapping[str, Iterable], **kwargs) -> Interactions:
        """Build a table, normalising dtypes of the core columns."""
        cols: dict[str, np.ndarray] = {}
        for name, values in columns.items():
            arr = np.asarray(values)
            if name in (USER, ITEM):
                if arr.dtype.kind != "U":  # already unicode: no copy of millions of IDs
                    arr = arr.astype(str)
            elif name == RATING:
                arr = arr.astype(np.float32, copy=False)
            elif name == TIMESTAMP:
                arr = arr.astype(np.int64, copy=False)
            cols[name] = arr
        return cls(columns=cols, **kwargs)

    # ------------------------------------------------------------------ accessors
    def __len__(self) -> int:
        return len(self.columns[USER])

    @property
    def user_id(self) -> np.ndarray:
        return self.columns[USER]

    @property
    def item_id(self) -> np.ndarray:
        return self.columns[ITEM]

    @property
    def rating(self) -> np.ndarray | None:
        return self.columns.get(RATING)

    @property
    def timestamp(self) -> np.ndarray | None:
        return self.columns.get(TIMESTAMP)

    @property
    def has_ratings(self) -> bool:
        return RATING in self.columns

    @property
    def num_users(self) -> int:
        return len(np.unique(self.user_id))

    @property
    def num_items(self) -> int:
        return len(np.unique(self.item_id))

    def take(self, indices: np.ndarray) -> Interactions:
        """Rows at ``indices`` (a split), keeping all metadata."""
        indices = np.asarray(indices)
        return Interactions(
            columns={k: v[indices] for k, v in self.columns.items()},
            source=self.source,
            user_features=self.user_features,
            item_features=self.item_features,
            rating_range=self.rating_range,
            tfds_names=self.tfds_names,
            feature_kinds=self.feature_kinds,
        )

    @staticmethod
    def concat(*tables: Interactions) -> Interactions:
        """Rows of ``tables`` one after the other (the parts of a split, put back together).

        Columns are those all tables share; metadata comes from the first table.
        """
        if not tables:
            raise DataError("concat needs at least one table")
        first = tables[0]
        names = [k for k in first.columns if all(k in t.columns for t in tables)]
        return Interactions({k: np.concatenate([t.columns[k] for t in tables]) for k in names},
                            first.source, first.user_features, first.item_features,
                            first.rating_range, first.tfds_names, first.feature_kinds)

    def with_columns(self, **columns: np.ndarray) -> Interactions:
        """A copy with columns added or replaced."""
        cols = dict(self.columns)
        cols.update({k: np.asarray(v) for k, v in columns.items()})
        return Interactions(cols, self.source, self.user_features, self.item_features,
                            self.rating_range, self.tfds_names, self.feature_kinds)

    def item_rows(self) -> Interactions:
        """One row per distinct item (its first), with ``item_id`` and the item feature
        columns only (``user_id`` empty): the item catalog this table describes.

        Why: a catalog outlives any split of the interactions. Take it from the whole table
        and hand it to training (``train_unified(train, ..., catalog=table.item_rows())``)
        so that items whose every interaction left ``train`` still exist, with features.
        """
        _, first = np.unique(self.item_id, return_index=True)
        first = np.sort(first)
        columns = {USER: np.full(len(first), "", dtype=str), ITEM: self.item_id[first],
                   **{name: self.columns[name][first] for name in self.item_features}}
        return Interactions(columns, self.source, (), self.item_features, None,
                            self.tfds_names,
                            {k: v for k, v in self.feature_kinds.items()
                             if k in self.item_features})

    def user_rows(self) -> Interactions:
        """One row per distinct user (their first), with ``user_id`` and the user feature
        columns only (``item_id`` empty): the user catalog this table describes.

        Why: the user-side mirror of ``item_rows``. Users whose every interaction left
        ``train`` (new users, known only by their demographics) still exist; hand this to
        training (``train_unified(train, ..., users=table.user_rows())``) and they get
        vocabulary rows and side features of their own.
        """
        _, first = np.unique(self.user_id, return_index=True)
        first = np.sort(first)
        columns = {USER: self.user_id[first], ITEM: np.full(len(first), "", dtype=str),
                   **{name: self.columns[name][first] for name in self.user_features}}
        return Interactions(columns, self.source, self.user_features, (), None,
                            self.tfds_names,
                            {k: v for k, v in self.feature_kinds.items()
                             if k in self.user_features})

    # ------------------------------------------------------------------ TFDS view
    def to_tfds_like_dataset(self):
        """The table as TFDS would give it: a ``tf.data.Dataset`` of per-example dicts.

        Why: code written for the TFRS tutorials (``ratings.map(lambda x: x["movie_id"])``)
        should run unchanged on local files. Columns are renamed back with ``tfds_names``
        (for MovieLens ``item_id`` → ``movie_id``, ``rating`` → ``user_rating``) and keep
        their dtypes (strings become ``tf.string``); multi-valued columns lose their ``-1``
        padding and become variable-length ``[None]`` tensors, as TFDS sequences are. Rows
        come in table order (TFDS's own file order is a hash shuffle, so tutorials always
        shuffle first).

            ratings = load("movielens:../shared/data/ml-100k").to_tfds_like_dataset()
            ratings = ratings.map(lambda x: {"movie_title": x["movie_title"],
                                             "user_id": x["user_id"]})
        """
        import tensorflow as tf

        tensors: dict[str, object] = {}
        lengths: dict[str, str] = {}
        for name, col in self.columns.items():
            out = self.tfds_names.get(name, name)
            if col.ndim == 2:  # multi-valued, padded with -1 / "" at the end
                lengths[out] = f"__len__{out}"
                present = col != "" if col.dtype.kind in "US" else col >= 0
                tensors[lengths[out]] = present.sum(axis=1).astype(np.int64)
            tensors[out] = col
        ds = tf.data.Dataset.from_tensor_slices(tensors)
        if lengths:
            def unpad(x):
                x = dict(x)
                for out, key in lengths.items():
                    x[out] = x[out][:x.pop(key)]
                return x
            ds = ds.map(unpad, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds

    def __repr__(self) -> str:
        return (f"Interactions({len(self)} rows, {self.num_users} users, {self.num_items} "
                f"items, columns={list(self.columns)}, source={self.source!r})")
