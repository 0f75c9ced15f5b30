"""The one training loop (``tfrec_p5.training.fit``): resume, early stopping, budget.

A tiny linear model on a shuffled ``batched_dataset``: no dropout, so a resumed run can be
compared with an uninterrupted one weight for weight.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import tfrec_p5  # noqa: F401  (conftest.py imported it before TensorFlow)
from tfrec_p5.data.pipeline import batched_dataset
from tfrec_p5.training import fit, trace_steps_once


def _model_and_data():
    tf.keras.utils.set_random_seed(5)
    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    y = x @ np.array([[1.0], [-2.0], [0.5]], np.float32)
    model = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(1)])
    model.compile(optimizer=tf.keras.optimizers.Adam(0.05), loss="mse")
    return model, batched_dataset((x, y), 8, shuffle=True, seed=3)


class _Kill(tf.keras.callbacks.Callback):
    """Raises at the end of epoch ``at`` (after ``BackupAndRestore`` saved it)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.at:
            raise KeyboardInterrupt


def test_a_resumed_fit_ends_where_an_uninterrupted_one_does(tmp_path):
    model, data = _model_and_data()
    fit(model, data, epochs=4, verbose=0)
    full = model.get_weights()
    model, data = _model_and_data()
    with pytest.raises(KeyboardInterrupt):
        fit(model, data, epochs=4, backup_dir=tmp_path, callbacks=[_Kill(2)], verbose=0)
    model, data = _model_and_data()  # a new process: fresh model, fresh dataset
    history = fit(model, data, epochs=4, backup_dir=tmp_path, verbose=0)
    assert history.epoch == [2, 3]  # resumed after the two saved epochs
    # weights, optimizer state and the data order of epochs 3 and 4 are those of the
    # uninterrupted run (without replaying the skipped epochs' shuffles they differ)
    for ours, ref in zip(model.get_weights(), full, strict=True):
        np.testing.assert_allclose(ours, ref, rtol=1e-6)


class _Flat(tf.keras.callbacks.Callback):
    """A validator whose metric never improves after the first epoch."""

    def on_epoch_end(self, epoch, logs=None):
        logs["val_score"] = 1.0 if epoch == 0 else 0.5


@pytest.mark.parametrize(("min_epochs", "epochs_run"), [(1, 2), (4, 4)])
def test_early_stopping_waits_for_min_epochs(min_epochs, epochs_run):
    model, data = _model_and_data()
    history = fit(model, data, epochs=6, validators=[_Flat()], monitor="val_score",
                  patience=1, min_epochs=min_epochs, verbose=0)
    assert len(history.epoch) == epochs_run
    assert history.stopped_epoch == epochs_run - 1


def test_time_budget_ends_training_after_the_epoch_that_spends_it():
    model, data = _model_and_data()
    with pytest.warns(UserWarning, match="time budget of 0 min reached: training stopped "
                      "after epoch 1"):
        history = fit(model, data, epochs=5, max_minutes=0.0, verbose=0)
    assert history.epoch == [0] and len(history.epoch_seconds) == 1
    assert history.budget_stopped == 1


def _embedding_steps(optimizer_name: str, ids: list[list[int]]) -> np.ndarray:
    """An 8-row embedding after one Adam-family step per batch of ``ids`` (loss: the
    sum of the looked-up rows times fixed weights)."""
    from tfrec_p5.training import optimizer

    tf.keras.utils.set_random_seed(0)
    table = tf.Variable(tf.random.normal((8, 4)))
    opt = optimizer(optimizer_name, 0.1)
    weights = tf.constant([[1.0, -2.0, 0.5, 3.0]])
    for batch in ids:
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.gather(table, batch) * weights)
        opt.apply_gradients([(tape.gradient(loss, table), table)])
    return table.numpy()


def test_lazy_adam_is_adam_when_every_row_is_in_every_batch():
    every = [[0, 1, 2, 3, 4, 5, 6, 7, 3, 3]] * 3  # duplicates too: summed per row
    np.testing.assert_allclose(_embedding_steps("lazy_adam", every),
                               _embedding_steps("adam", every), atol=1e-5)  # float order


def test_lazy_adam_leaves_rows_outside_the_batch_alone():
    start = _embedding_steps("lazy_adam", [])
    lazy = _embedding_steps("lazy_adam", [[0, 1], [2]])
    dense = _embedding_steps("adam", [[0, 1], [2]])
    np.testing.assert_array_equal(lazy[3:], start[3:])  # never in a batch: untouched
    assert not np.allclose(lazy[:3], start[:3])
    assert not np.allclose(dense[0], lazy[0])  # Adam moved row 0 again in step 2


def test_auto_optimizer_is_lazy_adam_from_lazy_adam_rows():
    from tfrec_p5.training import LAZY_ADAM_ROWS, auto_optimizer, optimizer, optimizer_note

    def model(rows):
        ids = tf.keras.Input(shape=(), dtype=tf.int64)
        out = tf.keras.layers.Embedding(rows, 2)(ids)
        return tf.keras.Model(ids, out)

    small, large = model(LAZY_ADAM_ROWS - 1), model(LAZY_ADAM_ROWS)
    assert auto_optimizer(small) == "adam" and auto_optimizer(large) == "lazy_adam"
    assert type(optimizer("auto", 1e-3, model=small)) is tf.keras.optimizers.Adam
    assert type(optimizer("auto", 1e-3, model=large)).__name__ == "LazyAdam"
    assert optimizer_note("auto", small) is None
    assert "optimizer lazy_adam (auto: 100,000 embedding rows" in optimizer_note("auto", large)
    assert '"optimizer": "auto"' in optimizer_note("Adam", large)
    assert optimizer_note("adagrad", large) is None



@pytest.mark.parametrize("wrapped", [True, False])
def test_trace_steps_once_traces_each_step_once_per_compile(monkeypatch, wrapped):
    calls = {"train_step": 0, "test_step": 0}
    for name in calls:
        real = getattr(tf.keras.Model, name)

        def counting(self, data, real=real, name=name):
            calls[name] += 1
            return real(self, data)

        monkeypatch.setattr(tf.keras.Model, name, counting)
    model, data = _model_and_data()
    model.compile(optimizer=tf.keras.optimizers.Adam(0.05), loss="mse", steps_per_execution=4)
    model.optimizer.build(model.trainable_variables)  # or its slots would add a trace
    if wrapped:
        trace_steps_once(model)
    model.fit(data, validation_data=data, epochs=2, verbose=0)
    # Keras' steps_per_execution loop traces its body twice; the wrapped step once
    assert calls == ({"train_step": 1, "test_step": 1} if wrapped
                     else {"train_step": 2, "test_step": 2})
    if wrapped:  # a new compile (a new optimizer) traces a new step that uses it
        model.compile(optimizer=tf.keras.optimizers.SGD(0.0), loss="mse",
                      steps_per_execution=4)
        model.optimizer.build(model.trainable_variables)
        trace_steps_once(model)
        before = model.get_weights()
        model.fit(data, epochs=1, verbose=0)
        assert calls["train_step"] == 2
        for old, new in zip(before, model.get_weights(), strict=True):
            np.testing.assert_array_equal(old, new)  # SGD at rate 0 ran, not the old Adam
