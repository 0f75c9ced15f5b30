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
* ``"auto"``: ``"towers"`` below ``auto_labels_per_user`` labels per user, else
  ``"lower_lr"`` (``resolve_freeze``), so one setting serves few and many labels.

``bias_prior`` gives the fresh rating head's user / item biases a ridge prior worth that
many labels (``_add_bias_prior``): a user with two labels gets a shrunk offset, not the
mean of two noisy residuals.

``task="next_item"`` fine-tunes the backbone's item tower with its pretrained next-item
encoder (``Backbone.next_item_head``; a fresh one when the backbone has none) on every
prefix of each user's history, early-stopping on a leave-one-out validation item; the
result exports the ``next_items`` / ``score_items`` signatures.

    from tfrec_p5.pretraining import finetune, FinetuneConfig
    tuned = finetune("backbones/ml100k", labelled, task="rating", freeze="towers")
    tuned.evaluate(test)                            # {"rating_rmse": ..., ...}
    module = serving_module(tuned)  # tfrec_p5.export: predict_rating, recommend, ...
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
from tfrec_p5.data import load
from tfrec_p5.data.interactions import Interactions
from tfrec_p5.data.pipeline import pointwise_dataset, retrieval_dataset
from tfrec_p5.data.splits import carve_validation, leave_one_out
from tfrec_p5.models.progress import announce_refit
from tfrec_p5.models.rating import _OPTIMIZERS, RatingConfig
from tfrec_p5.models.sequential import (
    NextItemModel,
    SequentialConfig,
    TrainedSequential,
    _ValidationStopper,
    length_bucketed_dataset,
    next_item_examples,
    ranking_queries,
)
from tfrec_p5.models.unified import (
    RetrievalValidation,
    TrainedUnified,
    UnifiedConfig,
    UnifiedModel,
)
from tfrec_p5.pretraining.backbone import Backbone, grow_backbone, load_backbone
from tfrec_p5.pretraining.pretrainer import rating_range_of
from tfrec_p5.tasks.next_item import NEXT_ITEM, NextItemTask, copy_encoder_weights
from tfrec_p5.tasks.rating import RatingHead
from tfrec_p5.tasks.retrieval import RetrievalHead, history_csr, item_frequencies
from tfrec_p5.towers import Tower

log = logging.getLogger(__name__)
FREEZE_MODES = ("none", "towers", "embeddings", "lower_lr", "auto")
FINETUNE_TASKS = ("rating", "retrieval", "next_item")


class _BackboneOptimizerStep:
    """``train_step`` mixin: the tower variables may use their own optimizer.

    Why not ``tfrs.experimental.optimizers.CompositeOptimizer``: it targets the legacy
    optimizer API; two plain Keras optimizers applied to two fixed variable groups in
    ``train_step`` do the same with any optimizer and stay checkpointable.
    """

    backbone_optimizer: tf.keras.optimizers.Optimizer | None = None

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
            towers = [t for t in (getattr(self, "user_tower", None), self.item_tower)
                      if t is not None]
            tower_ids = {id(v) for t in towers for v in t.trainable_variables}
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


class FinetuneModel(_BackboneOptimizerStep, UnifiedModel):
    """``UnifiedModel`` whose tower variables may use their own optimizer."""

    def __init__(self, *args, backbone_optimizer: tf.keras.optimizers.Optimizer | None = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.backbone_optimizer = backbone_optimizer


class SequentialFinetuneModel(_BackboneOptimizerStep, NextItemModel):
    """``NextItemModel`` (item tower + next-item head) whose item tower may use its own
    optimizer (``freeze="lower_lr"``)."""

    def __init__(self, item_tower: Tower, head: NextItemTask, *,
                 backbone_optimizer: tf.keras.optimizers.Optimizer | None = None,
                 **kwargs) -> None:
        super().__init__(item_tower, head, **kwargs)
        self.backbone_optimizer = backbone_optimizer


@dataclass
class FinetuneConfig(Config):
    """The fresh head, the freeze mode and the training of a fine-tuning run.

    Defaults (chosen with 10 %, 25 % and 100 % of the ML-100K training labels on a
    validation slice of the training split, see ``benchmarks/pretrain_transfer.py
    --select`` and ``benchmarks/RESULTS.md``): ``freeze="auto"`` (towers frozen below
    40 labels per user, ``lower_lr`` above), the rating head of ``RatingConfig``
    *without* the dot-product term (retrieval-trained tower vectors have a dot product on
    the logit scale, which a frozen tower cannot rescale; the MLP reads them instead),
    a bias prior worth 3 labels, early stopping on a carved 10 % of the fine-tuning data,
    then a refit on all of it. ``lower_lr`` uses ``backbone_lr_scale`` x the head's rate.
    For ``task="next_item"``, ``epochs`` / ``patience`` count passes over the users'
    histories (a from-scratch encoder needs far more than the rating default of 40).
    """

    task: str = "rating"
    freeze: str = "auto"
    backbone_lr_scale: float = 0.1
    # freeze="auto": "towers" below this many labels per user, else "lower_lr"
    auto_labels_per_user: float = 40.0
    # ridge prior on the fresh head's user / item biases, in pseudo-labels (0 = off)
    bias_prior: float = 3.0
    rating: RatingConfig = field(default_factory=lambda: RatingConfig(use_dot=False))
    # task="next_item": the head's shape when the backbone has no pretrained encoder,
    # and batch_size (histories per step), min_epochs, max_minutes, eval_batch_size
    sequential: SequentialConfig = field(default_factory=SequentialConfig)
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
        if isinstance(self.sequential, Mapping):
            self.sequential = SequentialConfig.from_dict(self.sequential)
        if self.task not in FINETUNE_TASKS:
            raise ValueError(f"unknown fine-tuning task {self.task!r}; known: "
                             f"{list(FINETUNE_TASKS)}")
        if self.freeze not in FREEZE_MODES:
            raise ValueError(f"unknown freeze mode {self.freeze!r}; use one of "
                             f"{list(FREEZE_MODES)}")
        if self.optimizer.lower() not in _OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}")
        super().__post_init__()


@dataclass
class Finetuned(TrainedUnified):
    """``TrainedUnified`` (evaluate, export through ``serving_module``) + the backbone it
    started from and the fine-tuning config."""

    backbone: Backbone | None = None
    finetune_config: FinetuneConfig | None = None
    seconds: float = 0.0


@dataclass
class FinetunedSequential(TrainedSequential):
    """``TrainedSequential`` (``head``, ``best_metrics``; export through
    ``serving_module``) + the backbone it started from and the fine-tuning config."""

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
    head = backbone.next_item_head
    return Backbone(towers[0], towers[1], backbone.vocabs, backbone.side_features,
                    dict(backbone.manifest), None if head is None else head.clone(towers[1]))


def _sized(ds: tf.data.Dataset, n: int, batch_size: int) -> tf.data.Dataset:
    return ds.apply(tf.data.experimental.assert_cardinality(math.ceil(n / batch_size)))


def resolve_freeze(config: FinetuneConfig, data: Interactions) -> str:
    """The freeze mode ``config`` asks for; ``"auto"`` picks it from the label count.

    Why: how much of a backbone to adapt depends on how many labels each user brings.
    With a few labels per user the head alone should train (``"towers"``: nothing a
    user's handful of labels could overfit moves); with plenty, the towers profit from
    adapting at a lower rate (``"lower_lr"``). On the ML-100K validation slice the switch
    lies between 25 % of the labels (~21 per user) and 100 % (~85), hence the default
    ``auto_labels_per_user=40``.

        resolve_freeze(FinetuneConfig(freeze="auto"), labelled)   # "towers" or "lower_lr"
    """
    if config.freeze != "auto":
        return config.freeze
    users = len(np.unique(data.user_id)) if len(data) else 1
    per_user = len(data) / max(users, 1)
    mode = "lower_lr" if per_user >= config.auto_labels_per_user else "towers"
    log.info("finetune: freeze auto -> %s (%.1f labels per user, threshold %.1f)", mode,
             per_user, config.auto_labels_per_user)
    return mode


def _add_bias_prior(head: RatingHead, prior: float, rows: int) -> None:
    """Give the head's user / item bias tables a ridge prior worth ``prior`` labels.

    Why: a user with two labels cannot estimate their own rating offset; the MSE fit of
    an unregularized bias swings to whatever those two labels say. A weight L2 of
    ``lambda = prior / rows`` on the whole table, charged once per step, makes the
    stationary bias of a user with ``n`` labels ``sum(residuals) / (n + prior)``: the
    usual shrinkage estimate (it vanishes for users with many labels and goes to 0 for
    users with none). Set before the layers are built, so ``add_weight`` picks it up.
    """
    if prior <= 0 or head.user_bias is None:
        return
    lam = float(prior) / max(int(rows), 1)
    for layer in (head.user_bias, head.item_bias):
        if layer.built:
            raise RuntimeError("bias prior must be set before the head is built")
        layer.embeddings_regularizer = tf.keras.regularizers.L2(lam)


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
        data = load(data)
    if config.task == "rating" and data.rating is None:
        raise ValueError("fine-tuning the rating task needs a 'rating' column")
    config = config.replace(freeze=resolve_freeze(config, data))
    if config.task == "next_item":
        return _finetune_next_item(backbone, data, validation, config, seed, verbose,
                                   callbacks, started)
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
        _add_bias_prior(head, config.bias_prior, len(fit_table))
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
        announce_refit(len(data), best, verbose)
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


def _finetune_next_item(backbone: Backbone, data: Interactions,
                        validation: Interactions | None, config: FinetuneConfig, seed: int,
                        verbose: int, callbacks: Sequence[tf.keras.callbacks.Callback],
                        started: float) -> FinetunedSequential:
    """``finetune(task="next_item")``: the backbone's item tower + its pretrained next-item
    encoder (or a fresh one, shaped by ``config.sequential``), trained on every prefix of
    every user's history, as ``train_sequential`` does.

    Validation is leave-one-out: ``validation`` (one next item per user) or, when it is
    ``None``, each user's last item of ``data`` carved off; early stopping keeps the epoch
    with the best validation full-ranking NDCG@10, and (``refit_full``, carved only) the
    run repeats on all of ``data`` for that many epochs.
    """
    carved = validation is None and config.validation_fraction > 0
    fit_table = data
    if carved:
        loo = leave_one_out(data)
        fit_table, validation = Interactions.concat(loo.train, loo.validation), loo.test
    grown = grow_backbone(backbone, data if carved or validation is None
                          else Interactions.concat(data, validation), seed=seed)
    tf.keras.utils.set_random_seed(seed)
    work = _copy_backbone(grown)
    vocabs = work.vocabs
    _freeze(work.item_tower, config.freeze)
    seq = config.sequential
    source = work.next_item_head
    args = source.head_config() if source is not None else {
        "max_len": seq.max_len, "kind": seq.encoder, "num_blocks": seq.num_blocks,
        "num_heads": seq.num_heads, "ffn_dim": seq.ffn_dim, "dropout": seq.dropout,
        "loss": seq.loss, "num_negatives": seq.num_negatives}
    probs = item_frequencies(fit_table, vocabs) if args["loss"] == "sampled" else None
    head = NextItemTask(**args, item_probabilities=probs)
    opt = _OPTIMIZERS[config.optimizer.lower()]
    backbone_opt = opt(learning_rate=config.learning_rate * config.backbone_lr_scale) \
        if config.freeze == "lower_lr" else None
    model = SequentialFinetuneModel(work.item_tower, head, backbone_optimizer=backbone_opt)
    model(tf.zeros((1, head.max_len), tf.int64))
    if source is not None:
        copy_encoder_weights(source, head)
    model.compile(optimizer=opt(learning_rate=config.learning_rate),
                  steps_per_execution=config.steps_per_execution)
    examples = next_item_examples(fit_table, vocabs, head.max_len)
    if not len(examples[NEXT_ITEM]):
        raise ValueError("fine-tuning next_item needs users with two or more interactions")
    dataset = length_bucketed_dataset(examples, seq.batch_size, seed=seed)
    queries = ranking_queries(fit_table, validation, vocabs, head.max_len) \
        if validation is not None and len(validation) else None
    seq_config = seq.replace(embedding_dim=int(work.item_tower.embedding_dim),
                             max_len=head.max_len, encoder=args["kind"],
                             num_blocks=args["num_blocks"], num_heads=args["num_heads"],
                             ffn_dim=args["ffn_dim"], dropout=args["dropout"],
                             loss=args["loss"], num_negatives=args["num_negatives"],
                             epochs=config.epochs, patience=config.patience,
                             learning_rate=config.learning_rate)
    stopper = _ValidationStopper(head, queries, seq_config, time.perf_counter(), verbose)
    model.fit(dataset, epochs=config.epochs, steps_per_epoch=int(dataset.cardinality()),
              callbacks=[stopper, *callbacks], verbose=0)
    if config.refit_full and carved and stopper.best_epoch > 0:
        log.info("finetune: refitting next_item on all %d rows for %d epochs", len(data),
                 stopper.best_epoch)
        announce_refit(len(data), stopper.best_epoch, verbose)
        refit = finetune(grown, data, config=config.replace(
            validation_fraction=0.0, refit_full=False, epochs=stopper.best_epoch),
            seed=seed, verbose=verbose, callbacks=callbacks)
        refit.best_epoch, refit.best_metrics = stopper.best_epoch, stopper.best_metrics
        refit.history = stopper.records + [{**r, "refit": 1.0} for r in refit.history]
        refit.epochs_run += len(stopper.records)
        refit.backbone = backbone
        refit.seconds = time.perf_counter() - started
        return refit
    return FinetunedSequential(model, vocabs, seq_config, best_epoch=stopper.best_epoch,
                               epochs_run=len(stopper.records),
                               best_metrics=stopper.best_metrics, history=stopper.records,
                               train_seconds=time.perf_counter() - started, backbone=work,
                               finetune_config=config,
                               seconds=time.perf_counter() - started)
