"""``pretrain``: train the shared towers on several tasks at once and save the backbone.

Why these tasks: *retrieval* needs only who-interacted-with-what, so it can use every
interaction (self-supervised: the item is the label); *rating* uses the explicit labels
where they exist. With few labels a rating model trained from scratch overfits, while
towers pretrained with retrieval on all interactions already carry the collaborative
structure (which users like similar items) that the rating head then only has to read.

Label masking: ``rating_mask`` (or ``label_fraction``) says which training rows' ratings
the rating task may see; the retrieval task still sees every row. ``MaskedRatingHead``
weights the MSE by the mask, renormalized per batch so the loss is a mean over visible
labels.

    from tfrec_p5.pretraining import pretrain, PretrainConfig
    pre = pretrain(train, tasks=["retrieval", "rating"],
                   weights={"retrieval": 1.0, "rating": 1.0}, label_fraction=0.1,
                   out="backbones/ml100k")
    pre.backbone.user_tower                         # the pretrained user tower

Next-item pretraining (``tfrec_p5.tasks.next_item.NextItemTask``) is not wired in: it
trains on per-user history batches, not on the (user, item) pair batches the other heads
share, so it needs a second dataset interleaved with the first (README, 'Pretraining
tasks').
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
from tfrec_p5.data.interactions import ITEM, RATING, USER, Interactions
from tfrec_p5.data.pipeline import Vocabularies, batched_dataset
from tfrec_p5.models.rating import _OPTIMIZERS, RatingConfig
from tfrec_p5.models.unified import TrainedUnified, UnifiedConfig, UnifiedModel
from tfrec_p5.pretraining.backbone import Backbone, save_backbone
from tfrec_p5.tasks.rating import RatingHead
from tfrec_p5.tasks.retrieval import RetrievalHead, history_csr, item_frequencies
from tfrec_p5.towers import ItemTower, SideFeatures, UserTower

log = logging.getLogger(__name__)
PRETRAIN_TASKS = ("retrieval", "rating")
RATING_MASK = "rating_mask"


class MaskedRatingHead(RatingHead):
    """``RatingHead`` whose MSE counts only rows with ``features["rating_mask"] == 1``.

    Why: pretraining batches carry every interaction (for retrieval) but only some of
    them have a visible rating. The per-row weight is ``mask * B / sum(mask)``, so the
    loss is the mean squared error over the visible rows of the batch (0 if none).
    Without a mask in the batch it is exactly ``RatingHead``.
    """

    def compute_loss(self, features, user_vec, item_vec, training=False):
        if RATING_MASK not in features:
            return super().compute_loss(features, user_vec, item_vec, training=training)
        pred = self.predict(features, user_vec, item_vec, training=training)
        labels = tf.reshape(tf.cast(features[RATING], tf.float32), (-1, 1))
        mask = tf.reshape(tf.cast(features[RATING_MASK], tf.float32), (-1, 1))
        batch = tf.cast(tf.shape(mask)[0], tf.float32)
        weight = mask * batch / tf.maximum(tf.reduce_sum(mask), 1.0)
        return self.ranking(labels=labels, predictions=pred, sample_weight=weight)


@dataclass
class PretrainConfig(Config):
    """Towers, heads and training of the pretraining run.

    Defaults: 32-wide ID embeddings (as the rating model) with side features, retrieval
    with the full-catalog softmax and log-Q correction reading the *user tower* (no
    separate history encoder, so the collaborative signal lands in the towers the
    backbone saves), the rating head of ``RatingConfig``. Loss scales: the retrieval
    loss is a *sum* over the batch (``tfrs.tasks.Retrieval``), the rating loss a mean,
    so ``rating: 1`` is a light auxiliary task; ``rating: 1000`` (comparable scales)
    overfit the visible labels on the ML-100K validation slice (see
    ``benchmarks/RESULTS.md``).
    """

    tasks: tuple[str, ...] = PRETRAIN_TASKS
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
    # heads
    rating: RatingConfig = field(default_factory=RatingConfig)
    temperature: float | None = 0.2
    log_q: bool = True
    full_softmax: bool = True
    remove_accidental_hits: bool = True
    # training
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    batch_size: int = 1024
    epochs: int = 10
    patience: int = 0               # >0 with validation data: early stop on val_loss
    steps_per_execution: int = 16

    def __post_init__(self) -> None:
        if isinstance(self.rating, Mapping):
            self.rating = RatingConfig.from_dict(self.rating)
        self.tasks = tuple(self.tasks)
        for name in ("user_features", "item_features"):
            if getattr(self, name) is not None:
                setattr(self, name, tuple(getattr(self, name)))
        self.weights = {str(k): float(v) for k, v in dict(self.weights).items()}
        bad = [t for t in self.tasks if t not in PRETRAIN_TASKS]
        if "next_item" in bad:
            raise ValueError("next_item pretraining is not supported yet: NextItemTask "
                             "trains on per-user history batches, not the pair batches "
                             "retrieval/rating share (see the README, 'Pretraining tasks')")
        if bad:
            raise ValueError(f"unknown pretraining task(s) {bad}; known: "
                             f"{list(PRETRAIN_TASKS)}")
        if not self.tasks:
            raise ValueError("pretraining needs at least one task")
        if self.optimizer.lower() not in _OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}")

    def weight(self, task: str) -> float:
        return float(self.weights.get(task, 1.0))


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


def _sized(ds: tf.data.Dataset, n: int, batch_size: int) -> tf.data.Dataset:
    return ds.apply(tf.data.experimental.assert_cardinality(math.ceil(n / batch_size)))


def pretrain(data: Interactions | str, tasks: Sequence[str] | None = None,
             weights: Mapping[str, float] | None = None, *,
             config: PretrainConfig | None = None, rating_mask: np.ndarray | None = None,
             label_fraction: float | None = None, validation: Interactions | None = None,
             vocabs: Vocabularies | None = None, seed: int = 42,
             out: str | os.PathLike | None = None, data_spec: str | None = None,
             verbose: int = 1) -> Pretrained:
    """Pretrain the towers of a ``UnifiedModel`` on ``tasks`` and (with ``out``) save the
    backbone.

    Args:
      data: the training interactions (or a data spec for ``tfrec_p5.data.load``); all of
        it is used: pass the training part of your split, never the test part.
      tasks, weights: override ``config.tasks`` / ``config.weights`` (loss weight per
        task; 0 switches a task off).
      rating_mask / label_fraction: which rows' ratings the rating task sees (boolean
        mask, or a random fraction drawn with ``seed``); default: all.
      validation: held-out rows; their rating RMSE / retrieval Recall@10 go to the
        manifest's metrics (and ``val_loss`` drives early stopping if ``patience > 0``).
      out: backbone folder (``save_backbone``); the manifest records data, tasks,
        weights, epochs, metrics and the config.
    """
    if isinstance(data, str):
        from tfrec_p5.data import load

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
    heads = {}
    if "retrieval" in active:
        heads["retrieval"] = RetrievalHead(
            len(vocabs.item), temperature=config.temperature,
            remove_accidental_hits=config.remove_accidental_hits,
            item_probabilities=item_frequencies(data, vocabs) if config.log_q else None,
            full_softmax=config.full_softmax, history=None, use_user_tower=True)
    if "rating" in active:
        heads["rating"] = MaskedRatingHead.from_rating_config(
            config.rating, len(vocabs.user), len(vocabs.item), global_mean=global_mean,
            rating_range=rating_range)
    model = UnifiedModel(backbone.user_tower, backbone.item_tower, heads,
                         {t: config.weight(t) for t in heads})
    model.compile(optimizer=_OPTIMIZERS[config.optimizer.lower()](
        learning_rate=config.learning_rate), steps_per_execution=config.steps_per_execution)

    def make(table: Interactions, row_mask: np.ndarray | None, shuffle: bool,
             batch_size: int) -> tf.data.Dataset:
        ids = vocabs.encode(table)
        feats = {USER: tf.constant(ids[USER]), ITEM: tf.constant(ids[ITEM])}
        if "rating" in active:
            feats[RATING] = tf.constant(table.rating, tf.float32)
            feats[RATING_MASK] = tf.constant(row_mask.astype(np.float32))
        return _sized(batched_dataset(feats, batch_size, shuffle, seed), len(table),
                      batch_size)

    train_ds = make(data, mask, True, config.batch_size)
    val_ds, cbs = None, []
    if validation is not None and len(validation):
        val_mask = np.ones(len(validation), bool) if validation.rating is not None else None
        val_ds = make(validation, val_mask, False, max(config.batch_size, 4096))
        if config.patience > 0:
            cbs.append(tf.keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=config.patience, restore_best_weights=True))
    hist = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, callbacks=cbs,
                     verbose=verbose)
    history = {k: [float(x) for x in v] for k, v in hist.history.items()}
    splits, values = history_csr(data, vocabs)
    trained = TrainedUnified(model, vocabs, UnifiedConfig(weights={t: 1.0 for t in heads}),
                             backbone.side_features, history, splits, values,
                             item_frequencies(data, vocabs), global_mean, rating_range)
    seconds = time.perf_counter() - started
    metrics = {f"train_{k}": v[-1] for k, v in history.items() if not k.startswith("val_")}
    if validation is not None and len(validation):
        metrics.update({f"validation_{k}": v for k, v in
                        trained.evaluate(validation, ks=(10,), factorized_ks=()).items()})
    pre = Pretrained(backbone, trained, config, metrics, None, seconds)
    if out is not None:
        manifest = {
            "data": data_spec or data.source or "<in-memory table>",
            "rows": len(data), "tasks": list(heads),
            "weights": {t: config.weight(t) for t in heads},
            "epochs": len(history.get("loss", [])),
            "label_fraction": float(mask.mean()) if mask is not None else None,
            "labels_visible": int(mask.sum()) if mask is not None else 0,
            "metrics": metrics, "seconds": round(seconds, 2), "seed": seed,
            "config": config.to_dict(), "rating_range": rating_range,
            "global_mean": global_mean,
        }
        save_backbone(backbone, out, manifest=manifest)
        pre.path = os.fspath(out)
    return pre
