"""The retrieval head: two towers, in-batch softmax through ``tfrs.tasks.Retrieval``.

Why these options: with in-batch negatives every item is a negative about as often as it is
a positive, so a plain in-batch softmax learns to *demote* popular items. The log-Q
correction (``item_probabilities``: subtract ``log p(item)`` from each logit, Yi et al.
2019) undoes that sampling bias and is the single most important switch on MovieLens
(Recall@10 ~0.05 without, ~0.13 with). ``full_softmax`` appends every item of the catalog
to the in-batch candidates (accidental hits removed), which is exact and cheap for
catalogs up to ~100k items. ``HistoryEncoder`` adds the user's training items to the
query (the asymmetric-SVD / Mult-DAE idea): a user is described by what they watched,
which generalizes far better than a free user-ID vector on small data.

    head = RetrievalHead(num_items=len(vocabs.item), temperature=0.1,
                         item_probabilities=item_frequencies(train, vocabs),
                         remove_accidental_hits=True)
    model = UnifiedModel(user_tower, item_tower, {"retrieval": head})

Scoring is a dot product of ``query(...)`` and ``candidates(...)`` vectors, so serving
precomputes both tables once (``tfrec_p5.export.retrieval``) and needs only a matmul and
``tf.math.top_k``.

``loss="squared"`` swaps the softmax for the full-catalog squared loss of
``tasks.squared.SquaredRetrieval`` (EASE / iALS-style: observed → 1, every other item → 0,
through a ``d × d`` Gramian), with an L2 penalty on the history and item tables; with the
history encoder (no leave-target-out) this is a low-rank denoising linear autoencoder, the
default of ``UnifiedConfig`` since it was the best model on ML-100K validation.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrec_p5.data.interactions import ITEM, USER, Interactions
from tfrec_p5.data.pipeline import Vocabularies
from tfrec_p5.tasks.base import KNOWN_USER, Head
from tfrec_p5.tasks.squared import SquaredRetrieval

RETRIEVAL_LOSSES = ("softmax", "squared")


class _Retrieval(tfrs.tasks.Retrieval):
    """``tfrs.tasks.Retrieval``, its ``call`` converted by autograph on first use.

    Why: training steps are traced without autograph (``training.trace_steps_once``), and
    TFRS's ``call`` asks ``len(tf.shape(x))``, which only autograph answers in a graph.
    """

    def call(self, query_embeddings, candidate_embeddings, sample_weight=None,
             candidate_sampling_probability=None, candidate_ids=None, compute_metrics=True,
             compute_batch_metrics=True, score_mask=None):
        return _converted_retrieval_call()(
            self, query_embeddings, candidate_embeddings, sample_weight,
            candidate_sampling_probability, candidate_ids, compute_metrics,
            compute_batch_metrics, score_mask)


@functools.cache
def _converted_retrieval_call():
    return tf.autograph.to_graph(tfrs.tasks.Retrieval.call, recursive=False)


def item_frequencies(train: Interactions, vocabs: Vocabularies) -> np.ndarray:
    """Share of training interactions per item index (``[len(vocabs.item)]``, sums to 1).

    The OOV row gets the smallest positive share so that ``log p`` stays finite.
    """
    counts = np.bincount(vocabs.item.lookup(train.item_id),
                         minlength=len(vocabs.item)).astype(np.float64)
    counts[0] = 0.0
    p = counts / max(counts.sum(), 1.0)
    floor = p[p > 0].min() if (p > 0).any() else 1.0
    return np.maximum(p, floor).astype(np.float32)


def history_csr(train: Interactions, vocabs: Vocabularies) -> tuple[np.ndarray, np.ndarray]:
    """Each user's distinct training items as CSR ``(row_splits [U+1], item indices)``.

    Row ``u`` (user vocabulary index) lists the item indices of user ``u``, sorted; row 0
    (the OOV user) is empty. Used for the history encoder and to exclude seen items.
    """
    users = vocabs.user.lookup(train.user_id)
    items = vocabs.item.lookup(train.item_id)
    keep = (users > 0) & (items > 0)
    key = np.unique(users[keep] * np.int64(len(vocabs.item)) + items[keep])
    users, items = key // len(vocabs.item), key % len(vocabs.item)
    counts = np.bincount(users, minlength=len(vocabs.user))
    splits = np.r_[0, np.cumsum(counts)].astype(np.int64)
    return splits, items.astype(np.int64)


class HistoryEncoder(tf.keras.layers.Layer):
    """The user's training items → ``sum(embeddings) / sqrt(n)`` (query-side context).

    * ``leave_target_out``: while training, the positive item of the example is removed
      from its own history (EASE's zero-diagonal constraint: an item may not predict
      itself), so training queries look like serving queries, whose targets are unseen.
    * ``dropout``: each history entry is dropped with this probability while training
      (Mult-DAE's input dropout), a strong regularizer on small data.

    Implemented as a sparse ``[batch, items] @ [items, dim]`` product: no ``[batch, len,
    dim]`` tensor is ever built, so long histories cost what their non-zeros cost.
    """

    def __init__(self, row_splits: np.ndarray, values: np.ndarray, num_items: int, dim: int,
                 dropout: float = 0.5, leave_target_out: bool = True,
                 embeddings_l2: float = 0.0, **kwargs) -> None:
        kwargs.setdefault("name", "history_encoder")
        super().__init__(**kwargs)
        self.num_items, self.dim = int(num_items), int(dim)
        self.dropout, self.leave_target_out = float(dropout), bool(leave_target_out)
        self.splits = tf.Variable(np.asarray(row_splits, np.int64), trainable=False,
                                  name="history_splits")
        self.values = tf.Variable(np.asarray(values, np.int64), trainable=False,
                                  name="history_values")
        self.embedding = tf.keras.layers.Embedding(
            self.num_items, self.dim, name="history_embedding",
            embeddings_regularizer=tf.keras.regularizers.L2(embeddings_l2)
            if embeddings_l2 > 0 else None)

    def call(self, user_ids: tf.Tensor, target_ids: tf.Tensor | None = None,
             training: bool | None = None) -> tf.Tensor:
        user_ids = tf.cast(user_ids, tf.int64)
        batch = tf.shape(user_ids, out_type=tf.int64)[0]
        starts = tf.gather(self.splits, user_ids)
        ends = tf.gather(self.splits, user_ids + 1)
        positions = tf.ragged.range(starts, ends)
        rows = positions.value_rowids()
        items = tf.gather(self.values, positions.flat_values)
        weight = tf.ones_like(items, tf.float32)
        if training and self.leave_target_out and target_ids is not None:
            target = tf.gather(tf.cast(target_ids, tf.int64), rows)
            weight *= tf.cast(tf.not_equal(items, target), tf.float32)
        count = tf.math.unsorted_segment_sum(weight, rows, batch)
        if training and self.dropout > 0:
            keep = tf.random.uniform(tf.shape(weight)) >= self.dropout
            weight *= tf.cast(keep, tf.float32) / (1.0 - self.dropout)
        if not self.embedding.built:
            self.embedding.build((None,))
        sparse = tf.SparseTensor(tf.stack([rows, items], axis=1),
                                 weight / tf.sqrt(tf.maximum(tf.gather(count, rows), 1.0)),
                                 tf.stack([batch, tf.cast(self.num_items, tf.int64)]))
        return tf.sparse.sparse_dense_matmul(sparse, self.embedding.embeddings)


class RetrievalHead(Head):
    """Two-tower retrieval on ``tfrs.tasks.Retrieval`` (see its module).

    Args:
      num_items: item vocabulary size (OOV row included).
      temperature: logits are divided by it (``None``: 1).
      remove_accidental_hits: mask in-batch candidates that are the positive item.
      item_probabilities: ``[num_items]`` sampling probabilities for the log-Q correction
        (``item_frequencies(train, vocabs)``); ``None`` switches the correction off.
      num_hard_negatives: keep only the top-N negatives per query (``tfrs`` option).
      full_softmax: append all catalog items to the in-batch candidates (exact softmax).
      history: a ``HistoryEncoder`` added to the user tower's vector; ``None``: IDs only.
      use_user_tower: add the shared user-tower vector to the query (set False to retrieve
        from the history alone).
      use_item_bias: a learned per-item bias (popularity prior) added to every score.
      metrics: optional ``tfrs.metrics.FactorizedTopK``; computed only when not training
        (it scores the whole catalog per batch, which is what makes the tutorial slow).
      loss: ``"softmax"`` (``tfrs.tasks.Retrieval``; ``temperature``, log-Q, accidental
        hits, hard negatives and ``full_softmax`` apply) or ``"squared"``
        (``SquaredRetrieval`` over the whole catalog; those softmax options are ignored).
      unobserved_weight: squared loss only: weight of the "every item → 0" term.
      l2: squared loss only: L2 penalty on the history table and the catalog's item
        vectors, per user (as EASE's lambda: scaled by users / interactions, so the same
        value means the same on a larger data set).
      catalog_sample: squared loss only: while training, a catalog of more items than
        this is replaced in each step by this many items drawn uniformly (with
        replacement), and the "every item → 0" term and the L2 are scaled by
        ``catalog / sample``: an unbiased estimate of the same loss (Krichene et al.
        2019). Why: the exact term costs a pass over the whole catalog every step (its
        Gramian and, through its gradient, the optimizer's update of every item row), so
        a step's cost grew with the catalog. ``None``: always the whole catalog. The
        validation loss always uses the whole catalog.
      user_counts: ``[num_users]`` training interactions per user index: each user's
        unobserved term counts once (weight ``1 / n_u``) and ``l2`` is scaled by them;
        ``None``: every row weighs 1 and ``l2`` is used as is.
      untrained_items: item indices with no training interaction (a catalog's new items,
        ``tfrec_p5.data.pipeline.catalog_items``): left out of the catalog the losses
        compare against (full softmax, the squared loss's "every other item → 0" and its
        L2), since users could not have chosen them; they are still scored and served.
        ``None`` / empty: every item index ``1..num_items-1`` is in that catalog.
      cold_user_tower: the user tower is the query of users read as new only -- user
        indices from ``new_users_from`` on (a user catalog's new users) and, while
        training, the rows ``tasks.base.KNOWN_USER`` marks -- and a known user's query is
        their history alone. Why not the sum: a new user has no history, and a tower
        trained to *complement* histories is not what answers best without one; here it
        is trained on exactly the rows that look like a new user (``user_id_dropout``),
        and known users are served as without it. Needs ``history``.
      new_users_from: first user index of the new users (``catalog_users``), or ``None``.
    """

    task = "retrieval"

    def __init__(self, num_items: int, *, temperature: float | None = None,
                 remove_accidental_hits: bool = True,
                 item_probabilities: np.ndarray | None = None,
                 num_hard_negatives: int | None = None, full_softmax: bool = False,
                 history: HistoryEncoder | None = None, use_user_tower: bool = True,
                 use_item_bias: bool = False, metrics: Sequence | None = None,
                 loss: str = "softmax", unobserved_weight: float = 1.0, l2: float = 0.0,
                 catalog_sample: int | None = None, user_counts: np.ndarray | None = None,
                 untrained_items: np.ndarray | None = None, cold_user_tower: bool = False,
                 new_users_from: int | None = None, **kwargs) -> None:
        kwargs.setdefault("name", "retrieval_head")
        super().__init__(**kwargs)
        if loss not in RETRIEVAL_LOSSES:
            raise ValueError(f"retrieval loss {loss!r}; expected one of {RETRIEVAL_LOSSES}")
        self.loss_kind = loss
        self.squared = SquaredRetrieval(unobserved_weight) if loss == "squared" else None
        self.l2 = float(l2)
        self.row_weight = self.l2_scale = None
        if user_counts is not None:
            counts = np.asarray(user_counts, np.float32)
            self.row_weight = tf.Variable(1.0 / np.maximum(counts, 1.0), trainable=False,
                                          name="unobserved_row_weight")
            self.l2_scale = float((counts > 0).sum() / max(counts.sum(), 1.0))
        self.num_items = int(num_items)
        trained = None
        if untrained_items is not None and len(untrained_items):
            trained = np.setdiff1d(np.arange(1, self.num_items),
                                   np.asarray(untrained_items, np.int64)).astype(np.int64)
        self.trained_items = None if trained is None else tf.Variable(
            trained, trainable=False, name="trained_items")
        catalog_size = self.num_items - 1 if trained is None else len(trained)
        self.catalog_sample = None
        if self.squared is not None and catalog_sample is not None \
                and catalog_size > int(catalog_sample):
            self.catalog_sample = int(catalog_sample)
            self.catalog_scale = catalog_size / self.catalog_sample
        self.full_softmax = bool(full_softmax)
        self.history = history
        self.cold_user_tower = bool(cold_user_tower)
        if self.cold_user_tower and history is None:
            raise ValueError("cold_user_tower needs a history query for the known users")
        self.new_users_from = None if new_users_from is None else int(new_users_from)
        self.use_user_tower = (bool(use_user_tower) or history is None) \
            and not self.cold_user_tower
        self.uses_user_tower = self.use_user_tower or self.cold_user_tower
        self.use_item_bias = bool(use_item_bias)
        self.log_q = None if item_probabilities is None else tf.Variable(
            np.asarray(item_probabilities, np.float32), trainable=False, name="item_probs")
        self.item_bias = tf.keras.layers.Embedding(
            self.num_items, 1, embeddings_initializer="zeros", name="retrieval_item_bias") \
            if self.use_item_bias else None
        self.retrieval = _Retrieval(
            name="retrieval", metrics=metrics, temperature=temperature,
            num_hard_negatives=num_hard_negatives, remove_accidental_hits=remove_accidental_hits)
        self._item_tower = None

    def bind(self, user_tower, item_tower) -> None:
        # Full softmax embeds the whole catalog through the shared item tower; a closure,
        # so Keras does not track the tower a second time under this head.
        self._item_tower = lambda: item_tower

    def query(self, user_ids: tf.Tensor, user_vec: tf.Tensor | None,
              target_ids: tf.Tensor | None = None, training: bool = False,
              known: tf.Tensor | None = None) -> tf.Tensor:
        """Query vectors ``[B, d(+1)]`` (the extra column multiplies the item bias).

        ``known`` (bool ``[B]``): rows marked False leave the history out, as for a user
        with no training items (``tasks.base.KNOWN_USER``)."""
        if self.cold_user_tower:
            q = self._cold_or_history(user_ids, user_vec, target_ids, training, known)
            if self.item_bias is not None:
                q = tf.concat([q, tf.ones_like(q[:, :1])], axis=1)
            return q
        parts = []
        if self.use_user_tower and user_vec is not None:
            parts.append(user_vec)
        if self.history is not None:
            history = self.history(user_ids, target_ids, training=training)
            if known is not None:
                history *= tf.cast(tf.reshape(known, (-1, 1)), history.dtype)
            parts.append(history)
        q = tf.add_n(parts) if len(parts) > 1 else parts[0]
        if self.item_bias is not None:
            q = tf.concat([q, tf.ones_like(q[:, :1])], axis=1)
        return q

    def _cold_or_history(self, user_ids, user_vec, target_ids, training, known):
        """``cold_user_tower``'s query: the tower for users read as new, else the history."""
        user_ids = tf.cast(user_ids, tf.int64)
        is_known = tf.ones_like(user_ids, tf.bool) if self.new_users_from is None \
            else user_ids < self.new_users_from
        if known is not None:
            is_known = is_known & tf.cast(known, tf.bool)
        history = self.history(user_ids, target_ids, training=training)
        return tf.where(is_known[:, None], history, user_vec)

    def candidates(self, item_ids: tf.Tensor, item_vec: tf.Tensor) -> tf.Tensor:
        """Candidate vectors ``[N, d(+1)]`` for items ``item_ids`` with tower output."""
        if self.item_bias is not None:
            return tf.concat([item_vec, self.item_bias(item_ids)], axis=1)
        return item_vec

    def feature_candidates(self, item_vec: tf.Tensor) -> tf.Tensor:
        """Candidate vectors ``[N, d(+1)]`` of items with no row of their own (known only by
        their features): the item bias is its initial 0, as for a catalog item no loss
        ever reached (``untrained_items``), so both score alike."""
        if self.item_bias is not None:
            return tf.concat([item_vec, tf.zeros_like(item_vec[:, :1])], axis=1)
        return item_vec

    def compute_loss(self, features, user_vec, item_vec, training=False):
        item_ids = features[ITEM]
        query = self.query(features[USER], user_vec, item_ids, training=training,
                           known=features.get(KNOWN_USER))
        cand = self.candidates(item_ids, item_vec)
        if self.squared is not None:
            return self._squared_loss(features[USER], query, cand, training)
        ids = item_ids
        if self.full_softmax:
            all_ids, catalog = self._catalog(training)
            cand = tf.concat([cand, catalog], axis=0)
            ids = tf.concat([item_ids, tf.cast(all_ids, item_ids.dtype)], axis=0)
        kwargs = {}
        if self.log_q is not None:
            kwargs["candidate_sampling_probability"] = tf.gather(self.log_q, ids)
        return self.retrieval(query, cand, candidate_ids=ids, compute_metrics=not training,
                              **kwargs)

    def _catalog_ids(self) -> tf.Tensor:
        """Every real item users could choose: index 1..n-1 but the ``untrained_items``."""
        return tf.range(1, self.num_items, dtype=tf.int64) if self.trained_items is None \
            else tf.identity(self.trained_items)

    def _catalog(self, training: bool) -> tuple[tf.Tensor, tf.Tensor]:
        """The catalog's item IDs and their candidate vectors, through the item tower."""
        all_ids = self._catalog_ids()
        return all_ids, self.candidates(all_ids, self._item_tower()(all_ids, training=training))

    def _squared_loss(self, user_ids, query, cand, training):
        weights = 1.0 if self.row_weight is None else tf.gather(
            self.row_weight, tf.cast(user_ids, tf.int64))
        ids, scale = self._catalog_ids(), 1.0
        sampled = training and self.catalog_sample is not None
        if sampled:
            ids = tf.gather(ids, tf.random.uniform([self.catalog_sample], 0,
                                                   tf.size(ids, tf.int64), dtype=tf.int64))
            scale = self.catalog_scale
        catalog = self.candidates(ids, self._item_tower()(ids, training=training))
        loss = self.squared(query, cand, catalog, weights * scale)
        if self.l2 > 0:
            norm = tf.reduce_sum(tf.square(catalog))
            if self.history is not None:
                table = self.history.embedding.embeddings
                norm += tf.reduce_sum(tf.square(tf.gather(table, ids) if sampled else table))
            loss += self.l2 * (self.l2_scale or 1.0) * scale * norm
        if not training and self.retrieval.factorized_metrics:
            self.retrieval(query, cand, compute_metrics=True)  # metrics only
        return loss

    def score(self, features, user_vec, item_vec, training=False):
        q = self.query(features[USER], user_vec, training=training)
        c = self.candidates(features[ITEM], item_vec)
        return tf.reduce_sum(q * c, axis=-1)
