"""A moving average of the weights, validated and exported (``WeightAverage``).

Why: Adam's last iterate is noisy; the exponential moving average of the weights over the
last few hundred steps generalizes better and turns a single lucky epoch into a plateau
(ML-100K retrieval: +1.0 % validation Recall@10, see ``benchmarks/RESULTS.md``). Two
details make it usable as a default, and are why this is a callback and not tf-keras'
``use_ema`` optimizer flag:

* **warm-up**: the decay is ``min(momentum, (1 + n) / (10 + n))`` after ``n`` steps (as
  ``tf.train.ExponentialMovingAverage`` with ``num_updates``), so a short run is not
  pulled back to its random initial weights (tf-keras' average starts *at* them: after
  20 steps at 0.99 it is still 82 % initial weights);
* **what is validated is what is exported**: while Keras validates and while the
  epoch-end callbacks look at the model (metric callbacks, ``EarlyStopping``'s
  best-weights snapshot, user callbacks) the model holds the averages; training resumes
  from the raw weights; when ``fit`` ends the averages stay in the model.

    average = WeightAverage(momentum=0.99)
    model.fit(ds, callbacks=average.around([RetrievalValidation(...), EarlyStopping(...)],
                                           before=[BackupAndRestore(dir)]))

The averages are updated after each ``steps_per_execution`` block (the decay is raised to
the number of steps in the block) and are not checkpointed: a run resumed by
``BackupAndRestore`` starts a new average (with warm-up) from the restored weights. Single
process only: under a distribution strategy ``train_unified`` trains without it. Cost: one
more copy of the trainable weights and a dense pass over them per block; with very large
embedding tables (hashed IDs, millions of rows) set ``ema_momentum=None``.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf


class WeightAverage(tf.keras.callbacks.Callback):
    """Keeps the moving average of ``model.trainable_variables`` (see its module,
    ``tfrec_p5.training.averaging``)."""

    def __init__(self, momentum: float = 0.99) -> None:
        super().__init__()
        if not 0.0 < momentum < 1.0:
            raise ValueError(f"momentum must be in (0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.averages: list[tf.Variable] = []
        self.updates = 0
        self._last_batch = -1
        self._raw: list[tf.Tensor] | None = None

    # ------------------------------------------------------------------ averaging
    def on_train_begin(self, logs=None):
        self.averages, self.updates = [], 0

    def on_epoch_begin(self, epoch, logs=None):
        self._last_batch = -1

    def on_train_batch_end(self, batch, logs=None):
        steps = max(int(batch) - self._last_batch, 1)  # a steps_per_execution block
        self._last_batch = int(batch)
        if not self.averages:  # first block: the variables exist now (layers build lazily)
            self.averages = [tf.Variable(v, trainable=False)
                             for v in self.model.trainable_variables]
            self.updates = steps
            return
        decay = 1.0
        for _ in range(steps):
            decay *= min(self.momentum, (1.0 + self.updates) / (10.0 + self.updates))
            self.updates += 1
        for avg, v in zip(self.averages, self.model.trainable_variables, strict=True):
            avg.assign(decay * avg + (1.0 - decay) * v)

    def on_train_end(self, logs=None):
        self.swap_out()
        if not self.averages:
            return
        for avg, v in zip(self.averages, self.model.trainable_variables, strict=True):
            v.assign(avg)

    # ------------------------------------------------------------------ swapping
    def swap_in(self) -> None:
        """Put the averages into the model (the raw weights are kept aside)."""
        if self._raw is not None or not self.averages:
            return
        variables = self.model.trainable_variables
        self._raw = [tf.identity(v) for v in variables]
        for avg, v in zip(self.averages, variables, strict=True):
            v.assign(avg)

    def swap_out(self) -> None:
        """Put the raw weights back (training goes on from them)."""
        if self._raw is None:
            return
        for raw, v in zip(self._raw, self.model.trainable_variables, strict=True):
            v.assign(raw)
        self._raw = None

    def around(self, callbacks: Sequence[tf.keras.callbacks.Callback],
               before: Sequence[tf.keras.callbacks.Callback] = ()
               ) -> list[tf.keras.callbacks.Callback]:
        """``before`` (seeing the raw weights, e.g. ``BackupAndRestore``, so a resumed run
        continues the same trajectory), this callback, then ``callbacks`` seeing the
        averages at each epoch's end and during validation."""
        return [*before, self, _SwapIn(self), *callbacks, _SwapOut(self)]


class _SwapIn(tf.keras.callbacks.Callback):
    def __init__(self, average: WeightAverage) -> None:
        super().__init__()
        self.average = average

    def on_test_begin(self, logs=None):
        self.average.swap_in()  # a no-op before the first averages exist

    def on_test_end(self, logs=None):
        self.average.swap_out()

    def on_epoch_end(self, epoch, logs=None):
        self.average.swap_in()


class _SwapOut(tf.keras.callbacks.Callback):
    def __init__(self, average: WeightAverage) -> None:
        super().__init__()
        self.average = average

    def on_epoch_end(self, epoch, logs=None):
        self.average.swap_out()
