"""tf.data builders: integer IDs in, batches out, no Python in the training step.

Why: string → integer lookup and feature building happen once, here, in numpy; the
dataset then only slices pre-built integer tensors. Shuffling permutes whole columns with
one ``tf.gather`` per epoch instead of pushing every example through a shuffle buffer
(see ``benchmarks/data_pipeline.py`` for what that buys).

    vocabs = Vocabularies.build(split.train)
    train_ds = pointwise_dataset(split.train, vocabs, batch_size=8192, shuffle=True)
    model.fit(train_ds, epochs=5)

Features are ``{"user_id": int64, "item_id": int64}`` (indices into the vocabularies, 0 =
OOV); labels are ratings (pointwise) or absent (retrieval pairs). Side features are not
streamed: towers look them up by ID from tables built at training time (see
``tfrec_p5.towers``), which keeps the pipeline as cheap for rich data as for bare IDs.

Distributed training (``tfrec_p5.distribute``) uses the same builders with one keyword:

* ``distributed=True`` (Mirrored / MultiWorkerMirrored): the same batches in the same
  order, written as ``index stream → .batch(global_batch) → gather`` with
  ``AutoShardPolicy.DATA``, so ``tf.distribute`` can split every *global* batch into
  per-replica slices (it needs a real ``batch`` op to do that) and each worker trains
  on its slice of exactly the batch a single process would see;
* ``input_context=ctx`` (ParameterServer, inside a ``DatasetCreator``): this worker's
  shard of the rows (``ctx.input_pipeline_id``), per-replica batches, repeated forever
  (the coordinator counts the steps).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from tfrec_p5.data.errors import DataError
from tfrec_p5.data.interactions import ITEM, RATING, RATING_MASK, USER, Interactions
from tfrec_p5.data.vocabulary import HashedVocabulary, Vocabulary

AUTOTUNE = tf.data.AUTOTUNE


@dataclass(frozen=True)
class Vocabularies:
    """The user and item vocabularies of one training split."""

    user: Vocabulary | HashedVocabulary
    item: Vocabulary | HashedVocabulary

    @classmethod
    def build(cls, train: Interactions, min_count: int = 1,
              hash_buckets: Mapping[str, int] | int | None = None,
              catalog: Interactions | np.ndarray | None = None,
              users: Interactions | np.ndarray | None = None) -> Vocabularies:
        """Vocabularies of ``train``.

        * ``min_count``: IDs seen fewer times in ``train`` map to the OOV row (0).
        * ``hash_buckets``: ``{"user_id": 2_000_000, "item_id": 1_000_000}`` (or one int
          for both) hashes that side instead (``HashedVocabulary``; no per-ID list kept
          for users, the most frequent ID per row kept for items, which the
          ``recommend`` export returns). ``min_count`` does not apply to a hashed side.
        * ``catalog``: the items that exist (a table whose ``item_id`` column lists them,
          e.g. one row per item of ``u.item``, or the item IDs themselves). An item of the
          catalog that ``train`` never mentions gets a row of its own after the training
          items (sorted by ID), instead of sharing the OOV row, so a model can represent it
          from its features (``catalog_items``). A training item below ``min_count`` stays
          on the OOV row. Not for a hashed item side (every ID has a bucket there already).
        * ``users``: the user-side mirror of ``catalog`` (a table whose ``user_id`` column
          lists the users that exist, e.g. one row per user of ``u.user`` with their
          demographics, or the IDs themselves). A user with no training row gets a row of
          their own after the trained users (sorted by ID), so a model can answer for them
          from their features (``catalog_users``) instead of the shared OOV row. Not for a
          hashed user side.

            Vocabularies.build(train, min_count=2)
            Vocabularies.build(train, hash_buckets={"user_id": 1 << 21})  # items: a list
            Vocabularies.build(train, catalog=items)   # new items: rows after the trained
            Vocabularies.build(train, users=people)    # new users: rows after the trained
        """
        buckets = normalize_hash_buckets(hash_buckets)
        out = []
        for column, values, keep in ((USER, train.user_id, False),
                                     (ITEM, train.item_id, True)):
            if buckets.get(column):
                out.append(HashedVocabulary.build(values, buckets[column], name=column,
                                                  keep_tokens=keep))
            else:
                out.append(Vocabulary.build(values, min_count, name=column))
        for side, (column, listed) in enumerate(((USER, users), (ITEM, catalog))):
            if listed is None:
                continue
            if buckets.get(column):
                what = "a user catalog (users=...)" if column == USER else "a catalog"
                raise ValueError(f"{what} needs a {column} vocabulary: with hashed "
                                 f"{column} every ID already has a bucket")
            ids = listed.columns[column] if isinstance(listed, Interactions) else listed
            new = np.setdiff1d(np.asarray(ids, dtype=str),
                               np.asarray(train.columns[column], str))
            if len(new):
                out[side] = Vocabulary(np.concatenate([out[side].tokens, new]), name=column)
        return cls(*out)

    @property
    def hash_buckets(self) -> dict[str, int]:
        """``{column: buckets}`` of the hashed sides (empty when none is hashed)."""
        return {name: v.num_buckets for name, v in ((USER, self.user), (ITEM, self.item))
                if getattr(v, "hashed", False)}

    def encode(self, table: Interactions) -> dict[str, np.ndarray]:
        return {USER: self.user.lookup(table.user_id), ITEM: self.item.lookup(table.item_id)}

    def save(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)  # JSON; a hashed side stores its bucket count
        self.user.save(os.path.join(directory, "user_vocab.json"))
        self.item.save(os.path.join(directory, "item_vocab.json"))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Vocabularies:
        return cls(Vocabulary.load(os.path.join(directory, "user_vocab.json")),
                   Vocabulary.load(os.path.join(directory, "item_vocab.json")))


def catalog_items(train: Interactions, vocabs: Vocabularies) -> np.ndarray:
    """Item indices with no row in ``train``: the catalog's new items (``Vocabularies.build``
    with ``catalog``), sorted; empty when every item of the vocabulary was trained on.

    Why a model needs them: they are still to be represented (from their features), but
    no training pair saw them, so a loss over "every item" must not treat them as items
    users passed over (``tfrec_p5.tasks.retrieval``).
    """
    return _untrained(vocabs.item, train.item_id)


def catalog_users(train: Interactions, vocabs: Vocabularies) -> np.ndarray:
    """User indices with no row in ``train``: the user catalog's new users
    (``Vocabularies.build`` with ``users``), sorted; empty when every user of the vocabulary
    was trained on.

    Why a model needs them: they have no ID embedding, history or bias worth reading, so
    the user tower answers for them from their features alone (``feature_only_from``).
    """
    return _untrained(vocabs.user, train.user_id)


def _untrained(vocab, trained_ids: np.ndarray) -> np.ndarray:
    """Indices of ``vocab``'s tokens that ``trained_ids`` never mentions (none if hashed)."""
    if getattr(vocab, "hashed", False):
        return np.zeros(0, np.int64)
    known = np.isin(vocab.tokens, np.unique(np.asarray(trained_ids, str)))
    return (np.flatnonzero(~known) + 1).astype(np.int64)


def normalize_hash_buckets(hash_buckets: Mapping[str, int] | int | None) -> dict[str, int]:
    """``None`` / ``N`` / ``{"user_id": N}`` → ``{column: N}`` (unknown columns rejected)."""
    if hash_buckets is None:
        return {}
    if isinstance(hash_buckets, int):
        return {USER: int(hash_buckets), ITEM: int(hash_buckets)}
    out = {str(k): int(v) for k, v in dict(hash_buckets).items() if v}
    unknown = sorted(set(out) - {USER, ITEM})
    if unknown:
        raise ValueError(f"hash_buckets keys must be {USER!r} / {ITEM!r}, got {unknown}")
    return out


def batched_dataset(tensors, batch_size: int, shuffle: bool = False, seed: int | None = None,
                    drop_remainder: bool = False, *, distributed: bool = False,
                    input_context: tf.distribute.InputContext | None = None
                    ) -> tf.data.Dataset:
    """Batches of ``tensors`` (a nest of equal-length arrays), reshuffled every epoch.

    The permutation is drawn once per pass with ``tf.random.shuffle`` (seeded, so runs
    repeat) and applied with ``tf.gather``: a full shuffle at memory speed.

    ``distributed`` / ``input_context``: see the ``tfrec_p5.data.pipeline`` module
    (``tf.distribute`` input); ``distributed=True`` yields the same batches as the default.
    """
    flat = tf.nest.flatten(tensors)
    n = int(flat[0].shape[0])
    if n == 0:
        raise DataError("cannot build a dataset from an empty table")
    if distributed or input_context is not None:
        return _distributed_batches(tensors, n, batch_size, shuffle, seed, drop_remainder,
                                    input_context)
    n_batches = n // batch_size if drop_remainder else math.ceil(n / batch_size)
    # Wrapped in a dict so that tf.data never unpacks a (features, label) tuple into args.
    base = tf.data.Dataset.from_tensors({"t": tensors})
    if shuffle:
        # A fresh, seeded draw for every pass over the data (Keras makes one per epoch).
        draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)

        def permute(w, draw):
            idx = tf.random.experimental.stateless_shuffle(
                tf.range(n), seed=tf.stack([draw, tf.constant(0, tf.int64)]))
            return {"t": tf.nest.map_structure(lambda a: tf.gather(a, idx), w["t"])}
        base = tf.data.Dataset.zip(base, draws).map(permute)

    def to_batches(w):
        def slice_batch(i):
            start = i * batch_size
            end = tf.minimum(start + batch_size, n)
            return tf.nest.map_structure(lambda a: a[start:end], w["t"])
        return tf.data.Dataset.range(n_batches).map(slice_batch)

    # flat_map hides the size; state it so Keras can use steps_per_execution > 1.
    return base.flat_map(to_batches).apply(
        tf.data.experimental.assert_cardinality(n_batches)).prefetch(AUTOTUNE)


def _distributed_batches(tensors, n: int, batch_size: int, shuffle: bool, seed: int | None,
                         drop_remainder: bool,
                         input_context: tf.distribute.InputContext | None) -> tf.data.Dataset:
    """``batched_dataset`` for ``tf.distribute``: row-index stream → batch → gather.

    The permutation is the one ``batched_dataset`` draws (same seed, same stateless
    shuffle), so ``distributed=True`` gives identical global batches. ``tf.distribute``
    rebatches them into per-replica slices (it looks for the ``batch`` op) and shards the
    slices across workers (``AutoShardPolicy.DATA``: every worker holds the in-memory
    tensors; there are no files to shard). With ``input_context`` (ParameterServer) the
    rows are sharded here by worker and the stream repeats forever.
    """
    if shuffle:
        draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
        order = draws.map(lambda draw: tf.random.experimental.stateless_shuffle(
            tf.range(n), seed=tf.stack([draw, tf.constant(0, tf.int64)])))
    else:
        order = tf.data.Dataset.from_tensors(tf.range(n))
    rows = order.unbatch()
    if input_context is not None:
        rows = rows.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    ds = rows.batch(batch_size, drop_remainder=drop_remainder).map(
        lambda idx: tf.nest.map_structure(lambda a: tf.gather(a, idx), tensors),
        num_parallel_calls=AUTOTUNE, deterministic=True)
    if input_context is not None:
        return ds.repeat().prefetch(AUTOTUNE)
    n_batches = n // batch_size if drop_remainder else math.ceil(n / batch_size)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.apply(tf.data.experimental.assert_cardinality(n_batches)).prefetch(
        AUTOTUNE).with_options(options)


def pointwise_dataset(table: Interactions, vocabs: Vocabularies, batch_size: int = 8192,
                      shuffle: bool = False, seed: int | None = None,
                      **distribution) -> tf.data.Dataset:
    """``({"user_id", "item_id"}, rating)`` batches for rating / ranking heads.

    ``distribution``: ``distributed=True`` or ``input_context=ctx`` (``batched_dataset``).
    """
    if table.rating is None:
        raise DataError("pointwise examples need a 'rating' column", path=table.source or None,
                        field="rating")
    ids = vocabs.encode(table)
    tensors = ({k: tf.constant(v) for k, v in ids.items()},
               tf.constant(table.rating, dtype=tf.float32))
    return batched_dataset(tensors, batch_size, shuffle, seed, **distribution)


def retrieval_dataset(table: Interactions, vocabs: Vocabularies, batch_size: int = 8192,
                      shuffle: bool = False, seed: int | None = None,
                      with_rating: bool = False, rating_mask: np.ndarray | None = None,
                      **distribution) -> tf.data.Dataset:
    """``{"user_id", "item_id"}`` positive-pair batches (in-batch negatives for retrieval).

    With ``with_rating=True`` the features also carry ``"rating"`` (for multi-task models),
    and with ``rating_mask`` (bool ``[rows]``) a ``"rating_mask"``: which rows' ratings
    the rating loss may see (pretraining with a share of the labels).
    ``distribution``: ``distributed=True`` or ``input_context=ctx`` (``batched_dataset``).
    """
    feats = {k: tf.constant(v) for k, v in vocabs.encode(table).items()}
    if with_rating:
        if table.rating is None:
            raise DataError("with_rating=True needs a 'rating' column", field="rating")
        feats[RATING] = tf.constant(table.rating, dtype=tf.float32)
        if rating_mask is not None:
            feats[RATING_MASK] = tf.constant(np.asarray(rating_mask, np.float32))
    return batched_dataset(feats, batch_size, shuffle, seed, **distribution)


def user_histories(table: Interactions, vocabs: Vocabularies,
                   max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Per user (in user-vocabulary order), the last ``max_len`` item indices by time.

    Returns ``(user_index [n_users], history [n_users, max_len])``, left-padded with 0 so
    the most recent item is in the last column. 0 is also the OOV index: an unknown item in
    a history carries no information and is treated as padding.
    """
    n = len(table)
    ts = table.timestamp if table.timestamp is not None else np.arange(n)
    users = vocabs.user.lookup(table.user_id)
    items = vocabs.item.lookup(table.item_id)
    order = np.lexsort((np.arange(n), ts, users))
    users, items = users[order], items[order]
    starts = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1]
    lengths = np.diff(np.r_[starts, len(users)])
    hist = np.zeros((len(starts), max_len), dtype=np.int64)
    pos_from_end = np.repeat(starts + lengths, lengths) - np.arange(len(users))  # 1 = last
    row = np.repeat(np.arange(len(starts)), lengths)
    keep = pos_from_end <= max_len
    hist[row[keep], max_len - pos_from_end[keep]] = items[keep]
    return users[starts], hist


def history_dataset(table: Interactions, vocabs: Vocabularies, max_len: int = 50,
                    batch_size: int = 256, shuffle: bool = False,
                    seed: int | None = None) -> tf.data.Dataset:
    """``{"user_id", "history"}`` batches: one padded item sequence per user."""
    users, hist = user_histories(table, vocabs, max_len)
    feats = {USER: tf.constant(users), "history": tf.constant(hist)}
    return batched_dataset(feats, batch_size, shuffle, seed)
