"""The bias model ``mean + b_user + b_item``: the rating reference, fitted and servable.

Why it lives with the models: on sparse data (a few ratings per user) it is often the
best rating predictor there is, and ``tfrec-p5 train`` serves it instead of the neural
model when it wins on validation. So it is both a reference (``tfrec_p5.evaluation``
scores it beside the model) and a Keras model with the rating model's inputs, which
``add_rating_signatures`` exports under ``predict_rating`` like any other.

    from tfrec_p5.models.bias import BiasFit, build_bias_model
    fit = BiasFit.fit(users, items, ratings, num_users, num_items, l2=5.0)
    model = build_bias_model(fit)            # {"user_id", "item_id"} -> [B, 1]

The biases are ridge estimates by alternating exact updates (each side's closed form
given the other): no learning rate, no epochs, the same answer on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from tfrec_p5.data.interactions import ITEM, USER

__all__ = ["BiasFit", "build_bias_model"]


@dataclass(frozen=True)
class BiasFit:
    """A fitted ``mean + b_user + b_item`` (index 0 of each side = unknown: bias 0).

    Attributes:
      mean: the global mean rating.
      user_bias: ``[num_users]`` ridge user biases.
      item_bias: ``[num_items]`` ridge item biases.
      l2: the ridge strength they were fitted with.
    """

    mean: float
    user_bias: np.ndarray
    item_bias: np.ndarray
    l2: float

    @classmethod
    def fit(cls, users: np.ndarray, items: np.ndarray, ratings: np.ndarray,
            num_users: int, num_items: int, l2: float, sweeps: int = 15) -> BiasFit:
        """Ridge biases of ``ratings`` around their mean for vocabulary indices ``users``,
        ``items`` (``l2`` is the prior's weight in ratings: a user with ``l2`` ratings
        gets half their mean residual)."""
        ratings = np.asarray(ratings, np.float64)
        mean = float(np.mean(ratings))
        bu, bi = np.zeros(num_users), np.zeros(num_items)
        nu = np.bincount(users, minlength=num_users)
        ni = np.bincount(items, minlength=num_items)
        for _ in range(sweeps):
            bi = np.bincount(items, ratings - mean - bu[users], num_items) / (l2 + ni)
            bu = np.bincount(users, ratings - mean - bi[items], num_users) / (l2 + nu)
        bu[0] = bi[0] = 0.0  # unknown IDs: the mean (and the other side's bias)
        return cls(mean, bu, bi, float(l2))

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Unclipped ratings for vocabulary indices ``users``, ``items``."""
        return self.mean + self.user_bias[users] + self.item_bias[items]


def build_bias_model(fit: BiasFit) -> tf.keras.Model:
    """``fit`` as a functional Keras model with the rating model's inputs and output
    (``{"user_id": int64 [B], "item_id": int64 [B]}`` → ``[B, 1]``, unclipped: the rating
    signature clips to the data's range)."""
    user_in = tf.keras.Input(shape=(), dtype=tf.int64, name=USER)
    item_in = tf.keras.Input(shape=(), dtype=tf.int64, name=ITEM)

    def table(values: np.ndarray, name: str) -> tf.keras.layers.Embedding:
        return tf.keras.layers.Embedding(
            len(values), 1, name=name, trainable=False,
            embeddings_initializer=tf.keras.initializers.Constant(
                np.asarray(values, np.float32).reshape(-1, 1)))

    total = tf.keras.layers.Add(name="biases")(
        [table(fit.user_bias, "user_bias")(user_in), table(fit.item_bias, "item_bias")(item_in)])
    out = tf.keras.layers.Rescaling(1.0, offset=float(fit.mean), name="mean")(total)
    return tf.keras.Model(inputs={USER: user_in, ITEM: item_in}, outputs=out,
                          name="bias_model")
