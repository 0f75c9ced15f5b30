"""Sequential recommendation: train the next-item head on leave-one-out splits.

Why this shape: P5's sequential task is "given a user's items so far, what comes next?".
The strongest simple model for it is SASRec trained with full-softmax cross-entropy on
every prefix of every training sequence. Here the model is a ``UnifiedModel`` with one
head, ``NextItemTask``, on an ``ItemTower`` — the same model class and head every other
task trains, so the head can be pretrained with the other tasks.
Training examples are built once in numpy (one left-padded row per user with
its shifted targets) and streamed as integer tensors; the training step has no Python in
it. Model selection (early stopping, best-epoch restore) uses **only** the validation item
(full-ranking NDCG@10 over all items, training items excluded), computed in-graph every
epoch; the test item is never built into any tensor during training. Once the best epoch
count is known, the default ``refit`` trains a fresh model on training + validation items
for that many epochs (the usual final fit: every user's most recent known item becomes a
target too; on Beauty it lifts test full-ranking HR@10 from ~0.083 to ~0.10 and 1+99
HR@10 from ~0.49 to ~0.53, see ``benchmarks/RESULTS.md``).

    from tfrec_p5 import data
    from tfrec_p5.models.sequential import SequentialConfig, train_sequential
    split = data.leave_one_out(data.load("amazon:/work/shared/data/amazon/Beauty.txt"))
    trained = train_sequential(split.train, split.validation, SequentialConfig())
    trained.best_metrics          # {"hr@10": ..., "ndcg@10": ...} on the validation item

``SequentialConfig()`` defaults are the configuration benchmarked on Amazon Beauty
(``benchmarks/sequential_beauty.py``), chosen on the validation item only.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import tensorflow as tf

from tfrec_p5.config import Config
from tfrec_p5.data.interactions import Interactions
from tfrec_p5.data.pipeline import Vocabularies, catalog_items, user_histories
from tfrec_p5.data.splits import first_events
from tfrec_p5.evaluation.ranking import (
    cross_fitted_metrics,
    group_by_row,
    single_target_metrics,
)
from tfrec_p5.models.unified import UnifiedModel
from tfrec_p5.tasks.next_item import HISTORY, LOSSES, NEXT_ITEM, NextItemTask
from tfrec_p5.tasks.registry import HeadContext, build_heads
from tfrec_p5.towers import ItemTower, SideFeatures
from tfrec_p5.training import best_epochs, fit, optimizer, search_then_refit
from tfrec_p5.training import validation_plan as describe_plan

AUTO = "auto"
MAX_LEN_RANGE = (50, 200)
"""Where ``max_len="auto"`` stays: 50 is the SASRec length (Beauty's default), 200 the
SASRec paper's MovieLens-1M length (attention costs grow with its square)."""
SOFTMAX_MAX_BYTES = 2**30
"""Largest batch of full-softmax logits ``loss="auto"`` accepts (``4 * batch_size *
max_len * num_items`` bytes); above it the sampled softmax trains instead."""


@dataclass
class SequentialConfig(Config):
    """Every hyper-parameter of the sequential (next-item) model and its training.

    Defaults = the documented Beauty configuration (SASRec shape, full-softmax CE).
    ``to_dict``/``from_dict`` round-trip through JSON (``--config FILE``); unknown keys
    are a ``ValueError`` naming them.
    """

    #: ``num_negatives`` is the sampled softmax's; setting it for the full softmax is refused.
    INERT_UNLESS: ClassVar[Mapping[str, tuple[str, tuple]]] = {
        "num_negatives": ("loss", ("sampled", "auto")),
        "item_id_dropout": ("use_item_features", (True,))}

    embedding_dim: int = 64
    max_len: int | str = "auto"       # or a length; "auto": from the histories (for_data)
    encoder: str = "transformer"      # or "gru"
    num_blocks: int = 2
    num_heads: int = 1
    ffn_dim: int | None = None        # None: embedding_dim
    use_item_features: bool = True    # the data's item side features (Beauty: attributes)
    item_id_dropout: float = 0.0      # cold start: drop the item ID embedding while training
    dropout: float = 0.2
    loss: str = "auto"                # "softmax", "sampled" (logQ-corrected), "auto": by
                                      # the catalog's size (for_data)
    num_negatives: int = 1000         # for loss="sampled"
    learning_rate: float = 2e-3
    weight_decay: float = 0.0         # AdamW when > 0
    ema_momentum: float | None = None  # validate, stop and end on the weights' moving
                                       # average (training.averaging; None: last iterate)
    batch_size: int = 256
    epochs: int = 200                 # upper bound; early stopping ends sooner
    patience: int = 5                 # epochs without validation NDCG@10 gain
    min_epochs: int = 1
    max_minutes: float | None = None  # wall-clock budget for fitting (None: no limit)
    steps_per_execution: int = 16
    refit: bool = True                # after selection: retrain on train + validation
    top_k: int = 100                  # items returned by the next_items signature
    eval_batch_size: int = 512

    def __post_init__(self) -> None:
        if isinstance(self.max_len, str) and self.max_len != AUTO:
            raise ValueError(f"SequentialConfig.max_len must be a length or 'auto', got "
                             f"{self.max_len!r}")
        if self.loss not in (*LOSSES, AUTO):
            raise ValueError(f"SequentialConfig.loss must be one of {[*LOSSES, AUTO]}, got "
                             f"{self.loss!r}")
        super().__post_init__()

    def for_data(self, train: Interactions, num_items: int
                 ) -> tuple[SequentialConfig, tuple[str, ...]]:
        """This config with its ``"auto"`` values decided by the data, and one note per
        decision (the rules are documented in ``docs/sequential.md``).

        * ``max_len``: the 95th percentile of the users' training history lengths, rounded
          up to a multiple of 10 and kept within ``MAX_LEN_RANGE`` (50-200): short
          histories (Amazon Beauty: 95 % have at most 21 items) keep 50, long ones
          (MovieLens) get up to 200 positions.
        * ``loss``: the full softmax while a batch's logits (``batch_size x max_len x
          num_items`` floats) fit in ``SOFTMAX_MAX_BYTES`` (1 GiB), else the sampled
          softmax with logQ correction.

            config, notes = SequentialConfig().for_data(train, num_items=12_101)
        """
        changes, notes = {}, []
        max_len = self.max_len
        if max_len == AUTO:
            _, lengths = np.unique(train.user_id, return_counts=True)
            p95 = float(np.percentile(lengths, 95, method="inverted_cdf")) if len(lengths) \
                else 0.0
            max_len = int(np.clip(math.ceil(p95 / 10) * 10, *MAX_LEN_RANGE))
            changes["max_len"] = max_len
            notes.append(f"max_len {max_len} (auto: 95 % of the training histories have at "
                         f"most {p95:.0f} items; kept within {MAX_LEN_RANGE[0]}-"
                         f"{MAX_LEN_RANGE[1]})")
        if self.loss == AUTO:
            size = 4 * self.batch_size * int(max_len) * int(num_items)
            full = size <= SOFTMAX_MAX_BYTES
            changes["loss"] = "softmax" if full else "sampled"
            notes.append(f"loss {changes['loss']} (auto: a batch's logits over the "
                         f"{num_items:,} items take up to {size / 2**30:.2f} GiB, "
                         f"{'within' if full else 'over'} the "
                         f"{SOFTMAX_MAX_BYTES / 2**30:g} GiB of the full softmax)")
        return (self.replace(**changes) if changes else self), tuple(notes)


# ---------------------------------------------------------------------- examples
def next_item_examples(train: Interactions, vocabs: Vocabularies,
                       max_len: int) -> dict[str, np.ndarray]:
    """All-prefix training rows: ``{"user_id" [U], "history" [U, L], "next_item" [U, L]}``.

    Per user, the last ``max_len + 1`` training items ``s`` give ``history = s[:-1]`` and
    ``next_item = s[1:]`` (left-padded; a target exists only where the history has an
    item), so position ``t`` learns to predict item ``t+1`` from items ``<= t``. Users with
    a single training item have no target and are dropped. Only ``train`` is read: with a
    leave-one-out split the validation and test items cannot appear.
    """
    users, seq = user_histories(train, vocabs, max_len + 1)
    history, targets = seq[:, :-1], seq[:, 1:]
    targets = np.where(history > 0, targets, 0)
    keep = (targets > 0).any(axis=1)
    return {"user_id": users[keep], HISTORY: history[keep], NEXT_ITEM: targets[keep]}


@dataclass
class RankingQueries:
    """One evaluated user per row: input history, held-out target, items to exclude."""

    users: np.ndarray      # [U] user vocabulary indices
    history: np.ndarray    # [U, L] left-padded item indices (model input)
    targets: np.ndarray    # [U] held-out item index (0 = unknown to the model: a miss)
    exclude: np.ndarray    # [U, E] every item of the input history, -1 padded

    def __len__(self) -> int:
        return len(self.users)


def ranking_queries(history: Interactions, held_out: Interactions, vocabs: Vocabularies,
                    max_len: int) -> RankingQueries:
    """Queries for ranking each user's ``held_out`` item after their ``history`` events.

    For validation ``history`` is the training part; for test it is training + validation
    (the standard, leak-free leave-one-out inputs). A user with several held-out events
    (after a time cut) is ranked on the first in time (``data.first_events``). Every
    history item is excluded from the candidates; users with no history or no held-out
    item are skipped.
    """
    held_out = first_events(held_out)
    n_users = len(vocabs.user)
    u_idx, hist = user_histories(history, vocabs, max_len)
    target = np.full(n_users, -1, np.int64)
    target[vocabs.user.lookup(held_out.user_id)] = vocabs.item.lookup(held_out.item_id)
    exclude = group_by_row(vocabs.user.lookup(history.user_id),
                           vocabs.item.lookup(history.item_id), n_users)
    keep = (u_idx > 0) & (target[u_idx] >= 0) & (hist > 0).any(axis=1)
    u_idx, hist = u_idx[keep], hist[keep]
    return RankingQueries(u_idx, hist, target[u_idx], exclude[u_idx])


def length_bucketed_dataset(examples: Mapping[str, np.ndarray], batch_size: int,
                            seed: int | None = None,
                            chunk_batches: int = 32) -> tf.data.Dataset:
    """Shuffled batches of similar-length rows, each cut to its longest history.

    Why: Beauty's median training sequence has 4 items, so a batch padded to ``max_len``
    (50) spends ~90% of the encoder's work on padding. Every epoch the rows are permuted
    (seeded, fresh per epoch), sorted by length within chunks of ``chunk_batches``
    batches, sliced into batches whose order is shuffled again, and each batch keeps only
    its last ``max(length)`` columns (histories are left-padded, so nothing real is cut).
    All of it runs in tf.data on integer tensors; the training step sees ``[B, None]``.
    """
    tensors = {k: tf.constant(v) for k, v in examples.items()}
    lengths = tf.constant((np.asarray(examples[HISTORY]) > 0).sum(axis=1).astype(np.int64))
    width = int(np.asarray(examples[HISTORY]).shape[1])
    n = int(lengths.shape[0])
    n_batches = math.ceil(n / batch_size)
    chunk = batch_size * chunk_batches
    draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)

    def epoch(draw):
        s1 = tf.stack([draw, tf.constant(0, tf.int64)])
        s2 = tf.stack([draw, tf.constant(1, tf.int64)])
        idx = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=s1)
        key = (tf.range(n, dtype=tf.int64) // chunk) * (width + 1) + tf.gather(lengths, idx)
        idx = tf.gather(idx, tf.argsort(key, stable=True))
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n_batches, dtype=tf.int64), seed=s2)

        def one_batch(i):
            b = tf.gather(order, i)
            rows = idx[b * batch_size:tf.minimum((b + 1) * batch_size, n)]
            keep = tf.maximum(tf.reduce_max(tf.gather(lengths, rows)), 1)
            out = {k: tf.gather(v, rows) for k, v in tensors.items()}
            for k in (HISTORY, NEXT_ITEM):
                out[k] = out[k][:, width - keep:]
            return out
        return tf.data.Dataset.range(n_batches).map(one_batch)

    ds = draws.flat_map(epoch).prefetch(tf.data.AUTOTUNE)
    # A known cardinality lets Keras run steps_per_execution and reshuffle every epoch.
    return ds.apply(tf.data.experimental.assert_cardinality(n_batches))


# ---------------------------------------------------------------------- model
def build_model(config: SequentialConfig, vocabs: Vocabularies, train: Interactions,
                side_features: SideFeatures | None = None) -> UnifiedModel:
    """The untrained model for ``config``: a ``UnifiedModel`` with the next-item head
    alone on an ``ItemTower`` (no user tower), weights created with one dummy call.

    Items of the vocabulary with no event in ``train`` (a catalog's new items, after the
    trained ones) are represented by their features alone and left out of the loss."""
    untrained = catalog_items(train, vocabs)
    item_tower = ItemTower.from_vocab(
        vocabs, side_features, embedding_dim=config.embedding_dim,
        id_dropout=config.item_id_dropout,
        feature_only_from=int(untrained[0]) if len(untrained) else None)
    context = HeadContext.from_table(train, vocabs, user_dim=config.embedding_dim,
                                     untrained_items=untrained if len(untrained) else None)
    head = build_heads({"next_item": config}, context)["next_item"]
    model = UnifiedModel(None, item_tower, {"next_item": head})
    head.score_history(tf.zeros((1, config.max_len), tf.int64))
    return model


def rank_batch_fn(head: NextItemTask):
    """A compiled ``(history, target, exclude) -> ranks`` over all items (pessimistic ties:
    ``rank = 1 + #{non-excluded j != t : s_j >= s_t}``), the in-graph twin of
    ``evaluation.ranks_of_targets`` for per-epoch validation."""

    @tf.function(reduce_retracing=True, autograph=False)
    def ranks(history, target, exclude):
        scores = head.score_history(history)
        n = tf.shape(scores)[1]
        t_score = tf.gather(scores, target, batch_dims=1)
        pos = tf.where(exclude >= 0)
        hit = tf.scatter_nd(tf.stack([pos[:, 0], tf.gather_nd(exclude, pos)], axis=1),
                            tf.ones(tf.shape(pos)[:1], tf.int32), tf.shape(scores, tf.int64))
        scores = tf.where(hit > 0, -np.inf, scores)
        beats = (scores >= t_score[:, None]) & \
            (tf.range(n, dtype=tf.int64)[None] != target[:, None])
        return 1 + tf.reduce_sum(tf.cast(beats, tf.int32), axis=1)
    return ranks


def ranking_metrics(head: NextItemTask, queries: RankingQueries, ks=(5, 10),
                    batch_size: int = 512) -> dict[str, float]:
    """Full-ranking HR@K / NDCG@K of ``queries`` (index space, in-graph, fast)."""
    return single_target_metrics(query_ranks(head, queries, batch_size), ks)


def query_ranks(head: NextItemTask, queries: RankingQueries,
                batch_size: int = 512) -> np.ndarray:
    """``[U]`` full-catalog rank of each query's target (``rank_batch_fn``)."""
    ranks_fn = rank_batch_fn(head)
    lengths = (queries.history > 0).sum(axis=1)
    order = np.argsort(lengths, kind="stable")  # similar lengths together: cut padding
    r = np.zeros(len(queries), np.int64)
    for s in range(0, len(queries), batch_size):
        rows = order[s:s + batch_size]
        keep = max(int(lengths[rows].max()), 1)
        r[rows] = ranks_fn(tf.constant(queries.history[rows, -keep:]),
                           tf.constant(queries.targets[rows]),
                           tf.constant(queries.exclude[rows])).numpy()
    return r


class NextItemValidation(tf.keras.callbacks.Callback):
    """Per epoch: full-ranking HR / NDCG @5, @10 of the validation item into the logs
    (``val_ndcg@10`` picks the epoch) and one record of the epoch in ``records`` (loss,
    seconds, metrics; printed when ``verbose``); each epoch's ranks in ``ranks``
    (``race_metrics``). ``queries=None``: records only."""

    def __init__(self, head: NextItemTask, queries: RankingQueries | None,
                 batch_size: int = 512, verbose: int = 0) -> None:
        super().__init__()
        self.head, self.queries = head, queries
        self.batch_size, self.verbose = batch_size, verbose
        self.records: list[dict[str, float]] = []
        self.ranks: list[np.ndarray] = []

    def on_train_begin(self, logs=None) -> None:
        self.started = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = logs if logs is not None else {}
        # epoch_seconds: this epoch (training + validation); total_seconds: since fitting
        # started; both measured once the validation metrics are in.
        record = {"epoch": epoch + 1, "loss": float(logs.get("loss", math.nan)),
                  "epoch_seconds": 0.0, "total_seconds": 0.0}
        if self.queries is not None and len(self.queries):
            self.ranks.append(query_ranks(self.head, self.queries, self.batch_size))
            metrics = single_target_metrics(self.ranks[-1])
            record.update({f"val_{k}": v for k, v in metrics.items()})
            logs.update({f"val_{k}": v for k, v in metrics.items()})
        now = time.perf_counter()
        record["epoch_seconds"] = now - self.epoch_started
        record["total_seconds"] = now - self.started
        self.records.append(record)
        if self.verbose:
            print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in record.items()), flush=True)


@dataclass
class TrainedSequential:
    """A trained next-item model and what to record about its training."""

    model: UnifiedModel
    vocabs: Vocabularies
    config: SequentialConfig
    best_epoch: int = 0
    epochs_run: int = 0
    best_metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    #: The item side features the item tower was built with (their vocabularies and
    #: statistics encode a new item's raw values in the export: ``score_new_items``).
    side_features: SideFeatures | None = None
    #: What ``SequentialConfig.for_data`` decided for the ``"auto"`` values, one note each.
    data_rules: tuple[str, ...] = ()
    #: The selection's validation HR/NDCG@5/10 without the best epoch's bonus
    #: (``evaluation.cross_fitted_metrics``): what ``train``'s validation race compares
    #: with the references. ``None``: fewer than two validation users.
    race_metrics: dict[str, float] | None = None

    @property
    def head(self) -> NextItemTask:
        return self.model.heads["next_item"]


def fit_next_item(model: UnifiedModel, vocabs: Vocabularies, train: Interactions,
                  validation: Interactions | None, config: SequentialConfig, *, seed: int,
                  verbose: int = 0, log_dir: str | None = None,
                  backup_dir: str | os.PathLike | None = None,
                  callbacks: Sequence[tf.keras.callbacks.Callback] = (),
                  result: type[TrainedSequential] = TrainedSequential,
                  **fields) -> tuple[TrainedSequential, dict | None]:
    """Train a compiled next-item ``model`` on every prefix of ``train``'s sequences,
    keeping the epoch with the best NDCG@10 on ``validation`` (one item per user).

    Why shared: ``train_sequential`` and ``finetune(task="next_item")`` train alike
    (length-bucketed batches, early stopping after ``config.patience`` epochs, not before
    ``config.min_epochs``, the ``config.max_minutes`` budget, ``backup_dir`` to resume).
    Returns ``result(model, vocabs, config, ..., **fields)`` and its search record
    (``tfrec_p5.training.search_then_refit``; ``None`` when nothing was validated).

        trained, record = fit_next_item(model, vocabs, train, validation, config, seed=1)
    """
    started = time.perf_counter()
    examples = next_item_examples(train, vocabs, config.max_len)
    if not len(examples["user_id"]):
        raise ValueError("no training sequence has two or more items")
    queries = ranking_queries(train, validation, vocabs, config.max_len) \
        if validation is not None and len(validation) else None
    dataset = length_bucketed_dataset(examples, config.batch_size, seed=seed)
    report = NextItemValidation(model.heads["next_item"], queries, config.eval_batch_size, verbose)
    history = fit(model, dataset, epochs=config.epochs,
                  steps_per_epoch=int(dataset.cardinality().numpy()),
                  monitor="val_ndcg@10" if queries is not None and len(queries) else None,
                  patience=config.patience, min_epochs=config.min_epochs,
                  validators=[report], backup_dir=backup_dir, log_dir=log_dir,
                  max_minutes=config.max_minutes, ema_momentum=config.ema_momentum,
                  callbacks=callbacks, verbose=0,
                  build_on=lambda: length_bucketed_dataset(  # its own draws, not dataset's
                      {k: v[:config.batch_size] for k, v in examples.items()},
                      config.batch_size, seed=seed),
                  name="train_sequential")
    records = report.records
    best = best_epochs(history.history, "val_ndcg@10", history.epoch) \
        if "val_ndcg@10" in history.history else 0
    best_metrics = next(({k[len("val_"):]: v for k, v in r.items() if k.startswith("val_")}
                         for r in records if r["epoch"] == best), {})
    race = cross_fitted_metrics(np.stack(report.ranks), seed=seed) if report.ranks else None
    trained = result(model, vocabs, config, best_epoch=best, epochs_run=len(records),
                     best_metrics=best_metrics, history=records,
                     train_seconds=time.perf_counter() - started, race_metrics=race,
                     **fields)
    return trained, {"best_epochs": best, "best_metrics": best_metrics,
                     "race_metrics": race, "records": records} if best > 0 else None


def with_selection(refit: TrainedSequential, record: dict) -> TrainedSequential:
    """``refit`` reporting the selection run of ``record`` (``fit_next_item``): its best
    epoch and metrics, its records before the refit's (marked ``"refit": 1.0``)."""
    refit.best_epoch, refit.best_metrics = record["best_epochs"], record["best_metrics"]
    refit.race_metrics = record.get("race_metrics")
    refit.history = record["records"] + [{**r, "refit": 1.0} for r in refit.history]
    refit.epochs_run += len(record["records"])
    return refit


def train_sequential(train: Interactions, validation: Interactions | None,
                     config: SequentialConfig | None = None, *, seed: int = 42,
                     verbose: int = 0, log_dir: str | None = None,
                     backup_dir: str | os.PathLike | None = None,
                     callbacks: Sequence[tf.keras.callbacks.Callback] = (),
                     catalog: Interactions | None = None) -> TrainedSequential:
    """Fit the next-item model (``build_model``) on ``train``; early-stop on
    ``validation`` (one item per user).

    The vocabularies come from ``train`` only. With ``validation=None`` the model trains
    for ``config.epochs`` (or the time budget) with no model selection. ``"auto"`` config
    values are decided from ``train`` first (``SequentialConfig.for_data``; the notes are
    the result's ``data_rules``).

    ``config.refit``: once the best epoch count is known, train a fresh model on ``train +
    validation`` for exactly that many epochs and return it (the usual final fit: the
    most recent item of every user becomes a training target too). The test item is still
    never seen; ``best_metrics`` stay the validation numbers of the selection run.

    ``backup_dir``: a rerun of the same call after a kill resumes from the last finished
    epoch, or the refit without selecting again (``tfrec_p5.training``). Early stopping
    restarts with the resumed epochs: the best epoch is the best one since the resume.

    ``catalog``: a table describing the items that exist (``item_id`` + the item
    features, e.g. ``load_catalog("amazon:...").items``). Items no training sequence
    holds get vocabulary rows after the trained ones and, with ``use_item_features``,
    are scored from their features (``build_model``), so ``next_items`` can predict an
    item nobody has chosen yet; ``config.item_id_dropout`` trains the features to stand in
    for the ID.
    """
    items = train.item_id if catalog is None else np.concatenate([train.item_id,
                                                                   catalog.item_id])
    config, rules = (config or SequentialConfig()).for_data(train, len(np.unique(items)))
    started = time.perf_counter()
    kwargs = {"seed": seed, "verbose": verbose, "log_dir": log_dir, "callbacks": callbacks,
              "catalog": catalog}
    if not (config.refit and validation is not None and len(validation)):
        trained = _train_once(train, validation, config, backup_dir=backup_dir, **kwargs)[0]
        trained.data_rules = rules
        return trained

    def refit(record: dict, refit_dir: str | None) -> TrainedSequential:
        final = train_sequential(
            Interactions.concat(train, validation), None,
            config.replace(refit=False, epochs=record["best_epochs"], max_minutes=None),
            backup_dir=refit_dir, **kwargs)
        final.config, final.train_seconds = config, time.perf_counter() - started
        final.data_rules = rules
        return with_selection(final, record)

    return search_then_refit(
        backup_dir, lambda: _train_once(train, validation, config, backup_dir=backup_dir,
                                        **kwargs),
        refit, rows=len(train) + len(validation), verbose=verbose,
        what="training + validation rows")


def _train_once(train: Interactions, validation: Interactions | None,
                config: SequentialConfig, catalog: Interactions | None = None,
                **kwargs) -> tuple[TrainedSequential, dict | None]:
    """One selection (or refit) run of ``train_sequential``: a fresh model on ``train``
    (``fit_next_item``'s result and search record)."""
    tf.keras.utils.set_random_seed(kwargs["seed"])
    use_features = config.use_item_features and bool(train.item_features)
    catalog = catalog if use_features else None  # without features a new item is a blank
    vocabs = Vocabularies.build(train, catalog=catalog)
    side = SideFeatures.build(train, vocabs, user_features=(), catalog=catalog) \
        if use_features else None
    model = build_model(config, vocabs, train, side)
    model.compile(optimizer=optimizer("adamw" if config.weight_decay > 0 else "auto",
                                      config.learning_rate, config.weight_decay, model=model),
                  steps_per_execution=config.steps_per_execution)
    return fit_next_item(model, vocabs, train, validation, config, side_features=side,
                         **kwargs)


def validation_plan(train: Interactions, validation: Interactions | None,
                    config: SequentialConfig) -> str:
    """What ``train_sequential(train, validation, config)`` does with validation data, as
    one phrase (``tfrec_p5.training.validation_plan``): early stopping on the
    validation item's full-ranking NDCG@10, then (``config.refit``) a refit on training +
    validation items for the best epoch count."""
    rows = len(validation) if validation is not None else 0
    return describe_plan(epochs=config.epochs, validation_rows=rows, carved_fraction=None,
                         monitor="val_ndcg@10", patience=config.patience,
                         refit_rows=len(train) + rows if config.refit else None,
                         refit_what="training + validation rows")
