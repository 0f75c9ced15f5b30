"""``LazyAdam``: Adam that updates only the embedding rows a batch touches.

Why: tf-keras's Adam handles a sparse (``IndexedSlices``) embedding gradient by decaying
both moment slots and moving the variable over *every* row, every step. With millions of
IDs the step then costs the whole table several times over, whatever the batch: on a
100M-row rating log (2M users, 500k items) that, not the data, sets the speed
(``benchmarks/RESULTS.md``, "Logs larger than memory"). The lazy variant (TensorFlow
Addons' ``LazyAdam``, now unmaintained) applies the Adam update to the rows in the batch
only, so a step costs the batch; rows absent from a batch keep their moments and do not
drift on old momentum. Dense gradients (MLP kernels, biases) get the plain Adam update.

    optimizer("lazy_adam", 1e-3)          # a RatingConfig / UnifiedConfig optimizer name
    optimizer("auto", 1e-3, model=model)  # the default: LazyAdam from 100k table rows

When every row of a table is in every batch the two are the same update (tested).
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["AUTO", "LAZY_ADAM_ROWS", "LazyAdam", "auto_optimizer", "embedding_rows",
           "optimizer_note"]

AUTO = "auto"
"""The optimizer name that picks Adam or ``LazyAdam`` by the model's size
(``auto_optimizer``): the default of ``RatingConfig``, ``UnifiedConfig`` and the
next-item / joint models."""

LAZY_ADAM_ROWS = 100_000
"""Embedding rows from which ``"auto"`` picks ``LazyAdam``: at 250k rows a streamed rating
epoch ran 2.8× faster with it, at 700k rows Adam's step cost 11× Adagrad's; at ML-100K's
size Adam's whole-table update costs little (and the two were within noise there: RMSE
0.9022 vs 0.9035), so every published small-data number keeps Adam."""


def embedding_rows(model: tf.keras.Model) -> int:
    """Rows of every ``tf.keras.layers.Embedding`` table in ``model`` (ID, bias and
    feature tables alike): what tf-keras's Adam moves on every step."""
    return sum(int(layer.input_dim) for layer in model.submodules
               if isinstance(layer, tf.keras.layers.Embedding))


def auto_optimizer(model: tf.keras.Model | None) -> str:
    """``"lazy_adam"`` when ``model``'s embedding tables hold ``LAZY_ADAM_ROWS`` rows or
    more, else ``"adam"``; ``"adam"`` under a ``ParameterServerStrategy`` in scope (its
    sharded tables take Adam's own sparse update).

        auto_optimizer(model)       # "lazy_adam" for 2M users x 500k items
    """
    if model is None or isinstance(tf.distribute.get_strategy(),
                                   tf.distribute.experimental.ParameterServerStrategy):
        return "adam"
    return "lazy_adam" if embedding_rows(model) >= LAZY_ADAM_ROWS else "adam"


def optimizer_note(name: str, model: tf.keras.Model) -> str | None:
    """A ``note:`` about the optimizer of ``model`` when its tables are large: what
    ``"auto"`` chose, or advice when ``"adam"`` was asked for; ``None`` otherwise."""
    rows = embedding_rows(model)
    if rows < LAZY_ADAM_ROWS or name.lower() not in (AUTO, "adam"):
        return None
    if name.lower() == AUTO:
        return (f"optimizer lazy_adam (auto: {rows:,} embedding rows; Adam would move every "
                "row each step)")
    return (f"{rows:,} embedding rows: Adam moves every row each step, so a step costs "
            'the whole table; "optimizer": "auto" or "lazy_adam" updates only the '
            "batch's rows (2.8x faster per epoch at 250k rows, benchmarks/RESULTS.md)")


@tf.keras.utils.register_keras_serializable(package="tfrec_p5")
class LazyAdam(tf.keras.optimizers.Adam):
    """Adam with row-sparse updates for ``IndexedSlices`` gradients (see the module)."""

    def update_step(self, gradient, variable):
        if not isinstance(gradient, tf.IndexedSlices) or self.amsgrad:
            return super().update_step(gradient, variable)
        dtype = variable.dtype
        lr = tf.cast(self.learning_rate, dtype)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        beta_1_power, beta_2_power = tf.pow(beta_1, step), tf.pow(beta_2, step)
        alpha = lr * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        epsilon = (self.epsilon * tf.sqrt(1 - beta_2_power) if self.adaptive_epsilon
                   else self.epsilon)
        index = self._index_dict[self._var_key(variable)]
        m, v = self._momentums[index], self._velocities[index]
        # A row may appear several times in a batch: one summed gradient per row.
        rows, position = tf.unique(gradient.indices)
        values = tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(rows)[0])
        m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * values
        v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(values)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + epsilon),
                                              rows))
