"""``pretrain``: train the shared towers on several tasks at once and save the backbone.

Why these tasks: *retrieval* needs only who-interacted-with-what, so it can use every
interaction (self-supervised: the item is the label); *rating* uses the explicit labels
where they exist. With few labels a rating model trained from scratch overfits, while
towers pretrained with retrieval on all interactions already carry the collaborative
structure (which users like similar items) that the rating head then only has to read.

Label masking: ``rating_mask`` (or ``label_fraction``) says which training rows' ratings
the rating task may see; the retrieval task still sees every row. ``RatingHead`` weights
the MSE by the mask (the batch's ``rating_mask``), renormalized per batch so the loss is a
mean over visible labels.

    from tfrec_p5.pretraining import pretrain, PretrainConfig
    pre = pretrain(train, tasks=["retrieval", "rating"],
                   weights={"retrieval": 1.0, "rating": 1.0}, label_fraction=0.1,
                   out="backbones/ml100k")
    pre.backbone.user_tower                         # the pretrained user tower

*Next-item* (``tfrec_p5.tasks.next_item.NextItemTask``) is self-supervised too: each
user's interactions in time order, every prefix predicting the item that followed.

The model is the joint model of ``train --task all`` (``tfrec_p5.models.joint``) with the
chosen task set: ``build_unified`` builds the same towers and heads, and
``joint_batches`` merges the same pair and history batches step by step, so one step
trains every head. The encoder reads items through the shared ``ItemTower``, so its
gradients shape the item embeddings the backbone saves; the encoder itself is saved too
(``Backbone.next_item_head``), so ``finetune(..., task="next_item")`` starts from it.

    pre = pretrain(train, tasks=["retrieval", "rating", "next_item"],
                   weights={"next_item": 100.0}, out="backbones/ml100k_seq")
    pre.trained.history["next_item_loss"]           # per-epoch next-item loss
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from tfrec_p5 import distribute
from tfrec_p5.config import Config
from tfrec_p5.data import load
from tfrec_p5.data.interactions import Interactions
from tfrec_p5.data.pipeline import Vocabularies, retrieval_dataset
from tfrec_p5.models.joint import joint_batches
from tfrec_p5.models.rating import RatingConfig
from tfrec_p5.models.sequential import (
    NextItemValidation,
    SequentialConfig,
    ranking_metrics,
    ranking_queries,
)
from tfrec_p5.models.unified import TrainedUnified, UnifiedConfig, UnifiedModel, build_unified
from tfrec_p5.pretraining.backbone import Backbone, save_backbone
from tfrec_p5.tasks.next_item import NextItemTask
from tfrec_p5.towers import SideFeatures
from tfrec_p5.training import OPTIMIZERS, fit, optimizer

log = logging.getLogger(__name__)
PRETRAIN_TASKS = ("retrieval", "rating", "next_item")
PAIR_TASKS = ("retrieval", "rating")  # heads reading (user, item) pair batches


@dataclass
class PretrainConfig(Config):
    """Towers, heads and training of the pretraining run.

    Defaults: 32-wide ID embeddings (as the rating model) with side features, retrieval
    with the full-catalog softmax and log-Q correction reading the *user tower* (no
    separate history encoder, so the collaborative signal lands in the towers the
    backbone saves), the rating head of ``RatingConfig``. Loss scales: the retrieval
    loss is a *sum* over the batch (``tfrs.tasks.Retrieval``), the rating and next-item
    losses are means, so ``rating: 1`` is a light auxiliary task; ``rating: 1000``
    (comparable scales) overfit the visible labels on the ML-100K validation slice (see
    ``benchmarks/RESULTS.md``). ``next_item`` (off by default; its weight defaults to 1)
    uses ``sequential``'s head shape; ``history_len`` adds the implicit ``rated_items`` /
    ``rated_by`` features built from every pretraining interaction (default 128: on the
    ML-100K validation slice they cut the label-cold users' RMSE most, see RESULTS.md).
    ``epochs=20``: on that slice 20 epochs beat 10 after fine-tuning at 10 %, 25 % and
    100 % of the labels (validation RMSE -0.4 %, -0.3 %, -0.4 %).
    """

    tasks: tuple[str, ...] = PAIR_TASKS  # + "next_item" to pretrain the sequential head
    weights: dict[str, float] = field(default_factory=lambda: {"retrieval": 1.0,
                                                               "rating": 1.0})
    # towers
    embedding_dim: int = 32
    tower_output_dim: int | None = None
    feature_dim: int | None = None
    l2: float = 1e-4
    use_side_features: bool = True
    user_features: tuple[str, ...] | None = None
    item_features: tuple[str, ...] | None = None
    max_text_tokens: int = 16
    # >0: rated_items / rated_by tower features from *all* pretraining interactions
    history_len: int = 128
    # heads
    rating: RatingConfig = field(default_factory=RatingConfig)
    # next-item head: SequentialConfig's max_len, encoder, num_blocks, num_heads, ffn_dim,
    # dropout, loss, num_negatives (the tower width is embedding_dim above)
    sequential: SequentialConfig = field(default_factory=SequentialConfig)
    next_item_batch_size: int | None = None  # None: one pass over the histories per epoch
    temperature: float | None = 0.2
    log_q: bool = True
    full_softmax: bool = True
    remove_accidental_hits: bool = True
    # training
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    batch_size: int = 1024
    epochs: int = 20
    # >0 with validation data: early stop on the next-item head's validation NDCG@10
    # (leave-one-out validation, next_item pretrained), else on the validation loss
    patience: int = 0
    steps_per_execution: int = 16

    def __post_init__(self) -> None:
        if isinstance(self.rating, Mapping):
            self.rating = RatingConfig.from_dict(self.rating)
        if isinstance(self.sequential, Mapping):
            self.sequential = SequentialConfig.from_dict(self.sequential)
        self.tasks = tuple(self.tasks)
        for name in ("user_features", "item_features"):
            if getattr(self, name) is not None:
                setattr(self, name, tuple(getattr(self, name)))
        self.weights = {str(k): float(v) for k, v in dict(self.weights).items()}
        bad = [t for t in self.tasks if t not in PRETRAIN_TASKS]
        if bad:
            raise ValueError(f"unknown pretraining task(s) {bad}; known: "
                             f"{list(PRETRAIN_TASKS)}")
        if not self.tasks:
            raise ValueError("pretraining needs at least one task")
        if self.optimizer.lower() not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}")
        if self.sequential.ema_momentum is not None:
            raise ValueError("PretrainConfig.sequential.ema_momentum does nothing: the next-item "
                             "head trains on this config's own schedule")
        super().__post_init__()

    def weight(self, task: str) -> float:
        return float(self.weights.get(task, 1.0))

    def unified(self, tasks: Sequence[str]) -> UnifiedConfig:
        """The towers and pair heads of ``tasks`` as the joint model's ``pairs`` config:
        the retrieval head is the full-catalog softmax on the user tower (no history
        encoder), so the collaborative signal lands in the towers the backbone saves."""
        return UnifiedConfig(
            weights={t: self.weight(t) for t in tasks if t in PAIR_TASKS},
            embedding_dim=self.embedding_dim, tower_output_dim=self.tower_output_dim,
            feature_dim=self.feature_dim, l2=self.l2,
            use_side_features=self.use_side_features, user_features=self.user_features,
            item_features=self.item_features, max_text_tokens=self.max_text_tokens,
            history_len=self.history_len, rating=self.rating, retrieval_loss="softmax",
            temperature=self.temperature, log_q=self.log_q,
            remove_accidental_hits=self.remove_accidental_hits,
            full_softmax=self.full_softmax, history=False, use_user_tower=True,
            batch_size=self.batch_size)


@dataclass
class Pretrained:
    """What ``pretrain`` returns: the backbone, the full model (with its pretraining
    heads, for evaluation) and where the backbone was saved (if ``out`` was given)."""

    backbone: Backbone
    trained: TrainedUnified
    config: PretrainConfig
    metrics: dict[str, float] = field(default_factory=dict)
    path: str | None = None
    seconds: float = 0.0


def fresh_backbone(train: Interactions, config: PretrainConfig | None = None, *,
                   vocabs: Vocabularies | None = None) -> Backbone:
    """Untrained towers with the architecture ``pretrain`` would train (same vocabularies
    and side features): the "from scratch" arm of a transfer comparison."""
    config = config or PretrainConfig()
    vocabs = vocabs or Vocabularies.build(train)
    model, tables, _, _ = _joint_model(train, config, _active(config, train), vocabs)
    return _backbone(model, vocabs, tables, next_item=False)


def _active(config: PretrainConfig, data: Interactions) -> list[str]:
    """The tasks of ``config`` with a positive weight that ``data`` can feed."""
    tasks = [t for t in config.tasks if config.weight(t) > 0]
    if not tasks:
        raise ValueError("every pretraining task is switched off (all weights are 0)")
    if "rating" in tasks and data.rating is None:
        log.warning("pretrain: no 'rating' column; dropping the rating task")
        tasks = [t for t in tasks if t != "rating"]
        if not tasks:
            raise ValueError("the data have no ratings and rating was the only task")
    return tasks


def _joint_model(data: Interactions, config: PretrainConfig, tasks: Sequence[str],
                 vocabs: Vocabularies, rating_mask: np.ndarray | None = None
                 ) -> tuple[UnifiedModel, dict, PretrainConfig, UnifiedConfig]:
    """The joint model of ``tasks`` (``build_unified``, as ``train --task all`` builds
    it) with its towers built, its tables, ``config`` with the next-item head's "auto"
    values decided by ``data``, and the pair heads' config."""
    if "next_item" in tasks:
        config = config.replace(sequential=config.sequential.for_data(
            data, len(vocabs.item))[0])
    pairs = config.unified(tasks)
    model, tables = build_unified(
        data, vocabs, pairs,
        next_item=config.sequential if "next_item" in tasks else None,
        weights={t: config.weight(t) for t in tasks}, rating_mask=rating_mask)
    for tower in (model.user_tower, model.item_tower):
        tower(tf.zeros((1,), tf.int64))
    return model, tables, config, pairs


def _backbone(model: UnifiedModel, vocabs: Vocabularies, tables: Mapping,
              next_item: bool = True) -> Backbone:
    return Backbone(model.user_tower, model.item_tower, vocabs,
                    tables["side_features"] or SideFeatures(),
                    next_item_head=model.heads.get("next_item") if next_item else None)


def rating_range_of(table: Interactions) -> tuple[float, float] | None:
    if table.rating is None:
        return None
    return table.rating_range or (float(np.min(table.rating)), float(np.max(table.rating)))


def _label_mask(table: Interactions, rating_mask: np.ndarray | None,
                label_fraction: float | None, seed: int) -> np.ndarray | None:
    if table.rating is None:
        return None
    if rating_mask is not None:
        mask = np.asarray(rating_mask, dtype=bool)
        if mask.shape != (len(table),):
            raise ValueError(f"rating_mask has shape {mask.shape}, expected ({len(table)},)")
        return mask
    if label_fraction is None or label_fraction >= 1.0:
        return np.ones(len(table), dtype=bool)
    rng = np.random.default_rng(seed)
    return rng.random(len(table)) < float(label_fraction)


def _next_item_queries(head: NextItemTask | None, data: Interactions,
                       validation: Interactions | None, vocabs: Vocabularies):
    """The next-item head's ranking queries for ``validation`` when it holds one next
    item per user (a leave-one-out split); else ``None``."""
    if head is None or validation is None or not len(validation) or \
            len(np.unique(validation.user_id)) != len(validation):
        return None
    queries = ranking_queries(data, validation, vocabs, head.max_len)
    return queries if len(queries) else None


def _next_item_validation(head: NextItemTask | None, data: Interactions,
                          validation: Interactions, vocabs: Vocabularies,
                          prefix: str = "validation") -> dict[str, float]:
    """Full-ranking HR/NDCG@10 of the pretrained next-item head on ``validation`` when it
    holds one next item per user (a leave-one-out split); else nothing. Keys are
    ``{prefix}_next_item_hr@10``, ...."""
    queries = _next_item_queries(head, data, validation, vocabs)
    if queries is None:
        return {}
    return {f"{prefix}_next_item_{k}": v
            for k, v in ranking_metrics(head, queries, ks=(10,)).items()}


def _next_item_validator(head: NextItemTask | None, data: Interactions,
                         validation: Interactions | None, vocabs: Vocabularies,
                         config: PretrainConfig) -> list[tf.keras.callbacks.Callback]:
    """Early stopping's validator when the next-item head pretrains on a leave-one-out
    split: its full-ranking ``val_ndcg@10`` per epoch (as ``train --task all`` stops).

    Why not the validation loss: on Amazon Beauty the pair validation loss was lowest
    after epoch 2 while the next-item head kept improving (validation HR@10 0.048 there,
    0.085 after 20 epochs; ``benchmarks/RESULTS.md``)."""
    queries = _next_item_queries(head, data, validation, vocabs)
    if queries is None:
        return []
    return [NextItemValidation(head, queries, config.sequential.eval_batch_size)]


def pretrain(data: Interactions | str, tasks: Sequence[str] | None = None,
             weights: Mapping[str, float] | None = None, *,
             config: PretrainConfig | None = None, rating_mask: np.ndarray | None = None,
             label_fraction: float | None = None, validation: Interactions | None = None,
             vocabs: Vocabularies | None = None, seed: int = 42,
             out: str | os.PathLike | None = None, data_spec: str | None = None,
             verbose: int = 1, backup_dir: str | os.PathLike | None = None,
             strategy: tf.distribute.Strategy | str | None = None,
             held_out_name: str = "validation") -> Pretrained:
    """Pretrain the towers of a ``UnifiedModel`` on ``tasks`` and (with ``out``) save the
    backbone.

    Args:
      data: the training interactions (or a data spec for ``tfrec_p5.data.load``); all of
        it is used: pass the training part of your split, never the test part.
      tasks, weights: override ``config.tasks`` / ``config.weights`` (loss weight per
        task; 0 switches a task off). Tasks: ``retrieval``, ``rating``, ``next_item``
        (each user's rows in timestamp order; see the ``tfrec_p5.pretraining.pretrainer``
        module).
      rating_mask / label_fraction: which rows' ratings the rating task sees (boolean
        mask, or a random fraction drawn with ``seed``); default: all.
      validation: held-out rows; their rating RMSE / retrieval Recall@10 go to the
        manifest's metrics; with ``config.patience > 0`` they drive early stopping (the
        next-item head's ``val_ndcg@10`` when it pretrains on one validation event per
        user, else ``val_loss``).
      held_out_name: what ``validation`` is, the prefix of its metrics
        (``validation_rating_rmse``); pass ``"test"`` when it is a split's test part, so
        the numbers are named by the part they were computed on.
      out: backbone folder (``save_backbone``); the manifest records data, tasks,
        weights, epochs, metrics and the config.
      backup_dir: adds ``BackupAndRestore``: rerunning the same call after an interruption
        (a killed job) resumes from the last finished epoch; removed when ``fit`` ends.
      strategy: a ``tf.distribute.Strategy`` or a name (``tfrec_p5.distribute``); ``None``
        = the one in scope (default: one process). The whole run happens in its scope;
        with ``multi_worker`` only the chief writes ``out``. ``next_item`` pretraining
        is single-process only.
    """
    strategy = distribute.resolve_strategy(strategy)
    if not distribute.is_default(strategy) and not tf.distribute.has_strategy():
        # Towers, heads and optimizer are created in the strategy's scope; every worker
        # saves (saving may run collective ops), only the chief into ``out``.
        with strategy.scope(), distribute.write_dir(out or ".", strategy) as target:
            return pretrain(data, tasks, weights, config=config, rating_mask=rating_mask,
                            label_fraction=label_fraction, validation=validation,
                            vocabs=vocabs, seed=seed, out=None if out is None else target,
                            data_spec=data_spec, verbose=verbose, backup_dir=backup_dir,
                            strategy=strategy, held_out_name=held_out_name)
    if isinstance(data, str):
        data_spec = data_spec or data
        data = load(data)
    config = config or PretrainConfig()
    if tasks is not None:
        config = config.replace(tasks=tuple(tasks))
    if weights is not None:
        config = config.replace(weights={**config.weights, **dict(weights)})
    active = _active(config, data)
    if "next_item" in active and not distribute.is_default(strategy):
        raise ValueError("next_item pretraining does not support tf.distribute yet")
    if "next_item" in active and data.timestamp is None:
        log.warning("pretrain: no timestamps; next_item reads each user's rows in table "
                    "order")
    started = time.perf_counter()
    tf.keras.utils.set_random_seed(seed)
    vocabs = vocabs or Vocabularies.build(data)
    mask = _label_mask(data, rating_mask, label_fraction, seed) if "rating" in active \
        else None
    model, tables, config, pairs = _joint_model(data, config, active, vocabs, mask)
    model.compile(optimizer=optimizer(config.optimizer, config.learning_rate),
                  steps_per_execution=distribute.steps_per_execution(
                      strategy, config.steps_per_execution))
    pair_tasks = [t for t in active if t in PAIR_TASKS]

    def batches(**dist) -> tf.data.Dataset:
        return joint_batches(data, vocabs, pairs, config.sequential, pair_tasks,
                             "next_item" in active, seed, config.next_item_batch_size,
                             rating_mask=mask, **dist)[0]

    train_ds, steps = distribute.fit_input(strategy, batches)
    val_ds = val_steps = None
    if validation is not None and len(validation) and pair_tasks:
        # Pairs only: the next-item head is scored on its own (``_next_item_validation``).
        with_rating = "rating" in active
        val_mask = np.ones(len(validation), bool) if with_rating else None
        val_ds, val_steps = distribute.fit_input(strategy, lambda **kw: retrieval_dataset(
            validation, vocabs, max(config.batch_size, 4096), with_rating=with_rating,
            rating_mask=val_mask, **kw))
    validators = _next_item_validator(model.heads.get("next_item"), data, validation,
                                      vocabs, config) if config.patience > 0 else []
    monitor = "val_ndcg@10" if validators else "val_loss" if val_ds is not None else None
    hist = fit(model, train_ds, epochs=config.epochs, validation_data=val_ds,
               steps_per_epoch=steps, validation_steps=val_steps,
               monitor=monitor if config.patience > 0 else None,
               patience=config.patience, validators=validators,
               # Building on train_ds itself spends its first shuffle draw: runs that back
               # up (the CLI's) always have; the others build on a copy, keeping theirs.
               build_on=lambda: (train_ds if distribute.is_default(strategy)
                                 and backup_dir is not None else batches()),
               backup_dir=backup_dir, strategy=strategy, verbose=verbose, name="pretrain")
    history = {k: [float(x) for x in v] for k, v in hist.history.items()
               if k != "val_next_item_loss"}  # validation batches carry no histories
    backbone = _backbone(model, vocabs, tables)
    trained = TrainedUnified(model, vocabs, pairs, tables["side_features"], history,
                             tables["seen_splits"], tables["seen_values"],
                             tables["item_probabilities"], tables["global_mean"],
                             tables["rating_range"])
    seconds = time.perf_counter() - started
    metrics = {f"train_{k}": v[-1] for k, v in history.items() if not k.startswith("val_")}
    if validation is not None and len(validation):
        if pair_tasks:
            metrics.update({f"{held_out_name}_{k}": v for k, v in
                            trained.evaluate(validation, ks=(10,), factorized_ks=()).items()})
        metrics.update(_next_item_validation(model.heads.get("next_item"), data,
                                             validation, vocabs, held_out_name))
    pre = Pretrained(backbone, trained, config, metrics, None, seconds)
    if out is not None:
        manifest = {
            "data": data_spec or data.source or "<in-memory table>",
            "rows": len(data), "tasks": list(active),
            "weights": {t: config.weight(t) for t in active},
            "epochs": len(history.get("loss", [])),
            "label_fraction": float(mask.mean()) if mask is not None else None,
            "labels_visible": int(mask.sum()) if mask is not None else 0,
            "metrics": metrics, "history": history, "seconds": round(seconds, 2),
            "seed": seed,
            "config": config.to_dict(), "rating_range": tables["rating_range"],
            "global_mean": tables["global_mean"],
        }
        save_backbone(backbone, out, manifest=manifest)
        pre.path = os.fspath(out)
    return pre
