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

When every row of a table is in every batch the two are the same update (tested).
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["LAZY_ADAM_ROWS", "LazyAdam", "dense_adam_note"]

LAZY_ADAM_ROWS = 100_000
"""Embedding rows (users + items) from which ``dense_adam_note`` advises ``lazy_adam``: at
250k rows a streamed rating epoch ran 2.8× faster with it; at ML-100K's 2.6k rows Adam's
whole-table update costs little and the two were within noise (RMSE 0.9022 vs 0.9035)."""


def dense_adam_note(optimizer_name: str, rows: int) -> str | None:
    """A ``note:`` for a run whose Adam will move ``rows`` embedding rows every step, or
    ``None`` (another optimizer, or a small table)."""
    if optimizer_name.lower() != "adam" or rows < LAZY_ADAM_ROWS:
        return None
    return (f"{rows:,} embedding rows: Adam moves every row each step, so the step costs "
            'the table; "optimizer": "lazy_adam" in --config updates only the batch\'s '
            "rows (2.8x faster per epoch at 250k rows, benchmarks/RESULTS.md)")


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
