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
user's interactions in time order, every prefix predicting the item that followed. Its
batches are per-user histories, not (user, item) pairs, so ``pretrain`` zips the pair
batches with history batches (``length_bucketed_dataset``, repeated; by default sized so
one epoch is one pass over both) into one batch dict, and ``PretrainModel.compute_loss``
adds the weighted next-item loss to the others in the same step. The encoder reads items
through the shared ``ItemTower``, so its gradients shape the item embeddings the
backbone saves; the encoder itself is saved too (``Backbone.next_item_head``), so
``finetune(..., task="next_item")`` starts from it.

    pre = pretrain(train, tasks=["retrieval", "rating", "next_item"],
                   weights={"next_item": 100.0}, out="backbones/ml100k_seq")
    pre.trained.history["next_item_loss"]           # per-epoch next-item loss
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

from tfrec_p5 import distribute
from tfrec_p5.config import Config
from tfrec_p5.data import load
from tfrec_p5.data.interactions import ITEM, RATING, USER, Interactions
from tfrec_p5.data.pipeline import Vocabularies, batched_dataset
from tfrec_p5.models.rating import RatingConfig
from tfrec_p5.models.sequential import (
    SequentialConfig,
    length_bucketed_dataset,
    next_item_examples,
    ranking_metrics,
    ranking_queries,
)
from tfrec_p5.models.unified import TrainedUnified, UnifiedConfig, UnifiedModel
from tfrec_p5.pretraining.backbone import Backbone, save_backbone
from tfrec_p5.tasks.next_item import HISTORY, NEXT_ITEM, NextItemTask
from tfrec_p5.tasks.rating import RATING_MASK
from tfrec_p5.tasks.registry import HeadContext, RetrievalOptions, build_heads
from tfrec_p5.towers import ItemTower, SideFeatures, UserTower
from tfrec_p5.training import OPTIMIZERS, fit, optimizer

log = logging.getLogger(__name__)
PRETRAIN_TASKS = ("retrieval", "rating", "next_item")
PAIR_TASKS = ("retrieval", "rating")  # heads reading (user, item) pair batches


def _has_inputs(task: str, features: Mapping[str, tf.Tensor]) -> bool:
    if task == "next_item":
        return HISTORY in features and NEXT_ITEM in features
    return USER in features and ITEM in features


class PretrainModel(UnifiedModel):
    """``UnifiedModel`` for mixed batches: a head runs only if its inputs are in the batch,
    and each head's loss is tracked as a metric (``history["next_item_loss"]``, ...).

    Why: a pretraining batch carries (user, item) pairs *and* user histories, but a
    validation batch may carry only pairs. Which heads run is decided from the batch's
    keys when Keras traces the step (Python at trace time only), so the compiled
    training step is the same graph every step.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.task_losses = [tf.keras.metrics.Mean(name=f"{t}_loss") for t in self.heads]
        # The TFRS step reports ``loss`` / ``regularization_loss`` / ``total_loss`` of
        # the last batch only: the epoch's history (and the summary built from it) then
        # disagrees with the progress bar, and a small last batch drags it far from the
        # per-task losses (the retrieval loss is a sum over the batch). Averaged over
        # the epoch like the per-task losses, ``loss`` is their weighted sum.
        self.step_losses = {name: tf.keras.metrics.Mean(name=name)
                            for name in ("loss", "regularization_loss", "total_loss")}

    def _epoch_means(self, logs: dict) -> dict:
        for name, tracker in self.step_losses.items():
            tracker.update_state(logs[name])
            logs[name] = tracker.result()
        return logs

    def train_step(self, inputs):
        return self._epoch_means(super().train_step(inputs))

    def test_step(self, inputs):
        return self._epoch_means(super().test_step(inputs))

    def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
        features = self._features(inputs)
        user_vec, item_vec = self.tower_outputs(features, training)
        losses = []
        for (name, weight), tracker in zip(self.loss_weights.items(), self.task_losses,
                                           strict=True):
            if not _has_inputs(name, features):
                continue
            loss = self.heads[name].compute_loss(features, user_vec, item_vec,
                                                 training=training)
            tracker.update_state(loss)
            losses.append(weight * loss)
        if not losses:
            raise ValueError(f"the batch ({sorted(features)}) feeds none of the heads "
                             f"{list(self.heads)}")
        return tf.add_n(losses)


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
    patience: int = 0               # >0 with validation data: early stop on val_loss
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
        super().__post_init__()

    def weight(self, task: str) -> float:
        return float(self.weights.get(task, 1.0))

    def retrieval_options(self) -> RetrievalOptions:
        """The retrieval head: full-catalog softmax on the user tower, no history encoder."""
        return RetrievalOptions(temperature=self.temperature, log_q=self.log_q,
                                remove_accidental_hits=self.remove_accidental_hits,
                                full_softmax=self.full_softmax)


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
    side = SideFeatures()
    if config.use_side_features and (train.user_features or train.item_features):
        side = SideFeatures.build(train, vocabs, config.user_features, config.item_features,
                                  max_tokens=config.max_text_tokens)
    if config.history_len > 0:
        # Who-rated-what needs no labels: every pretraining interaction feeds it, so a
        # user with few visible ratings still has a full implicit history.
        side = side.with_histories(train, vocabs, config.history_len)
    kwargs = {"embedding_dim": config.embedding_dim, "output_dim": config.tower_output_dim,
              "feature_dim": config.feature_dim, "l2": config.l2}
    user_tower = UserTower.from_vocab(vocabs, side, **kwargs)
    item_tower = ItemTower.from_vocab(vocabs, side, **kwargs)
    for tower in (user_tower, item_tower):
        tower(tf.zeros((1,), tf.int64))
    return Backbone(user_tower, item_tower, vocabs, side)


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


def _with_histories(pairs: tf.data.Dataset | None, data: Interactions,
                    vocabs: Vocabularies, config: PretrainConfig,
                    seed: int) -> tf.data.Dataset:
    """The training batches with next-item history rows merged in.

    Pair batches (if any) set the epoch length; the history batches
    (``length_bucketed_dataset``: one row per user, every prefix a target) are repeated
    alongside and merged into the same dict, so one step trains every head. Their batch
    size defaults to ``ceil(users / pair steps)``: one pass over the histories per epoch.
    """
    examples = next_item_examples(data, vocabs, config.sequential.max_len)
    rows = len(examples[HISTORY])
    if rows == 0:
        raise ValueError("next_item pretraining needs users with two or more interactions")
    examples = {HISTORY: examples[HISTORY], NEXT_ITEM: examples[NEXT_ITEM]}
    if pairs is None:
        return length_bucketed_dataset(examples, config.next_item_batch_size
                                       or config.sequential.batch_size, seed=seed)
    steps = int(pairs.cardinality().numpy())
    batch = config.next_item_batch_size or math.ceil(rows / steps)
    histories = length_bucketed_dataset(examples, batch, seed=seed).repeat()
    merged = tf.data.Dataset.zip((pairs, histories)).map(lambda p, h: {**p, **h})
    return merged.apply(tf.data.experimental.assert_cardinality(steps)).prefetch(
        tf.data.AUTOTUNE)


def _next_item_validation(head: NextItemTask | None, data: Interactions,
                          validation: Interactions, vocabs: Vocabularies,
                          prefix: str = "validation") -> dict[str, float]:
    """Full-ranking HR/NDCG@10 of the pretrained next-item head on ``validation`` when it
    holds one next item per user (a leave-one-out split); else nothing. Keys are
    ``{prefix}_next_item_hr@10``, ...."""
    if head is None or len(np.unique(validation.user_id)) != len(validation):
        return {}
    queries = ranking_queries(data, validation, vocabs, head.max_len)
    if not len(queries):
        return {}
    return {f"{prefix}_next_item_{k}": v
            for k, v in ranking_metrics(head, queries, ks=(10,)).items()}


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
        manifest's metrics (and ``val_loss`` drives early stopping if ``patience > 0``).
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
    active = [t for t in config.tasks if config.weight(t) > 0]
    if not active:
        raise ValueError("every pretraining task is switched off (all weights are 0)")
    if "rating" in active and data.rating is None:
        log.warning("pretrain: no 'rating' column; dropping the rating task")
        active = [t for t in active if t != "rating"]
        if not active:
            raise ValueError("the data has no ratings and rating was the only task")
    started = time.perf_counter()
    tf.keras.utils.set_random_seed(seed)
    backbone = fresh_backbone(data, config, vocabs=vocabs)
    vocabs = backbone.vocabs
    mask = _label_mask(data, rating_mask, label_fraction, seed)
    rating_range = rating_range_of(data)
    global_mean = float(np.mean(data.rating[mask])) if "rating" in active and mask.any() \
        else 0.0
    if "next_item" in active and data.timestamp is None:
        log.warning("pretrain: no timestamps; next_item reads each user's rows in table "
                    "order")
    if "next_item" in active:  # "auto" max_len / loss from these histories
        config = config.replace(sequential=config.sequential.for_data(data,
                                                                      len(vocabs.item))[0])
    options = {"retrieval": config.retrieval_options(), "rating": config.rating,
               "next_item": config.sequential}
    context = HeadContext.from_table(data, vocabs, user_dim=backbone.user_tower.dim,
                                     global_mean=global_mean, rating_range=rating_range)
    heads = build_heads({t: options[t] for t in PRETRAIN_TASKS if t in active}, context)
    model = PretrainModel(backbone.user_tower, backbone.item_tower, heads,
                          {t: config.weight(t) for t in heads})
    model.compile(optimizer=optimizer(config.optimizer, config.learning_rate),
                  steps_per_execution=distribute.steps_per_execution(
                      strategy, config.steps_per_execution))
    if not distribute.is_default(strategy) and "next_item" in heads:
        raise ValueError("next_item pretraining does not support tf.distribute yet")

    def make(table: Interactions, row_mask: np.ndarray | None, shuffle: bool,
             batch_size: int, **dist) -> tf.data.Dataset:
        ids = vocabs.encode(table)
        feats = {USER: tf.constant(ids[USER]), ITEM: tf.constant(ids[ITEM])}
        if "rating" in active:
            feats[RATING] = tf.constant(table.rating, tf.float32)
            feats[RATING_MASK] = tf.constant(row_mask.astype(np.float32))
        return batched_dataset(feats, batch_size, shuffle, seed, **dist)  # sized

    pair_tasks = [t for t in heads if t in PAIR_TASKS]
    train_ds, steps = distribute.fit_input(strategy, lambda **kw: make(
        data, mask, True, config.batch_size, **kw)) if pair_tasks else (None, None)
    if "next_item" in heads:
        train_ds = _with_histories(train_ds, data, vocabs, config, seed)
    val_ds = val_steps = None
    if validation is not None and len(validation) and pair_tasks:
        val_mask = np.ones(len(validation), bool) if validation.rating is not None else None
        val_ds, val_steps = distribute.fit_input(strategy, lambda **kw: make(
            validation, val_mask, False, max(config.batch_size, 4096), **kw))
    hist = fit(model, train_ds, epochs=config.epochs, validation_data=val_ds,
               steps_per_epoch=steps, validation_steps=val_steps,
               monitor="val_loss" if val_ds is not None and config.patience > 0 else None,
               patience=config.patience,
               build_on=lambda: train_ds if distribute.is_default(strategy)
               else make(data, mask, True, config.batch_size),
               backup_dir=backup_dir, strategy=strategy, verbose=verbose, name="pretrain")
    history = {k: [float(x) for x in v] for k, v in hist.history.items()
               if k != "val_next_item_loss"}  # validation batches carry no histories
    if "next_item" in heads:
        backbone.next_item_head = heads["next_item"]
    trained = TrainedUnified(model, vocabs, UnifiedConfig(weights={t: 1.0 for t in pair_tasks}),
                             backbone.side_features, history, context.seen_splits,
                             context.seen_values, context.item_probabilities, global_mean,
                             rating_range)
    seconds = time.perf_counter() - started
    metrics = {f"train_{k}": v[-1] for k, v in history.items() if not k.startswith("val_")}
    if validation is not None and len(validation):
        if pair_tasks:
            metrics.update({f"{held_out_name}_{k}": v for k, v in
                            trained.evaluate(validation, ks=(10,), factorized_ks=()).items()})
        metrics.update(_next_item_validation(heads.get("next_item"), data, validation,
                                             vocabs, held_out_name))
    pre = Pretrained(backbone, trained, config, metrics, None, seconds)
    if out is not None:
        manifest = {
            "data": data_spec or data.source or "<in-memory table>",
            "rows": len(data), "tasks": list(heads),
            "weights": {t: config.weight(t) for t in heads},
            "epochs": len(history.get("loss", [])),
            "label_fraction": float(mask.mean()) if mask is not None else None,
            "labels_visible": int(mask.sum()) if mask is not None else 0,
            "metrics": metrics, "history": history, "seconds": round(seconds, 2),
            "seed": seed,
            "config": config.to_dict(), "rating_range": rating_range,
            "global_mean": global_mean,
        }
        save_backbone(backbone, out, manifest=manifest)
        pre.path = os.fspath(out)
    return pre
