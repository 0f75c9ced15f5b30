"""The one training loop: every trainer's ``model.fit`` runs in ``fit`` here.

Why: a trainer (rating, unified, sequential, pretrain, finetune) should say *what* to
train and which validation metric picks the epoch, not re-assemble *how*: resuming after
a kill, early stopping with the best weights restored, a time budget, the weights' moving
average, TensorBoard. A piece one trainer lacked used to be a missing feature (a killed
sequential run restarted from zero); here every trainer gets all of them.

    history = fit(model, train_ds, epochs=40, validation_data=val_ds, monitor="val_rmse",
                  patience=3, backup_dir="saved_models/demo/.backup-rating")
    history.history["val_rmse"], history.epoch, history.stopped_epoch

Resuming restores the weights, the optimizer and the epoch counter, not the callbacks'
state: early stopping (best value, patience count, best weights) starts afresh with the
resumed epochs, as Keras' ``EarlyStopping`` does, and the time budget counts anew.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from tfrec_p5 import distribute
from tfrec_p5.training.averaging import WeightAverage
from tfrec_p5.training.optimizers import AUTO, LazyAdam, auto_optimizer

__all__ = ["OPTIMIZERS", "OPTIMIZER_NAMES", "FitHistory", "backup_epochs", "build_variables",
           "fit",
           "lower_is_better", "optimizer"]

log = logging.getLogger(__name__)

OPTIMIZERS = {"adam": tf.keras.optimizers.Adam, "lazy_adam": LazyAdam,
              "adamw": tf.keras.optimizers.AdamW,
              "adagrad": tf.keras.optimizers.Adagrad, "sgd": tf.keras.optimizers.SGD,
              "rmsprop": tf.keras.optimizers.RMSprop}
"""Optimizer names → the tf-keras class; ``optimizer(name, learning_rate)`` builds one.
A config's ``optimizer`` field accepts these and ``"auto"`` (``OPTIMIZER_NAMES``)."""

OPTIMIZER_NAMES = (AUTO, *OPTIMIZERS)
"""What a config's ``optimizer`` field accepts (any case)."""


def optimizer(name: str, learning_rate: float, weight_decay: float = 0.0,
              model: tf.keras.Model | None = None) -> tf.keras.optimizers.Optimizer:
    """The Keras optimizer ``name`` (``OPTIMIZER_NAMES``, any case); decoupled
    ``weight_decay`` only when positive (not every optimizer takes it). ``"auto"`` is
    Adam or, from ``LAZY_ADAM_ROWS`` embedding rows in ``model``, ``LazyAdam``
    (``auto_optimizer``).

        optimizer("adam", 1e-3)        # tf.keras.optimizers.Adam(learning_rate=1e-3)
    """
    name = name.lower()
    if name == AUTO:
        name = auto_optimizer(model)
    kwargs = {"weight_decay": weight_decay} if weight_decay > 0 else {}
    return OPTIMIZERS[name](learning_rate=learning_rate, **kwargs)


def lower_is_better(monitor: str) -> bool:
    """``*rmse``, ``*mae`` and ``*loss`` are minimized, everything else maximized.

    Why not Keras' ``mode="auto"``: it maximizes only names containing ``acc``, so
    ``val_recall@10`` would be minimized; early stopping and the refit must agree.
    """
    return monitor.endswith(("rmse", "loss", "mae"))


class _EarlyStopping(tf.keras.callbacks.EarlyStopping):
    """Keras' ``EarlyStopping`` (best weights restored at the end) that never stops
    before ``min_epochs`` epochs."""

    def __init__(self, monitor: str, patience: int, min_epochs: int) -> None:
        super().__init__(monitor=monitor, patience=patience, restore_best_weights=True,
                         mode="min" if lower_is_better(monitor) else "max")
        self.min_epochs = min_epochs

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.stopped_epoch == epoch > 0 and epoch + 1 < self.min_epochs:
            self.model.stop_training = False  # patience ran out, but it is too early
            self.stopped_epoch = 0


class FitHistory(tf.keras.callbacks.History):
    """Keras' ``History`` (``epoch`` holds the real epoch numbers, later ones after a
    resume) plus ``epoch_seconds`` (validation included) and ``stopped_epoch`` (the
    0-based epoch early stopping ended at; 0 if it did not). Last in the callback list,
    it also ends training once ``max_minutes`` of fitting are spent, and says so with a
    warning (``budget_stopped``: the epoch count it stopped after): such a result depends
    on the machine's speed, so no default sets a time budget."""

    def __init__(self, max_minutes: float | None = None) -> None:
        super().__init__()
        self.max_minutes = max_minutes
        self.epoch_seconds: list[float] = []
        self.stopped_epoch = 0
        self.budget_stopped = 0

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._fit_started = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        now = time.perf_counter()
        self.epoch_seconds.append(now - self._epoch_started)
        if self.max_minutes is not None and now - self._fit_started > 60 * self.max_minutes:
            if not self.model.stop_training:  # early stopping did not end it anyway
                self.budget_stopped = epoch + 1
                warnings.warn(f"time budget of {self.max_minutes:g} min reached: training "
                              f"stopped after epoch {epoch + 1} (this result depends on the "
                              "machine's speed; max_minutes=None trains to the end)",
                              stacklevel=2)
            self.model.stop_training = True


def backup_epochs(backup_dir: str | os.PathLike) -> int | None:
    """Epochs completed in a ``BackupAndRestore`` backup (``None``: nothing to resume).

    Why read the checkpoint: Keras removes only ``chief/`` after a finished fit, so the
    folder alone says nothing; ``ckpt_saved_epoch`` is the 0-based epoch it was saved at.

        backup_epochs("saved_models/demo/.backup-rating")   # -> 2 after 2 epochs, or None
    """
    latest = tf.train.latest_checkpoint(os.path.join(os.fspath(backup_dir), "chief"))
    if latest is None:
        return None
    try:
        epoch = int(tf.train.load_checkpoint(latest).get_tensor(
            "ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE"))
    except (tf.errors.OpError, ValueError):
        return None  # unreadable backup: Keras starts over
    return epoch + 1 if epoch >= 0 else None


def build_variables(model: tf.keras.Model, dataset: tf.data.Dataset,
                    strategy: tf.distribute.Strategy | None = None) -> None:
    """Create a subclassed (``tfrs.Model``) ``model``'s variables: ``compute_loss`` on the
    first batch of ``dataset`` in inference mode, which draws no random numbers, so the
    initial weights are the ones the first training step would create. Directly for the
    default strategy, in the coordinator's scope for parameter servers, in a replica
    context (``strategy.run``, so metrics can update) for mirrored / multi-worker."""
    batch = next(iter(dataset))
    if distribute.is_default(strategy) or distribute.is_parameter_server(strategy):
        with distribute.scope(strategy):
            model.compute_loss(batch, training=False)
        return
    strategy.run(lambda b: model.compute_loss(b, training=False), args=(batch,))


def fit(model: tf.keras.Model, data: Any, *, epochs: int, validation_data: Any = None,
        steps_per_epoch: int | None = None, validation_steps: int | None = None,
        monitor: str | None = None, patience: int = 0, min_epochs: int = 1,
        validators: Sequence[tf.keras.callbacks.Callback] = (),
        build_on: Callable[[], tf.data.Dataset] | None = None,
        backup_dir: str | os.PathLike | None = None,
        log_dir: str | os.PathLike | None = None,
        strategy: tf.distribute.Strategy | None = None, ema_momentum: float | None = None,
        max_minutes: float | None = None,
        callbacks: Sequence[tf.keras.callbacks.Callback] = (), verbose: int = 1,
        name: str = "fit") -> FitHistory:
    """``model.fit(data, ...)`` with every callback a trainer needs; returns the history.

    Args:
      model: compiled. ``build_on()``: a dataset whose first batch builds the variables
        of a subclassed model (``build_variables``) and its optimizer's slots
        (``model.build_optimizer()``), so that Keras traces the train step once,
        ``BackupAndRestore`` restores into them and a parameter-server coordinator finds
        them.
      data, validation_data, steps_per_epoch, validation_steps, epochs, verbose: as
        ``model.fit`` (``tfrec_p5.distribute.fit_input`` makes them for a strategy).
      monitor, patience, min_epochs: early stopping after ``patience`` epochs without a
        better ``monitor`` (``lower_is_better``), not before ``min_epochs``; the best
        epoch's weights end in the model. ``monitor=None``: no early stopping.
      validators: callbacks that add validation metrics (``val_recall@10``) to the
        epoch's logs, run before early stopping, which may watch them.
      backup_dir: ``BackupAndRestore``: a rerun of the same call after a kill resumes at
        the epoch after the last one saved. Keras removes it when ``fit`` ends.
      strategy: the one ``model`` was built under; other than the default, mean-reduced
        head losses average over the global batch (``make_losses_distributable``).
      log_dir: TensorBoard logs (needs ``tensorboard``; none under parameter servers).
      ema_momentum: validate, early-stop and end on the weights' moving average
        (``WeightAverage``; single process only).
      max_minutes: stop at the first epoch end after this much fitting time.
      callbacks: the user's; ``name``: who trains, for log lines.

    Callback order: ``BackupAndRestore`` first (it restores before anyone reads the
    weights, and saves the raw ones), then validators, early stopping, TensorBoard and
    the user's callbacks, all of them seeing the moving average at epoch ends.

    Replaying the data order: the package's datasets draw a fresh shuffle for every
    iterator (one per epoch), so a resumed run would draw epoch 1's shuffle again. One
    dropped iterator per saved epoch makes it draw the one an uninterrupted run would
    have (``tf.data.Dataset`` input only: a ``DatasetCreator`` builds on the workers).
    """
    if log_dir is not None:
        try:
            import tensorboard  # noqa: F401
        except ImportError as err:
            raise ImportError(f"{name}(log_dir=...) writes TensorBoard logs and needs the "
                              "'tensorboard' package: pip install tensorboard") from err
    if not distribute.is_default(strategy):
        distribute.make_losses_distributable(model)
    if build_on is not None:
        # Also the optimizer's slots: a tf.function whose first call creates variables is
        # traced twice, so Keras would trace the train step twice per fit.
        build_variables(model, build_on(), strategy)
        with distribute.scope(strategy):
            model.build_optimizer()
    before = []
    if backup_dir is not None:
        before.append(tf.keras.callbacks.BackupAndRestore(os.fspath(backup_dir)))
        replay = backup_epochs(backup_dir) if isinstance(data, tf.data.Dataset) else None
        for _ in range(replay or 0):
            iter(data)  # see "Replaying the data order" above
    stopper = _EarlyStopping(monitor, patience, min_epochs) if monitor else None
    cbs = [*validators, *([stopper] if stopper else [])]
    if log_dir is not None and distribute.is_parameter_server(strategy):
        log.warning("%s: TensorBoard does not support ParameterServerStrategy; no logs "
                    "written", name)
    elif log_dir is not None:
        cbs.append(tf.keras.callbacks.TensorBoard(os.fspath(log_dir), profile_batch=0))
    cbs.extend(callbacks)
    cbs = WeightAverage(ema_momentum).around(cbs, before) if ema_momentum is not None \
        else before + cbs
    history = FitHistory(max_minutes)
    model.fit(data, validation_data=validation_data, epochs=epochs,
              steps_per_epoch=steps_per_epoch, validation_steps=validation_steps,
              callbacks=[*cbs, history], verbose=verbose)
    history.stopped_epoch = stopper.stopped_epoch if stopper is not None else 0
    return history
