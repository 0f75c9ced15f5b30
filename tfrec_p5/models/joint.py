"""The one model: every task's head on one item tower, trained together (P5's claim).

Why: P5 trains *one* model for rating, retrieval, ranking and next-item recommendation.
Here that is a ``UnifiedModel`` whose heads are the pair heads of ``UnifiedConfig``
(rating, retrieval, ranking) plus the next-item head of ``SequentialConfig``, all reading
items through the same ``ItemTower`` (the next-item head also scores the catalog with it:
tied weights). Every training step feeds both kinds of batches at once: a batch of user
histories (``length_bucketed_dataset``) merged with a batch of (user, item[, rating])
pairs; an epoch is one pass over each (``joint_batches``). The loss is ``sum(weight[task] *
head loss)``.

Selection follows the field's leave-one-out protocol for every task at once: per user the
last training event (by time; ties in file order) is the validation event, the model
early-stops on the next-item head's full-ranking NDCG@10 of those events, and then (the
default ``refit``) a fresh model trains on every row for the best epoch count.

    from tfrec_p5 import data
    from tfrec_p5.models.joint import JointConfig, train_joint
    split = data.leave_one_out(data.load("synthetic"))
    train = data.Interactions.concat(split.train, split.validation)
    joint = train_joint(train, JointConfig())     # validation: each user's last event
    joint.tasks                                   # ['retrieval', 'rating', 'next_item']
    joint.best_metrics                            # validation HR/NDCG@10, Recall@10, RMSE
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from tfrec_p5.config import Config
from tfrec_p5.data.interactions import Interactions
from tfrec_p5.data.pipeline import Vocabularies, retrieval_dataset, user_histories
from tfrec_p5.data.splits import hold_out_last
from tfrec_p5.evaluation import rating_metrics
from tfrec_p5.models.sequential import (
    NextItemValidation,
    SequentialConfig,
    length_bucketed_dataset,
    next_item_examples,
    ranking_queries,
)
from tfrec_p5.models.unified import (
    RetrievalValidation,
    TrainedUnified,
    UnifiedConfig,
    build_unified,
    retrieval_metrics,
)
from tfrec_p5.tasks.next_item import HISTORY, NEXT_ITEM, NextItemTask
from tfrec_p5.training import best_epochs, fit, optimizer, search_then_refit

__all__ = ["JOINT_PAIRS", "JOINT_SEQUENTIAL", "JOINT_TASKS", "JointConfig", "TrainedJoint",
           "joint_batches", "recommend_choice", "train_joint"]

JOINT_TASKS = ("rating", "retrieval", "ranking", "next_item")
PAIR_TASKS = ("rating", "retrieval", "ranking")
#: Where ``JointConfig.pairs`` differs from ``UnifiedConfig()`` (see ``JointConfig``).
JOINT_PAIRS = {"retrieval_loss": "softmax", "full_softmax": False, "leave_target_out": True}
#: Where ``JointConfig.sequential`` differs from ``SequentialConfig()`` (see ``JointConfig``).
JOINT_SEQUENTIAL = {"ema_momentum": 0.999, "dropout": 0.3}
#: ``UnifiedConfig`` fields the joint schedule does not read (``sequential`` sets it).
_SCHEDULE = ("optimizer", "learning_rate", "weight_decay", "ema_momentum",
             "epochs", "patience", "steps_per_execution", "validation_fraction", "refit",
             "validate_retrieval", "weights")


@dataclass
class JointConfig(Config):
    """The one model's heads and their training, composed from the per-task configs.

    * ``weights``: loss weight per head (``JOINT_TASKS``) on its per-example mean loss; a
      head the data cannot feed (rating / ranking without ratings) is left out with a
      note; 0 switches one off.
    * ``pairs``: towers and pair heads (``UnifiedConfig``: embedding size, the rating
      head, the retrieval loss, ...). Its training fields are not read here and refused
      when set. The retrieval head defaults to the in-batch softmax (log-Q corrected):
      beside the next-item head's softmax on Amazon Beauty it trained the shared item
      tower well, while the squared loss (``UnifiedConfig``'s own default) held the
      next-item head back (validation NDCG@10 0.037 vs 0.057 after 9 and 5 epochs;
      ``benchmarks/RESULTS.md``, "The P5 table"). Its history query leaves the target
      out: with the positive inside the user's own history, the item tower learned to
      match an item with itself, and the next-item head lost what the refit adds
      (Beauty, a refit one event earlier scored on validation, seeds 0 / 1: HR@10
      0.1033 / 0.1054 vs 0.1020 / 0.1007).
    * ``sequential``: the next-item head (``SequentialConfig``: encoder, ``max_len``,
      dropout, loss) and the training schedule of the whole model (learning rate,
      histories per step, epochs, patience, ``refit``). It differs from the next-item
      specialist's default (``JOINT_SEQUENTIAL``): dropout 0.3 and the weights' moving
      average (momentum 0.999) validated, early-stopped and exported. One model trains
      its next-item head beside the other heads' gradients on the shared item tower; the
      two together lifted it on both seeds (Beauty, a refit one event earlier scored on
      validation, seeds 0 / 1: HR@10 0.1098 / 0.1102 vs 0.1026 / 0.1054; the average
      alone 0.1078 / 0.1088). A mapping (``--config``) merges over ``JOINT_SEQUENTIAL``;
      a ``SequentialConfig`` instance is taken as it is.

    The item tower uses the data's item features when ``sequential.use_item_features``
    (every head reads it); user features only when ``pairs.use_side_features``. The tower
    width is ``pairs.embedding_dim`` and must equal ``sequential.embedding_dim``.

        JointConfig(weights={"retrieval": 1.0, "next_item": 1.0},
                    sequential={"max_len": 50})
    """

    weights: dict[str, float] = field(default_factory=lambda: {
        "rating": 1.0, "retrieval": 1.0, "next_item": 1.0})
    pairs: UnifiedConfig = field(default_factory=lambda: UnifiedConfig(**JOINT_PAIRS))
    sequential: SequentialConfig = field(
        default_factory=lambda: SequentialConfig(**JOINT_SEQUENTIAL))

    def __post_init__(self) -> None:
        if isinstance(self.pairs, Mapping):  # a --config file: over the joint defaults
            self.pairs = UnifiedConfig.from_dict({**JOINT_PAIRS, **self.pairs})
        if isinstance(self.sequential, Mapping):
            self.sequential = SequentialConfig.from_dict({**JOINT_SEQUENTIAL,
                                                          **self.sequential})
        self.weights = {str(k): float(v) for k, v in dict(self.weights).items()}
        unknown = sorted(set(self.weights) - set(JOINT_TASKS))
        if unknown:
            raise ValueError(f"unknown task(s) in weights: {unknown}; known: "
                             f"{list(JOINT_TASKS)}")
        if not any(w > 0 for w in self.weights.values()):
            raise ValueError("every head is switched off (all weights are 0)")
        default = UnifiedConfig()  # the schedule fields' defaults
        inert = [f"pairs.{name}" for name in _SCHEDULE
                 if getattr(self.pairs, name) != getattr(default, name)]
        if inert:
            raise ValueError(f"{', '.join(inert)}: the joint model trains on the "
                             "'sequential' schedule and 'weights'; set them there")
        if self.pairs.embedding_dim != self.sequential.embedding_dim:
            raise ValueError(f"pairs.embedding_dim ({self.pairs.embedding_dim}) and "
                             f"sequential.embedding_dim ({self.sequential.embedding_dim}) "
                             "are the width of the one item tower: set them equal")
        super().__post_init__()

    def active(self, table: Interactions) -> tuple[list[str], list[str]]:
        """``(heads, notes)``: the heads with a positive weight that ``table`` can feed,
        and one note per head left out."""
        heads, notes = [], []
        for task in JOINT_TASKS:
            if self.weights.get(task, 0.0) <= 0:
                continue
            if task in ("rating", "ranking") and table.rating is None:
                notes.append(f"no {task} head: the data have no ratings")
                continue
            heads.append(task)
        return heads, notes


@dataclass
class TrainedJoint(TrainedUnified):
    """A trained joint model: a ``TrainedUnified`` (every pair head's evaluation and the
    export's retrieval index) whose model also has the ``next_item`` head."""

    sequential: SequentialConfig | None = None
    best_epoch: int = 0
    best_metrics: dict[str, float] = field(default_factory=dict)
    records: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    notes: tuple[str, ...] = ()

    #: The head whose vectors answer ``recommend``: ``"retrieval"``, or ``"next_item"``
    #: (each user's query after their training history) when it ranked the validation
    #: events better (``recommend_choice``). ``None``: the export's default order.
    recommend_head: str | None = None
    #: ``[U, max_len]`` every user's latest training items (left-padded item indices), the
    #: history the next-item head reads to answer ``recommend`` for a user ID.
    histories: np.ndarray | None = None

    @property
    def head(self) -> NextItemTask | None:
        return self.model.heads.get("next_item")

    def next_item_vectors(self, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """``(users [U, d], items [I, d])``: the next-item head's query after each user's
        training history (row 0, the unknown user: zeros) and its tied item table, so
        ``users @ items.T`` is what ``next_items`` gives that history."""
        head = self.head
        queries = [head.query(tf.constant(self.histories[s:s + batch_size])).numpy()
                   for s in range(0, len(self.histories), batch_size)]
        users = np.concatenate(queries).astype(np.float32)
        users[0] = 0.0
        return users, head.encoder.item_table().numpy().astype(np.float32)


def train_joint(train: Interactions, config: JointConfig | None = None, *,
                validation: Interactions | None = None, seed: int = 42, verbose: int = 0,
                log_dir: str | os.PathLike | None = None,
                backup_dir: str | os.PathLike | None = None,
                callbacks: Sequence[tf.keras.callbacks.Callback] = (),
                catalog: Interactions | None = None) -> TrainedJoint:
    """Train every head of ``config`` that ``train`` can feed, as one model.

    ``validation``: one event per user to select the epoch count on; default: each
    user's last training event (``data.hold_out_last``). With ``config.sequential.refit``
    the returned model is a fresh one trained on ``train`` (+ ``validation`` when given)
    for the best epoch count; ``best_metrics`` stay the selection run's validation
    numbers. ``backup_dir``: a rerun after a kill resumes (the search, then the refit).
    ``catalog``: items beyond ``train`` described by their features (``train_unified``).
    """
    config = config or JointConfig()
    heads, notes = config.active(train)
    if not heads:
        raise ValueError(f"no head of {config.weights} can train on these data: "
                         + "; ".join(notes))
    items = train.item_id if catalog is None else np.concatenate([train.item_id,
                                                                   catalog.item_id])
    sequential, rules = config.sequential.for_data(train, len(np.unique(items)))
    config = config.replace(sequential=sequential)
    notes = (*notes, *rules)
    started = time.perf_counter()
    if validation is None:
        fit_table, validation = hold_out_last(train)
        full = train
    else:
        fit_table, full = train, Interactions.concat(train, validation)
    kwargs = {"heads": heads, "seed": seed, "verbose": verbose, "log_dir": log_dir,
              "callbacks": callbacks, "catalog": catalog}
    if not (sequential.refit and len(validation)):
        trained, _ = _fit_joint(fit_table, validation, config, backup_dir=backup_dir,
                                **kwargs)
        return _with_choice(trained, notes)

    def refit(record: dict, refit_dir: str | None) -> TrainedJoint:
        # The selection's histories per step: the refit's extra rows (one more event per
        # user) would otherwise add pair batches, hence steps, to every epoch and train
        # the next-item head past the epoch count validation chose.
        final, _ = _fit_joint(full, None, config.replace(sequential=sequential.replace(
            epochs=record["best_epochs"])), backup_dir=refit_dir,
            history_batch=record.get("history_batch"), **kwargs)
        final.best_epoch, final.best_metrics = record["best_epochs"], record["best_metrics"]
        final.records = record["records"] + [{**r, "refit": 1.0} for r in final.records]
        final.train_seconds = time.perf_counter() - started
        return _with_choice(final, notes)

    return search_then_refit(
        backup_dir, lambda: _fit_joint(fit_table, validation, config,
                                       backup_dir=backup_dir, **kwargs),
        refit, rows=len(full), verbose=verbose)


def _with_choice(trained: TrainedJoint, notes: tuple[str, ...]) -> TrainedJoint:
    trained.recommend_head, why = recommend_choice(trained.tasks, trained.best_metrics)
    trained.notes = (*notes, *((f"recommend is answered by {why}",) if why else ()))
    return trained


def recommend_choice(heads: Sequence[str], best_metrics: Mapping[str, float]
                     ) -> tuple[str | None, str]:
    """``(head, why)``: which head answers ``recommend`` -- the retrieval head, or the
    next-item head's user vectors when its HR@10 on the validation events (one per user,
    training items excluded: the same ranking as ``recommend``'s Recall@10) is higher.
    Without both heads (or without validation numbers) the export's default order."""
    if "next_item" not in heads:
        return None, ""
    if "retrieval" not in heads:
        return "next_item", "the next-item head (the model has no retrieval head)"
    seq, pairs = best_metrics.get("hr@10"), best_metrics.get("retrieval_recall@10")
    if seq is None or pairs is None:
        return None, ""
    if seq > pairs:
        return "next_item", (f"the next-item head: validation Recall@10 {seq:.4f} vs "
                             f"{pairs:.4f} of the retrieval head")
    return "retrieval", (f"the retrieval head: validation Recall@10 {pairs:.4f} vs "
                         f"{seq:.4f} of the next-item head")


def _pair_config(config: JointConfig, heads: Sequence[str]) -> UnifiedConfig:
    """``config.pairs`` with the pair heads' weights and the one item tower's features."""
    pairs = config.pairs.replace(weights={t: config.weights[t] for t in heads
                                          if t in PAIR_TASKS})
    if config.sequential.use_item_features and not pairs.use_side_features:
        pairs = pairs.replace(use_side_features=True, user_features=())
    return pairs


def _fit_joint(table: Interactions, validation: Interactions | None, config: JointConfig,
               *, heads: Sequence[str], seed: int, verbose: int, log_dir, backup_dir,
               callbacks, catalog, history_batch: int | None = None
               ) -> tuple[TrainedJoint, dict | None]:
    """One fit on ``table`` (selection when ``validation`` is given, else the refit;
    ``history_batch``: the histories per step, default ``joint_batches``' rule)."""
    started = time.perf_counter()
    tf.keras.utils.set_random_seed(seed)
    seq = config.sequential
    pairs = _pair_config(config, heads)
    pair_heads = [t for t in heads if t in PAIR_TASKS]
    vocabs = Vocabularies.build(table, pairs.min_count, pairs.hash_buckets, catalog=catalog)
    data, pair_batch, history_batch = joint_batches(
        table, vocabs, pairs, seq, pair_heads, "next_item" in heads, seed, history_batch)
    weights = {t: config.weights[t] / _loss_scale(t, pairs, pair_batch) for t in heads}
    model, tables = build_unified(table, vocabs, pairs, catalog=catalog,
                                  next_item=seq if "next_item" in heads else None,
                                  weights=weights)
    model.compile(optimizer=optimizer("adamw" if seq.weight_decay > 0 else "auto",
                                      seq.learning_rate, seq.weight_decay, model=model),
                  steps_per_execution=seq.steps_per_execution)
    validated = validation is not None and len(validation) > 0
    report = None  # the next-item head's per-epoch record (and validation metrics)
    if "next_item" in heads:
        report = NextItemValidation(
            model.heads["next_item"], ranking_queries(table, validation, vocabs, seq.max_len)
            if validated else None, seq.eval_batch_size, verbose)
    validators: list[tf.keras.callbacks.Callback] = [report] if report else []
    monitor = "val_ndcg@10" if validated and report else None
    if validated and "retrieval" in heads and monitor is None:  # else scored once, below
        validators.append(RetrievalValidation(
            validation, vocabs, tables["seen_splits"], tables["seen_values"], ks=(10,),
            prefix="val_retrieval_"))
        monitor = "val_retrieval_recall@10"
    history = fit(model, data, epochs=seq.epochs,
                  steps_per_epoch=int(data.cardinality().numpy()), monitor=monitor,
                  patience=seq.patience, min_epochs=seq.min_epochs, validators=validators,
                  backup_dir=backup_dir, log_dir=log_dir, max_minutes=seq.max_minutes,
                  ema_momentum=seq.ema_momentum,
                  # As pretrain: with a backup, build on data itself (one shuffle draw).
                  build_on=(lambda: data) if backup_dir is not None else lambda: joint_batches(
                      table, vocabs, pairs, seq, pair_heads, "next_item" in heads, seed,
                      history_batch)[0],
                  callbacks=callbacks,
                  verbose=0 if report is not None else verbose, name="train_joint")
    logs = history.history
    best = best_epochs(logs, monitor, history.epoch) if monitor in logs else 0
    best_metrics = {k[len("val_"):]: float(v[best - 1]) for k, v in logs.items()
                    if k.startswith("val_") and best > 0}
    trained = TrainedJoint(
        model, vocabs, pairs, tables["side_features"], dict(logs), tables["seen_splits"],
        tables["seen_values"], tables["item_probabilities"], tables["global_mean"],
        tables["rating_range"], list(history.epoch_seconds), sequential=seq,
        best_epoch=best, records=report.records if report is not None else [],
        train_seconds=time.perf_counter() - started)
    # The heads the epoch count does not follow are scored once, with the selected
    # epoch's weights (which fit leaves in the model).
    if best and "retrieval" in heads and "val_retrieval_recall@10" not in logs:
        values = retrieval_metrics(trained.retrieval_scores, validation, vocabs,
                                   tables["seen_splits"], tables["seen_values"], (10,), ())
        best_metrics.update({f"retrieval_{k}": values[k] for k in ("recall@10", "ndcg@10")})
    if best and "rating" in heads and validation.rating is not None:
        best_metrics.update({f"rating_{k}": v for k, v in rating_metrics(
            trained.predict_ratings(validation), validation.rating).items()})
    trained.best_metrics = best_metrics
    if "next_item" in heads:
        users, seq_rows = user_histories(table, vocabs, seq.max_len)
        trained.histories = np.zeros((len(vocabs.user), seq.max_len), np.int64)
        trained.histories[users] = seq_rows
    record = {"best_epochs": best, "best_metrics": best_metrics, "records": trained.records,
              "history_batch": history_batch} if best > 0 else None
    return trained, record


def _loss_scale(task: str, pairs: UnifiedConfig, pair_batch: int) -> float:
    """How many examples a head's loss adds up: the softmax retrieval loss
    (``tfrs.tasks.Retrieval``) is a sum over the ``pair_batch`` pairs of a step, every
    other head's a mean; dividing by it makes ``JointConfig.weights`` weigh per-example
    means."""
    return float(pair_batch) if task == "retrieval" and \
        pairs.retrieval_loss == "softmax" else 1.0


def joint_batches(table: Interactions, vocabs: Vocabularies, pairs: UnifiedConfig,
                  seq: SequentialConfig, pair_heads: Sequence[str], next_item: bool,
                  seed: int, history_batch: int | None = None, *,
                  rating_mask: np.ndarray | None = None, **distribution
                  ) -> tuple[tf.data.Dataset, int, int]:
    """One epoch of the joint model's merged batches (``train_joint`` and ``pretrain``).

    One pass over the user histories (length-bucketed, at most ``seq.batch_size`` per
    step) and one over the (user, item[, rating]) pairs (at most ``pairs.batch_size`` per
    step). The stream with more batches sets the step count; the other is cut into as
    many smaller batches, so an epoch costs what the two heads' epochs would cost alone.
    ``history_batch`` sets the histories per step instead (the refit replays the
    selection's). ``rating_mask``: which rows' ratings the rating head sees.
    ``distribution`` (``distributed=`` / ``input_context=``, ``tfrec_p5.distribute``):
    pair batches only. Returns the dataset, the pairs and the histories per step.
    """
    with_rating = any(t in pair_heads for t in ("rating", "ranking"))
    if not next_item:
        return retrieval_dataset(table, vocabs, pairs.batch_size, shuffle=True, seed=seed,
                                 with_rating=with_rating, rating_mask=rating_mask,
                                 **distribution), pairs.batch_size, 0
    if distribution:
        raise ValueError("the next-item head trains in one process only (no tf.distribute)")
    examples = next_item_examples(table, vocabs, seq.max_len)
    users = len(examples["user_id"])
    if not users:
        raise ValueError("no training sequence has two or more items")
    examples = {HISTORY: examples[HISTORY], NEXT_ITEM: examples[NEXT_ITEM]}
    if not pair_heads:
        history_batch = history_batch or seq.batch_size
        return length_bucketed_dataset(examples, history_batch, seed=seed), 0, history_batch
    history_batch = history_batch or math.ceil(users / max(
        math.ceil(users / seq.batch_size), math.ceil(len(table) / pairs.batch_size)))
    histories = length_bucketed_dataset(examples, history_batch, seed=seed)
    steps = int(histories.cardinality().numpy())
    pair_batch = math.ceil(len(table) / steps)
    pair_batches = retrieval_dataset(table, vocabs, pair_batch, shuffle=True, seed=seed,
                                     with_rating=with_rating, rating_mask=rating_mask)
    # Rounding can leave the pairs a batch short; zip then ends with them, and the last
    # history batch is skipped this epoch (a different one each epoch: reshuffled).
    steps = min(steps, int(pair_batches.cardinality().numpy()))
    merged = tf.data.Dataset.zip((histories, pair_batches)).map(lambda h, p: {**p, **h})
    return merged.apply(tf.data.experimental.assert_cardinality(steps)).prefetch(
        tf.data.AUTOTUNE), pair_batch, history_batch
