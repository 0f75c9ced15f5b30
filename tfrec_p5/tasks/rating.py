"""The rating head, defined once: used inside ``UnifiedModel`` and by the seed's functional
rating model alike.

Why a head on tower outputs rather than on IDs: inside ``UnifiedModel`` the towers are
shared with other heads. ``tfrec_p5.models.rating.build_rating_model`` applies this same
head's ``predict`` to its symbolic tower outputs (layers MLP → ``mlp_out`` → dot → user /
item biases), so a ``UnifiedModel`` with only this head and the same seed trains to the
same numbers as ``train_rating`` (``tests/test_unified.py`` checks it).

    head = RatingHead.from_config_and_vocabs(RatingConfig(), vocabs, global_mean=3.5,
                                             rating_range=(1.0, 5.0))
    loss = head.compute_loss({"user_id": u, "item_id": i, "rating": r}, user_vec, item_vec)
"""

from __future__ import annotations

from collections.abc import Mapping

import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrec_p5.data.interactions import ITEM, RATING, RATING_MASK, USER
from tfrec_p5.tasks.base import KNOWN_USER, Head


class RatingHead(Head):
    """MLP(concat) + dot + user / item biases → rating; MSE through ``tfrs.tasks.Ranking``.

    Args mirror ``RatingConfig``: ``hidden_units``, ``dropout``, ``dense_l2``, ``use_dot``,
    ``use_biases``, ``bias_l2``; ``num_users``/``num_items`` size the bias tables;
    ``global_mean`` initializes the output bias; ``rating_range`` clips predictions at
    inference (never while training).
    """

    task = "rating"
    inputs = (USER, ITEM, RATING)

    def __init__(self, num_users: int, num_items: int, *,
                 hidden_units: tuple[int, ...] = (64, 32), dropout: float = 0.2,
                 dense_l2: float = 0.0, use_dot: bool = True, use_biases: bool = True,
                 bias_l2: float = 1e-5, global_mean: float = 0.0,
                 rating_range: tuple[float, float] | None = None, **kwargs) -> None:
        kwargs.setdefault("name", "rating_head")
        super().__init__(**kwargs)
        self.concat = tf.keras.layers.Concatenate(name="concat")
        self.hidden = []
        for i, units in enumerate(hidden_units):
            self.hidden.append(tf.keras.layers.Dense(
                units, activation="relu", name=f"hidden_{i}",
                kernel_regularizer=tf.keras.regularizers.L2(dense_l2) if dense_l2 > 0
                else None))
            if dropout > 0:
                self.hidden.append(tf.keras.layers.Dropout(dropout, name=f"dropout_{i}"))
        self.mlp_out = tf.keras.layers.Dense(
            1, bias_initializer=tf.keras.initializers.Constant(global_mean), name="mlp_out")
        self.dot = tf.keras.layers.Dot(axes=1, name="dot") if use_dot else None
        self.user_bias = self.item_bias = None
        if use_biases:
            reg = tf.keras.regularizers.L2(bias_l2) if bias_l2 > 0 else None
            self.user_bias = tf.keras.layers.Embedding(
                num_users, 1, embeddings_initializer="zeros", activity_regularizer=reg,
                name="user_bias")
            self.item_bias = tf.keras.layers.Embedding(
                num_items, 1, embeddings_initializer="zeros", activity_regularizer=reg,
                name="item_bias")
        self.rating_range = None if rating_range is None else tuple(map(float, rating_range))
        self.ranking = tfrs.tasks.Ranking(
            loss=tf.keras.losses.MeanSquaredError(),
            metrics=[tf.keras.metrics.RootMeanSquaredError(name="rmse"),
                     tf.keras.metrics.MeanAbsoluteError(name="mae")])

    @classmethod
    def from_rating_config(cls, config, num_users: int, num_items: int, *,
                           global_mean: float = 0.0,
                           rating_range: tuple[float, float] | None = None) -> RatingHead:
        """The head ``build_rating_model`` would build for ``config`` (a ``RatingConfig``)."""
        return cls(num_users, num_items, hidden_units=config.hidden_units,
                   dropout=config.dropout, dense_l2=config.dense_l2, use_dot=config.use_dot,
                   use_biases=config.use_biases, bias_l2=config.bias_l2,
                   global_mean=global_mean,
                   rating_range=rating_range if config.clip_predictions else None)

    def predict(self, features: Mapping[str, tf.Tensor], user_vec: tf.Tensor,
                item_vec: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Predicted ratings ``[B, 1]`` (clipped to ``rating_range`` unless training)."""
        x = self.concat([user_vec, item_vec])
        for layer in self.hidden:
            x = layer(x, training=training) if isinstance(layer, tf.keras.layers.Dropout) \
                else layer(x)
        terms = [self.mlp_out(x)]
        if self.dot is not None:
            terms.append(self.dot([user_vec, item_vec]))
        if self.user_bias is not None:
            user_bias = self.user_bias(features[USER])
            if KNOWN_USER in features:  # a user read as new has no bias of their own
                user_bias *= tf.cast(tf.reshape(features[KNOWN_USER], (-1, 1)),
                                     user_bias.dtype)
            terms.append(user_bias)
            terms.append(self.item_bias(features[ITEM]))
        out = tf.add_n(terms) if len(terms) > 1 else terms[0]
        if self.rating_range is not None and not training:
            out = tf.clip_by_value(out, *self.rating_range)
        return out

    def compute_loss(self, features, user_vec, item_vec, training=False):
        """MSE of the batch; with ``features["rating_mask"]``, over its rows marked 1.

        Why a mask: pretraining batches carry every interaction (for retrieval) but only
        some have a visible rating. The per-row weight is ``mask * B / sum(mask)``: the
        mean squared error over the visible rows (0 if none)."""
        pred = self.predict(features, user_vec, item_vec, training=training)
        labels = tf.reshape(tf.cast(features[RATING], tf.float32), (-1, 1))
        if RATING_MASK not in features:
            return self.ranking(labels=labels, predictions=pred)
        mask = tf.reshape(tf.cast(features[RATING_MASK], tf.float32), (-1, 1))
        batch = tf.cast(tf.shape(mask)[0], tf.float32)
        weight = mask * batch / tf.maximum(tf.reduce_sum(mask), 1.0)
        return self.ranking(labels=labels, predictions=pred, sample_weight=weight)

    def score(self, features, user_vec, item_vec, training=False):
        return tf.reshape(self.predict(features, user_vec, item_vec, training), [-1])
