"""Listwise ranking losses for ``tfrs.tasks.Ranking``: softmax cross-entropy and ListMLE.

Why listwise: a re-ranker sees one user's candidate list at a time (e.g. the top 100 of
the retrieval model) and only the *order* within the list matters. A pointwise MSE spends
capacity on getting every rating's level right; a listwise loss scores the whole list at
once. Both losses here take ``y_true`` = relevance labels and ``y_pred`` = scores, each
``[batch, list_size]``; a label ``< 0`` marks padding (the entry is ignored).

    task = tfrs.tasks.Ranking(loss=ListwiseSoftmaxLoss())
    loss = task(labels=[[5., 1., 3.]], predictions=[[2., 0., 1.]])

* ``ListwiseSoftmaxLoss`` (Cao et al. 2007, "ListNet" top-1): cross-entropy between the
  label distribution ``y / sum(y)`` and ``softmax(scores)``; lists whose labels sum to 0
  contribute nothing.
* ``ListMLELoss`` (Xia et al. 2008): negative log-likelihood of the label-sorted
  permutation under the Plackett-Luce model,
  ``sum_i [log sum_{j>=i} exp(s_(j)) - s_(i)]`` with ``(i)`` the items by decreasing
  label. Ties are broken by a fixed rule (original position), so the loss is deterministic.
"""

from __future__ import annotations

import tensorflow as tf

_NEG = -1e9


def _valid_mask(y_true: tf.Tensor) -> tf.Tensor:
    return tf.cast(y_true >= 0.0, tf.float32)


@tf.keras.utils.register_keras_serializable(package="tfrec_p5")
class ListwiseSoftmaxLoss(tf.keras.losses.Loss):
    """Softmax cross-entropy over each list (labels normalized to a distribution)."""

    def __init__(self, name: str = "listwise_softmax", **kwargs) -> None:
        super().__init__(name=name, **kwargs)

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        y_true = tf.cast(y_true, tf.float32)
        y_pred = tf.cast(y_pred, tf.float32)
        mask = _valid_mask(y_true)
        labels = tf.maximum(y_true, 0.0) * mask
        total = tf.reduce_sum(labels, axis=-1, keepdims=True)
        target = tf.math.divide_no_nan(labels, total)
        logits = tf.where(mask > 0, y_pred, _NEG)
        return -tf.reduce_sum(target * tf.nn.log_softmax(logits, axis=-1), axis=-1)


@tf.keras.utils.register_keras_serializable(package="tfrec_p5")
class ListMLELoss(tf.keras.losses.Loss):
    """Plackett-Luce negative log-likelihood of the label order (ListMLE)."""

    def __init__(self, name: str = "list_mle", **kwargs) -> None:
        super().__init__(name=name, **kwargs)

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        y_true = tf.cast(y_true, tf.float32)
        y_pred = tf.cast(y_pred, tf.float32)
        mask = _valid_mask(y_true)
        # Sort by label, descending; padding last; ties keep their original order.
        size = tf.shape(y_true)[-1]
        tiebreak = tf.cast(tf.range(size), tf.float32) / tf.cast(size + 1, tf.float32)
        key = tf.where(mask > 0, y_true - tiebreak * 1e-3, _NEG)
        order = tf.argsort(key, axis=-1, direction="DESCENDING", stable=True)
        scores = tf.gather(y_pred, order, batch_dims=1)
        valid = tf.gather(mask, order, batch_dims=1)
        scores = tf.where(valid > 0, scores, _NEG)
        # log sum_{j >= i} exp(s_j): reverse cumulative logsumexp.
        rev = tf.reverse(scores, axis=[-1])
        cum = tf.reverse(tf.math.cumulative_logsumexp(rev, axis=-1), axis=[-1])
        return tf.reduce_sum((cum - scores) * valid, axis=-1)
