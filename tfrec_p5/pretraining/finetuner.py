"""``finetune``: load a backbone, grow it to new IDs, attach a fresh head, train.

Why the freeze modes: how much of the backbone to adapt depends on how much labelled
data the new task has.

* ``"towers"``: the towers are frozen (``trainable=False``); only the new head trains.
  Safest with very few labels; the head reads pretrained vectors as fixed features.
* ``"embeddings"``: ID and side-feature embedding tables are frozen, the towers'
  projections and the head train.
* ``"lower_lr"``: everything trains, the backbone with ``backbone_lr_scale`` x the head's
  learning rate (a second optimizer for the tower variables, see ``FinetuneModel``), so
  the pretrained structure is adapted, not overwritten.
* ``"none"``: everything trains at one learning rate (what training from scratch does).

    from tfrec_p5.pretraining import finetune, FinetuneConfig
    tuned = finetune("backbones/ml100k", labelled, task="rating", freeze="towers")
    tuned.evaluate(test)                            # {"rating_rmse": ..., ...}
    module = serving_module(tuned)                  # predict_rating, recommend, ...
    export(module, "saved_models/ml100k_ft")

New users / items of the fine-tuning data grow the backbone first (``grow_backbone``):
known rows are kept exactly, new ones are initialised from side features.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from tfrec_p5.config import Config
from tfrec_p5.data.interactions import Interactions
from tfrec_p5.data.pipeline import pointwise_dataset, retrieval_dataset
from tfrec_p5.data.splits import carve_validation
from tfrec_p5.models.rating import _OPTIMIZERS, RatingConfig
from tfrec_p5.models.unified import (
    RetrievalValidation,
    TrainedUnified,
    UnifiedConfig,
    UnifiedModel,
)
from tfrec_p5.pretraining.backbone import Backbone, grow_backbone, load_backbone
from tfrec_p5.pretraining.pretrainer import rating_range_of
from tfrec_p5.tasks.rating import RatingHead
from tfrec_p5.tasks.retrieval import RetrievalHead, history_csr, item_frequencies
from tfrec_p5.towers import Tower

log = logging.getLogger(__name__)
FREEZE_MODES = ("none", "towers", "embeddings", "lower_lr")
FINETUNE_TASKS = ("rating", "retrieval")


class FinetuneModel(UnifiedModel):
    """``UnifiedModel`` whose tower variables may use their own optimizer.

    Why not ``tfrs.experimental.optimizers.CompositeOptimizer``: it targets the legacy
    optimizer API; two plain Keras optimizers applied to two fixed variable groups in
    ``train_step`` do the same with any optimizer and stay checkpointable.
    """

    def __init__(self, *args, backbone_optimizer: tf.keras.optimizers.Optimizer | None = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.backbone_optimizer = backbone_optimizer

    def train_step(self, inputs):
        with tf.GradientTape() as tape:
            loss = self.compute_loss(inputs, training=True)
            regularization_loss = tf.reduce_sum([tf.reduce_sum(x) for x in self.losses])
            total_loss = loss + regularization_loss
        variables = self.trainable_variables
        gradients = tape.gradient(total_loss, variables)
        pairs = [(g, v) for g, v in zip(gradients, variables, strict=True) if g is not None]
        if self.backbone_optimizer is None:
            self.optimizer.apply_gradients(pairs)
        else:
            tower_ids = {id(v) for v in self.user_tower.trainable_variables
                         + self.item_tower.trainable_variables}
            backbone = [(g, v) for g, v in pairs if id(v) in tower_ids]
            head = [(g, v) for g, v in pairs if id(v) not in tower_ids]
            if head:
                self.optimizer.apply_gradients(head)
            if backbone:
                self.backbone_optimizer.apply_gradients(backbone)
        metrics = {m.name: m.result() for m in self.metrics}
        metrics.update(loss=loss, regularization_loss=regularization_loss,
                       total_loss=total_loss)
        return metrics


@dataclass
class FinetuneConfig(Config):
    """The fresh head, the freeze mode and the training of a fine-tuning run.

    Defaults (chosen with 10 % of the ML-100K training labels on a validation slice of
    the training split, see ``benchmarks/pretrain_transfer.py --select`` and
    ``benchmarks/RESULTS.md``): towers frozen, the rating head of
    ``RatingConfig`` *without* the dot-product term (retrieval-trained tower vectors
    have a dot product on the logit scale, which a frozen tower cannot rescale; the MLP
    reads them instead), early stopping on a carved 10 % of the fine-tuning data, then a
    refit on all of it. ``lower_lr`` uses ``backbone_lr_scale`` x the head's rate.
    """

    task: str = "rating"
    freeze: str = "towers"
    backbone_lr_scale: float = 0.1
    rating: RatingConfig = field(default_factory=lambda: RatingConfig(use_dot=False))
    temperature: float | None = 0.2
    log_q: bool = True
    full_softmax: bool = True
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    batch_size: int = 512
    epochs: int = 40
    patience: int = 3
    validation_fraction: float = 0.1
    refit_full: bool = True
    steps_per_execution: int = 16

    def __post_init__(self) -> None:
        if isinstance(self.rating, Mapping):
            self.rating = RatingConfig.from_dict(self.rating)
        if self.task not in FINETUNE_TASKS:
            raise ValueError(f"unknown fine-tuning task {self.task!r}; known: "
                             f"{list(FINETUNE_TASKS)}")
        if self.freeze not in FREEZE_MODES:
            raise ValueError(f"unknown freeze mode {self.freeze!r}; use one of "
                             f"{list(FREEZE_MODES)}")
        if self.optimizer.lower() not in _OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}")


@dataclass
class Finetuned(TrainedUnified):
    """``TrainedUnified`` (evaluate, export through ``serving_module``) + the backbone it
    started from and the fine-tuning config."""

    backbone: Backbone | None = None
    finetune_config: FinetuneConfig | None = None
    seconds: float = 0.0


def _freeze(tower: Tower, mode: str) -> None:
    if mode == "towers":
        tower.trainable = False
    elif mode == "embeddings":
        tower.id_embedding.trainable = False
        for layer in tower.feature_embeddings.values():
            layer.trainable = False


def _copy_backbone(backbone: Backbone) -> Backbone:
    """Fresh tower objects with the same weights (fine-tuning never mutates the input)."""
    towers = []
    for tower in (backbone.user_tower, backbone.item_tower):
        if not tower.built:
            tower(tf.zeros((1,), tf.int64))
        new = type(tower).from_config(tower.get_config())
        new(tf.zeros((1,), tf.int64))
        new.set_weights(tower.get_weights())
        towers.append(new)
    return Backbone(towers[0], towers[1], backbone.vocabs, backbone.side_features,
                    dict(backbone.manifest))


def _sized(ds: tf.data.Dataset, n: int, batch_size: int) -> tf.data.Dataset:
    return ds.apply(tf.data.experimental.assert_cardinality(math.ceil(n / batch_size)))


def finetune(backbone: Backbone | str | os.PathLike, data: Interactions | str, *,
             task: str | None = None, freeze: str | None = None,
             config: FinetuneConfig | None = None, validation: Interactions | None = None,
             seed: int = 42, verbose: int = 1,
             callbacks: Sequence[tf.keras.callbacks.Callback] = ()) -> Finetuned:
    """Fine-tune ``backbone`` (a ``Backbone`` or its folder) on ``data`` for ``task``.

    * The backbone is grown to the IDs of ``data`` (and ``validation``) it lacks.
    * A fresh head: ``RatingHead`` (``config.rating``'s head; output bias at the mean of
      ``data``'s ratings) or ``RetrievalHead`` (user tower as the query, full softmax,
      log-Q from ``data``'s item frequencies).
    * ``freeze`` (see module docstring) and ``config.backbone_lr_scale``.
    * ``validation=None``: ``config.validation_fraction`` of ``data`` is carved off for
      early stopping (val RMSE / val Recall@10), then (``refit_full``) the run repeats
      on all of ``data`` from the same backbone for the best epoch count.
    """
    started = time.perf_counter()
    config = config or FinetuneConfig()
    if task is not None:
        config = config.replace(task=task)
    if freeze is not None:
        config = config.replace(freeze=freeze)
    if not isinstance(backbone, Backbone):
        backbone = load_backbone(backbone)
    if isinstance(data, str):
        from tfrec_p5.data import load

        data = load(data)
    if config.task == "rating" and data.rating is None:
        raise ValueError("fine-tuning the rating task needs a 'rating' column")
    carved = validation is None and config.validation_fraction > 0
    fit_table, validation = carve_validation(data, validation, config.validation_fraction,
                                             seed)
    grown = grow_backbone(backbone, data if carved or validation is None
                          else Interactions.concat(data, validation),
                          seed=seed)
    tf.keras.utils.set_random_seed(seed)
    work = _copy_backbone(grown)
    vocabs = work.vocabs
    for tower in (work.user_tower, work.item_tower):
        _freeze(tower, config.freeze)
    rating_range = rating_range_of(data)
    global_mean = float(np.mean(fit_table.rating)) if fit_table.rating is not None else 0.0
    probs = item_frequencies(fit_table, vocabs)
    if config.task == "rating":
        head = RatingHead.from_rating_config(config.rating, len(vocabs.user), len(vocabs.item),
                                             global_mean=global_mean,
                                             rating_range=rating_range)
    else:
        head = RetrievalHead(len(vocabs.item), temperature=config.temperature,
                             item_probabilities=probs if config.log_q else None,
                             full_softmax=config.full_softmax, history=None,
                             use_user_tower=True)
    opt = _OPTIMIZERS[config.optimizer.lower()]
    backbone_opt = opt(learning_rate=config.learning_rate * config.backbone_lr_scale) \
        if config.freeze == "lower_lr" else None
    model = FinetuneModel(work.user_tower, work.item_tower, {config.task: head},
                          backbone_optimizer=backbone_opt)
    model.compile(optimizer=opt(learning_rate=config.learning_rate),
                  steps_per_execution=config.steps_per_execution)

    def make(table: Interactions, batch_size: int, shuffle: bool) -> tf.data.Dataset:
        if config.task == "rating":
            ds = pointwise_dataset(table, vocabs, batch_size, shuffle=shuffle, seed=seed)
        else:
            ds = retrieval_dataset(table, vocabs, batch_size, shuffle=shuffle, seed=seed)
        return _sized(ds, len(table), batch_size)

    splits, values = history_csr(fit_table, vocabs)
    cbs: list[tf.keras.callbacks.Callback] = []
    val_ds, monitor = None, None
    if validation is not None and len(validation) and config.patience > 0:
        if config.task == "rating":
            val_ds = make(validation, max(config.batch_size, 8192), False)
            monitor, mode = "val_rmse", "min"
        else:
            cbs.append(RetrievalValidation(validation, vocabs, splits, values, ks=(10,)))
            monitor, mode = "val_recall@10", "max"
        cbs.append(tf.keras.callbacks.EarlyStopping(monitor=monitor, mode=mode,
                                                    patience=config.patience,
                                                    restore_best_weights=True))
    cbs.extend(callbacks)
    hist = model.fit(make(fit_table, config.batch_size, True), validation_data=val_ds,
                     epochs=config.epochs, callbacks=cbs, verbose=verbose)
    history = {k: [float(x) for x in v] for k, v in hist.history.items()}
    if config.refit_full and carved and monitor in history:
        values_ = np.asarray(history[monitor])
        best = int(np.argmin(values_) if mode == "min" else np.argmax(values_)) + 1
        log.info("finetune: refitting on all %d rows for %d epochs", len(data), best)
        refit = finetune(grown, data, config=config.replace(
            validation_fraction=0.0, refit_full=False, epochs=best), seed=seed,
            verbose=verbose, callbacks=callbacks)
        refit.history = {**{f"search_{k}": v for k, v in history.items()}, **refit.history}
        refit.backbone = backbone
        refit.seconds = time.perf_counter() - started
        return refit
    return Finetuned(model, vocabs, UnifiedConfig(weights={config.task: 1.0}),
                     work.side_features, history, splits, values, probs, global_mean,
                     rating_range, backbone=work, finetune_config=config,
                     seconds=time.perf_counter() - started)


def serving_module(tuned: TrainedUnified, *, k: int = 100, exclude_seen: bool = True):
    """The ``ServingModule`` for a fine-tuned model: ``predict_rating`` (rating head) or
    ``recommend`` / ``rank`` (retrieval head), through the same helpers ``tfrec-p5 train``
    uses, so ``export(...)`` and ``tfrec-p5 predict`` work unchanged."""
    from tfrec_p5.tasks.cli import build_module

    return build_module(tuned, k=k, exclude_seen=exclude_seen)
