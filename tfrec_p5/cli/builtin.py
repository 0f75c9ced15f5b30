"""The built-in ``--task`` values: ``rating``, ``retrieval``, ``ranking``, ``all`` and
``sequential``, each a ``Task`` in the registry (``tfrec_p5.cli.registry``).

Each ``train`` function turns a ``TrainRequest`` into a config (defaults ← ``--config``
file ← ``--epochs`` / ``--batch-size``), trains through the model layer and returns the
``ServingModule`` to export; each ``evaluate`` scores an export's signatures; each ``plan``
says, from the same config, what training will do with validation data (``train``
prints it under the split line).

* ``rating``: the seed's two-input rating model; signature ``predict_rating``.
* ``retrieval``: two-tower retrieval (implicit feedback is enough); ``recommend``
  (= ``serving_default``) + ``rank``.
* ``ranking``: ranking head (pointwise MSE, or listwise with
  ``--config '{"listwise": "softmax"}'``); ``rank``.
* ``all``: the unified model with ``--weights`` (default ``rating=1,retrieval=1``);
  ``recommend``, ``rank``, ``predict_rating``.
* ``sequential``: next-item prediction (SASRec); ``next_items`` / ``score_items``.

TensorFlow is imported inside the functions, so ``tfrec-p5 --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from tfrec_p5.cli.registry import (
    CliError,
    SignatureGetter,
    Task,
    TrainRequest,
    TrainResult,
    register_task,
)

__all__ = ["DEFAULT_WEIGHTS", "parse_weights"]

DEFAULT_WEIGHTS = {"all": {"rating": 1.0, "retrieval": 1.0},
                   "retrieval": {"retrieval": 1.0}, "ranking": {"ranking": 1.0}}


def parse_weights(spec: str | None) -> dict[str, float]:
    """``"rating=1,retrieval=0.5"`` → ``{"rating": 1.0, "retrieval": 0.5}``."""
    out: dict[str, float] = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError as err:
            raise CliError(f"bad --weights entry {part!r}; use task=weight, e.g. "
                           "rating=1,retrieval=1", status=2) from err
    return out


def _config_values(defaults: Mapping[str, Any], request: TrainRequest,
                   overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``defaults`` ← ``--config`` file (``overrides``, default ``request.config``) ←
    ``--epochs`` / ``--batch-size``; an unknown key of the file is an error that names it
    and the known ones."""
    values = dict(defaults)
    overrides = request.config if overrides is None else overrides
    unknown = sorted(set(overrides) - set(values))
    if unknown:
        raise CliError(f"unknown config key(s) {unknown}; known: {sorted(values)}", status=2)
    values.update(overrides)
    if request.epochs is not None:
        values["epochs"] = request.epochs
    if request.batch_size is not None:
        values["batch_size"] = request.batch_size
    return values


def _from_dict(config_class, values: Mapping[str, Any]):
    try:
        return config_class.from_dict(values)
    except (TypeError, ValueError) as err:
        raise CliError(str(err), status=2) from err


# ---------------------------------------------------------------------- rating
def _rating_api():
    """The rating model module (``RatingConfig``, ``train_rating``); tests may replace it."""
    from tfrec_p5.models import rating

    return rating


def _rating_config(request: TrainRequest):
    api = _rating_api()
    return _from_dict(api.RatingConfig, _config_values(api.RatingConfig().to_dict(), request))


def _train_rating(request: TrainRequest) -> TrainResult:
    from tfrec_p5.data.errors import DataError
    from tfrec_p5.export.serving import ServingModule, add_rating_signatures

    if request.train.rating is None:
        raise DataError("the rating task needs a 'rating' column",
                        path=request.train.source or None, field="rating")
    api = _rating_api()
    config = _rating_config(request)
    trained = api.train_rating(request.train, request.validation, config, seed=request.seed,
                               verbose=request.verbose, log_dir=request.log_dir,
                               backup_dir=request.backup_dir)
    rating_range = request.train.rating_range or (float(request.train.rating.min()),
                                                  float(request.train.rating.max()))
    module = ServingModule(trained.vocabs)
    add_rating_signatures(module, trained.model, rating_range)
    config_dict = trained.config.to_dict() if hasattr(trained.config, "to_dict") else {}
    history = getattr(trained, "history", None) or {}
    metadata = {"rating_range": rating_range,
                "epochs_run": len(history.get("loss", [])),
                "stopped_epoch": int(getattr(trained, "stopped_epoch", 0) or 0)}
    return TrainResult(module, config=config_dict, metadata=metadata,
                       notes=_optimizer_notes(config.optimizer, trained.model),
                       **_carved_validation(request, config.validation_fraction, history,
                                            "rmse", ("rmse", "mae"), higher=False,
                                            by_time=config.validation_carve == "time"))


def _optimizer_notes(name: str, model) -> tuple[str, ...]:
    """The ``optimizer_note`` of a trained model, as ``TrainResult.notes``."""
    from tfrec_p5.training import optimizer_note

    note = optimizer_note(name, model)
    return (note,) if note else ()


def _carved_validation(request: TrainRequest, fraction: float, history: Mapping,
                       monitor: str, names: tuple[str, ...], *, higher: bool,
                       by_time: bool = False) -> dict:
    """The validation metrics ``names`` (``history["val_" + name]``, or the search's
    before a refit) of the epoch with the best ``monitor`` (``higher`` or lower is
    better) and the carved rows they were measured on (the trainers carve ``fraction``
    with ``carve_validation``'s rule and ``request.seed``): ``TrainResult`` fields for
    ``train``'s validation race, or nothing when the model carved no validation slice."""
    from tfrec_p5.data.splits import carve_validation

    if request.validation is not None:
        return {}
    prefix = "search_val_" if f"search_val_{monitor}" in history else "val_"
    values = history.get(prefix + monitor)
    if not values:
        return {}
    best = (max if higher else min)(range(len(values)), key=values.__getitem__)
    fit_rows, carved = carve_validation(request.train, None, fraction, request.seed,
                                        by_time=by_time)
    return {"validation_metrics": {name: float(history[prefix + name][best])
                                   for name in names if prefix + name in history},
            "validation_split": (fit_rows, carved)}


def _serve_rating_reference(reference, request: TrainRequest):
    """The bias baseline behind ``predict_rating``, clipped like the model."""
    from tfrec_p5.export.serving import ServingModule, add_rating_signatures

    train = request.train
    rating_range = train.rating_range or (float(train.rating.min()),
                                          float(train.rating.max()))
    return add_rating_signatures(ServingModule(reference.vocabs), reference.model,
                                 rating_range)


def _plan_rating(request: TrainRequest) -> str:
    from tfrec_p5.models.rating import validation_plan

    return validation_plan(request.train, request.validation, _rating_config(request),
                           seed=request.seed)


def _evaluate_rating(signatures: SignatureGetter, table) -> dict[str, float]:
    from tfrec_p5.evaluation.signatures import evaluate_signature

    return evaluate_signature(signatures("predict_rating"), table)


# ---------------------------------------------------------------------- retrieval / ranking / all
def _unified_config(task: str):
    def config(request: TrainRequest):
        from tfrec_p5.models.unified import RETRIEVAL_SELECTION, UnifiedConfig

        values = dict(request.config)
        options = dict(request.options or {})
        weights = dict(DEFAULT_WEIGHTS[task])
        if task == "all" and options.get("weights"):
            weights = parse_weights(options["weights"])
        elif "weights" in values:
            weights = {k: float(v) for k, v in values.pop("weights").items()}
        if task == "ranking" and weights.get("ranking", 0) <= 0:
            raise CliError("--task ranking needs a positive ranking weight", status=2)
        defaults = UnifiedConfig().to_dict()
        if task == "retrieval":  # carve, pick the epochs, refit: the validation race
            defaults.update(RETRIEVAL_SELECTION)
        values = _config_values(defaults, request, values)
        values["weights"] = weights
        unified = _from_dict(UnifiedConfig, values)
        _check_index(task, options.get("index"), unified.active())
        if options.get("items") and not unified.use_side_features:
            raise CliError("--items describes items by their features, which this config "
                           "does not use: add \"use_side_features\": true to --config",
                           status=2)
        if options.get("users"):
            from tfrec_p5.models.unified import new_users_unserved

            reason = new_users_unserved(unified)
            if reason:
                raise CliError(f"--users: users known only by their features need a "
                               f"config that answers them: {reason}", status=2)
        return unified
    return config


def _check_index(task: str, index: str | None, heads: list[str]) -> None:
    """``--index scann`` needs a retrieval head and loadable ScaNN ops: else exit 2 now,
    before the data load and training."""
    if index in (None, "brute_force"):
        return
    from tfrec_p5.export.unified import check_index

    try:
        check_index(index, heads)
    except ValueError as err:
        raise CliError(f"--index {index} for --task {task}: {err}", status=2) from err
    except ImportError as err:
        raise CliError(f"--index {index}: {err}", status=2) from err


def _train_unified(task: str):
    def train(request: TrainRequest) -> TrainResult:
        from tfrec_p5.data import catalog_users
        from tfrec_p5.export.unified import build_module, item_titles
        from tfrec_p5.models.unified import train_unified

        config = _unified_config(task)(request)
        if task == "all" and request.train.rating is None:  # implicit feedback
            kept = {k: v for k, v in config.weights.items() if k == "retrieval"}
            print(f"note: the data have no ratings; --task all trains the retrieval head "
                  f"only (weights {config.weights} -> {kept or {'retrieval': 1.0}})")
            config = config.replace(weights=kept or {"retrieval": 1.0})
        options = dict(request.options or {})
        items = _item_catalog(request, config.use_side_features)
        users = _user_catalog(request, config)
        trained = train_unified(request.train, request.validation, config,
                                seed=request.seed, verbose=request.verbose,
                                log_dir=request.log_dir, backup_dir=request.backup_dir,
                                catalog=items, users=users)
        top_k = options.get("top_k")
        module = build_module(trained, k=100 if top_k is None else int(top_k),
                              exclude_seen=not options.get("include_seen", False),
                              titles=item_titles(request.train, trained.vocabs),
                              index=options.get("index") or "brute_force")
        metadata = {"weights": config.weights, "heads": trained.tasks,
                    "top_k": module.recommend_k, "exclude_seen": module.exclude_seen,
                    "epochs_run": len(trained.history.get("loss", [])),
                    "epoch_seconds": [round(s, 3) for s in trained.epoch_seconds]}
        if "search_loss" in trained.history:  # the epoch search before the refit
            metadata["search_epochs_run"] = len(trained.history["search_loss"])
        if trained.rating_range is not None:
            metadata["rating_range"] = list(trained.rating_range)
        if items is not None:
            metadata["catalog"] = _catalog_record(items, request.train, trained.vocabs)
        if users is not None:
            metadata["user_catalog"] = {
                "users": len(users), "source": users.source,
                "new_users": int(len(catalog_users(request.train, trained.vocabs)))}
        # Recall@K as `evaluate` reports it: only for K up to the exported list's length.
        validation = {} if task != "retrieval" else _carved_validation(
            request, config.validation_fraction, trained.history, "recall@10",
            tuple(m for m in ("recall@10", "recall@100") if int(m[7:]) <= module.recommend_k)
            + ("ndcg@10",), higher=True)
        return TrainResult(module, config=config.to_dict(), metadata=metadata,
                           notes=_optimizer_notes(config.optimizer, trained.model), **validation)
    return train


def _serve_retrieval_reference(reference, request: TrainRequest):
    """An item-item reference (EASE, item-KNN, most popular) behind ``recommend`` and
    ``rank``, with the model's ``--top-k`` and seen-item rule and the data's titles."""
    from tfrec_p5.export.retrieval import item_item_module
    from tfrec_p5.export.unified import item_titles

    options = dict(request.options or {})
    top_k = options.get("top_k")
    return item_item_module(reference.model, reference.vocabs, reference.popularity,
                            k=100 if top_k is None else int(top_k),
                            exclude_seen=not options.get("include_seen", False),
                            titles=item_titles(request.train, reference.vocabs))


def _serve_sequential_reference(reference, request: TrainRequest):
    """An item-item reference (item-KNN, most popular) behind ``next_items`` and
    ``score_items``, with the model's ``--top-k``."""
    from tfrec_p5.export.sequential import item_item_next_module

    top_k = dict(request.options or {}).get("top_k")
    return item_item_next_module(reference.model, reference.vocabs,
                                 top_k=100 if top_k is None else int(top_k))


def _item_catalog(request: TrainRequest, features: bool):
    """The catalog's item table when the model represents items by their features
    (``features``), else ``None`` (and a note when the catalog lists items it then cannot
    serve)."""
    catalog = request.catalog
    if catalog is None or catalog.items is None:
        return None
    if features:
        return catalog.items
    new = catalog.new_ids(request.train)["item"]
    if len(new):
        print(f"note: {len(new):,} catalog items have no training rows and are not served: "
              "the model does not use item features")
    return None


def _user_catalog(request: TrainRequest, config):
    """The catalog's user table when it lists users with no training rows and ``config``
    answers them from their features (``--users`` was checked to do so), else ``None``
    with a note when such users then get the unknown-user answer."""
    from tfrec_p5.models.unified import new_users_unserved

    catalog = request.catalog
    if catalog is None or catalog.users is None:
        return None
    new = catalog.new_ids(request.train)["user"]
    if not len(new):
        return None
    reason = new_users_unserved(config)
    if reason is None:
        return catalog.users
    print(f"note: {len(new):,} catalog users have no training rows and get the "
          f"unknown-user answer: {reason}")
    return None


def _catalog_record(items, train, vocabs) -> dict:
    """What the export's metadata says about the catalog it was trained with."""
    from tfrec_p5.data import catalog_items

    return {"items": len(items), "source": items.source,
            "new_items": int(len(catalog_items(train, vocabs)))}


def _plan_unified(task: str):
    def plan(request: TrainRequest) -> str:
        from tfrec_p5.models.unified import validation_plan

        return validation_plan(request.train, request.validation,
                               _unified_config(task)(request), seed=request.seed)
    return plan


def _evaluate_unified(task: str):
    def evaluate(signatures: SignatureGetter, table) -> dict[str, float]:
        from tfrec_p5.evaluation.signatures import (
            evaluate_rank,
            evaluate_recommend,
            evaluate_signature,
        )

        out: dict[str, float] = {}
        if task in ("retrieval", "all"):
            out.update(evaluate_recommend(signatures, table))
        if task == "all" and table.rating is not None:
            try:
                rating = evaluate_signature(signatures("predict_rating"), table)
                out.update({f"rating_{k}": v for k, v in rating.items()})
            except Exception as err:  # noqa: BLE001  implicit-feedback 'all': no rating head
                if "predict_rating" not in str(err):
                    raise
        if task == "ranking":
            out.update(evaluate_rank(signatures, table))
        return out
    return evaluate


# ---------------------------------------------------------------------- all, joint
#: Splits whose held-out part is each user's last events (or nothing): ``--task all``
#: adds the next-item head there, so every task is scored on the same test events.
JOINT_SPLITS = ("leave-one-out", "leave_one_out", "loo", "none")


def _joint(request: TrainRequest) -> bool:
    """Whether ``--task all`` trains the joint model (``tfrec_p5.models.joint``): on a
    ``JOINT_SPLITS`` split, unless ``--weights`` leaves the next-item head out."""
    if request.split.partition(":")[0] not in JOINT_SPLITS:
        return False
    weights = dict(request.options or {}).get("weights")
    return weights is None or parse_weights(weights).get("next_item", 0.0) > 0


def _joint_config(request: TrainRequest):
    """``JointConfig`` ← ``--config`` (``{"weights", "pairs", "sequential"}``) ←
    ``--weights``; ``--epochs`` bounds the epochs (``sequential.epochs``),
    ``--batch-size`` is the pair batch (``pairs.batch_size``)."""
    from tfrec_p5.models.joint import JointConfig

    values = dict(request.config)
    unknown = sorted(set(values) - {"weights", "pairs", "sequential"})
    if unknown:
        raise CliError(f"unknown config key(s) {unknown} for --task all with the next-item "
                       "head; known: ['pairs', 'sequential', 'weights']", status=2)
    weights = dict(request.options or {}).get("weights")
    if weights:
        values["weights"] = parse_weights(weights)
    if request.epochs is not None:
        values["sequential"] = {**values.get("sequential", {}), "epochs": request.epochs}
    if request.batch_size is not None:
        values["pairs"] = {**values.get("pairs", {}), "batch_size": request.batch_size}
    return _from_dict(JointConfig, values)


def _train_joint(request: TrainRequest) -> TrainResult:
    """``--task all`` as the joint model: one export with every signature its heads back,
    raced on each user's last training event (``data.hold_out_last``)."""
    from tfrec_p5.data import hold_out_last
    from tfrec_p5.export.unified import build_module, item_titles
    from tfrec_p5.models.joint import train_joint

    config = _joint_config(request)
    options = dict(request.options or {})
    items = _item_catalog(request, config.sequential.use_item_features)
    fit_rows, validation = hold_out_last(request.train)
    trained = train_joint(request.train, config, seed=request.seed, verbose=request.verbose,
                          log_dir=request.log_dir, backup_dir=request.backup_dir,
                          catalog=items)
    top_k = options.get("top_k")
    module = build_module(trained, k=100 if top_k is None else int(top_k),
                          exclude_seen=not options.get("include_seen", False),
                          titles=item_titles(request.train, trained.vocabs))
    metadata = {"weights": {t: config.weights[t] for t in trained.tasks},
                "heads": trained.tasks, "top_k": module.recommend_k,
                "exclude_seen": module.exclude_seen, "best_epoch": trained.best_epoch,
                "epochs_run": len(trained.records), "max_len": trained.sequential.max_len,
                "train_seconds": round(trained.train_seconds, 1)}
    if trained.rating_range is not None:
        metadata["rating_range"] = list(trained.rating_range)
    if items is not None:
        metadata["catalog"] = _catalog_record(items, request.train, trained.vocabs)
    # The validation numbers under the names `evaluate` gives them; recommend's are those
    # of the head that answers it (one event per user: its HR@10 is the Recall@10).
    best = trained.best_metrics
    values = {f"next_item_{k}": v for k, v in best.items() if k.startswith(("hr@", "ndcg@"))}
    values.update({k: v for k, v in best.items() if k.startswith("rating_")})
    if trained.recommend_head == "next_item":
        values.update({"recall@10": best["hr@10"], "ndcg@10": best["ndcg@10"]})
    elif "retrieval_recall@10" in best:
        values.update({"recall@10": best["retrieval_recall@10"],
                       "ndcg@10": best["retrieval_ndcg@10"]})
    refit = config.sequential.refit and trained.best_epoch > 0
    return TrainResult(module, config=config.to_dict(), metadata=metadata,
                       validation_metrics=values if refit else None,
                       validation_split=(fit_rows, validation),
                       notes=(*trained.notes, *_optimizer_notes("auto", trained.model)))


def _train_all(request: TrainRequest) -> TrainResult:
    """The joint model where the split allows it (``_joint``), else the pair heads."""
    if _joint(request):
        return _train_joint(request)
    if not dict(request.options or {}).get("weights"):
        print(f"note: --task all trains the next-item head too with --split leave-one-out "
              f"or none (each user's last event held out); --split {request.split} trains "
              "the pair heads only")
    return _train_unified("all")(request)


def _all_config(request: TrainRequest):
    """``--task all``'s config, checked before the data load: a ``JointConfig``, or the
    pair heads' ``UnifiedConfig`` (a next-item weight there is a usage error)."""
    if _joint(request):
        return _joint_config(request)
    weights = dict(request.options or {}).get("weights")
    if weights and parse_weights(weights).get("next_item", 0.0) > 0:
        raise CliError(f"--weights next_item: the next-item head trains with --split "
                       f"leave-one-out or none (each user's last event held out), not "
                       f"--split {request.split}", status=2)
    return _unified_config("all")(request)


def _plan_all(request: TrainRequest) -> str:
    if not _joint(request):
        return _plan_unified("all")(request)
    from tfrec_p5.data import hold_out_last

    config = _joint_config(request)
    _, validation = hold_out_last(request.train)
    head = "next-item NDCG@10" if config.weights.get("next_item", 0) > 0 else "Recall@10"
    return (f"each user's last training event ({len(validation):,} rows): early stopping "
            f"on the {head} (patience {config.sequential.patience}, at most "
            f"{config.sequential.epochs} epochs)"
            + (", then a refit on every training row" if config.sequential.refit else ""))


def _evaluate_all(signatures: SignatureGetter, table, *, history=None,
                  protocol: str | None = None) -> dict[str, float]:
    """The pair heads' metrics (``recommend``, ``predict_rating``) and, for a joint
    model, the next-item head's after each user's ``history`` (``next_item_`` keys)."""
    from tfrec_p5.evaluation.signatures import evaluate_after_history

    out = _evaluate_unified("all")(signatures, table)
    try:
        signatures("next_items")
    except (KeyError, CliError):  # a pair-heads model (in memory / loaded export)
        return out
    values = evaluate_after_history(signatures, table, history=history, protocol=protocol)
    out.update({f"next_item_{k}": v for k, v in values.items()})
    return out


# ---------------------------------------------------------------------- sequential
def _sequential_config(request: TrainRequest):
    """``SequentialConfig`` defaults ← ``--config`` ← ``--epochs``/``--batch-size``;
    ``--top-k`` sets how many items ``next_items`` returns."""
    from tfrec_p5.models.sequential import SequentialConfig

    values = _config_values(SequentialConfig().to_dict(), request)
    options = dict(request.options or {})
    if options.get("top_k") is not None:
        values["top_k"] = int(options["top_k"])
    config = _from_dict(SequentialConfig, values)
    if options.get("items") and not config.use_item_features:
        raise CliError("--items describes items by their features, which this config does "
                       "not use (\"use_item_features\": false)", status=2)
    return config


def _train_sequential(request: TrainRequest) -> TrainResult:
    from tfrec_p5.data import next_item_validation
    from tfrec_p5.export.sequential import sequential_module
    from tfrec_p5.models.sequential import train_sequential

    config = _sequential_config(request)
    items = _item_catalog(request, config.use_item_features)
    # Validation asks what the test asks, never random pairs: under a temporal split the
    # first event after the same time cut inside the training part, otherwise each
    # user's last training event (the split's own validation part under leave-one-out).
    fit_rows, validation = next_item_validation(request.train, request.split)
    trained = train_sequential(fit_rows, validation, config, seed=request.seed,
                               verbose=request.verbose, log_dir=request.log_dir,
                               backup_dir=request.backup_dir, catalog=items)
    module = sequential_module(trained.vocabs, trained.head, top_k=config.top_k,
                               side_features=trained.side_features)
    metadata = {"epochs_run": trained.epochs_run, "best_epoch": trained.best_epoch,
                "train_seconds": round(trained.train_seconds, 1),
                "best_validation": trained.best_metrics, "top_k": config.top_k,
                "max_len": trained.config.max_len, "loss": trained.config.loss}
    refit = config.refit and len(validation) > 0 and trained.best_epoch > 0
    metadata["refit_on_validation"] = refit
    if items is not None:
        metadata["catalog"] = _catalog_record(items, request.train, trained.vocabs)
    race, notes = trained.race_metrics, [*trained.data_rules]
    if race is not None:  # the race must not give the model its best epoch's bonus
        notes.append("the model's validation row is cross-fitted (its epoch picked on one "
                     "half of the validation users, scored on the other, both ways); the "
                     f"kept epoch's own validation NDCG@10 is "
                     f"{trained.best_metrics.get('ndcg@10', float('nan')):.4f}")
    return TrainResult(module, config=trained.config.to_dict(), metadata=metadata,
                       validation_metrics=race if race is not None
                       else trained.best_metrics if refit else None,
                       validation_split=(fit_rows, validation),
                       notes=(*notes, *_optimizer_notes("auto", trained.model)))


def _plan_sequential(request: TrainRequest) -> str:
    from tfrec_p5.data import next_item_validation, next_item_validation_rule
    from tfrec_p5.models.sequential import validation_plan

    fit_rows, validation = next_item_validation(request.train, request.split)
    return f"{next_item_validation_rule(request.split)}: " + validation_plan(
        fit_rows, validation, _sequential_config(request))


def _evaluate_sequential(signatures: SignatureGetter, table, *, history=None,
                         protocol: str | None = None) -> dict[str, float]:
    from tfrec_p5.evaluation.signatures import evaluate_after_history

    return evaluate_after_history(signatures, table, history=history, protocol=protocol)


# ---------------------------------------------------------------------- references
def _rating_references(fitted, k: int, seed: int) -> list:
    from tfrec_p5.evaluation.served import bias_baseline

    return [bias_baseline(fitted, seed=seed)]


def _pair_references(task: str):
    def references(fitted, k: int, seed: int) -> list:
        from tfrec_p5.evaluation.served import bias_baseline, retrieval_references

        if task == "ranking":
            return [bias_baseline(fitted, seed=seed),
                    retrieval_references(fitted, k=k, seed=seed)[0]]
        refs = retrieval_references(fitted, k=k, seed=seed)
        if task == "all" and fitted.rating is not None:  # the rating part: bias baseline
            bias = bias_baseline(fitted, seed=seed)
            refs = [dataclasses.replace(r, name=f"bias + {r.name}", rate=bias.rate,
                                        choice="; ".join(c for c in (bias.choice, r.choice)
                                                         if c)) for r in refs]
        return refs
    return references


def _sequential_references(fitted, k: int, seed: int) -> list:
    from tfrec_p5.evaluation.served import next_item_references

    return next_item_references(fitted, k=k)


_RECOMMEND_OPTIONS = frozenset({"top_k", "include_seen", "index", "items", "users"})
register_task(Task("rating", "explicit ratings (RMSE/MAE); signature predict_rating",
                   train=_train_rating, evaluate=_evaluate_rating, signature="predict_rating",
                   fold_validation=True, config=_rating_config, plan=_plan_rating,
                   references=_rating_references, headline=(("rmse", False),),
                   serve_reference=_serve_rating_reference))
register_task(Task("retrieval", "two-tower top-k retrieval (implicit feedback is enough); "
                   "signatures recommend (default) and rank", train=_train_unified("retrieval"),
                   evaluate=_evaluate_unified("retrieval"), config=_unified_config("retrieval"),
                   plan=_plan_unified("retrieval"),
                   options=_RECOMMEND_OPTIONS, signature="recommend",
                   fold_validation=True, references=_pair_references("retrieval"),
                   headline=(("recall@10", True),),
                   serve_reference=_serve_retrieval_reference))
register_task(Task("ranking", "ranking head (pointwise MSE or listwise softmax / ListMLE); "
                   "signature rank", train=_train_unified("ranking"),
                   evaluate=_evaluate_unified("ranking"), config=_unified_config("ranking"),
                   plan=_plan_unified("ranking"),
                   options=_RECOMMEND_OPTIONS, signature="rank",
                   fold_validation=True, references=_pair_references("ranking"),
                   headline=(("ndcg@10", True),)))
register_task(Task("all", "one model for every task the data support (--weights rating=1,"
                   "retrieval=1,next_item=1; next_item with --split leave-one-out or none); "
                   "recommend, rank, predict_rating, next_items", train=_train_all,
                   evaluate=_evaluate_all, config=_all_config, plan=_plan_all,
                   wants_history=True,
                   options=_RECOMMEND_OPTIONS | {"weights"}, signature="recommend",
                   fold_validation=True, references=_pair_references("all"),
                   headline=(("recall@10", True), ("rating_rmse", False))))
register_task(Task("sequential", "next-item prediction from a history (SASRec, "
                   "leave-one-out); signature next_items", train=_train_sequential,
                   evaluate=_evaluate_sequential, signature="next_items", wants_history=True,
                   fold_validation=True,
                   config=_sequential_config, options=frozenset({"top_k", "items"}),
                   plan=_plan_sequential, references=_sequential_references,
                   headline=(("ndcg@10", True),),
                   serve_reference=_serve_sequential_reference))
