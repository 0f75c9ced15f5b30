"""``recommend`` and ``rank`` signatures: brute-force top-k over a precomputed index.

Why precomputed tables: a two-tower model's query depends only on the user ID (its tower
and history are looked up by ID), and a candidate only on the item ID, so at export time we
compute both vector tables once and the serving graph is a gather, one matmul and
``tf.math.top_k`` -- no Keras, no TFRS, loadable by bare TensorFlow / TF Serving. This is
what ``tfrs.layers.factorized_top_k.BruteForce`` does, without its Keras layer.

    module = ServingModule(trained.vocabs)
    add_retrieval_signatures(module, RetrievalIndex.from_trained(trained), k=100)
    export(module, "saved_models/ml100k")
    loaded.signatures["recommend"](user_id=tf.constant(["42"]))
    # {"item_ids": [1, 100] string, "scores": [1, 100] float32}

* ``exclude_seen=True`` stores each user's training items (CSR: ``row_splits`` + item
  indices) in the SavedModel and masks them to ``-inf`` before ``top_k``.
* An unknown user (OOV index 0) gets the most popular training items (scores = their
  training counts) instead of an error.
* ``rank``: ``user_id [B]`` + ``item_ids [B, n]`` → the same items sorted by score
  (``item_ids``, ``scores`` ``[B, n]``); unknown items score ``-inf`` and sort last.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from tfrec_p5.data.vocabulary import EMPTY_BUCKET
from tfrec_p5.export.serving import USER_ID_SPEC, ServingModule

ITEM_LIST_SPEC = tf.TensorSpec([None, None], tf.string, name="item_ids")


class RetrievalIndex(tf.Module):
    """Query / candidate tables, item tokens, popularity and seen items, as variables.

    Args:
      user_vectors: ``[U, d]`` query vectors by user vocabulary index (row 0 = OOV).
      item_vectors: ``[I, d]`` candidate vectors by item index (row 0 = OOV, never served).
      item_tokens: ``[I - 1]`` item IDs of rows ``1..I-1``.
      popularity: ``[I]`` fallback scores (training counts) for unknown users.
      seen_splits, seen_values: CSR of each user's training items (``history_csr``).
      item_prior: optional ``[I]`` additive score per item (score fusion); default none.
    """

    def __init__(self, user_vectors: np.ndarray, item_vectors: np.ndarray,
                 item_tokens: np.ndarray, popularity: np.ndarray,
                 seen_splits: np.ndarray | None = None, seen_values: np.ndarray | None = None,
                 item_prior: np.ndarray | None = None, name: str = "retrieval_index") -> None:
        super().__init__(name=name)
        item_vectors = np.asarray(item_vectors, np.float32)
        if len(item_tokens) != len(item_vectors) - 1:
            raise ValueError("item_tokens must name rows 1..I-1 of item_vectors")
        self.num_items = len(item_tokens)
        self.user_vectors = tf.Variable(np.asarray(user_vectors, np.float32), trainable=False,
                                        name="user_vectors")
        self.item_vectors_t = tf.Variable(item_vectors[1:].T.copy(), trainable=False,
                                          name="item_vectors_t")  # [d, I-1]: no transpose
        prior = np.zeros(len(item_vectors), np.float32) if item_prior is None \
            else np.asarray(item_prior, np.float32).copy()
        # Hashed item vocabularies: a bucket no training item hashed into is never served.
        prior[1:][np.asarray(item_tokens).astype(str) == EMPTY_BUCKET] = -np.inf
        self.item_prior = tf.Variable(prior[1:], trainable=False, name="item_prior")
        self.item_tokens = tf.Variable(np.asarray(item_tokens).astype(object), trainable=False,
                                       dtype=tf.string, name="item_tokens")
        self.popularity = tf.Variable(np.asarray(popularity, np.float32)[1:], trainable=False,
                                      name="popularity")
        splits = np.zeros(len(user_vectors) + 1, np.int64) if seen_splits is None \
            else np.asarray(seen_splits, np.int64)
        values = np.zeros(0, np.int64) if seen_values is None \
            else np.asarray(seen_values, np.int64)
        self.seen_splits = tf.Variable(splits, trainable=False, name="seen_splits")
        self.seen_values = tf.Variable(values, trainable=False, name="seen_values")

    @classmethod
    def from_trained(cls, trained, item_tokens: np.ndarray | None = None) -> RetrievalIndex:
        """From a ``TrainedUnified`` with a retrieval head (vectors computed here)."""
        counts = np.bincount(trained.seen_values, minlength=len(trained.vocabs.item))
        prior = None
        if trained.config.popularity_weight:
            prior = trained.config.popularity_weight * np.log(trained.item_probabilities)
        return cls(trained.user_vectors(), trained.item_vectors(),
                   trained.vocabs.item.tokens if item_tokens is None else item_tokens,
                   counts.astype(np.float32), trained.seen_splits, trained.seen_values,
                   prior)

    def scores(self, user_index: tf.Tensor, exclude_seen: bool) -> tf.Tensor:
        """``[B, I-1]`` scores (column j = item index j + 1); fallback for OOV users."""
        q = tf.gather(self.user_vectors, user_index)
        scores = tf.matmul(q, self.item_vectors_t) + self.item_prior[None, :]
        if exclude_seen:
            starts = tf.gather(self.seen_splits, user_index)
            ends = tf.gather(self.seen_splits, user_index + 1)
            pos = tf.ragged.range(starts, ends)
            cols = tf.gather(self.seen_values, pos.flat_values) - 1
            idx = tf.stack([pos.value_rowids(), cols], axis=1)
            scores = tf.tensor_scatter_nd_update(
                scores, idx, tf.fill(tf.shape(cols), tf.constant(-np.inf, tf.float32)))
        fallback = tf.broadcast_to(self.popularity[None, :], tf.shape(scores))
        return tf.where((user_index > 0)[:, None], scores, fallback)

    def pair_scores(self, user_index: tf.Tensor, item_index: tf.Tensor) -> tf.Tensor:
        """Dot-product scores of ``user_index [B]`` × ``item_index [B, n]``."""
        q = tf.gather(self.user_vectors, user_index)                     # [B, d]
        cols = tf.maximum(item_index - 1, 0)
        c = tf.gather(tf.transpose(self.item_vectors_t), cols)           # [B, n, d]
        return tf.einsum("bd,bnd->bn", q, c) + tf.gather(self.item_prior, cols)


def add_retrieval_signatures(module: ServingModule, index: RetrievalIndex, k: int = 100,
                             exclude_seen: bool = True,
                             pair_scorer: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None
                             = None, default: bool = True) -> None:
    """Add ``recommend`` (``serving_default`` when ``default``) and ``rank`` to ``module``.

    ``pair_scorer(user_index [B*n], item_index [B*n]) -> [B*n]`` scores ``rank`` with
    another head (e.g. the ranking MLP); default: the retrieval dot product. Its
    trackable state must already be tracked on ``module``.
    """
    module.track("retrieval_index", index)
    k = int(min(k, index.num_items))

    def recommend(user_id: tf.Tensor) -> dict[str, tf.Tensor]:
        user_index = module.user_index(user_id)
        scores = module.retrieval_index.scores(user_index, exclude_seen)
        top = tf.math.top_k(scores, k=k)
        return {"item_ids": tf.gather(module.retrieval_index.item_tokens, top.indices),
                "scores": top.values}

    def rank(user_id: tf.Tensor, item_ids: tf.Tensor) -> dict[str, tf.Tensor]:
        user_index = module.user_index(user_id)
        item_index = module.item_index(item_ids)
        if pair_scorer is None:
            scores = module.retrieval_index.pair_scores(user_index, item_index)
        else:
            n = tf.shape(item_index)[1]
            flat = pair_scorer(tf.repeat(user_index, n), tf.reshape(item_index, [-1]))
            scores = tf.reshape(tf.cast(flat, tf.float32), tf.shape(item_index))
        scores = tf.where(item_index > 0, scores, tf.constant(-np.inf, tf.float32))
        order = tf.argsort(scores, axis=1, direction="DESCENDING", stable=True)
        return {"item_ids": tf.gather(item_ids, order, batch_dims=1),
                "scores": tf.gather(scores, order, batch_dims=1)}

    module.add_signature("recommend", recommend, [USER_ID_SPEC], default=default,
                         task="retrieval")
    module.add_signature("rank", rank, [USER_ID_SPEC, ITEM_LIST_SPEC], task="ranking")
    module.recommend_k = k
    module.exclude_seen = bool(exclude_seen)
