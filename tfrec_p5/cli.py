"""``tfrec-p5``: train, export, evaluate and query recommenders from the shell.

Why a CLI: the path from a data file to a TF Serving folder should be one command that
anyone can rerun, with the split, seed and metrics recorded next to the export.

    tfrec-p5 train --task rating --data synthetic --epochs 8 --out saved_models/demo
    tfrec-p5 predict --model saved_models/demo --user u1 --item i1
    tfrec-p5 evaluate --model saved_models/demo --data synthetic --split random:0.8 --json

Tasks plug in through a registry instead of an if/else switchboard: a task is a ``Task``
with a ``train`` function (``TrainRequest`` → ``TrainResult``: a ``ServingModule`` carrying
the task's signatures, plus config and metadata) and an ``evaluate`` function (signatures,
table → metrics). ``register_task(Task(...))`` makes ``--task NAME`` work for train and
evaluate. Tasks other issues will add are registered as *planned* (``train=None``); asking
for them exits with status 2 and says so.

Every failure prints one line ``tfrec-p5: error: ...`` to stderr and exits non-zero
(2 for usage errors and unavailable tasks, 1 otherwise); set ``TFREC_P5_DEBUG=1`` to get
the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # heavy imports (TensorFlow) stay out of `tfrec-p5 --help`
    from tfrec_p5.data.interactions import Interactions
    from tfrec_p5.export.serving import ServingModule

PROG = "tfrec-p5"
#: Share of the training data held out for early stopping when the split makes no
#: validation part (``random:F``, ``temporal:F``, ``none``, ``tfrs:PATH``).
VALIDATION_FRACTION = 0.1
BACKUP_PREFIX = ".backup-"

#: ``signatures(name)`` returns a callable ``f(user_id=..., item_id=...) -> dict``; it is
#: backed by an in-memory ``ServingModule`` or by a loaded SavedModel.
SignatureGetter = Callable[[str], Callable[..., Mapping[str, Any]]]


class CliError(Exception):
    """A user-facing error: printed as one line, exit status ``status``."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------- task registry
@dataclass
class TrainRequest:
    """Everything a task's ``train`` function needs, already loaded and split."""

    train: Interactions
    validation: Interactions | None
    seed: int = 42
    epochs: int | None = None
    batch_size: int | None = None
    config: Mapping[str, Any] = field(default_factory=dict)  # from --config FILE.json
    log_dir: str | None = None
    backup_dir: str | None = None
    verbose: int = 1
    options: Mapping[str, Any] = field(default_factory=dict)  # --weights, --top-k, ...


@dataclass
class TrainResult:
    """A trained task: the module to export (signatures added) and what to record."""

    module: ServingModule
    config: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    #: Validation metrics measured before a final refit folded the validation part into
    #: training (sequential); reported instead of re-scoring what is now training data.
    validation_metrics: Mapping[str, float] | None = None


@dataclass(frozen=True)
class Task:
    """One ``--task`` value. ``train=None`` means planned but not available yet."""

    name: str
    summary: str
    train: Callable[[TrainRequest], TrainResult] | None = None
    evaluate: Callable[[SignatureGetter, Interactions], dict[str, float]] | None = None
    signature: str | None = None  # the signature ``evaluate`` needs in an export
    planned: str = ""
    #: Train on train + validation and report no validation row: for tasks that pick their
    #: epochs themselves (rating: early stopping on a carved slice, then a refit on all of
    #: it) or whose defaults fix the epoch count and whose export excludes the training
    #: items (retrieval).
    fold_validation: bool = False


_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> None:
    """Make ``tfrec-p5 train --task NAME`` (and ``evaluate``) use ``task``.

        register_task(Task("retrieval", "top-k items for a user",
                           train=train_retrieval, evaluate=evaluate_retrieval,
                           signature="recommend"))
    """
    _TASKS[task.name] = task


def tasks() -> dict[str, Task]:
    """The registered tasks by name (available and planned)."""
    return dict(_TASKS)


# ---------------------------------------------------------------------- rating task
def _rating_api():
    """The rating model module (``RatingConfig``, ``train_rating``); tests may replace it."""
    from tfrec_p5.models import rating

    return rating


def _rating_config(api, request: TrainRequest):
    """``RatingConfig`` from defaults ← ``--config`` file ← ``--epochs``/``--batch-size``."""
    values = dict(api.RatingConfig().to_dict())
    unknown = sorted(set(request.config) - set(values))
    if unknown:
        raise CliError(f"unknown rating config key(s) {unknown}; known: {sorted(values)}")
    values.update(request.config)
    if request.epochs is not None:
        values["epochs"] = request.epochs
    if request.batch_size is not None:
        values["batch_size"] = request.batch_size
    return api.RatingConfig.from_dict(values)


def _train_rating(request: TrainRequest) -> TrainResult:
    from tfrec_p5.export.serving import ServingModule, add_rating_signatures

    if request.train.rating is None:
        from tfrec_p5.data.errors import DataError

        raise DataError("the rating task needs a 'rating' column",
                        path=request.train.source or None, field="rating")
    api = _rating_api()
    config = _rating_config(api, request)
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
    return TrainResult(module, config=config_dict, metadata=metadata)


def _evaluate_rating(signatures: SignatureGetter, table: Interactions) -> dict[str, float]:
    from tfrec_p5.export.scoring import evaluate_signature

    return evaluate_signature(signatures("predict_rating"), table)


register_task(Task("rating", "explicit ratings (RMSE/MAE); signature predict_rating",
                   train=_train_rating, evaluate=_evaluate_rating, signature="predict_rating",
                   fold_validation=True))


def _train_sequential(request: TrainRequest) -> TrainResult:
    from tfrec_p5.models.sequential import cli_train

    return cli_train(request)


def _evaluate_sequential(signatures: SignatureGetter, table: Interactions, *,
                         history: Interactions | None = None,
                         protocol: str | None = None) -> dict[str, float]:
    from tfrec_p5.export.sequential import cli_evaluate

    return cli_evaluate(signatures, table, history=history, protocol=protocol)


_evaluate_sequential.wants_history = True  # type: ignore[attr-defined]
register_task(Task("sequential", "next-item prediction from a history (SASRec, leave-one-out)"
                   "; signature next_items", train=_train_sequential,
                   evaluate=_evaluate_sequential, signature="next_items"))


def _run_evaluate(task: Task, signatures, table: Interactions, before=(),
                  protocol: str | None = None) -> dict[str, float]:
    """``task.evaluate``; tasks ranking a held-out item *after a history* (``sequential``)
    also get the events ``before`` it (train, or train + validation) and ``--protocol``."""
    if getattr(task.evaluate, "wants_history", False):
        from tfrec_p5.export.sequential import concat_tables

        history = concat_tables(*[p for p in before if p is not None]) if before else None
        return task.evaluate(signatures, table, history=history, protocol=protocol)
    return task.evaluate(signatures, table)

from tfrec_p5.tasks import cli as _unified_tasks  # noqa: E402  (retrieval, ranking, all)

_unified_tasks.register(sys.modules[__name__])


def _task(name: str) -> Task:
    task = _TASKS.get(name)
    available = sorted(n for n, t in _TASKS.items() if t.train is not None)
    if task is None:
        raise CliError(f"unknown task {name!r}; available: {', '.join(available)}", status=2)
    if task.train is None:
        raise CliError(f"task {name!r} is not available yet ({task.planned}); available: "
                       f"{', '.join(available)}", status=2)
    return task


# ---------------------------------------------------------------------- helpers
def _read_config(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError as err:
        raise CliError(f"config file {path!r} does not exist") from err
    except (OSError, ValueError) as err:
        raise CliError(f"cannot read config file {path!r}: {err}") from err
    if not isinstance(obj, dict):
        raise CliError(f"config file {path!r} must hold a JSON object")
    return obj


def _split_parts(table: Interactions, split_spec: str, seed: int):
    """``(train, validation, test, how validation was made)``.

    The validation part (early stopping) is the split's own if it makes one
    (leave-one-out), else ``VALIDATION_FRACTION`` of the training pairs, drawn with ``seed``.
    The test part is exactly ``parse_split(split_spec, table, seed).test``, which is what
    ``tfrec-p5 evaluate`` recomputes.
    """
    from tfrec_p5.data import parse_split
    from tfrec_p5.data.splits import carve_validation

    split = parse_split(split_spec, table, seed=seed)
    if split is None:
        train, validation, test = table, None, None
    else:
        train, validation, test = split.train, split.validation, split.test
    note = "the split's own validation part"
    if validation is None or len(validation) == 0:
        train, validation = carve_validation(train, None, VALIDATION_FRACTION, seed)
        note = f"random {VALIDATION_FRACTION:.0%} of the training pairs (seed {seed})"
    return train, validation, test, note


def _format_table(rows: Sequence[tuple[str, int, Mapping[str, float]]]) -> str:
    names = list(dict.fromkeys(m for _, _, metrics in rows for m in metrics))
    # Every column at least one space wider than its header / part name, so they never touch.
    w = {m: max(10, len(m) + 1) for m in names}
    pw = max([12] + [len(part) + 1 for part, _, _ in rows])
    lines = [f"{'part':<{pw}}{'examples':>10}" + "".join(f"{m:>{w[m]}}" for m in names)]
    for part, count, metrics in rows:
        lines.append(f"{part:<{pw}}{count:>10,}" + "".join(
            f"{metrics[m]:>{w[m]}.4f}" if m in metrics else f"{'-':>{w[m]}}" for m in names))
    return "\n".join(lines)


def _flat(part: str, count: int, metrics: Mapping[str, float]) -> dict[str, float | int]:
    out: dict[str, float | int] = {f"{part}_{k}": float(v) for k, v in metrics.items()}
    out[f"{part}_examples"] = int(count)
    return out


def _describe(table: Interactions) -> str:
    return f"{len(table):,} rows, {table.num_users:,} users, {table.num_items:,} items"


def say_resume(backup_dir: str, info: TextIO) -> None:
    """Tell the user what an interrupted run left to resume (nothing printed if nothing):
    the epoch of a ``BackupAndRestore`` backup, or a finished epoch search whose refit
    goes on (``tfrec_p5.models.refit``). Used by ``train`` and ``pretrain``."""
    from tfrec_p5.models.refit import load_search, refit_backup_dir

    done = backup_epochs(backup_dir) if os.path.isdir(backup_dir) else None
    if done is not None:
        print(f"resuming from epoch {done} (the last epoch an interrupted run completed; "
              f"backup {backup_dir})", file=info)
        return
    record = load_search(backup_dir) if os.path.isdir(backup_dir) else None
    if record is not None:
        refit_dir = refit_backup_dir(backup_dir)
        refit_done = backup_epochs(refit_dir) if os.path.isdir(refit_dir) else None
        print(f"resuming: the epoch search of an interrupted run finished "
              f"({record['best_epochs']} epochs); refit "
              + (f"from epoch {refit_done}" if refit_done else "from its start")
              + f" (backup {backup_dir})", file=info)


def backup_epochs(backup_dir: str) -> int | None:
    """Epochs completed in a ``BackupAndRestore`` backup (``None``: nothing to resume).

    Why read the checkpoint: the folder alone does not say whether an epoch was saved
    (Keras removes only ``chief/`` after a finished fit); the checkpoint's
    ``ckpt_saved_epoch`` is the 0-based epoch it was written at, so the number of
    finished epochs is one more.

        backup_epochs("saved_models/demo/.backup-rating")   # -> 2 after 2 epochs, or None
    """
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(os.path.join(backup_dir, "chief"))
    if latest is None:
        return None
    try:
        epoch = int(tf.train.load_checkpoint(latest).get_tensor(
            "ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE"))
    except (tf.errors.OpError, ValueError):
        return None  # unreadable backup: Keras starts over
    return epoch + 1 if epoch >= 0 else None


#: Tasks that train under ``--strategy`` other than ``default`` (``tfrec_p5.distribute``).
DISTRIBUTED_TASKS = ("rating", "retrieval", "ranking", "all")


def _strategy(name: str | None, task: str | None = None):
    """``--strategy`` → a ``tf.distribute.Strategy``. A worker / ps task of a
    ``parameter_server`` cluster (per ``TF_CONFIG``) serves here and never returns, so the
    same command runs on every machine of the cluster."""
    from tfrec_p5 import distribute

    name = name or "default"
    if distribute.is_server_task(name):
        distribute.serve_forever()
    if name != "default" and task is not None and task not in DISTRIBUTED_TASKS:
        raise CliError(f"--strategy {name} supports --task {', '.join(DISTRIBUTED_TASKS)}, "
                       f"not {task!r}", status=2)
    try:
        return distribute.resolve_strategy(name)
    except ValueError as err:
        raise CliError(str(err), status=2) from err


# ---------------------------------------------------------------------- commands
def _cmd_train(args: argparse.Namespace) -> int:
    from tfrec_p5.training import RunGuard

    # Holds the --out lock and checks the backup (tfrec_p5.training.backup); on any exit,
    # Ctrl-C included, it releases the lock and clears a backup with nothing to resume.
    with RunGuard(refuse=lambda message: CliError(message, status=2)) as guard:
        return _train_guarded(args, guard)


def _train_guarded(args: argparse.Namespace, guard) -> int:
    task = _task(args.task)
    strategy = _strategy(getattr(args, "strategy", None), task.name)
    from tfrec_p5 import distribute
    config_overrides = _read_config(args.config)  # fail fast, before loading data
    from tfrec_p5.data import load
    from tfrec_p5.export.saved_model import export, validate_export_dir

    validate_export_dir(args.out)  # a bad --out fails now, not after training

    info = sys.stderr if args.json else sys.stdout  # --json: stdout holds only the JSON
    from tfrec_p5.training import check_training_data, command_line

    guard.lock(args.out, command_line(PROG, args), enabled=distribute.is_chief(strategy),
               info=info)
    table = check_training_data(load(args.data), args.split, info)
    train, validation, test, validation_note = _split_parts(table, args.split, args.seed)
    if task.fold_validation and validation is not None:
        from tfrec_p5.data import Interactions

        train = Interactions.concat(train, validation)
        validation, validation_note = None, "folded into training (the task picks its epochs)"
    test_data = load(args.test_data) if args.test_data else None
    print(f"data {args.data}: {_describe(table)}", file=info)
    n_validation = len(validation) if validation is not None else 0
    print(f"split {args.split} (seed {args.seed}): train {len(train):,}, validation "
          f"{n_validation:,}, test {len(test) if test is not None else 0:,}"
          + (f"; test data {args.test_data}: {len(test_data):,}" if test_data else ""),
          file=info)

    out = os.fspath(args.out)
    backup_dir = os.path.join(out, BACKUP_PREFIX + task.name)
    guard.check_backup(backup_dir, {
        "command": "train", "task": task.name, "data": args.data, "split": args.split,
        "seed": args.seed, "epochs": args.epochs, "batch_size": args.batch_size,
        "config": config_overrides, "weights": args.weights,
    }, data=[train, validation], restart=args.restart, write=distribute.is_chief(strategy),
        info=info)
    say_resume(backup_dir, info)
    request = TrainRequest(train=train, validation=validation, seed=args.seed,
                           epochs=args.epochs, batch_size=args.batch_size,
                           config=config_overrides, log_dir=args.log_dir,
                           backup_dir=backup_dir, verbose=0 if args.quiet else 1,
                           options={"weights": args.weights, "top_k": args.top_k,
                                    "include_seen": args.include_seen})
    redirect = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with redirect, distribute.use_strategy(strategy):  # Keras progress bars print to stdout
        result = task.train(request)

    module = result.module
    rows, metrics = [], {}
    parts = [("validation", validation, (train,)), ("test", test, (train, validation)),
             ("test_data", test_data, (table,))]
    for part, part_table, before in parts:
        if part_table is None or len(part_table) == 0:
            continue
        if part == "validation" and result.validation_metrics is not None:
            values = dict(result.validation_metrics)
        else:
            values = _run_evaluate(task, module.signature, part_table, before)
        rows.append((part, len(part_table), values))
        metrics.update(_flat(part, len(part_table), values))

    metadata = {
        "data": args.data, "split": args.split, "seed": args.seed,
        "deterministic": bool(getattr(args, "deterministic", False)),
        "test_data": args.test_data, "validation": validation_note,
        "sizes": {"data": len(table), "train": len(train),
                  "validation": len(validation) if validation is not None else 0,
                  "test": len(test) if test is not None else 0,
                  "test_data": len(test_data) if test_data is not None else 0},
        "config": {task.name: dict(result.config)},
        "strategy": getattr(args, "strategy", None) or "default",
        **dict(result.metadata),
    }
    # multi_worker: every worker saves (saving may run collective ops), only the chief
    # into --out; the others into a temporary folder that is removed.
    with distribute.write_dir(out, strategy) as target:
        path = export(module, target, metadata=metadata, metrics=metrics)
    if distribute.is_chief(strategy):
        shutil.rmtree(backup_dir, ignore_errors=True)

    print(_format_table(rows), file=info)
    print(f"exported {path} (signatures: {', '.join(module.signature_names())})", file=info)
    if test is None and test_data is None:
        print("note: no test metrics (--split none without --test-data)", file=info)
    if args.json:
        print(json.dumps(metrics, sort_keys=True))
    return 0


def _load(model_path: str):
    from tfrec_p5.export.saved_model import load_export

    return load_export(model_path)


def _signature_getter(loaded, version_dir: str) -> SignatureGetter:
    def get(name: str):
        if name not in loaded.signatures:
            raise CliError(f"export {version_dir} has no {name!r} signature (it has "
                           f"{sorted(loaded.signatures)})")
        return loaded.signatures[name]
    return get


def _cmd_evaluate(args: argparse.Namespace) -> int:
    loaded, version_dir, meta = _load(args.model)
    names = meta.get("tasks") or (["rating"] if "predict_rating" in loaded.signatures else [])
    if args.task:
        names = [args.task]
    if not names:
        raise CliError(f"export {version_dir} names no task it was trained for; pass --task")
    default_data = meta.get("data") or "synthetic"
    if args.split is None and meta.get("split") == "none" and meta.get("test_data"):
        default_data = meta["test_data"]  # trained on all of --data, tested on --test-data
    data = args.data or default_data
    split_spec = args.split or meta.get("split") or "random:0.8"
    seed = args.seed if args.seed is not None else int(meta.get("seed", 42))
    from tfrec_p5.data import load, parse_split

    table = load(data)
    split = parse_split(split_spec, table, seed=seed)
    test = table if split is None else split.test
    getter = _signature_getter(loaded, version_dir)
    metrics: dict[str, float | int] = {}
    rows = []
    for name in names:
        task = _task(name)
        if task.evaluate is None:
            raise CliError(f"task {name!r} has no evaluation", status=2)
        values = _run_evaluate(task, getter, test, () if split is None else
                               (split.train, split.validation), protocol=args.protocol)
        rows.append((f"test ({name})" if len(names) > 1 else "test", len(test), values))
        metrics.update(_flat("test", len(test), values))
    if args.json:
        print(json.dumps(metrics, sort_keys=True))
    else:
        print(f"model {version_dir}; data {data}, split {split_spec}, seed {seed}")
        print(_format_table(rows))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    loaded, version_dir, _ = _load(args.model)
    import tensorflow as tf

    signature = _signature_getter(loaded, version_dir)("predict_rating")
    out = signature(user_id=tf.constant([args.user]), item_id=tf.constant([args.item]))
    rating = float(out["rating"].numpy().reshape(-1)[0])
    if args.json:
        print(json.dumps({"user_id": args.user, "item_id": args.item, "rating": rating}))
    else:
        print(f"{rating:.4f}")
    return 0


# ---------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), like other errors."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``tfrec-p5`` argument parser (subcommands train / evaluate / predict)."""
    parser = _Parser(prog=PROG, description="Train, export, evaluate and query tfrec_p5 "
                     "recommenders (SavedModels for TF Serving).")
    from tfrec_p5._version import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    task_names = sorted(_TASKS)

    p = sub.add_parser("train", help="train a task, report test metrics, export a SavedModel",
                       description="Train, evaluate on the held-out part, export to "
                       "OUT/<version>/ (metadata and metrics in OUT/<version>/assets.extra/).")
    p.add_argument("--task", default="rating", choices=task_names,
                   help="what to train: rating, retrieval, ranking or all (multi-task)")
    p.add_argument("--data", default="synthetic", metavar="SPEC",
                   help="data spec: synthetic, movielens:PATH, amazon:PATH, csv:PATH?..., "
                   "parquet:PATH, tfds:NAME (default: synthetic)")
    p.add_argument("--split", default="random:0.8", metavar="SPEC",
                   help="random:F, temporal:F, leave-one-out, tfrs:PATH or none (train on all "
                   "of --data; evaluate on --test-data). Validation for early stopping: the "
                   "split's own, else 10%% of the training part. Default random:0.8")
    p.add_argument("--seed", type=int, default=42, help="split and training seed (default 42)")
    p.add_argument("--epochs", type=int, help="override the config's epochs")
    p.add_argument("--batch-size", type=int, help="override the config's batch size")
    p.add_argument("--config", metavar="FILE.json", help="hyper-parameters (JSON object)")
    p.add_argument("--log-dir", metavar="DIR", help="TensorBoard log folder")
    p.add_argument("--test-data", metavar="SPEC", help="also evaluate on this data after "
                   "training (e.g. a separate test file with --split none)")
    p.add_argument("--json", action="store_true", help="print the metrics JSON on stdout "
                   "(progress goes to stderr)")
    p.add_argument("--quiet", action="store_true", help="no Keras progress bar")
    p.add_argument("--deterministic", action="store_true", help="bit-identical reruns "
                   "(same seed and data): oneDNN off and TF op determinism; a bit slower")
    p.add_argument("--weights", metavar="TASK=W,...", help="--task all: loss weight per head, "
                   "e.g. rating=1,retrieval=1,ranking=0 (0 switches a head off)")
    p.add_argument("--top-k", type=int, default=100, help="items the exported recommend "
                   "signature returns (default 100)")
    p.add_argument("--include-seen", action="store_true", help="recommend may return the "
                   "user's training items (default: excluded)")
    p.add_argument("--restart", action="store_true", help="discard the backup an "
                   "interrupted run left in OUT/.backup-TASK and start over (without it, a "
                   "rerun resumes from that backup, and refuses if its settings or training "
                   "data differ)")
    p.add_argument("--strategy", default="default",
                   choices=["default", "mirrored", "multi_worker", "parameter_server"],
                   help="tf.distribute strategy (default: one process). multi_worker and "
                   "parameter_server read the cluster from TF_CONFIG; run the same command "
                   "on every task (parameter-server workers / ps then just serve). "
                   "--batch-size is the global batch")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="export folder, e.g. saved_models/NAME (versions 1, 2, ... inside)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="recompute test metrics from an export",
                       description="Score the test part of --data/--split/--seed with the "
                       "export's signatures. Missing options default to those recorded in the "
                       "export's metadata.")
    p.add_argument("--model", required=True, metavar="DIR",
                   help="saved_models/NAME (latest version) or saved_models/NAME/<version>")
    p.add_argument("--data", metavar="SPEC", help="data spec (default: the training data)")
    p.add_argument("--split", metavar="SPEC", help="split spec; 'none' scores all of --data "
                   "(default: the training split)")
    p.add_argument("--seed", type=int, help="split seed (default: the training seed)")
    p.add_argument("--task", choices=task_names, help="default: the export's tasks")
    p.add_argument("--protocol", metavar="P", help="--task sequential: full (rank among all "
                   "items), sampled:99 (P5 direct: 1 + 99 negatives, seed 2022) or all "
                   "(default)")
    p.add_argument("--json", action="store_true", help="print one JSON object metric → value")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="predict one user's rating of one item",
                       description="Call the export's predict_rating signature for one pair; "
                       "unknown IDs use the out-of-vocabulary rows.")
    p.add_argument("--model", required=True, metavar="DIR",
                   help="saved_models/NAME (latest version) or saved_models/NAME/<version>")
    p.add_argument("--user", required=True, help="user ID as in the data, e.g. u1")
    p.add_argument("--item", required=True, help="item ID as in the data, e.g. i1")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=_cmd_predict)
    _unified_tasks.add_recommend_parser(sub)
    from tfrec_p5.pretraining import cli as _pretraining_cli  # pretrain / finetune (#5)

    _pretraining_cli.add_parsers(sub)
    return parser


def _import_tensorflow_quietly(warm_up: bool = True) -> None:
    """Import TensorFlow and run one op with file descriptor 2 pointed at /dev/null.

    Why: TF's C++ runtime logs oneDNN/CUDA banners to stderr before its logging is
    configured (``TF_CPP_MIN_LOG_LEVEL`` cannot silence them), which would bury our one-line
    errors. Python exceptions still surface (fd 2 is restored first); ``TFREC_P5_DEBUG=1``
    skips this. ``warm_up=False`` imports without running the op: ``--strategy
    multi_worker`` must configure collective ops before the first op runs.
    """
    if "tensorflow" in sys.modules:
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (embedded interpreter): import loudly
        import tensorflow  # noqa: F401
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        if warm_up:
            tf.constant(0) + 0  # device initialisation logs once, here
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def deterministic_ops(before_import: bool) -> None:
    """``--deterministic``: bit-identical runs for the same seed, data and machine.

    Why two steps: oneDNN's CPU kernels (on by default in TensorFlow) may sum in a different
    order from run to run (metrics then differ in the 8th digit), and they can only be
    switched off *before* TensorFlow is imported (``TF_ENABLE_ONEDNN_OPTS=0``); op
    determinism (``tf.config.experimental.enable_op_determinism``) is set after the
    import. Costs some CPU speed, hence opt-in.
    """
    if before_import:
        if "tensorflow" in sys.modules:
            print(f"{PROG}: note: --deterministic: TensorFlow was imported already, so "
                  "oneDNN stays on (set TF_ENABLE_ONEDNN_OPTS=0 before importing it)",
                  file=sys.stderr)
        else:
            os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
        return
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tfrec-p5`` with ``argv`` (default ``sys.argv[1:]``); return the exit status.

        main(["predict", "--model", "saved_models/demo", "--user", "u1", "--item", "i1"])
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # usage error (already printed), --help, --version
        return exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 2
    debug = os.environ.get("TFREC_P5_DEBUG", "") not in ("", "0")
    try:
        deterministic = getattr(args, "deterministic", False)
        if deterministic:
            deterministic_ops(before_import=True)
        if not debug:
            _import_tensorflow_quietly(
                warm_up=getattr(args, "strategy", None) != "multi_worker")
        if deterministic:
            deterministic_ops(before_import=False)
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (rerun the same train command to resume from its "
              "backup)", file=sys.stderr)
        return 130
    except CliError as err:
        if debug:
            raise
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return err.status
    except Exception as err:  # noqa: BLE001  one line, never a raw traceback
        if debug:
            raise
        from tfrec_p5.data.errors import DataError

        kind = "" if isinstance(err, (DataError, OSError)) or type(err).__name__ == \
            "ExportError" else f"{type(err).__name__}: "
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"{PROG}: error: {kind}{message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
