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
  ``"lower_lr"`` (``resolve_freeze``), so one setting serves few and many labels; for
  ``task="next_item"`` (whose labels are the events themselves) ``"none"``.

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
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from tfrec_p5.config import Config
from tfrec_p5.data import load
from tfrec_p5.data.interactions import Interactions
from tfrec_p5.data.splits import carve_validation, leave_one_out
from tfrec_p5.models.rating import RatingConfig
from tfrec_p5.models.sequential import (
    SequentialConfig,
    TrainedSequential,
    fit_next_item,
    with_selection,
)
from tfrec_p5.models.unified import (
    TrainedUnified,
    UnifiedConfig,
    UnifiedModel,
    fit_unified,
    selection_monitor,
)
from tfrec_p5.pretraining.backbone import Backbone, grow_backbone, load_backbone
from tfrec_p5.pretraining.pretrainer import rating_range_of
from tfrec_p5.tasks.next_item import copy_encoder_weights
from tfrec_p5.tasks.rating import RatingHead
from tfrec_p5.tasks.registry import HeadContext, RetrievalOptions, build_heads
from tfrec_p5.towers import Tower
from tfrec_p5.training import (
    OPTIMIZERS,
    optimizer,
    search_record,
    search_then_refit,
    with_search_history,
)

log = logging.getLogger(__name__)
FREEZE_MODES = ("none", "towers", "embeddings", "lower_lr", "auto")
"""What ``finetune(..., freeze=...)`` (``--freeze``) may keep fixed: nothing, the towers,
their embeddings, or train the towers at a lower learning rate; ``auto`` picks ``towers`` or
``lower_lr`` from the labels per user (few labels overfit a free backbone)."""
FINETUNE_TASKS = ("rating", "retrieval", "next_item")


class _BackboneOptimizerStep:
    """``train_step`` mixin: the tower variables may use their own optimizer.

    Why not ``tfrs.experimental.optimizers.CompositeOptimizer``: it targets the legacy
    optimizer API; two plain Keras optimizers applied to two fixed variable groups in
    ``train_step`` do the same with any optimizer and stay checkpointable.
    """

    backbone_optimizer: tf.keras.optimizers.Optimizer | None = None

    def _train_step(self, inputs):
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
            tower_ids = self._tower_variable_ids()
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

    def _tower_variable_ids(self) -> set[int]:
        towers = [t for t in (getattr(self, "user_tower", None), self.item_tower)
                  if t is not None]
        return {id(v) for t in towers for v in t.trainable_variables}

    def build_optimizer(self) -> None:
        """Each optimizer's slots for the variables it updates (see ``_train_step``)."""
        if self.backbone_optimizer is None:
            self.optimizer.build(self.trainable_variables)
            return
        tower_ids = self._tower_variable_ids()
        self.optimizer.build([v for v in self.trainable_variables if id(v) not in tower_ids])
        self.backbone_optimizer.build(
            [v for v in self.trainable_variables if id(v) in tower_ids])


class FinetuneModel(_BackboneOptimizerStep, UnifiedModel):
    """``UnifiedModel`` whose tower variables may use their own optimizer."""

    def __init__(self, *args, backbone_optimizer: tf.keras.optimizers.Optimizer | None = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
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
    # and batch_size (histories per step), min_epochs, max_minutes, eval_batch_size,
    # ema_momentum
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
    refit: bool = True
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
        if self.optimizer.lower() not in OPTIMIZERS:
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


def resolve_freeze(config: FinetuneConfig, data: Interactions) -> str:
    """The freeze mode ``config`` asks for; ``"auto"`` picks it from the label count.

    Why: how much of a backbone to adapt depends on how many labels each user brings.
    With a few labels per user the head alone should train (``"towers"``: nothing a
    user's handful of labels could overfit moves); with plenty, the towers profit from
    adapting at a lower rate (``"lower_lr"``). On the ML-100K validation slice the switch
    lies between 25 % of the labels (~21 per user) and 100 % (~85), hence the default
    ``auto_labels_per_user=40``. ``task="next_item"`` trains everything (``"none"``):
    every event of the log is one of its labels, and on the validation events of ML-100K
    and Amazon Beauty a frozen or slowed backbone fine-tuned worse.

        resolve_freeze(FinetuneConfig(freeze="auto"), labelled)   # "towers" or "lower_lr"
    """
    if config.freeze != "auto":
        return config.freeze
    if config.task == "next_item":
        # Every event is a next-item label, so label scarcity does not arise; on the
        # validation events freezing lost (RESULTS.md, "pretrain -> finetune").
        log.info("finetune: freeze auto -> none (next_item learns from every event)")
        return "none"
    users = len(np.unique(data.user_id)) if len(data) else 1
    per_user = len(data) / max(users, 1)
    mode = "lower_lr" if per_user >= config.auto_labels_per_user else "towers"
    log.info("finetune: freeze auto -> %s (%.1f labels per user, threshold %.1f)", mode,
             per_user, config.auto_labels_per_user)
    return mode


def _backbone_optimizer(config: FinetuneConfig) -> tf.keras.optimizers.Optimizer | None:
    """``freeze="lower_lr"``: the towers' own optimizer at ``backbone_lr_scale`` x the
    learning rate (``None``: the towers share the head's)."""
    if config.freeze != "lower_lr":
        return None
    return optimizer(config.optimizer, config.learning_rate * config.backbone_lr_scale)


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
             callbacks: Sequence[tf.keras.callbacks.Callback] = (),
             backup_dir: str | os.PathLike | None = None) -> Finetuned | FinetunedSequential:
    """Fine-tune ``backbone`` (a ``Backbone`` or its folder) on ``data`` for ``task``.

    * The backbone is grown to the IDs of ``data`` (and ``validation``) it lacks.
    * A fresh head: ``RatingHead`` (``config.rating``'s head; output bias at the mean of
      ``data``'s ratings), ``RetrievalHead`` (user tower as the query, full softmax,
      log-Q from ``data``'s item frequencies) or the next-item head (see
      ``_finetune_next_item``).
    * ``freeze`` (see the ``tfrec_p5.pretraining.finetuner`` module) and
      ``config.backbone_lr_scale``.
    * ``validation=None``: ``config.validation_fraction`` of ``data`` is carved off for
      early stopping (val RMSE / val Recall@10; next_item: each user's last item, val
      NDCG@10), then (``refit``) the run repeats on all of ``data`` from the same
      backbone for the best epoch count. A ``validation`` part handed in (a split's
      own) selects the epochs the same way, and the refit trains on ``data`` +
      ``validation``.
    * ``backup_dir``: a rerun of the same call after a kill resumes from the last
      finished epoch, or the refit without searching again (``tfrec_p5.training``).
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
    carved = validation is None and config.validation_fraction > 0
    if config.task != "next_item":
        fit_table, validation = carve_validation(data, validation,
                                                 config.validation_fraction, seed)
    elif carved:  # next-item validation is leave-one-out: each user's last item
        loo = leave_one_out(data)
        fit_table, validation = Interactions.concat(loo.train, loo.validation), loo.test
    else:
        fit_table = data
    grown = grow_backbone(backbone, data if carved or validation is None
                          else Interactions.concat(data, validation), seed=seed)
    kwargs = {"seed": seed, "verbose": verbose, "callbacks": callbacks,
              "backup_dir": backup_dir}

    def search() -> tuple[Finetuned | FinetunedSequential, dict | None]:
        if config.task == "next_item":
            tuned, record = _finetune_next_item(grown, fit_table, validation, config,
                                                **kwargs)
        else:
            tuned, record = _finetune_pairs(grown, fit_table, validation, config,
                                            rating_range=rating_range_of(data), **kwargs)
        tuned.seconds = time.perf_counter() - started
        return tuned, record

    # The refit trains on every row the selection saw: ``data``, plus a validation part
    # the caller handed in (a split's own, as ``train --task sequential`` refits).
    held_out = validation is not None and len(validation) > 0 and not carved
    refit_data = Interactions.concat(data, validation) if held_out else data

    def refit(record: dict, refit_dir: str | None) -> Finetuned | FinetunedSequential:
        out = finetune(grown, refit_data, config=config.replace(
            validation_fraction=0.0, refit=False, epochs=record["best_epochs"]),
            seed=seed, verbose=verbose, callbacks=callbacks, backup_dir=refit_dir)
        if config.task == "next_item":
            out = with_selection(out, record)
        else:
            out.history = with_search_history(record, out.history)
        out.backbone, out.seconds = backbone, time.perf_counter() - started
        return out

    if config.refit and (carved or held_out):
        return search_then_refit(backup_dir, search, refit, rows=len(refit_data),
                                 verbose=verbose)
    return search()[0]


def _finetune_pairs(grown: Backbone, fit_table: Interactions,
                    validation: Interactions | None, config: FinetuneConfig, *,
                    rating_range: tuple[float, float] | None, seed: int, verbose: int,
                    callbacks: Sequence[tf.keras.callbacks.Callback],
                    backup_dir: str | os.PathLike | None) -> tuple[Finetuned, dict | None]:
    """One rating / retrieval fine-tuning run on ``fit_table`` (early stopping on
    ``validation``) and its search record (``tfrec_p5.training.search_record``);
    ``rating_range``: the fine-tuning data's, for clipping predictions."""
    tf.keras.utils.set_random_seed(seed)
    work = _copy_backbone(grown)
    vocabs = work.vocabs
    for tower in (work.user_tower, work.item_tower):
        _freeze(tower, config.freeze)
    context = HeadContext.from_table(fit_table, vocabs, user_dim=work.user_tower.dim,
                                     rating_range=rating_range)
    options = config.rating if config.task == "rating" else RetrievalOptions(
        temperature=config.temperature, log_q=config.log_q, full_softmax=config.full_softmax)
    head = build_heads({config.task: options}, context)[config.task]
    if config.task == "rating":
        _add_bias_prior(head, config.bias_prior, len(fit_table))
    model = FinetuneModel(work.user_tower, work.item_tower, {config.task: head},
                          backbone_optimizer=_backbone_optimizer(config))
    model.compile(optimizer=optimizer(config.optimizer, config.learning_rate),
                  steps_per_execution=config.steps_per_execution)
    # The head trains as train_unified trains its heads (no moving average of the weights).
    unified = UnifiedConfig(weights={config.task: 1.0}, batch_size=config.batch_size,
                            epochs=config.epochs, patience=config.patience,
                            ema_momentum=None)
    if validation is not None and not len(validation):
        validation = None
    history = fit_unified(model, fit_table, validation, unified, vocabs=vocabs, seed=seed,
                          backup_dir=backup_dir, callbacks=callbacks, verbose=verbose)
    tuned = Finetuned(model, vocabs, unified, work.side_features,
                      {k: [float(x) for x in v] for k, v in history.history.items()},
                      context.seen_splits, context.seen_values, context.item_probabilities,
                      context.global_mean, rating_range, backbone=work,
                      finetune_config=config)
    return tuned, search_record(history, selection_monitor(unified, [config.task]))


def _finetune_next_item(grown: Backbone, fit_table: Interactions,
                        validation: Interactions | None, config: FinetuneConfig, *,
                        seed: int, verbose: int,
                        callbacks: Sequence[tf.keras.callbacks.Callback],
                        backup_dir: str | os.PathLike | None
                        ) -> tuple[FinetunedSequential, dict | None]:
    """``finetune(task="next_item")``: the backbone's item tower + its pretrained next-item
    encoder (or a fresh one, shaped by ``config.sequential``), trained on every prefix of
    every user's history as ``train_sequential`` does (``fit_next_item``: the result and
    its search record)."""
    tf.keras.utils.set_random_seed(seed)
    work = _copy_backbone(grown)
    vocabs = work.vocabs
    _freeze(work.item_tower, config.freeze)
    source = work.next_item_head
    seq = config.sequential.for_data(fit_table, len(vocabs.item))[0]
    if source is not None:  # the pretrained head's shape
        shape = source.head_config()
        seq = seq.replace(encoder=shape.pop("kind"), **shape)
    seq_config = seq.replace(embedding_dim=int(work.item_tower.embedding_dim),
                             epochs=config.epochs, patience=config.patience,
                             learning_rate=config.learning_rate)
    context = HeadContext.from_table(fit_table, vocabs, user_dim=work.item_tower.dim)
    head = build_heads({"next_item": seq_config}, context)["next_item"]
    model = FinetuneModel(None, work.item_tower, {"next_item": head},
                          backbone_optimizer=_backbone_optimizer(config))
    head.score_history(tf.zeros((1, head.max_len), tf.int64))
    if source is not None:
        copy_encoder_weights(source, head)
    model.compile(optimizer=optimizer(config.optimizer, config.learning_rate),
                  steps_per_execution=config.steps_per_execution)
    return fit_next_item(model, vocabs, fit_table, validation, seq_config, seed=seed,
                         verbose=verbose, backup_dir=backup_dir, callbacks=callbacks,
                         result=FinetunedSequential, backbone=work, finetune_config=config)
