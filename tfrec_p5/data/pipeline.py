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
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from tfrec_p5.data.errors import DataError
from tfrec_p5.data.interactions import ITEM, USER, Interactions
from tfrec_p5.data.vocabulary import Vocabulary

AUTOTUNE = tf.data.AUTOTUNE


@dataclass(frozen=True)
class Vocabularies:
    """The user and item vocabularies of one training split."""

    user: Vocabulary
    item: Vocabulary

    @classmethod
    def build(cls, train: Interactions, min_count: int = 1) -> Vocabularies:
        return cls(Vocabulary.build(train.user_id, min_count, name=USER),
                   Vocabulary.build(train.item_id, min_count, name=ITEM))

    def encode(self, table: Interactions) -> dict[str, np.ndarray]:
        return {USER: self.user.lookup(table.user_id), ITEM: self.item.lookup(table.item_id)}

    def save(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        self.user.save(os.path.join(directory, "user_vocab.json"))
        self.item.save(os.path.join(directory, "item_vocab.json"))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Vocabularies:
        return cls(Vocabulary.load(os.path.join(directory, "user_vocab.json")),
                   Vocabulary.load(os.path.join(directory, "item_vocab.json")))


def batched_dataset(tensors, batch_size: int, shuffle: bool = False, seed: int | None = None,
                    drop_remainder: bool = False) -> tf.data.Dataset:
    """Batches of ``tensors`` (a nest of equal-length arrays), reshuffled every epoch.

    The permutation is drawn once per pass with ``tf.random.shuffle`` (seeded, so runs
    repeat) and applied with ``tf.gather``: a full shuffle at memory speed.
    """
    flat = tf.nest.flatten(tensors)
    n = int(flat[0].shape[0])
    if n == 0:
        raise DataError("cannot build a dataset from an empty table")
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


def pointwise_dataset(table: Interactions, vocabs: Vocabularies, batch_size: int = 8192,
                      shuffle: bool = False, seed: int | None = None) -> tf.data.Dataset:
    """``({"user_id", "item_id"}, rating)`` batches for rating / ranking heads."""
    if table.rating is None:
        raise DataError("pointwise examples need a 'rating' column", path=table.source or None,
                        field="rating")
    ids = vocabs.encode(table)
    tensors = ({k: tf.constant(v) for k, v in ids.items()},
               tf.constant(table.rating, dtype=tf.float32))
    return batched_dataset(tensors, batch_size, shuffle, seed)


def retrieval_dataset(table: Interactions, vocabs: Vocabularies, batch_size: int = 8192,
                      shuffle: bool = False, seed: int | None = None,
                      with_rating: bool = False) -> tf.data.Dataset:
    """``{"user_id", "item_id"}`` positive-pair batches (in-batch negatives for retrieval).

    With ``with_rating=True`` the features also carry ``"rating"`` (for multi-task models).
    """
    feats = {k: tf.constant(v) for k, v in vocabs.encode(table).items()}
    if with_rating:
        if table.rating is None:
            raise DataError("with_rating=True needs a 'rating' column", field="rating")
        feats["rating"] = tf.constant(table.rating, dtype=tf.float32)
    return batched_dataset(feats, batch_size, shuffle, seed)


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
