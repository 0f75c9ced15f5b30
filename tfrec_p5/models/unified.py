"""``UnifiedModel``: shared towers + any set of task heads, one ``compute_loss``.

Why: P5's point is one backbone for many tasks. Here a ``tfrs.Model`` owns the user and
item towers and a dict of heads (``tfrec_p5.tasks``: rating, retrieval, ranking; later
next-item, candidate ranking); every batch runs the towers once and the loss is
``sum(weight[task] * head.compute_loss(...))``. A head whose weight is 0 is not built at
all, so it has no variables and costs nothing. With only the rating head and the rating
model's config the model trains to the same numbers as ``train_rating``.

    from tfrec_p5 import data
    from tfrec_p5.models.unified import UnifiedConfig, train_unified
    split = data.random_split(data.load("synthetic"), 0.8, seed=42)
    trained = train_unified(split.train, None,
                            UnifiedConfig(weights={"rating": 1.0, "retrieval": 1.0}))
    trained.evaluate(split.test)     # {"rating_rmse": ..., "retrieval_recall@10": ...}

``trained.user_vectors()`` / ``trained.item_vectors()`` give the retrieval index tables
the export precomputes (``tfrec_p5.export.retrieval``).

``train_unified(..., strategy="multi_worker")`` trains on ``tf.distribute``
(``tfrec_p5.distribute``): towers, heads and optimizer are built in ``strategy.scope()``,
mean-reduced head losses average over the global batch and regularization losses are
divided by the replica count, so a 2-worker run follows a 1-process run with the same
global batch. ``UnifiedConfig(hash_buckets=..., min_count=...)`` bound the ID tables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrec_p5 import distribute
from tfrec_p5.config import Config
from tfrec_p5.data.interactions import ITEM, RATING, USER, Interactions
from tfrec_p5.data.pipeline import (
    Vocabularies,
    batched_dataset,
    catalog_items,
    catalog_users,
    normalize_hash_buckets,
    pointwise_dataset,
    retrieval_dataset,
)
from tfrec_p5.data.splits import carve_validation
from tfrec_p5.data.vocabulary import EMPTY_BUCKET
from tfrec_p5.evaluation import (
    factorized_topk_accuracy,
    full_ranking_metrics,
    group_by_row,
    rating_metrics,
)
from tfrec_p5.models.rating import RatingConfig
from tfrec_p5.tasks.base import KNOWN_USER, Head
from tfrec_p5.tasks.ranking import (
    CANDIDATES,
    LISTWISE_LOSSES,
    listwise_dataset,
    listwise_examples,
)
from tfrec_p5.tasks.registry import HeadContext, RankingOptions, RetrievalOptions, build_heads
from tfrec_p5.tasks.retrieval import (
    RETRIEVAL_LOSSES,
    RetrievalHead,
    history_csr,
    item_frequencies,
)
from tfrec_p5.towers import ItemTower, SideFeatures, UserTower
from tfrec_p5.towers.side_features import HISTORY_FEATURES, side_features_for
from tfrec_p5.training import (
    OPTIMIZER_NAMES,
    FitHistory,
    build_variables,
    fit,
    optimizer,
    plural,
    search_record,
    trace_steps_once,
    train_with_refit,
)
from tfrec_p5.training import validation_plan as describe_plan

TASKS = ("rating", "retrieval", "ranking")

RETRIEVAL_SELECTION = {"validation_fraction": 0.1, "patience": 3, "epochs": 20,
                       "refit": True}
"""What ``tfrec-p5 train --task retrieval`` sets on top of ``UnifiedConfig()`` (a
``--config`` file or ``--epochs`` overrides each): carve 10 % of the training rows
(``carve_validation``), train on the rest with early stopping on validation Recall@10
(``selection_monitor``: patience 3, at most 20 epochs), then retrain on every row for the
best epoch count. The carved rows' best Recall@10 is what ``train`` races the references
on. On the ML-100K TFRS split the search picks 6-9 epochs (the fixed default, 9, was
chosen on three such carves); test Recall@10 0.1785 ± 0.0007 over seeds 42-44 against
0.1787 ± 0.0005 for 9 epochs, at about twice the training time (``benchmarks/RESULTS.md``,
"#20 retrieval: the validation race")."""


class UnifiedModel(tfrs.Model):
    """Shared ``user_tower`` / ``item_tower`` + ``heads`` weighted by ``loss_weights``.

    Args:
      user_tower, item_tower: the shared towers (int64 vocabulary index → vector);
        ``user_tower`` may be ``None`` when no head reads it (next-item alone: a user is
        their history there).
      heads: ``{task: Head}``; each head's ``compute_loss`` sees the tower outputs.
      loss_weights: ``{task: weight}`` (missing = 1.0). Weight 0 switches a head off: it
        is dropped before the model is built, so it gets no variables and no gradients.
      user_id_dropout: while training, this share of the examples is read as a new user's
        (``tasks.base.KNOWN_USER``): the user tower leaves out the ID embedding and the
        interaction-derived features, the heads the history and the user bias, so the
        user features learn to answer alone -- what a user known only by features
        (``train_unified(..., users=...)``) gets. One mask for tower and heads: dropping
        the ID but keeping the history would teach the features nothing a new user has.
    """

    def __init__(self, user_tower: tf.keras.layers.Layer | None,
                 item_tower: tf.keras.layers.Layer,
                 heads: Mapping[str, Head], loss_weights: Mapping[str, float] | None = None,
                 user_id_dropout: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.user_id_dropout = float(user_id_dropout)
        if not 0.0 <= self.user_id_dropout < 1.0:
            raise ValueError(f"user_id_dropout must be in [0, 1), got {user_id_dropout}")
        weights = dict(loss_weights or {})
        self.loss_weights = {name: float(weights.get(name, 1.0)) for name in heads
                             if float(weights.get(name, 1.0)) > 0}
        if not self.loss_weights:
            raise ValueError("every head is switched off (all loss weights are 0)")
        self.user_tower = user_tower
        self.item_tower = item_tower
        self.heads = {name: heads[name] for name in self.loss_weights}
        if user_tower is None and any(h.uses_user_tower for h in self.heads.values()):
            raise ValueError("a head reads the user tower, but user_tower is None")
        for head in self.heads.values():
            head.bind(user_tower, item_tower)
        # Each head's loss, averaged over the epoch (``history["next_item_loss"]``, ...).
        self.head_losses = {name: tf.keras.metrics.Mean(name=f"{name}_loss")
                            for name in self.heads}
        # The TFRS step reports ``loss`` / ``regularization_loss`` / ``total_loss`` of the
        # last batch only: the epoch's history would then disagree with the progress bar
        # and with the per-head losses (a small last batch drags it far off). Averaged
        # over the epoch like them, ``loss`` is their weighted sum.
        self.step_losses = {name: tf.keras.metrics.Mean(name=name)
                            for name in ("loss", "regularization_loss", "total_loss")}

    @staticmethod
    def _features(inputs) -> dict[str, tf.Tensor]:
        """Batch → feature dict; a ``(features, rating)`` tuple is merged (pointwise data)."""
        if isinstance(inputs, (tuple, list)):
            features = dict(inputs[0])
            if len(inputs) > 1 and inputs[1] is not None:
                features[RATING] = inputs[1]
            return features
        return dict(inputs)

    def tower_outputs(self, features: Mapping[str, tf.Tensor], training: bool = False):
        needs_user = any(h.uses_user_tower for h in self.heads.values())
        user_vec = None
        if needs_user:
            known = {"known": features[KNOWN_USER]} if KNOWN_USER in features else {}
            user_vec = self.user_tower(features[USER], training=training, **known)
        item_vec = self.item_tower(features[ITEM], training=training) \
            if ITEM in features else None
        return user_vec, item_vec

    def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
        features = self._features(inputs)
        if training and self.user_id_dropout > 0:  # these rows' users are read as new
            features[KNOWN_USER] = tf.random.uniform(
                tf.shape(features[USER])) >= self.user_id_dropout
        user_vec, item_vec = self.tower_outputs(features, training)
        losses = []
        for name, weight in self.loss_weights.items():
            head = self.heads[name]
            # Decided from the batch's keys when Keras traces the step (Python at trace
            # time only), so the compiled step is the same graph every step. A held-out
            # batch may feed some heads only (pairs beside a next-item head); a training
            # batch must feed them all, or a head would silently never train.
            missing = [key for key in head.inputs if key not in features]
            if missing and training:
                raise ValueError(f"the training batch ({sorted(features)}) lacks "
                                 f"{missing} for the {name} head")
            if missing:
                continue
            loss = head.compute_loss(features, user_vec, item_vec, training=training)
            self.head_losses[name].update_state(loss)
            losses.append(weight * loss)
        if not losses:
            raise ValueError(f"the batch ({sorted(features)}) feeds none of the heads "
                             f"{list(self.heads)}")
        return tf.add_n(losses) if len(losses) > 1 else losses[0]

    def score(self, features: Mapping[str, tf.Tensor], task: str | None = None) -> tf.Tensor:
        """Pair scores ``[B]`` from head ``task`` (default: ranking > retrieval > rating >
        next_item)."""
        task = task or next(t for t in ("ranking", "retrieval", "rating", "next_item")
                            if t in self.heads)
        user_vec, item_vec = self.tower_outputs(features)
        return self.heads[task].score(features, user_vec, item_vec)

    def call(self, features, training: bool | None = None):
        """Pair scores of the default head (lets Keras build / summarize the model)."""
        return self.score(features)

    def _epoch_means(self, logs: dict) -> dict:
        for name, tracker in self.step_losses.items():
            tracker.update_state(logs[name])
            logs[name] = tracker.result()
        return logs

    def test_step(self, inputs):
        return self._epoch_means(super().test_step(inputs))

    def compile(self, *args, **kwargs) -> None:
        super().compile(*args, **kwargs)
        trace_steps_once(self)

    def train_step(self, inputs):
        return self._epoch_means(self._train_step(inputs))

    def build_optimizer(self) -> None:
        """Create the optimizer's slot variables for every trainable variable now.

        Why: Keras would create them in the first train step, and a ``tf.function`` that
        creates variables is traced twice (``tfrec_p5.training.fit`` calls this)."""
        self.optimizer.build(self.trainable_variables)

    def _train_step(self, inputs):
        """``tfrs.Model.train_step``; under a multi-replica strategy the regularization
        losses are divided by the replica count (each replica adds them, the optimizer
        sums the replicas' gradients). One replica: exactly the TFRS step."""
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas == 1:
            return super().train_step(inputs)
        with tf.GradientTape() as tape:
            loss = self.compute_loss(inputs, training=True)
            regularization_loss = tf.reduce_sum(
                [tf.reduce_sum(x) for x in self.losses]) / replicas
            total_loss = loss + regularization_loss
        gradients = tape.gradient(total_loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables, strict=True))
        metrics = {metric.name: metric.result() for metric in self.metrics}
        metrics.update(loss=loss, regularization_loss=regularization_loss,
                       total_loss=total_loss)
        return metrics


# ---------------------------------------------------------------------- configuration
@dataclass
class UnifiedConfig(Config):
    """Towers, heads, loss weights and training of a ``UnifiedModel``.

    The defaults are the retrieval configuration that was chosen on a validation slice of
    the ML-100K training split (``benchmarks/retrieval_ml100k.py``); the rating head uses
    ``rating`` (a ``RatingConfig``: its head fields). ``UnifiedConfig.rating_only(cfg)``
    is exactly ``train_rating``'s setup.
    """

    #: Options of one retrieval loss / ranking variant: setting them for another is refused.
    INERT_UNLESS: ClassVar[Mapping[str, tuple[str, tuple]]] = {
        **{name: ("retrieval_loss", ("softmax",)) for name in (
            "temperature", "log_q", "remove_accidental_hits", "num_hard_negatives",
            "full_softmax")},
        **{name: ("retrieval_loss", ("squared",)) for name in (
            "unobserved_weight", "retrieval_l2", "catalog_sample")},
        **{name: ("history", (True,)) for name in ("history_dropout", "leave_target_out",
                                                   "cold_user_tower")},
        **{name: ("listwise", tuple(LISTWISE_LOSSES)) for name in (
            "list_size", "lists_per_user")},
        **{name: ("use_side_features", (True,)) for name in (
            "item_id_dropout", "user_id_dropout", "text_min_count")},
    }

    weights: dict[str, float] = field(default_factory=lambda: {"retrieval": 1.0})
    # shared towers
    embedding_dim: int = 64
    tower_output_dim: int | None = None
    feature_dim: int | None = None
    l2: float = 0.0
    use_side_features: bool = False
    user_features: tuple[str, ...] | None = None
    item_features: tuple[str, ...] | None = None
    max_text_tokens: int = 16
    text_min_count: int = 1         # text words of fewer training IDs read as unknown
    history_len: int = 0            # rated_items / rated_by tower features (rating model)
    item_id_dropout: float = 0.0    # cold start: drop the item ID embedding while training
    user_id_dropout: float = 0.0    # cold start: read this share of training rows as a new
    #                                 user's (no ID, history or bias: UnifiedModel)
    # rating head
    rating: RatingConfig = field(default_factory=RatingConfig)
    # retrieval head: the squared full-catalog loss (tasks.squared) over a history query;
    # "softmax" + the options below it is the tfrs.tasks.Retrieval path
    retrieval_loss: str = "squared"
    unobserved_weight: float = 1.0
    retrieval_l2: float = 0.01      # squared loss: per-user L2 (EASE-style lambda)
    # squared loss: a larger catalog is sampled, this many items a step (RetrievalHead):
    # faster steps on a large catalog at some accuracy; None: the whole catalog
    catalog_sample: int | None = None
    temperature: float | None = 0.3
    log_q: bool = True
    remove_accidental_hits: bool = True
    num_hard_negatives: int | None = None
    full_softmax: bool = True
    history: bool = True
    history_dropout: float = 0.25
    leave_target_out: bool = False
    use_user_tower: bool = False
    cold_user_tower: bool = False   # the user tower is the query of new users only
    item_bias: bool = False
    popularity_weight: float = 0.0  # inference: + w * log p(item) (score fusion)
    # ranking head
    ranking_hidden_units: tuple[int, ...] = (256, 64)
    listwise: str | None = None
    list_size: int = 5
    lists_per_user: int = 20
    # training
    optimizer: str = "auto"         # Adam; LazyAdam from 100k embedding rows
    learning_rate: float = 3e-3
    weight_decay: float = 0.0
    ema_momentum: float | None = 0.99  # validate / export the weights' moving average
    #                                    (training.averaging; single-process training only)
    batch_size: int = 1024
    epochs: int = 9
    patience: int = 0               # >0 with a rating head: early stop on val_rmse
    steps_per_execution: int = 16
    validation_fraction: float = 0.0
    refit: bool = False        # after early stopping, retrain on all of train
    validate_retrieval: bool = True  # per-epoch val Recall@K when there is validation data
    # large vocabularies (see tfrec_p5.towers.tower)
    min_count: int = 1              # IDs seen fewer times in train map to the OOV row
    hash_buckets: dict[str, int] = field(default_factory=dict)  # {"user_id": N, ...}

    def __post_init__(self) -> None:
        self.hash_buckets = normalize_hash_buckets(self.hash_buckets)
        self.min_count = int(self.min_count)
        if self.min_count < 1:
            raise ValueError(f"min_count must be at least 1, got {self.min_count}")
        if isinstance(self.rating, Mapping):
            self.rating = RatingConfig.from_dict(self.rating)
        for name in ("user_features", "item_features"):
            if getattr(self, name) is not None:
                setattr(self, name, tuple(getattr(self, name)))
        self.ranking_hidden_units = tuple(int(u) for u in self.ranking_hidden_units)
        self.weights = {str(k): float(v) for k, v in dict(self.weights).items()}
        unknown = sorted(set(self.weights) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown task(s) in weights: {unknown}; known: {list(TASKS)}")
        if self.optimizer.lower() not in OPTIMIZER_NAMES:
            raise ValueError(f"unknown optimizer {self.optimizer!r}")
        if self.retrieval_loss not in RETRIEVAL_LOSSES:
            raise ValueError(f"retrieval_loss {self.retrieval_loss!r}; expected one of "
                             f"{RETRIEVAL_LOSSES}")
        super().__post_init__()
        if self.cold_user_tower and self.use_user_tower:
            raise ValueError("use_user_tower adds the user tower to every retrieval query, "
                             "cold_user_tower makes it the query of new users only: set one")
        if self.cold_user_tower and not self.user_id_dropout > 0:
            raise ValueError("cold_user_tower needs user_id_dropout > 0: the rows read as "
                             "new users are the only ones that train the user tower there")
        if self.user_id_dropout > 0 and not self.reads_user_features():
            raise ValueError(
                "UnifiedConfig.user_id_dropout does nothing here: no active head reads the "
                "user tower (the retrieval query is the history alone); set "
                "use_user_tower=True or add a rating / ranking head")
        if self.user_id_dropout > 0 and self.user_features == ():
            raise ValueError("UnifiedConfig.user_id_dropout does nothing with "
                             "user_features=(): there are no user features to stand in "
                             "for the user")

    def reads_user_features(self) -> bool:
        """Whether an active head reads the user tower, i.e. whether user features (and a
        user known only by them) reach any answer of the model. The retrieval default's
        query is the history alone; ``use_user_tower=True`` adds the tower to it."""
        active = self.active()
        return any(t in active for t in ("rating", "ranking")) or (
            "retrieval" in active and (self.use_user_tower or self.cold_user_tower
                                       or not self.history))

    def retrieval_options(self) -> RetrievalOptions:
        """This config's retrieval head (``tasks.registry``)."""
        return RetrievalOptions(
            loss=self.retrieval_loss, temperature=self.temperature, log_q=self.log_q,
            remove_accidental_hits=self.remove_accidental_hits,
            num_hard_negatives=self.num_hard_negatives, full_softmax=self.full_softmax,
            unobserved_weight=self.unobserved_weight, l2=self.retrieval_l2,
            catalog_sample=self.catalog_sample, history=self.history,
            history_dropout=self.history_dropout, leave_target_out=self.leave_target_out,
            use_user_tower=self.use_user_tower, cold_user_tower=self.cold_user_tower,
            item_bias=self.item_bias)

    def active(self) -> list[str]:
        return [t for t in TASKS if self.weights.get(t, 0.0) > 0]

    @classmethod
    def rating_only(cls, rating: RatingConfig | None = None, **changes) -> UnifiedConfig:
        """Only the rating head, with ``rating``'s towers and training (= ``train_rating``)."""
        r = rating or RatingConfig()
        base = cls(weights={"rating": 1.0}, embedding_dim=r.embedding_dim,
                   tower_output_dim=r.tower_output_dim, feature_dim=r.feature_dim, l2=r.l2,
                   use_side_features=r.use_side_features, user_features=r.user_features,
                   item_features=r.item_features, max_text_tokens=r.max_text_tokens,
                   history_len=r.history_len, rating=r, optimizer=r.optimizer,
                   learning_rate=r.learning_rate, weight_decay=r.weight_decay,
                   batch_size=r.batch_size, epochs=r.epochs, patience=r.patience,
                   steps_per_execution=r.steps_per_execution,
                   validation_fraction=r.validation_fraction,
                   refit=bool(getattr(r, "refit", False)),
                   min_count=r.min_count, hash_buckets=dict(r.hash_buckets),
                   ema_momentum=None)
        return base.replace(**changes)


# ---------------------------------------------------------------------- training
@dataclass
class TrainedUnified:
    """What ``train_unified`` returns (model, vocabularies, tables, history, timings)."""

    model: UnifiedModel
    vocabs: Vocabularies
    config: UnifiedConfig
    side_features: SideFeatures | None
    history: dict[str, list[float]]
    seen_splits: np.ndarray
    seen_values: np.ndarray
    item_probabilities: np.ndarray
    global_mean: float = 0.0
    rating_range: tuple[float, float] | None = None
    epoch_seconds: list[float] = field(default_factory=list)

    @property
    def tasks(self) -> list[str]:
        return list(self.model.heads)

    # --- retrieval index tables (what the export precomputes)
    def user_vectors(self, batch_size: int = 4096) -> np.ndarray:
        """Retrieval query vectors of every user index ``[U, d]`` (row 0 = OOV user)."""
        head: RetrievalHead = self.model.heads["retrieval"]
        out = []
        for s in range(0, len(self.vocabs.user), batch_size):
            ids = tf.range(s, min(s + batch_size, len(self.vocabs.user)), dtype=tf.int64)
            user_vec = self.model.user_tower(ids, training=False) \
                if head.uses_user_tower else None
            out.append(head.query(ids, user_vec, training=False).numpy())
        return np.concatenate(out).astype(np.float32)

    def item_vectors(self, batch_size: int = 8192) -> np.ndarray:
        """Retrieval candidate vectors of every item index ``[I, d]`` (row 0 = OOV item).

        ``popularity_weight`` is not folded in: the export adds it as ``item_prior``."""
        head: RetrievalHead = self.model.heads["retrieval"]
        out = []
        for s in range(0, len(self.vocabs.item), batch_size):
            ids = tf.range(s, min(s + batch_size, len(self.vocabs.item)), dtype=tf.int64)
            out.append(head.candidates(ids, self.model.item_tower(ids, training=False))
                       .numpy())
        return np.concatenate(out).astype(np.float32)

    def retrieval_scores(self, user_index: np.ndarray) -> np.ndarray:
        """``[B, I]`` retrieval scores (OOV item column = -inf) for the evaluation module."""
        if not hasattr(self, "_index_cache"):
            self._index_cache = (self.user_vectors(), self.item_vectors(),
                                 self.config.popularity_weight
                                 * np.log(self.item_probabilities).astype(np.float32))
        uv, iv, prior = self._index_cache
        scores = uv[np.asarray(user_index)] @ iv.T + prior[None, :]
        scores[:, 0] = -np.inf
        tokens = self.vocabs.item.tokens if self.vocabs.item.hashed else None
        if tokens is not None:  # hashed items: buckets no training item fell into
            scores[:, 1:][:, tokens == EMPTY_BUCKET] = -np.inf
        return scores

    def predict_ratings(self, table: Interactions, batch_size: int = 8192) -> np.ndarray:
        ids = self.vocabs.encode(table)
        out = []
        for s in range(0, len(table), batch_size):
            feats = {USER: tf.constant(ids[USER][s:s + batch_size]),
                     ITEM: tf.constant(ids[ITEM][s:s + batch_size])}
            user_vec, item_vec = self.model.tower_outputs(feats)
            out.append(self.model.heads["rating"].score(feats, user_vec, item_vec).numpy())
        return np.concatenate(out).astype(np.float64)

    def evaluate(self, table: Interactions, ks: Sequence[int] = (10, 100),
                 factorized_ks: Sequence[int] = (10, 50, 100)) -> dict[str, float]:
        """Each active task's metrics on ``table`` (prefixed ``rating_`` / ``retrieval_``).

        Retrieval: Recall/NDCG@K and MRR with the users' training items excluded
        (``full_ranking_metrics``) and the TFRS factorized top-K accuracy (nothing
        excluded). Rating: RMSE / MAE.
        """
        out: dict[str, float] = {}
        if "rating" in self.model.heads and table.rating is not None:
            out.update({f"rating_{k}": v for k, v in
                        rating_metrics(self.predict_ratings(table), table.rating).items()})
        if "retrieval" in self.model.heads:
            out.update({f"retrieval_{k}": v for k, v in
                        retrieval_metrics(self.retrieval_scores, table, self.vocabs,
                                          self.seen_splits, self.seen_values, ks,
                                          factorized_ks).items()})
        return out


def retrieval_metrics(score_fn, table: Interactions, vocabs: Vocabularies,
                      seen_splits: np.ndarray, seen_values: np.ndarray,
                      ks: Sequence[int] = (10, 100),
                      factorized_ks: Sequence[int] = (10, 50, 100)) -> dict[str, float]:
    """Field protocol (seen excluded) + TFRS factorized top-K for a ``score_fn(users)``.

    Rows of ``table`` whose user or item is unknown to the vocabularies are skipped (a
    two-tower model cannot rank an item it has no vector for).
    """
    users = vocabs.user.lookup(table.user_id)
    items = vocabs.item.lookup(table.item_id)
    keep = (users > 0) & (items > 0)
    users, items = users[keep], items[keep]
    n_users = len(vocabs.user)
    targets = group_by_row(users, items, n_users)
    rows = np.repeat(np.arange(n_users), np.diff(seen_splits))
    seen = group_by_row(rows, seen_values, n_users)
    query = np.flatnonzero((targets >= 0).any(axis=1))
    out = full_ranking_metrics(score_fn, query, targets[query], seen[query], ks=ks)
    out.update(factorized_topk_accuracy(score_fn, users, items, ks=factorized_ks))
    return {k: v for k, v in out.items() if not k.startswith(("user_recall", "hr@"))}


class RetrievalValidation(tf.keras.callbacks.Callback):
    """After each epoch, full-catalog Recall/NDCG on ``table`` → ``logs["val_recall@10"]``.

    Why a callback and not ``FactorizedTopK``: it ranks against the whole catalog with the
    users' training items excluded (the field protocol), costs one matmul per user batch,
    and lets ``EarlyStopping`` watch the metric we report.
    """

    def __init__(self, table: Interactions, vocabs: Vocabularies, seen_splits: np.ndarray,
                 seen_values: np.ndarray, ks: Sequence[int] = (10, 100),
                 prefix: str = "val_") -> None:
        super().__init__()
        self.table, self.vocabs, self.ks = table, vocabs, tuple(ks)
        self.seen_splits, self.seen_values = seen_splits, seen_values
        self.prefix = prefix  # "val_retrieval_" beside another head's val_ndcg@10

    def on_epoch_end(self, epoch, logs=None):
        trained = TrainedUnified(self.model, self.vocabs, UnifiedConfig(), None, {},
                                 self.seen_splits, self.seen_values,
                                 np.ones(len(self.vocabs.item), np.float32))
        metrics = retrieval_metrics(trained.retrieval_scores, self.table, self.vocabs,
                                    self.seen_splits, self.seen_values, self.ks, ())
        if logs is not None:
            for k in self.ks:
                logs[f"{self.prefix}recall@{k}"] = metrics[f"recall@{k}"]
            logs[f"{self.prefix}ndcg@10"] = metrics.get("ndcg@10", 0.0)


def build_unified(train: Interactions, vocabs: Vocabularies, config: UnifiedConfig, *,
                  fit_table: Interactions | None = None,
                  catalog: Interactions | None = None,
                  users: Interactions | None = None, next_item: Any = None,
                  weights: Mapping[str, float] | None = None,
                  rating_mask: np.ndarray | None = None) -> tuple[UnifiedModel, dict]:
    """The model for ``config`` and the tables it was built from (side features, ...).

    ``fit_table`` (default ``train``) is what the model trains on: histories, item
    frequencies and the rating mean come from it, vocabularies / side features from train.
    ``catalog`` / ``users``: the tables describing items / users beyond ``train``
    (``train_unified``). ``next_item``: the options (a ``SequentialConfig``) of a
    next-item head on the same item tower, and ``weights`` the loss weight of every head
    (default ``config.weights``): the joint model (``tfrec_p5.models.joint``).
    ``rating_mask``: the ``fit_table`` rows whose ratings training may see (pretraining
    with a share of the labels); the rating head's global mean comes from those only.
    """
    fit_table = fit_table if fit_table is not None else train
    active = config.active()
    if not active and next_item is None:
        raise ValueError("no task has a positive weight")
    side = side_features_for(config, train, vocabs, fit_table, catalog, users)
    if side is not None and not config.use_side_features:
        side = side.select([n for n in side.user if n in HISTORY_FEATURES],
                           [n for n in side.item if n in HISTORY_FEATURES])
    tower_kwargs = {"embedding_dim": config.embedding_dim,
                    "output_dim": config.tower_output_dim,
                    "feature_dim": config.feature_dim, "l2": config.l2}
    untrained = catalog_items(train, vocabs)
    if len(untrained) and not np.array_equal(
            untrained, np.arange(len(vocabs.item) - len(untrained), len(vocabs.item))):
        raise ValueError("items without training interactions must follow the trained ones "
                         "in the item vocabulary (Vocabularies.build(train, catalog=...))")
    new_users = catalog_users(train, vocabs)
    if len(new_users):
        _check_new_users(config, side, vocabs, new_users)
    user_tower = UserTower.from_vocab(
        vocabs, side, **tower_kwargs,
        **({"feature_only_from": int(new_users[0])} if len(new_users) else {}))
    item_tower = ItemTower.from_vocab(
        vocabs, side, **tower_kwargs, id_dropout=config.item_id_dropout,
        feature_only_from=int(untrained[0]) if len(untrained) else None)
    splits, values = history_csr(fit_table, vocabs)
    probs = item_frequencies(fit_table, vocabs)
    has_ratings = fit_table.rating is not None
    visible = fit_table.rating if not has_ratings or rating_mask is None \
        else fit_table.rating[np.asarray(rating_mask, bool)]
    global_mean = float(np.mean(visible)) if has_ratings and len(visible) else 0.0
    rating_range = None
    if has_ratings:
        rating_range = train.rating_range or (float(np.min(train.rating)),
                                              float(np.max(train.rating)))
    for task in active:
        if task in ("rating", "ranking") and not has_ratings:
            raise ValueError(f"the {task} head needs a 'rating' column (implicit-feedback "
                             "data trains retrieval only)")
    options = {"rating": config.rating, "retrieval": config.retrieval_options(),
               "ranking": RankingOptions(config.ranking_hidden_units, config.listwise)}
    context = HeadContext(len(vocabs.user), len(vocabs.item), user_tower.dim, splits, values,
                          probs, global_mean, rating_range,
                          untrained if len(untrained) else None,
                          int(new_users[0]) if len(new_users) else None)
    options = {task: options[task] for task in active}
    if next_item is not None:
        options["next_item"] = next_item
    heads = build_heads(options, context)
    model = UnifiedModel(user_tower, item_tower, heads,
                         config.weights if weights is None else weights,
                         user_id_dropout=config.user_id_dropout)
    if next_item is not None:  # its encoder's variables, before any restore
        heads["next_item"].score_history(tf.zeros((1, next_item.max_len), tf.int64))
    tables = {"side_features": side, "seen_splits": splits, "seen_values": values,
              "item_probabilities": probs, "global_mean": global_mean,
              "rating_range": rating_range}
    return model, tables


def _check_new_users(config: UnifiedConfig, side: SideFeatures | None, vocabs: Vocabularies,
                     new_users: np.ndarray) -> None:
    """Refuse a model that would answer every new user the same (or not from features):
    their rows must follow the trained users, some user feature must describe them, and
    every active head must read the user tower (the retrieval default's history query is
    empty for them)."""
    if not np.array_equal(new_users, np.arange(len(vocabs.user) - len(new_users),
                                               len(vocabs.user))):
        raise ValueError("users without training interactions must follow the trained ones "
                         "in the user vocabulary (Vocabularies.build(train, users=...))")
    described = [n for n in (side.user if side is not None else {})
                 if n not in HISTORY_FEATURES]
    reason = new_users_unserved(config) or (
        None if described else "they can only be answered from their features: give at "
        "least one user feature")
    if reason:
        raise ValueError(f"{len(new_users)} user(s) of the user catalog have no training "
                         f"rows, and {reason}")


def new_users_unserved(config: UnifiedConfig) -> str | None:
    """Why ``config`` cannot answer users known only by their features (``None``: it
    can), from the config alone -- so a command line refuses ``--users`` before loading
    data."""
    if not config.use_side_features:
        return "they can only be answered from their features: set use_side_features=True"
    if "retrieval" in config.active() and config.history and not (
            config.use_user_tower or config.cold_user_tower):
        return ("the retrieval query is their (empty) history alone: set "
                "use_user_tower=True or cold_user_tower=True so their features reach it")
    return None


def selection_monitor(config: UnifiedConfig, active: Sequence[str]) -> str | None:
    """The validation metric that early stopping (and a refit's epoch count) follows:
    ``val_rmse`` with a rating head, else ``val_recall@10`` with a validated retrieval
    head; ``None`` without ``patience`` (validation then only reports metrics)."""
    if config.patience <= 0:
        return None
    if "rating" in active:
        return "val_rmse"
    if "retrieval" in active and config.validate_retrieval:
        return "val_recall@10"
    return None


def validation_plan(train: Interactions, validation: Interactions | None,
                    config: UnifiedConfig, seed: int = 42) -> str:
    """What ``train_unified(train, validation, config, seed=seed)`` does with validation
    data, as one phrase (``tfrec_p5.training.validation_plan``), by the same rules:
    the carved slice, ``selection_monitor`` and ``refit``."""
    fit_table, validation = carve_validation(train, validation, config.validation_fraction,
                                             seed)
    carved = fit_table is not train
    active = config.active()
    monitor = selection_monitor(config, active) if validation is not None else None
    validated = validation is not None and (
        monitor is not None or ("retrieval" in active and config.validate_retrieval))
    if carved and not validated:  # the slice is held out, yet nothing reads it
        return (f"{config.validation_fraction * 100:g} % of train ({len(validation):,} "
                f"rows) carved and left unused: no active head validates (fixed "
                f"{plural(config.epochs, 'epoch')})")
    return describe_plan(epochs=config.epochs,
                         validation_rows=len(validation) if validated else 0,
                         carved_fraction=config.validation_fraction if carved else None,
                         monitor=monitor, patience=config.patience,
                         refit_rows=len(train) if config.refit and carved and monitor
                         else None)


def train_unified(train: Interactions, validation: Interactions | None,
                  config: UnifiedConfig, *, vocabs: Vocabularies | None = None,
                  seed: int = 42, callbacks: Sequence[tf.keras.callbacks.Callback] = (),
                  verbose: int = 1, log_dir: str | os.PathLike | None = None,
                  backup_dir: str | os.PathLike | None = None,
                  strategy: tf.distribute.Strategy | str | None = None,
                  catalog: Interactions | None = None,
                  users: Interactions | None = None) -> TrainedUnified:
    """Train the active heads of ``config`` jointly on ``train``.

    Data: see ``unified_batches``. ``validation`` (or ``config.validation_fraction`` of
    train, carved as ``train_rating`` does) drives early stopping on
    ``selection_monitor`` when ``patience > 0``; ``config.refit`` then retrains on
    all of ``train`` for the best epoch count (``tfrec_p5.training.search_then_refit``).
    ``backup_dir``, ``log_dir`` and ``callbacks`` as ``train_rating``.

    ``strategy``: as ``train_rating`` (a ``tf.distribute.Strategy``, a name, or ``None``
    for the one in scope); ``config.batch_size`` is the global batch.

    ``catalog``: a table describing the items that exist (``item_id`` + the item feature
    columns; one row per item is enough, e.g. ``u.item``'s movies). Items it lists that
    ``train`` never mentions -- new items -- get vocabulary rows of their own and side
    features from it (``Vocabularies.build`` / ``SideFeatures.build``), so with
    ``use_side_features`` each is represented by its features alone (the item tower
    leaves its ID embedding out: ``feature_only_from``), scored apart from every other
    new item, and exported in ``recommend`` / ``rank``. The losses over the whole catalog
    leave them out (``RetrievalHead``'s ``untrained_items``): users could not have chosen
    them. ``config.item_id_dropout`` trains the item features to stand in for the ID
    (ID-dropout) and ``config.text_min_count`` keeps one-title words, which a new item
    never shares, out of the text features (``benchmarks/cold_start.py`` measures both).
    Without new items nothing changes.

    ``users``: the user-side mirror of ``catalog`` (``user_id`` + the user feature
    columns, e.g. ``u.user``'s demographics; ``Interactions.user_rows``). Users it lists
    that ``train`` never mentions -- new users -- get vocabulary rows and side features of
    their own, and the user tower answers for them from their features alone
    (``feature_only_from``): ``predict_rating`` and ``recommend`` (in-process and in the
    export) give each a feature-driven answer instead of the unknown-user fallback. The
    retrieval query must read the user tower for that (the default's history query is
    empty for a new user): ``cold_user_tower=True`` makes the tower the query of new users
    only (known users keep their history query), ``use_user_tower=True`` adds it to every
    query; a config that would answer every new user the same is refused.
    ``config.user_id_dropout`` trains the user features to stand alone (``UnifiedModel``).
    Without new users nothing changes.

        trained = train_unified(train, None, UnifiedConfig(use_side_features=True),
                                catalog=items)
        trained = train_unified(train, None, UnifiedConfig(
            use_side_features=True, cold_user_tower=True, user_id_dropout=0.25), users=people)
    """
    strategy = distribute.resolve_strategy(strategy)
    vocabs = vocabs or Vocabularies.build(train, config.min_count, config.hash_buckets,
                                          catalog=catalog, users=users)
    return train_with_refit(train_unified, _fit_unified, train, validation, config, seed=seed,
                            backup_dir=backup_dir, verbose=verbose, vocabs=vocabs,
                            callbacks=callbacks, log_dir=log_dir, strategy=strategy,
                            catalog=catalog, users=users)


def _fit_unified(train, fit_table, validation, config, *, vocabs, seed, callbacks, verbose,
                 log_dir, backup_dir, strategy,
                 catalog=None, users=None) -> tuple[TrainedUnified, dict | None]:
    """One fit of ``train_unified`` on ``fit_table`` and its ``search_record``."""
    with distribute.scope(strategy):
        model, tables = build_unified(train, vocabs, config, fit_table=fit_table,
                                      catalog=catalog, users=users)
        model.compile(optimizer=optimizer(config.optimizer, config.learning_rate,
                                          config.weight_decay, model=model),
                      steps_per_execution=distribute.steps_per_execution(
                          strategy, config.steps_per_execution))
    history = fit_unified(model, fit_table, validation, config, vocabs=vocabs, seed=seed,
                          strategy=strategy, backup_dir=backup_dir, log_dir=log_dir,
                          callbacks=callbacks, verbose=verbose)
    if distribute.is_parameter_server(strategy):  # serve / evaluate from plain variables
        probe_ds = unified_batches(fit_table, list(model.heads), config, vocabs,
                                   config.batch_size, False, seed)
        probe_x = UnifiedModel._features(next(iter(probe_ds)))
        model = distribute.unsharded_copy(
            model, lambda: build_unified(train, vocabs, config, fit_table=fit_table,
                                         catalog=catalog, users=users)[0],
            lambda plain: build_variables(plain, probe_ds), probe=lambda m: m.score(probe_x))
    trained = TrainedUnified(model, vocabs, config, tables["side_features"],
                             dict(history.history), tables["seen_splits"],
                             tables["seen_values"], tables["item_probabilities"],
                             tables["global_mean"], tables["rating_range"],
                             history.epoch_seconds)
    return trained, search_record(history, selection_monitor(config, trained.tasks))


def unified_batches(table: Interactions, heads: Sequence[str], config: UnifiedConfig,
                    vocabs: Vocabularies, batch_size: int, shuffle: bool, seed: int,
                    **distribution) -> tf.data.Dataset:
    """What a ``UnifiedModel`` with ``heads`` trains on: the batches ``train_rating`` sees
    for the rating head alone, listwise batches for a listwise-only ranking head, else
    ``{user_id, item_id[, rating]}`` pairs (``distribution``: ``distribute.fit_input``).

        unified_batches(train, ["retrieval"], config, vocabs, 1024, True, seed=42)
    """
    heads = list(heads)
    if heads == ["ranking"] and config.listwise is not None:
        if not distribution:
            return listwise_dataset(table, vocabs, config.list_size, config.lists_per_user,
                                    batch_size, shuffle, seed)
        ex = listwise_examples(table, vocabs, config.list_size, config.lists_per_user,
                               seed)  # = listwise_dataset, with the distribution kwargs
        ex[ITEM] = ex[CANDIDATES][:, 0]
        return batched_dataset({k: tf.constant(v) for k, v in ex.items()}, batch_size,
                               shuffle, seed, **distribution)
    if heads == ["rating"]:
        return pointwise_dataset(table, vocabs, batch_size, shuffle=shuffle, seed=seed,
                                 **distribution)
    return retrieval_dataset(table, vocabs, batch_size, shuffle=shuffle, seed=seed,
                             with_rating=any(t in heads for t in ("rating", "ranking")),
                             **distribution)


def fit_unified(model: UnifiedModel, fit_table: Interactions,
                validation: Interactions | None, config: UnifiedConfig, *,
                vocabs: Vocabularies, seed: int,
                strategy: tf.distribute.Strategy | None = None,
                backup_dir: str | os.PathLike | None = None,
                log_dir: str | os.PathLike | None = None,
                callbacks: Sequence[tf.keras.callbacks.Callback] = (),
                verbose: int = 1) -> FitHistory:
    """Train a compiled ``UnifiedModel`` on ``fit_table`` (``tfrec_p5.training.fit``),
    early-stopping on ``selection_monitor`` over ``validation``. Why public: ``finetune``
    trains its heads on a pretrained backbone exactly this way.

        history = fit_unified(model, train, validation, config, vocabs=vocabs, seed=42)
    """
    heads = list(model.heads)

    def batches(table: Interactions, batch_size: int, shuffle: bool, **dist):
        return unified_batches(table, heads, config, vocabs, batch_size, shuffle, seed,
                               **dist)

    train_ds, steps = distribute.fit_input(
        strategy, lambda **kw: batches(fit_table, config.batch_size, True, **kw))
    val_ds = val_steps = None
    validators: list[tf.keras.callbacks.Callback] = []
    monitor = selection_monitor(config, heads) if validation is not None else None
    if monitor == "val_rmse":
        val_ds, val_steps = distribute.fit_input(strategy, lambda **kw: batches(
            validation, max(config.batch_size, 8192), False, **kw))
    if validation is not None and "retrieval" in heads and config.validate_retrieval:
        validators.append(RetrievalValidation(validation, vocabs,
                                              *history_csr(fit_table, vocabs)))
    # The moving average is validated, early-stopped on and left in the model by fit.
    return fit(model, train_ds, epochs=config.epochs, validation_data=val_ds,
               steps_per_epoch=steps, validation_steps=val_steps, validators=validators,
               monitor=monitor, patience=config.patience,
               build_on=lambda: batches(fit_table, config.batch_size, True),
               backup_dir=backup_dir, log_dir=log_dir, strategy=strategy,
               ema_momentum=config.ema_momentum if distribute.is_default(strategy) else None,
               callbacks=callbacks, verbose=verbose, name="train_unified")
