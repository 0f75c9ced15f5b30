"""Ranking heads on ``tfrs.tasks.Ranking``: pointwise (MSE) and listwise (softmax / ListMLE).

Why both: the pointwise head is the TFRS "basic ranking" tutorial (an MLP on the two tower
vectors regressing the rating); the listwise head is the TFRS "listwise ranking" tutorial
(per user, a list of candidates with their ratings; the loss looks at the order within the
list), which is what a re-ranker of the retrieval model's top-k should optimize. Both score
a (user, item) pair with the same MLP, so the ``rank`` serving signature can use either.

    head = RankingHead(listwise="softmax")             # or None (pointwise), "listmle"
    ds = listwise_dataset(train, vocabs, list_size=5, lists_per_user=20)
    model = UnifiedModel(user_tower, item_tower, {"ranking": head})
    model.fit(ds)

Listwise batches carry ``user_id`` ``[B]``, ``candidates`` ``[B, n]`` (item indices) and
``candidate_labels`` ``[B, n]`` (ratings; ``-1`` = padding).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrec_p5.data.interactions import ITEM, RATING, USER, Interactions
from tfrec_p5.data.pipeline import Vocabularies, batched_dataset
from tfrec_p5.tasks.base import Head
from tfrec_p5.tasks.losses import ListMLELoss, ListwiseSoftmaxLoss

CANDIDATES = "candidates"
CANDIDATE_LABELS = "candidate_labels"
LISTWISE_LOSSES = {"softmax": ListwiseSoftmaxLoss, "listmle": ListMLELoss}


class RankingHead(Head):
    """MLP on ``concat(user_vec, item_vec)`` → score; pointwise MSE or a listwise loss.

    Args:
      hidden_units: the MLP (TFRS tutorial: 256, 64).
      listwise: ``None`` (pointwise MSE on ``rating``), ``"softmax"`` or ``"listmle"``.
    """

    task = "ranking"

    def __init__(self, hidden_units: tuple[int, ...] = (256, 64), listwise: str | None = None,
                 **kwargs) -> None:
        kwargs.setdefault("name", "ranking_head")
        super().__init__(**kwargs)
        if listwise is not None and listwise not in LISTWISE_LOSSES:
            raise ValueError(f"unknown listwise loss {listwise!r}; use one of "
                             f"{sorted(LISTWISE_LOSSES)} or None")
        self.listwise = listwise
        self.inputs = (USER, ITEM, RATING) if listwise is None else \
            (USER, CANDIDATES, CANDIDATE_LABELS)
        self.mlp = [tf.keras.layers.Dense(u, activation="relu", name=f"rank_hidden_{i}")
                    for i, u in enumerate(hidden_units)]
        self.out = tf.keras.layers.Dense(1, name="rank_out")
        if listwise is None:
            self.ranking = tfrs.tasks.Ranking(
                loss=tf.keras.losses.MeanSquaredError(),
                metrics=[tf.keras.metrics.RootMeanSquaredError(name="ranking_rmse")])
        else:
            self.ranking = tfrs.tasks.Ranking(loss=LISTWISE_LOSSES[listwise]())
        self._item_tower = None

    def bind(self, user_tower, item_tower) -> None:
        self._item_tower = lambda: item_tower  # closure: not tracked twice

    def pair_scores(self, user_vec: tf.Tensor, item_vec: tf.Tensor) -> tf.Tensor:
        """``[B]`` scores of aligned (user, item) vector rows."""
        x = tf.concat([user_vec, item_vec], axis=-1)
        for layer in self.mlp:
            x = layer(x)
        return tf.squeeze(self.out(x), axis=-1)

    def list_scores(self, user_vec: tf.Tensor, candidates: tf.Tensor,
                    training: bool = False) -> tf.Tensor:
        """``[B, n]`` scores of each user's candidate list (item indices ``[B, n]``)."""
        n = tf.shape(candidates)[1]
        item_vec = self._item_tower()(tf.reshape(candidates, [-1]), training=training)
        user_rep = tf.repeat(user_vec, n, axis=0)
        return tf.reshape(self.pair_scores(user_rep, item_vec), tf.shape(candidates))

    def compute_loss(self, features, user_vec, item_vec, training=False):
        if self.listwise is None:
            labels = tf.cast(features[RATING], tf.float32)
            return self.ranking(labels=labels, predictions=self.pair_scores(user_vec, item_vec))
        scores = self.list_scores(user_vec, features[CANDIDATES], training=training)
        return self.ranking(labels=tf.cast(features[CANDIDATE_LABELS], tf.float32),
                            predictions=scores)

    def score(self, features, user_vec, item_vec, training=False):
        return self.pair_scores(user_vec, item_vec)


def listwise_examples(table: Interactions, vocabs: Vocabularies, list_size: int = 5,
                      lists_per_user: int = 20, seed: int = 42) -> dict[str, np.ndarray]:
    """Per user, ``lists_per_user`` random lists of ``list_size`` of their rated items.

    The TFRS listwise tutorial's ``sample_listwise``: users with fewer than ``list_size``
    rated items are skipped. Returns numpy ``{user_id, candidates, candidate_labels}``.
    """
    if table.rating is None:
        raise ValueError("listwise examples need a 'rating' column")
    rng = np.random.default_rng(seed)
    users = vocabs.user.lookup(table.user_id)
    items = vocabs.item.lookup(table.item_id)
    ratings = table.rating.astype(np.float32)
    order = np.argsort(users, kind="stable")
    users, items, ratings = users[order], items[order], ratings[order]
    starts = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1]
    ends = np.r_[starts[1:], len(users)]
    out_u, out_c, out_l = [], [], []
    for s, e in zip(starts, ends, strict=False):
        if e - s < list_size:
            continue
        for _ in range(lists_per_user):
            pick = s + rng.choice(e - s, size=list_size, replace=False)
            out_u.append(users[s])
            out_c.append(items[pick])
            out_l.append(ratings[pick])
    return {USER: np.asarray(out_u, np.int64),
            CANDIDATES: np.asarray(out_c, np.int64).reshape(-1, list_size),
            CANDIDATE_LABELS: np.asarray(out_l, np.float32).reshape(-1, list_size)}


def listwise_dataset(table: Interactions, vocabs: Vocabularies, list_size: int = 5,
                     lists_per_user: int = 20, batch_size: int = 256, shuffle: bool = False,
                     seed: int = 42) -> tf.data.Dataset:
    """Batches of ``listwise_examples`` (``item_id`` = the first candidate, for towers)."""
    ex = listwise_examples(table, vocabs, list_size, lists_per_user, seed)
    ex[ITEM] = ex[CANDIDATES][:, 0]
    return batched_dataset({k: tf.constant(v) for k, v in ex.items()}, batch_size, shuffle,
                           seed)
