"""The head protocol: how a task plugs into the shared towers of ``UnifiedModel``.

Why a protocol and not one big model per task: P5's idea is one pretrained backbone that
serves many tasks. Here the backbone is the pair of towers (``UserTower``, ``ItemTower``)
and every task is a *head*: a Keras layer that turns the towers' outputs into a loss.
``UnifiedModel.compute_loss`` runs the towers once per batch and adds up
``weight * head.compute_loss(...)`` over the switched-on heads; a later task (next-item,
candidate ranking) is one more ``Head`` subclass and changes none of the existing ones.

    class ClickHead(Head):
        task = "click"
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.loss_task = tfrs.tasks.Ranking(loss=tf.keras.losses.BinaryCrossentropy())
        def compute_loss(self, features, user_vec, item_vec, training=False):
            logits = tf.reduce_sum(user_vec * item_vec, axis=-1)
            return self.loss_task(labels=features["click"], predictions=logits)

    model = UnifiedModel(user_tower, item_tower, {"click": ClickHead()})

Contract of a head:

* ``compute_loss(features, user_vec, item_vec, training)`` returns a scalar loss.
  ``features`` is the batch dict (``user_id``/``item_id`` int64 vocabulary indices, plus
  whatever the head needs, e.g. ``rating``); ``user_vec = user_tower(user_id)`` and
  ``item_vec = item_tower(item_id)`` (``None`` when the batch has no ``item_id``).
* ``bind(user_tower, item_tower)`` is called once by the model; a head that must embed
  more items than ``item_id`` (a candidate list) keeps the towers it is given.
* ``inputs``: the batch keys its loss reads. A held-out batch without them skips the
  head (a validation batch of pairs beside a next-item head trained on histories); a
  training batch without them is an error.
* ``score(features, user_vec, item_vec)`` (optional) returns one score per (user, item)
  row; ``UnifiedModel.score`` and the ``rank`` serving signature use it.
* Regularization losses (``add_loss``, activity regularizers) are collected by Keras and
  added by ``tfrs.Model.train_step`` as usual.
* ``features[KNOWN_USER]`` (bool ``[B]``, training batches of a model with
  ``user_id_dropout`` only): rows marked False are to be read as a new user's -- a head
  leaves out what it knows about the user beyond the user tower's vector (a history, a
  bias), as it must for a user with no training rows.
"""

from __future__ import annotations

from collections.abc import Mapping

import tensorflow as tf

from tfrec_p5.data.interactions import ITEM, USER

KNOWN_USER = "user_known"
"""Batch key of the bool mask that marks training rows whose user is read as new (the
user tower and the heads leave out the ID, the history and the bias there), so the user
features learn to stand alone: what a user with no training rows will need."""


class Head(tf.keras.layers.Layer):
    """Base class of task heads (the contract is in the ``tfrec_p5.tasks.base`` module)."""

    #: Task name used as the key in ``UnifiedModel`` and in the CLI's ``--weights``.
    task: str = "head"
    #: Whether ``compute_loss`` / ``score`` read ``user_vec`` (if no head does, the model
    #: never runs the user tower, so it gets no variables and no "no gradient" warnings).
    uses_user_tower: bool = True
    #: The batch keys ``compute_loss`` reads; a held-out batch without them skips this
    #: head, a training batch without them is an error.
    inputs: tuple[str, ...] = (USER, ITEM)

    def bind(self, user_tower: tf.keras.layers.Layer, item_tower: tf.keras.layers.Layer) -> None:
        """Receive the shared towers; default: nothing to keep."""

    def compute_loss(self, features: Mapping[str, tf.Tensor], user_vec: tf.Tensor,
                     item_vec: tf.Tensor | None, training: bool = False) -> tf.Tensor:
        raise NotImplementedError

    def score(self, features: Mapping[str, tf.Tensor], user_vec: tf.Tensor,
              item_vec: tf.Tensor, training: bool = False) -> tf.Tensor:
        """One score per row (higher = better); heads that cannot score raise."""
        raise NotImplementedError(f"head {self.task!r} does not score pairs")

    def call(self, inputs, training: bool | None = None):  # pragma: no cover - not used
        raise NotImplementedError("heads are used through compute_loss / score")
