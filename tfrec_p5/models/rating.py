"""The rating model: user tower + item tower → predicted rating.

Why this shape: the towers are the shared backbone later tasks reuse, so the rating head
sits *on top of* them. The head is the TFRS "basic ranking" MLP (concat → dense ReLU →
1), plus what a good explicit-feedback model needs and the tutorial lacks: a global mean
(the output bias starts there), per-user / per-item bias terms, a NeuMF-style dot product
of the two tower vectors beside the MLP, per-example L2 on the gathered embedding rows,
dropout, and early stopping on validation RMSE. ``benchmarks/RESULTS.md`` measures
what each of these buys on MovieLens-100K.

    from tfrec_p5 import data
    from tfrec_p5.models.rating import RatingConfig, train_rating, evaluate_rating
    split = data.random_split(data.load("synthetic"), 0.8, seed=42)
    trained = train_rating(split.train, None, RatingConfig(epochs=5))
    evaluate_rating(trained.model, split.test, trained.vocabs)   # {"rmse": ..., "mae": ...}

The model is a functional ``tf.keras.Model`` with inputs ``{"user_id", "item_id"}`` (int64
vocabulary indices, 0 = OOV) and output ``[B, 1]``, so ``model.fit(pointwise_dataset(...))``
works as is. The TFRS tutorial architecture is ``RatingConfig.tutorial()``.

Scale: ``train_rating(..., strategy="multi_worker")`` trains on ``tf.distribute``
(``tfrec_p5.distribute``); ``RatingConfig(hash_buckets={"user_id": 2_000_000})`` hashes
user IDs instead of building a vocabulary, ``min_count=5`` sends rare IDs to the OOV row
(``tfrec_p5.towers.tower`` has the memory arithmetic).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from tfrec_p5 import distribute
from tfrec_p5.config import Config
from tfrec_p5.data.errors import DataError
from tfrec_p5.data.interactions import ITEM, USER, Interactions
from tfrec_p5.data.pipeline import Vocabularies, normalize_hash_buckets, pointwise_dataset
from tfrec_p5.data.splits import carve_validation
from tfrec_p5.data.stream import LogScan, ParquetLog
from tfrec_p5.evaluation.rating import RatingErrors, rating_metrics
from tfrec_p5.models.bias import UnknownUserRating, select_bias_fit
from tfrec_p5.tasks.rating import RatingHead
from tfrec_p5.towers import ItemTower, SideFeatures, UserTower
from tfrec_p5.towers.side_features import HISTORY_FEATURES, side_features_for
from tfrec_p5.training import (
    OPTIMIZER_NAMES,
    FitHistory,
    carves_by_time,
    fit,
    optimizer,
    refit_config,
    refitted,
    search_record,
    search_then_refit,
    trace_steps_once,
    train_with_refit,
)
from tfrec_p5.training import validation_plan as describe_plan


@dataclass
class RatingConfig(Config):
    """Every hyper-parameter of the rating model and its training.

    The defaults are the configuration that meets the MovieLens-100K accuracy target; they
    were chosen on a validation slice of the training split (see
    ``benchmarks/rating_ml100k.py``). ``to_dict``/``from_dict`` round-trip through JSON
    (the CLI's ``--config FILE``); an unknown key is a ``ValueError`` naming it.
    """

    embedding_dim: int = 32
    tower_output_dim: int | None = None  # None: embedding_dim
    feature_dim: int | None = None       # side-feature embedding width; None: embedding_dim
    hidden_units: tuple[int, ...] = (64, 32)
    dropout: float = 0.2
    l2: float = 1e-4            # per-example L2 on gathered ID embedding rows
    bias_l2: float = 1e-5       # per-example L2 on the gathered user / item biases
    dense_l2: float = 0.0       # L2 on the hidden-layer kernels
    weight_decay: float = 0.0   # decoupled weight decay passed to the optimizer
    use_biases: bool = True
    use_dot: bool = True
    use_side_features: bool = True
    user_features: tuple[str, ...] | None = None  # None: all the data declares
    item_features: tuple[str, ...] | None = None
    max_text_tokens: int = 16
    history_len: int = 128      # >0: add rated_items / rated_by implicit features
    clip_predictions: bool = True  # clip to the data's rating range at inference only
    optimizer: str = "auto"         # Adam; LazyAdam from 100k embedding rows
    learning_rate: float = 1e-3
    batch_size: int = 512
    epochs: int = 40
    patience: int = 3
    steps_per_execution: int = 16
    validation_fraction: float = 0.1  # carved from train when no validation is given
    # The carved slice: "random" pairs, or "time" = the latest events (on a temporal
    # MovieLens-100K split it picked 1 epoch instead of 4 and a worse model: RESULTS.md)
    validation_carve: str = "random"
    # Users without training rows: "bias" = mean + item bias (UnknownUserRating; not with
    # hashed user IDs), "model" = the model's untrained row (the TFRS tutorial's answer).
    unknown_users: str = "bias"
    refit: bool = True  # after early stopping on the carved slice, retrain on all
    min_count: int = 1          # IDs seen fewer times in train map to the OOV row
    # {"user_id": N, "item_id": M}: hash that side into N buckets (no vocabulary)
    hash_buckets: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.hash_buckets = normalize_hash_buckets(self.hash_buckets)
        self.min_count = int(self.min_count)
        if self.min_count < 1:
            raise ValueError(f"min_count must be at least 1, got {self.min_count}")
        self.hidden_units = tuple(int(u) for u in self.hidden_units)
        for name in ("user_features", "item_features"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, tuple(value))
        if self.validation_carve not in ("random", "time"):
            raise ValueError(f"RatingConfig.validation_carve must be 'random' or 'time', got "
                             f"{self.validation_carve!r}")
        if self.unknown_users not in ("bias", "model"):
            raise ValueError(f"RatingConfig.unknown_users must be 'bias' or 'model', got "
                             f"{self.unknown_users!r}")
        if self.optimizer.lower() not in OPTIMIZER_NAMES:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; use one of "
                             f"{sorted(OPTIMIZER_NAMES)}")
        super().__post_init__()

    @classmethod
    def tutorial(cls, **changes) -> RatingConfig:
        """The TFRS basic-ranking tutorial: Embedding(32) towers, Dense 256-64-1, Adagrad 0.1,
        batch 8192, 3 epochs, no biases / dot / regularization / side features."""
        base = cls(embedding_dim=32, hidden_units=(256, 64), dropout=0.0, l2=0.0, bias_l2=0.0,
                   use_biases=False, use_dot=False, use_side_features=False, history_len=0,
                   refit=False,
                   clip_predictions=False, optimizer="adagrad", learning_rate=0.1,
                   batch_size=8192, epochs=3, patience=0, unknown_users="model")
        return base.replace(**changes)


@tf.keras.utils.register_keras_serializable(package="tfrec_p5")
class ClipRating(tf.keras.layers.Layer):
    """Clips predictions into ``[low, high]`` at inference; identity while training.

    Why: clipping only at inference removes impossible predictions (a 5.3 for a 1-5 scale)
    without zeroing the gradient of examples the model over-shoots during training.
    """

    def __init__(self, low: float, high: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.low, self.high = float(low), float(high)

    def call(self, x: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        if training:
            return x
        return tf.clip_by_value(x, self.low, self.high)

    def get_config(self) -> dict:
        return {**super().get_config(), "low": self.low, "high": self.high}


def build_rating_model(vocabs: Vocabularies, side_features: SideFeatures | None,
                       config: RatingConfig, *, global_mean: float = 0.0,
                       rating_range: tuple[float, float] | None = None,
                       unknown_users: UnknownUserRating | None = None) -> tf.keras.Model:
    """The functional rating model (see the ``tfrec_p5.models.rating`` module).

    ``global_mean`` initializes the output bias (training starts at the mean rating
    instead of 0); ``rating_range`` enables ``ClipRating`` when ``config.clip_predictions``;
    ``unknown_users`` answers the users without training rows (``unknown_user_gate``).
    """
    side = side_features
    if side is not None and not config.use_side_features:  # keep only the ID-derived ones
        side = side.select([n for n in side.user if n in HISTORY_FEATURES],
                           [n for n in side.item if n in HISTORY_FEATURES])
    user_in = tf.keras.Input(shape=(), dtype=tf.int64, name=USER)
    item_in = tf.keras.Input(shape=(), dtype=tf.int64, name=ITEM)
    tower_kwargs = {"embedding_dim": config.embedding_dim,
                    "output_dim": config.tower_output_dim,
                    "feature_dim": config.feature_dim, "l2": config.l2}
    user_vec = UserTower.from_vocab(vocabs, side, **tower_kwargs)(user_in)
    item_vec = ItemTower.from_vocab(vocabs, side, **tower_kwargs)(item_in)

    # The head is the one RatingHead defines (also used inside UnifiedModel), applied to
    # the symbolic tower outputs: the same layers, names and creation order either way.
    # training=None lets Keras switch dropout on in fit and off in predict; clipping is
    # ClipRating's (inference only), so the head itself is built without a range.
    head = RatingHead.from_rating_config(config.replace(clip_predictions=False),
                                         len(vocabs.user), len(vocabs.item),
                                         global_mean=global_mean)
    out = head.predict({USER: user_in, ITEM: item_in}, user_vec, item_vec, training=None)
    if unknown_users is not None:
        out = unknown_users([user_in, item_in, out])
    if config.clip_predictions and rating_range is not None:
        out = ClipRating(*rating_range, name="clip")(out)
    return tf.keras.Model(inputs={USER: user_in, ITEM: item_in}, outputs=out,
                          name="rating_model")


def unknown_user_gate(config: RatingConfig, fit_table: Interactions, vocabs: Vocabularies,
                      seed: int = 42) -> UnknownUserRating | None:
    """The ``UnknownUserRating`` layer of a model fit on ``fit_table`` (``None`` with
    ``config.unknown_users="model"`` or hashed user IDs, where index 0 is a real bucket):
    item-only ridge biases of ``fit_table`` (λ by ``select_bias_fit``) for the users it
    has no rows of."""
    if config.unknown_users != "bias" or USER in config.hash_buckets:
        return None
    fit, _ = select_bias_fit(fit_table, vocabs, seed=seed, user_biases=False)
    trained = np.bincount(vocabs.user.lookup(fit_table.user_id), minlength=len(vocabs.user))
    trained[0] = 0
    return UnknownUserRating.from_fit(fit, trained > 0, name="unknown_users")


def compile_rating_model(model: tf.keras.Model, config: RatingConfig) -> tf.keras.Model:
    """MSE loss, RMSE / MAE metrics, the configured optimizer (its slots built) and
    ``steps_per_execution``."""
    model.compile(optimizer=optimizer(config.optimizer, config.learning_rate,
                                      config.weight_decay, model=model),
                  loss=tf.keras.losses.MeanSquaredError(),
                  metrics=[tf.keras.metrics.RootMeanSquaredError(name="rmse"),
                           tf.keras.metrics.MeanAbsoluteError(name="mae")],
                  steps_per_execution=config.steps_per_execution)
    # The optimizer's slots now rather than in Keras's first step: a tf.function whose
    # first call creates variables is traced twice.
    model.optimizer.build(model.trainable_variables)
    trace_steps_once(model)
    return model


@dataclass
class TrainedRating:
    """What ``train_rating`` returns: everything needed to evaluate, export or resume."""

    model: tf.keras.Model
    vocabs: Vocabularies
    side_features: SideFeatures | None
    history: dict[str, list[float]]
    config: RatingConfig
    global_mean: float = 0.0
    stopped_epoch: int = 0

    def evaluate(self, table: Interactions, batch_size: int = 8192) -> dict[str, float]:
        return evaluate_rating(self.model, table, self.vocabs, batch_size=batch_size)


def train_rating(train: Interactions, validation: Interactions | None, config: RatingConfig,
                 *, vocabs: Vocabularies | None = None, seed: int = 42,
                 callbacks: Sequence[tf.keras.callbacks.Callback] = (), verbose: int = 1,
                 log_dir: str | os.PathLike | None = None,
                 backup_dir: str | os.PathLike | None = None,
                 strategy: tf.distribute.Strategy | str | None = None) -> TrainedRating:
    """Train a rating model with early stopping on validation RMSE.

    * ``vocabs`` default to ``Vocabularies.build(train)``; side-feature tables are built
      from ``train`` too.
    * ``validation=None``: ``config.validation_fraction`` (10%) of the training pairs are
      carved off with ``random_split(train, seed=seed)`` and used only for early stopping
      (on ``val_rmse``, best weights restored); the model trains on the other 90%.
      ``validation_fraction=0`` trains on everything for ``config.epochs`` epochs with no
      early stopping. ``config.refit`` then retrains from scratch on all of
      ``train`` for the best epoch count found on the slice.
    * ``log_dir``: TensorBoard logs; ``backup_dir``: rerunning the same call after a kill
      resumes from the last finished epoch, or the refit without searching again
      (``tfrec_p5.training.fit``, ``tfrec_p5.training.search_then_refit``).
    * Seeds: ``tf.keras.utils.set_random_seed(seed)`` (Python, numpy, TF) and the shuffle.
    * ``strategy``: a ``tf.distribute.Strategy`` or a name (``default``, ``mirrored``,
      ``multi_worker``, ``parameter_server``; ``tfrec_p5.distribute.resolve_strategy``);
      ``None`` = the strategy in scope (by default plain single-process training).
      ``config.batch_size`` is the global batch.
    """
    strategy = distribute.resolve_strategy(strategy)
    vocabs = vocabs or Vocabularies.build(train, config.min_count, config.hash_buckets)
    return train_with_refit(train_rating, _fit_rating, train, validation, config, seed=seed,
                            backup_dir=backup_dir, verbose=verbose, vocabs=vocabs,
                            callbacks=callbacks, log_dir=log_dir, strategy=strategy)


def _fit_rating(train, fit_table, validation, config, *, vocabs, seed, callbacks, verbose,
                log_dir, backup_dir, strategy) -> tuple[TrainedRating, dict | None]:
    """One fit of ``train_rating`` on ``fit_table`` and its ``search_record``."""
    side = side_features_for(config, train, vocabs, fit_table)
    global_mean = float(np.mean(fit_table.rating))
    rating_range = train.rating_range or (float(np.min(train.rating)),
                                          float(np.max(train.rating)))

    def build(config: RatingConfig) -> tf.keras.Model:
        return build_rating_model(vocabs, side, config, global_mean=global_mean,
                                  rating_range=rating_range,
                                  unknown_users=unknown_user_gate(config, fit_table, vocabs,
                                                                  seed))

    train_ds, steps = distribute.fit_input(strategy, lambda **kw: pointwise_dataset(
        fit_table, vocabs, config.batch_size, shuffle=True, seed=seed, **kw))
    val_ds = val_steps = None
    if validation is not None:
        val_batch = max(config.batch_size, 8192)
        val_ds, val_steps = distribute.fit_input(strategy, lambda **kw: pointwise_dataset(
            validation, vocabs, val_batch, **kw))
    model, history = _fit_model(build, config, train_ds, val_ds, steps=steps,
                                val_steps=val_steps, strategy=strategy, backup_dir=backup_dir,
                                log_dir=log_dir, callbacks=callbacks, verbose=verbose)
    if distribute.is_parameter_server(strategy):  # serve / evaluate from plain variables
        probe_x = next(iter(pointwise_dataset(fit_table, vocabs, 256)))[0]
        model = distribute.unsharded_copy(model, lambda: compile_rating_model(build(config),
                                                                              config),
                                          probe=lambda m: m(probe_x, training=False))
    trained = TrainedRating(model, vocabs, side, dict(history.history), config, global_mean,
                            history.stopped_epoch)
    return trained, search_record(history, "val_rmse")


def _fit_model(build, config: RatingConfig, train_ds: tf.data.Dataset,
               val_ds: tf.data.Dataset | None, *, steps, val_steps, strategy, backup_dir,
               log_dir, callbacks, verbose) -> tuple[tf.keras.Model, FitHistory]:
    """``build(config)`` compiled in the strategy's scope and fit on ``train_ds``, early
    stopping on ``val_ds``'s RMSE: the part the in-memory and the streamed trainer share."""
    with distribute.scope(strategy):
        model = build(config)
        per_call = distribute.steps_per_execution(strategy, config.steps_per_execution)
        compile_rating_model(model, config.replace(steps_per_execution=per_call))
    stop = val_ds is not None and config.patience > 0
    history = fit(model, train_ds, epochs=config.epochs, validation_data=val_ds,
                  steps_per_epoch=steps, validation_steps=val_steps,
                  monitor="val_rmse" if stop else None, patience=config.patience,
                  backup_dir=backup_dir, log_dir=log_dir, strategy=strategy,
                  callbacks=callbacks, verbose=verbose, name="train_rating")
    return model, history


def stream_refusals(config: RatingConfig) -> list[str]:
    """Why ``config`` cannot train on a streamed log (empty: it can), one phrase per field.

    Why these: a streamed log has no side features, and the implicit rated-items
    features (``history_len``), the unknown-user bias gate and hashing need a pass over
    every user's rows in memory, which streaming exists to avoid.
    """
    out = []
    if config.history_len > 0:
        out.append(f"history_len {config.history_len} (the rated-items features need "
                   "every user's rows in memory; use 0)")
    if config.unknown_users != "model":
        out.append(f"unknown_users {config.unknown_users!r} (its item-bias fit needs the "
                   "rows in memory; use 'model')")
    if config.hash_buckets:
        out.append("hash_buckets (the counting pass builds the vocabularies)")
    return out


def train_rating_stream(log: ParquetLog, scan: LogScan, config: RatingConfig, *,
                        seed: int = 42, callbacks: Sequence[tf.keras.callbacks.Callback] = (),
                        verbose: int = 1, log_dir: str | os.PathLike | None = None,
                        backup_dir: str | os.PathLike | None = None,
                        strategy: tf.distribute.Strategy | str | None = None) -> TrainedRating:
    """``train_rating`` on a log read from files, batch by batch (``tfrec_p5.data.stream``).

    Why: the same model and schedule as ``train_rating`` for a log that does not fit in
    memory: the fit rows train, the validation part stops early (``val_rmse``) and, with
    ``config.refit``, the model is trained again on fit + validation for the best epoch
    count. The vocabularies, mean rating and rating range come from ``scan``; the model
    has ID towers only (``stream_refusals`` lists what else a config may not ask for).
    ``config.validation_fraction`` must equal ``scan.split.validation``. A killed run
    resumes from ``backup_dir`` like ``train_rating``. ``strategy``: the default,
    ``mirrored`` or ``multi_worker`` (each worker streams the files; ``config.batch_size``
    is the global batch); not ``parameter_server``.

        log = open_log("parquet:logs/*.parquet")
        scan = log.scan(LogSplit(test=0.2, validation=0.1, seed=42))
        trained = train_rating_stream(log, scan, RatingConfig(history_len=0,
                                                              unknown_users="model"))
        evaluate_rating_stream(trained.model, log, scan)      # test RMSE / MAE
    """
    refused = stream_refusals(config)
    if refused:
        raise ValueError("a streamed log cannot train with " + "; ".join(refused))
    if abs(config.validation_fraction - scan.split.validation) > 1e-12:
        raise ValueError(f"config.validation_fraction {config.validation_fraction} differs "
                         f"from the scan's validation share {scan.split.validation}")
    if scan.rating_mean is None:
        raise DataError("the rating task needs a rating column", path=log.files[0])
    strategy = distribute.resolve_strategy(strategy)
    if distribute.is_parameter_server(strategy):
        raise ValueError("a streamed log trains under the default, mirrored or "
                         "multi_worker strategy, not parameter_server")
    distributed = not distribute.is_default(strategy)
    tf.keras.utils.set_random_seed(seed)
    validated = scan.rows["validation"] > 0

    def build(config: RatingConfig) -> tf.keras.Model:
        return build_rating_model(scan.vocabs, None, config, global_mean=scan.rating_mean,
                                  rating_range=scan.rating_range)

    def run(parts: tuple[str, ...], config: RatingConfig, validate: bool,
            backup: str | os.PathLike | None) -> tuple[TrainedRating, dict | None]:
        train_ds = log.dataset(scan, parts, config.batch_size, shuffle=True, seed=seed,
                               distributed=distributed)
        val_ds = (log.dataset(scan, ("validation",), max(config.batch_size, 8192),
                              distributed=distributed) if validate else None)
        model, history = _fit_model(build, config, train_ds, val_ds, steps=None,
                                    val_steps=None, strategy=strategy, backup_dir=backup,
                                    log_dir=log_dir, callbacks=callbacks, verbose=verbose)
        return (TrainedRating(model, scan.vocabs, None, dict(history.history), config,
                              scan.rating_mean, history.stopped_epoch),
                search_record(history, "val_rmse"))

    def refit(record: dict, refit_dir: str | None) -> TrainedRating:
        return refitted(run(("fit", "validation"), refit_config(config, record), False,
                            refit_dir)[0], record)

    if not (config.refit and validated):
        return run(("fit",), config, validated, backup_dir)[0]
    return search_then_refit(backup_dir, lambda: run(("fit",), config, True, backup_dir),
                             refit, rows=scan.rows["fit"] + scan.rows["validation"],
                             verbose=verbose)


def validation_plan(train: Interactions, validation: Interactions | None,
                    config: RatingConfig, seed: int = 42) -> str:
    """What ``train_rating(train, validation, config, seed=seed)`` does with validation
    data, as one phrase (``tfrec_p5.training.validation_plan``).

    Why a function beside ``train_rating``: the command line prints it before training
    starts, and it must follow the same rules (carved slice, early stopping, refit).
    """
    fit_table, validation = carve_validation(train, validation, config.validation_fraction,
                                             seed, by_time=carves_by_time(config))
    carved = fit_table is not train
    refit = config.refit and carved
    # val_rmse picks the epoch when early stopping is on or when the refit needs a count.
    monitor = "val_rmse" if validation is not None and (config.patience > 0 or refit) \
        else None
    return describe_plan(epochs=config.epochs,
                         validation_rows=len(validation) if validation is not None else 0,
                         carved_fraction=config.validation_fraction if carved else None,
                         monitor=monitor, patience=config.patience,
                         refit_rows=len(train) if refit else None,
                         by_time=carves_by_time(config))


def predict_ratings(model: tf.keras.Model, table: Interactions, vocabs: Vocabularies,
                    batch_size: int = 8192) -> np.ndarray:
    """Predicted ratings for the rows of ``table``, shape ``[n]`` (unknown IDs → OOV).

    A model trained under a ``tf.distribute`` strategy is called batch by batch in this
    process (``model.predict`` would shard the rows across the workers)."""
    ids = vocabs.encode(table)
    if not distribute.is_default(model.distribute_strategy):
        preds = [model({USER: tf.constant(ids[USER][s:s + batch_size]),
                        ITEM: tf.constant(ids[ITEM][s:s + batch_size])}, training=False)
                 for s in range(0, len(table), batch_size)]
        return np.concatenate([np.asarray(p, np.float64).reshape(-1) for p in preds])
    preds = model.predict({USER: ids[USER], ITEM: ids[ITEM]}, batch_size=batch_size,
                          verbose=0)
    return np.asarray(preds, dtype=np.float64).reshape(-1)


def evaluate_rating(model: tf.keras.Model, table: Interactions, vocabs: Vocabularies,
                    batch_size: int = 8192) -> dict[str, float]:
    """RMSE and MAE of ``model`` on ``table`` (inference mode: no dropout, clipped)."""
    return rating_metrics(predict_ratings(model, table, vocabs, batch_size), table.rating)


def evaluate_rating_stream(model: tf.keras.Model, log: ParquetLog, scan: LogScan,
                           parts: Sequence[str] = ("test",),
                           batch_size: int = 65536) -> dict[str, float]:
    """RMSE and MAE of ``model`` on the streamed rows of ``parts`` (default: the test
    part of ``scan``'s split), summed batch by batch (``RatingErrors``)."""
    errors = RatingErrors()
    predict = tf.function(lambda x: model(x, training=False), autograph=False)
    for features, ratings in log.dataset(scan, parts, batch_size):
        errors.add(predict(features).numpy(), ratings.numpy())
    return errors.result()
