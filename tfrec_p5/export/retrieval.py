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

A model without a retrieval head (a rating or ranking head only) has no vectors to
precompute: its index holds no vectors, and ``recommend`` scores every item of the catalog
for the user with that head (``recommend_scorer``), so the list is still the model's.

* ``exclude_seen=True`` stores each user's training items (CSR: ``row_splits`` + item
  indices) in the SavedModel and masks them to ``-inf`` before ``top_k``.
* Fewer servable items than ``k`` (the user has seen most of the catalog): the tail of
  ``item_ids`` is padding, ``""`` with score ``PAD_SCORE`` (``boundary.top_k_or_pad``);
  a seen item is never served while exclusion is on.
* An unknown user (OOV index 0) gets the most popular training items (scores = their
  training counts) instead of an error.
* ``rank``: ``user_id [B]`` + ``item_ids [B, n]`` → the same items sorted by score
  (``item_ids``, ``scores`` ``[B, n]``); unknown items score ``-inf`` and sort last.
* ``ann=ScannOptions()`` (opt-in, catalogs of 100k+ items): ``recommend`` asks a ScaNN
  index (``scann_index.py``) instead of scoring every item; same exclusion, padding and
  fallback rules. Brute force stays the default because stock TF Serving has no ScaNN
  ops: a ScaNN export needs TF Serving built with them, or ``import scann`` before
  loading it in Python.

An item-item model (``models.item_item.ItemItemModel``: EASE, item-KNN, most popular)
is served the same way (``item_item_module``): its ``ItemItemIndex`` holds ``W`` instead
of vectors, and a user's scores are ``x_u · W + b`` with ``x_u`` the user's fitted items
(the stored seen items), so the export answers like the numpy reference it was fit as --
what ``tfrec-p5 train`` exports when such a reference beats the model on validation.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from tfrec_p5.data.pipeline import Vocabularies
from tfrec_p5.data.vocabulary import EMPTY_BUCKET
from tfrec_p5.export.boundary import top_k_or_pad
from tfrec_p5.export.scann_index import SCANN_OPS, ScannIndex, ScannOptions, scann_recommend
from tfrec_p5.export.serving import USER_ID_SPEC, ServingModule
from tfrec_p5.models.item_item import ItemItemModel

ITEM_LIST_SPEC = tf.TensorSpec([None, None], tf.string, name="item_ids")
#: Export metadata key: ``{"k": list size, "exclude_seen": bool}`` of ``recommend``.
RECOMMEND_KEY = "recommend"
#: ``(user_index [N], item_index [N]) -> scores [N]``: one head's score of each pair.
PairScorer = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def _variable(value, dtype, name: str) -> tf.Variable:
    """``value`` itself if it is a variable (shared with another index), else a new one."""
    if isinstance(value, tf.Variable):
        return value
    return tf.Variable(np.asarray(value, dtype), trainable=False, name=name)


class RetrievalIndex(tf.Module):
    """Query / candidate tables, item tokens, popularity and seen items, as variables.

    Args:
      user_vectors: ``[U, d]`` query vectors by user vocabulary index (row 0 = OOV), or
        ``None`` for a model without a retrieval head (``recommend`` then needs a
        ``recommend_scorer``, see ``add_retrieval_signatures``).
      item_vectors: ``[I, d]`` candidate vectors by item index (row 0 = OOV, never served),
        ``None`` together with ``user_vectors``.
      item_tokens: ``[I - 1]`` item IDs of rows ``1..I-1``.
      popularity: ``[I]`` fallback scores (training counts) for unknown users.
      seen_splits, seen_values: CSR of each user's training items (``history_csr``).
      item_prior: optional ``[I]`` additive score per item (score fusion); default none.
      item_titles: optional ``[I - 1]`` titles of rows ``1..I-1`` (for ``tfrec-p5
        recommend``).

    ``user_vectors``, ``seen_splits`` and ``seen_values`` may be ``tf.Variable``s of
    another index (a loaded export's): they are then shared, not copied, so a version
    that only adds items (``export.add_items``) does not store the user side twice.
    """

    def __init__(self, user_vectors: np.ndarray | None, item_vectors: np.ndarray | None,
                 item_tokens: np.ndarray, popularity: np.ndarray,
                 seen_splits: np.ndarray | None = None, seen_values: np.ndarray | None = None,
                 item_prior: np.ndarray | None = None, name: str = "retrieval_index",
                 item_titles: np.ndarray | None = None) -> None:
        super().__init__(name=name)
        if (user_vectors is None) != (item_vectors is None):
            raise ValueError("pass both user_vectors and item_vectors, or neither")
        self.num_items = len(item_tokens)
        self.has_vectors = item_vectors is not None
        #: Whether ``dot_scores`` / ``pair_scores`` score users without a head's help.
        self.scores_users = self.has_vectors
        if self.has_vectors:
            item_vectors = np.asarray(item_vectors, np.float32)
            if len(item_tokens) != len(item_vectors) - 1:
                raise ValueError("item_tokens must name rows 1..I-1 of item_vectors")
            self.user_vectors = _variable(user_vectors, np.float32, "user_vectors")
            self.item_vectors_t = tf.Variable(item_vectors[1:].T.copy(), trainable=False,
                                              name="item_vectors_t")  # [d, I-1]
        prior = np.zeros(self.num_items + 1, np.float32) if item_prior is None \
            else np.asarray(item_prior, np.float32).copy()
        # Hashed item vocabularies: a bucket no training item hashed into is never served.
        prior[1:][np.asarray(item_tokens).astype(str) == EMPTY_BUCKET] = -np.inf
        self.item_prior = tf.Variable(prior[1:], trainable=False, name="item_prior")
        self.item_tokens = tf.Variable(np.asarray(item_tokens).astype(object), trainable=False,
                                       dtype=tf.string, name="item_tokens")
        self.popularity = tf.Variable(np.asarray(popularity, np.float32)[1:], trainable=False,
                                      name="popularity")
        if item_titles is not None:
            self.item_titles = tf.Variable(np.asarray(item_titles, dtype=object),
                                           trainable=False, dtype=tf.string,
                                           name="item_titles")
        num_users = int(user_vectors.shape[0]) if user_vectors is not None else None
        if seen_splits is None:
            if num_users is None:
                raise ValueError("an index without vectors needs seen_splits (one row per "
                                 "user)")
            seen_splits = np.zeros(num_users + 1, np.int64)
        values = np.zeros(0, np.int64) if seen_values is None else seen_values
        self.seen_splits = _variable(seen_splits, np.int64, "seen_splits")
        self.seen_values = _variable(values, np.int64, "seen_values")

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

    def dot_scores(self, user_index: tf.Tensor) -> tf.Tensor:
        """``[B, I-1]`` retrieval dot products of ``user_index [B]`` with every item."""
        return tf.matmul(tf.gather(self.user_vectors, user_index), self.item_vectors_t)

    def scores(self, user_index: tf.Tensor, exclude_seen: bool,
               raw: tf.Tensor | None = None) -> tf.Tensor:
        """``[B, I-1]`` scores to rank (column j = item index j + 1), ``-inf`` = never serve.

        ``raw``: the model's ``[B, I-1]`` scores (default: ``dot_scores``). Unknown users
        get the popularity fallback; empty hash buckets and, with ``exclude_seen``, the
        user's training items are ``-inf``.
        """
        raw = self.dot_scores(user_index) if raw is None else raw
        scores = raw + self.item_prior[None, :]
        fallback = tf.broadcast_to(self.popularity[None, :], tf.shape(scores))
        scores = tf.where((user_index > 0)[:, None], scores, fallback)
        if exclude_seen:
            starts = tf.gather(self.seen_splits, user_index)
            ends = tf.gather(self.seen_splits, user_index + 1)
            pos = tf.ragged.range(starts, ends)
            cols = tf.gather(self.seen_values, pos.flat_values) - 1
            idx = tf.stack([pos.value_rowids(), cols], axis=1)
            scores = tf.tensor_scatter_nd_update(
                scores, idx, tf.fill(tf.shape(cols), tf.constant(-np.inf, tf.float32)))
        servable = tf.math.is_finite(self.item_prior)[None, :]
        return tf.where(servable, scores, tf.constant(-np.inf, tf.float32))

    def pair_scores(self, user_index: tf.Tensor, item_index: tf.Tensor) -> tf.Tensor:
        """Dot-product scores of ``user_index [B]`` × ``item_index [B, n]``."""
        q = tf.gather(self.user_vectors, user_index)                     # [B, d]
        cols = tf.maximum(item_index - 1, 0)
        c = tf.gather(tf.transpose(self.item_vectors_t), cols)           # [B, n, d]
        return tf.einsum("bd,bnd->bn", q, c) + tf.gather(self.item_prior, cols)


class ItemItemIndex(RetrievalIndex):
    """The index of an ``ItemItemModel`` (EASE, item-KNN, most popular): scores
    ``x_u · W + b``, ``x_u`` = user ``u``'s fitted items (the stored seen items).

    ``recommend`` and ``rank`` follow the reference it was fit as
    (``evaluation.served.ServedReference``): seen items excluded, an unknown user gets the
    popularity fallback in both, an unknown item scores ``-inf`` in ``rank``. ``W`` is
    stored as one ``[I, I - 1]`` variable (4 · I² bytes); a request multiplies the batch's
    ``[B, I]`` binary rows by it.
    """

    def __init__(self, model: ItemItemModel, item_tokens: np.ndarray, popularity: np.ndarray,
                 name: str = "retrieval_index", item_titles: np.ndarray | None = None) -> None:
        if len(item_tokens) != model.num_items - 1:
            raise ValueError("item_tokens must name item indices 1..I-1 of the model")
        super().__init__(None, None, item_tokens, popularity, model.history_splits,
                         model.history_items, item_prior=model.item_bias, name=name,
                         item_titles=item_titles)
        self.scores_users = True
        self.item_weights = None if model.weights is None else tf.Variable(
            np.asarray(model.weights, np.float32)[:, 1:], trainable=False,
            name="item_weights")                                        # [I, I-1]

    def dot_scores(self, user_index: tf.Tensor) -> tf.Tensor:
        """``[B, I-1]`` ``x_u · W`` of ``user_index [B]`` (zeros without ``W``)."""
        batch = tf.shape(user_index, out_type=tf.int64)[0]
        if self.item_weights is None:
            return tf.zeros(tf.stack([batch, self.num_items]), tf.float32)
        starts = tf.gather(self.seen_splits, user_index)
        ends = tf.gather(self.seen_splits, user_index + 1)
        pos = tf.ragged.range(starts, ends)
        items = tf.gather(self.seen_values, pos.flat_values)
        rows = tf.scatter_nd(tf.stack([pos.value_rowids(), items], axis=1),
                             tf.ones(tf.shape(items), tf.float32),
                             tf.stack([batch, self.num_items + 1]))          # [B, I]
        return tf.matmul(rows, self.item_weights)

    def pair_scores(self, user_index: tf.Tensor, item_index: tf.Tensor) -> tf.Tensor:
        """Scores of ``user_index [B]`` × ``item_index [B, n]`` (unknown user: popularity)."""
        full = self.dot_scores(user_index) + self.item_prior[None, :]
        full = tf.where((user_index > 0)[:, None], full,
                        tf.broadcast_to(self.popularity[None, :], tf.shape(full)))
        return tf.gather(full, tf.maximum(item_index - 1, 0), batch_dims=1)


def catalog_scores(scorer: PairScorer, user_index: tf.Tensor, num_items: int) -> tf.Tensor:
    """``[B, num_items]`` scores of every item index ``1..num_items`` for each user.

    Why one user at a time (``tf.map_fn``): a pair scorer (a rating or ranking MLP) needs
    one row per (user, item) pair, so a whole batch at once would hold ``B * num_items``
    rows of tower activations; per user it holds ``num_items``.
    """
    items = tf.range(1, num_items + 1, dtype=tf.int64)

    def one_user(user: tf.Tensor) -> tf.Tensor:
        users = tf.fill([num_items], tf.cast(user, tf.int64))
        return tf.reshape(tf.cast(scorer(users, items), tf.float32), [num_items])

    return tf.map_fn(one_user, tf.cast(user_index, tf.int64),
                     fn_output_signature=tf.TensorSpec([num_items], tf.float32))


def add_retrieval_signatures(module: ServingModule, index: RetrievalIndex, k: int = 100,
                             exclude_seen: bool = True, pair_scorer: PairScorer | None = None,
                             default: bool = True, *,
                             recommend_scorer: PairScorer | None = None,
                             recommend_task: str | None = "retrieval",
                             rank_task: str | None = "ranking",
                             ann: ScannOptions | None = None) -> None:
    """Add ``recommend`` (``serving_default`` when ``default``) and ``rank`` to ``module``.

    ``pair_scorer(user_index [N], item_index [N]) -> [N]`` scores ``rank`` with another
    head (e.g. the ranking MLP); default: the retrieval dot product. ``recommend_scorer``
    (same call) scores the whole catalog for ``recommend`` when ``index`` has no vectors,
    so every signature is backed by the model. Their trackable state must already be
    tracked on ``module``. ``recommend_task`` / ``rank_task``: the head each signature
    is evaluated as (the export's ``tasks``; ``None``: not listed). ``ann``: answer
    ``recommend`` from a ScaNN index built with these options (needs ``index`` vectors and
    the ``scann`` package; the export then lists ``custom_ops: ["scann"]``); default: brute
    force.

        add_retrieval_signatures(module, index, k=100, pair_scorer=rate,
                                 recommend_scorer=rate, recommend_task="rating",
                                 rank_task="rating")          # a rating-only model
    """
    if not index.scores_users and (recommend_scorer is None or pair_scorer is None):
        raise ValueError("an index without vectors needs recommend_scorer and pair_scorer "
                         "(a signature the model cannot back is left out, never faked)")
    if ann is not None and (not index.has_vectors or recommend_scorer is not None):
        raise ValueError("a ScaNN index needs the retrieval head's vectors: recommend of a "
                         "model without a retrieval head scores the catalog with its head")
    module.track("retrieval_index", index)
    k = int(min(k, index.num_items))

    def brute_force(user_index: tf.Tensor) -> dict[str, tf.Tensor]:
        raw = None if recommend_scorer is None else \
            catalog_scores(recommend_scorer, user_index, module.retrieval_index.num_items)
        scores = module.retrieval_index.scores(user_index, exclude_seen, raw)
        return top_k_or_pad(scores, k, module.retrieval_index.item_tokens)

    def recommend(user_id: tf.Tensor) -> dict[str, tf.Tensor]:
        user_index = module.user_index(user_id)
        if ann is None:
            return brute_force(user_index)
        return scann_recommend(module.retrieval_index, module.scann_index, user_index, k,
                               exclude_seen, lambda: brute_force(user_index))

    if ann is not None:
        scann = ScannIndex(index.item_vectors_t.numpy().T, index.item_prior.numpy(),
                           index.popularity.numpy(), index.seen_splits.numpy(),
                           index.seen_values.numpy(), k, exclude_seen, ann)
        module.track("scann_index", scann)
        module.custom_ops = [SCANN_OPS]       # export() writes both into the metadata
        module.recommend_index = scann.describe()

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
                         task=recommend_task)
    module.add_signature("rank", rank, [USER_ID_SPEC, ITEM_LIST_SPEC], task=rank_task)
    module.recommend_k = k
    module.exclude_seen = bool(exclude_seen)
    module.extra_metadata[RECOMMEND_KEY] = {"k": k, "exclude_seen": bool(exclude_seen)}


def item_item_module(model: ItemItemModel, vocabs: Vocabularies, popularity: np.ndarray, *,
                     k: int = 100, exclude_seen: bool = True,
                     titles: list[str] | None = None) -> ServingModule:
    """A ``ServingModule`` whose ``recommend`` (= ``serving_default``) and ``rank`` are
    ``model``'s, with the outputs of a two-tower export (``item_ids`` string / ``scores``
    float32 ``[B, k]``, padded alike).

    ``vocabs``: the rows ``model`` was fit on; ``popularity``: ``[I]`` their item counts
    (the unknown-user answer); ``titles``: of item rows ``1..I-1`` (``tfrec-p5
    recommend`` prints them).

        module = item_item_module(ref.model, ref.vocabs, ref.popularity, k=100)
    """
    module = ServingModule(vocabs)
    index = ItemItemIndex(model, vocabs.item.tokens, popularity,
                          item_titles=None if titles is None else np.asarray(titles, object))
    add_retrieval_signatures(module, index, k=k, exclude_seen=exclude_seen,
                             recommend_task="retrieval", rank_task="retrieval")
    return module
