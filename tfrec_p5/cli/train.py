"""``tfrec-p5 train``: load, split, train a task, report metrics, export one SavedModel.

    tfrec-p5 train --task rating --data synthetic --epochs 8 --out saved_models/demo

The split, seed, data spec and metrics are recorded in the export's metadata, so
``tfrec-p5 evaluate`` recomputes the same test part. A killed run leaves a
``BackupAndRestore`` backup in ``OUT/.backup-TASK``; the same command resumes from it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import sys

from tfrec_p5.cli.common import (
    BACKUP_PREFIX,
    add_run_options,
    describe,
    describe_catalog,
    flat,
    format_table,
    guarded,
    positive_int,
    read_config,
    resolve_strategy,
    split_parts,
)
from tfrec_p5.cli.registry import PROG, CliError, TrainRequest, get_task, run_evaluate
from tfrec_p5.cli.stream import check_stream_args, train_streamed

__all__ = ["add_parser", "cmd_train"]


@guarded
def cmd_train(args: argparse.Namespace, guard) -> int:
    """Train ``--task`` on ``--data``, evaluate, export to ``--out``."""
    task = get_task(args.task)
    strategy = resolve_strategy(getattr(args, "strategy", None), task.name)
    # Every option and config field is checked before the data load (which can take long).
    options = {"weights": args.weights, "top_k": args.top_k,
               "include_seen": args.include_seen or None, "index": args.index,
               "items": args.items, "users": args.users}
    given = sorted(k for k, v in options.items() if v is not None)
    unused = [k for k in given if k not in task.options]
    if unused:
        flags = ", ".join("--" + k.replace("_", "-") for k in unused)
        raise CliError(f"{flags} does nothing for --task {task.name}"
                       + (" (--weights is for --task all)" if "weights" in unused else ""),
                       status=2)
    request = TrainRequest(train=None, validation=None, seed=args.seed, epochs=args.epochs,
                           batch_size=args.batch_size, config=read_config(args.config),
                           log_dir=args.log_dir, verbose=0 if args.quiet else 1,
                           split=args.split,
                           options={k: v for k, v in options.items() if v is not None})
    if task.config is not None:
        task.config(request)
    from tfrec_p5 import distribute
    from tfrec_p5.data import Interactions, load
    from tfrec_p5.data.catalog import Catalog, attach_features, load_catalog, read_entities
    from tfrec_p5.data.fingerprint import table_fingerprint
    from tfrec_p5.data.sources import resolve_spec
    from tfrec_p5.export.saved_model import TrainingRecord, export, validate_export_dir

    validate_export_dir(args.out)  # a bad --out fails now, not after training

    info = sys.stderr if args.json else sys.stdout  # --json: stdout holds only the JSON
    if args.stream:
        check_stream_args(args, task.name, strategy)
        return train_streamed(args, guard, request, strategy, info)
    from tfrec_p5.training import check_training_data, command_line

    guard.lock(args.out, command_line(PROG, args), enabled=distribute.is_chief(strategy),
               info=info)
    given = Catalog(read_entities(args.items, "item") if args.items else None,
                    read_entities(args.users, "user") if args.users else None)
    table = check_training_data(attach_features(load(args.data), given), args.split, info)
    catalog = load_catalog(args.data).replaced(given.items, given.users)
    train, validation, test, validation_note = split_parts(table, args.split, args.seed)
    if task.fold_validation and validation is not None:
        train = Interactions.concat(train, validation)
        validation, validation_note = None, "folded into training (the task picks its epochs)"
    test_data = load(args.test_data) if args.test_data else None
    out = os.fspath(args.out)
    backup_dir = os.path.join(out, BACKUP_PREFIX + task.name)
    request = dataclasses.replace(request, train=train, validation=validation,
                                  backup_dir=backup_dir, catalog=catalog)
    # The split line says what training really does with validation data: a task that
    # folds the split's validation part into training may carve its own slice from it.
    if task.plan is not None:
        plan = task.plan(request)
        validation_note = plan if task.fold_validation else f"{validation_note}: {plan}"
    print(f"data {args.data}: {describe(table)}", file=info)
    parts = [f"train {len(train):,}"]
    if validation is not None:
        parts.append(f"validation {len(validation):,}")
    parts.append(f"test {len(test) if test is not None else 0:,}")
    print(f"split {args.split} (seed {args.seed}): {', '.join(parts)}"
          + (f"; test data {args.test_data}: {len(test_data):,}" if test_data else ""),
          file=info)
    print(f"validation: {validation_note}", file=info)
    if catalog:
        print(f"catalog: {describe_catalog(catalog, train)}", file=info)

    guard.check_backup(backup_dir, {
        "command": "train", "task": task.name, "data": args.data, "split": args.split,
        "seed": args.seed, "epochs": args.epochs, "batch_size": args.batch_size,
        "config": request.config, "weights": args.weights,
    }, data=[train, validation], restart=args.restart, write=distribute.is_chief(strategy),
        info=info)  # says "resuming from epoch N" when the backup is resumed
    redirect = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with redirect, distribute.use_strategy(strategy):  # Keras progress bars print to stdout
        result = task.train(request)

    module = result.module
    # Every row the model was fit on (a refit folds the validation part in): the export
    # keeps their hashes, so `evaluate` can refuse them as test rows later.
    fitted = train if validation is None else Interactions.concat(train, validation)
    rows, metrics, notes = [], {}, list(result.notes)

    def report(label: str, key: str, part_table, values: dict) -> dict:
        rows.append((label, len(part_table), values))
        metrics.update(flat(key, len(part_table), values))
        return values

    parts = [(part, t, before) for part, t, before in
             [("test", test, (train, validation)), ("test_data", test_data, (table,))]
             if t is not None and len(t)]
    k = getattr(module, "recommend_k", None) or 100
    use_refs = task.references is not None and not args.no_references
    # The validation race: the model against each reference on the rows the model was
    # validated on (references fitted on the rows the model saw before its validation).
    val_fit, val_rows = result.validation_split or (train, validation)
    race = {}
    if val_rows is not None and len(val_rows):
        race["model"] = report(
            "validation", "validation", val_rows,
            dict(result.validation_metrics) if result.validation_metrics is not None
            else run_evaluate(task, module.signature, val_rows, (val_fit,)))
        for ref in task.references(val_fit, k, args.seed) if use_refs else ():
            race[ref.name] = report(f"validation: {ref.name}", _ref_key(ref, "validation"),
                                    val_rows, run_evaluate(task, ref.signature, val_rows,
                                                           (val_fit,)))
    refs = task.references(fitted, k, args.seed) if use_refs else []
    model_module = module
    module, served, note = _serve(task, args.serve, request, module, refs, race)
    notes += [note] if note else []
    served_values = {}  # part -> the served module's metrics
    for part, part_table, before in parts:
        served_values[part] = report(part, part, part_table,
                                     run_evaluate(task, module.signature, part_table, before))
        if served != "model":
            report(f"{part}: model (not served)", f"model_{part}", part_table,
                   run_evaluate(task, model_module.signature, part_table, before))
    beaten = []
    for ref in refs:
        if ref.choice:
            notes.append(f"reference {ref.name}: {ref.choice}")
        for part, part_table, before in parts:
            values = report(f"{part}: {ref.name}", _ref_key(ref, part), part_table,
                            run_evaluate(task, ref.signature, part_table, before))
            if ref.name != served:
                beaten.extend(_beaten(task, ref.name, part, values, served_values[part]))
    record = TrainingRecord.from_table(fitted)
    metadata = {
        "data": args.data, "data_resolved": resolve_spec(args.data),
        "data_fingerprint": table_fingerprint(table),
        "test_overlap": record.trained_share(test) if test is not None else None,
        "test_data_resolved": resolve_spec(args.test_data) if args.test_data else None,
        "test_data_overlap": record.trained_share(test_data) if test_data else None,
        "split": args.split, "seed": args.seed,
        "deterministic": bool(getattr(args, "deterministic", False)),
        "test_data": args.test_data, "validation": validation_note,
        "sizes": {"data": len(table), "train": len(train),
                  "validation": len(validation) if validation is not None else 0,
                  "test": len(test) if test is not None else 0,
                  "test_data": len(test_data) if test_data is not None else 0},
        "config": {task.name: dict(result.config)},
        "strategy": getattr(args, "strategy", None) or "default",
        **dict(result.metadata),
        "served": served,
    }
    if served != "model":  # what the model's catalog served, the reference does not
        for key in ("catalog", "user_catalog"):
            metadata.pop(key, None)
    # multi_worker: every worker saves (saving may run collective ops), only the chief
    # into --out; the others into a temporary folder that is removed.
    with distribute.write_dir(out, strategy) as target:
        path = export(module, target, metadata=metadata, metrics=metrics,
                      training_record=record)
    if distribute.is_chief(strategy):
        shutil.rmtree(backup_dir, ignore_errors=True)

    print(format_table(rows), file=info)
    for note in notes + beaten:
        print(f"note: {note}", file=info)
    print(f"exported {path} (signatures: {', '.join(module.signature_names())})", file=info)
    if test is None and test_data is None:
        print("note: no test metrics (--split none without --test-data)", file=info)
    if args.json:
        print(json.dumps(metrics, sort_keys=True, allow_nan=False))
    return 0


def _ref_key(ref, part: str) -> str:
    return f"reference_{ref.name.replace(' ', '_')}_{part}"


def _serve(task, serve: str, request, module, refs: list, race: dict[str, dict]
           ) -> tuple[object, str, str]:
    """``(module to export, what it is, note)`` after the validation ``race``: the model,
    or the winning reference when ``serve`` is ``"best"`` and the task can serve it; the
    note says what happened (``""``: the model won) and what the model served that the
    reference cannot (``score_new_items``, catalog-only users or items, a ScaNN index).

    Why: a user never silently gets the worse model. A capability only the model has is
    not measured by the race (its rows are warm users and seen items), so it does not
    outvote what the race measured; ``--serve model`` keeps it.
    """
    winner = _winner(task, race)
    if winner == "model":
        return module, "model", ""
    ref = next(r for r in refs if r.name == winner)
    better = f"beats the model on validation ({_compare(task, race[winner], race['model'])})"
    if serve == "model":
        return module, "model", f"the {winner} reference {better}; serving the model " \
            "(--serve model)"
    if task.serve_reference is None or ref.model is None:
        return module, "model", f"the {winner} reference {better} but cannot be served by " \
            f"--task {task.name}; serving the model"
    candidate = task.serve_reference(ref, request)
    lacks = _lacks(module, candidate)
    lost = f"; this export lacks {lacks}, which the reference cannot serve" if lacks else ""
    return candidate, winner, f"serving the {winner} reference: it {better}{lost}; " \
        "--serve model exports the model instead"


def _winner(task, race: dict[str, dict]) -> str:
    """``"model"``, or the reference strictly better than the model and every other
    reference on the task's first headline metric (``race``: name → validation metrics)."""
    if not task.headline or task.headline[0][0] not in race.get("model", {}):
        return "model"
    metric, higher = task.headline[0]
    sign = 1.0 if higher else -1.0
    best = "model"
    for name, values in race.items():
        if metric in values and sign * values[metric] > sign * race[best][metric]:
            best = name
    return best


def _lacks(model, reference) -> str:
    """What the ``model`` module serves that the ``reference`` module cannot (``""``:
    nothing): a signature it lacks (``score_new_items``), users or items known only from
    a catalog file (a larger vocabulary), or a ScaNN index."""
    missing = sorted(set(model.signature_names()) - set(reference.signature_names()))
    if missing:
        return f"the model's {', '.join(missing)} signature" + ("s" if len(missing) > 1
                                                                 else "")
    more = [f"{model.vocab_sizes[k] - reference.vocab_sizes[k]:,} {k.removesuffix('_id')}s"
            for k in ("user_id", "item_id")
            if model.vocab_sizes.get(k, 0) > reference.vocab_sizes.get(k, 0)]
    if more:
        return f"the {' and '.join(more)} without training rows the model serves"
    if getattr(model, "custom_ops", None) and not getattr(reference, "custom_ops", None):
        return "the ScaNN index (--index scann)"
    return ""


def _compare(task, ref: dict, model: dict) -> str:
    metric = task.headline[0][0]
    return f"{metric} {ref[metric]:.4f} vs {model[metric]:.4f}"


def _beaten(task, name: str, part: str, ref: dict, model: dict) -> list[str]:
    """Where reference ``name`` does better than the model on a headline metric."""
    out = []
    for metric, higher in task.headline:
        if metric in ref and metric in model and \
                (ref[metric] > model[metric] if higher else ref[metric] < model[metric]):
            out.append(f"the {name} reference beats the model on {part} {metric} "
                       f"({ref[metric]:.4f} vs {model[metric]:.4f})")
    return out


def add_parser(sub, task_names: list[str]) -> None:
    """Add ``train`` to ``tfrec-p5``'s subparsers."""
    p = sub.add_parser("train", help="train a task, report test metrics, export a SavedModel",
                       description="Train, evaluate on the held-out part, export to "
                       "OUT/<version>/ (metadata and metrics in OUT/<version>/assets.extra/).")
    p.add_argument("--task", default="rating", choices=task_names,
                   help="what to train: " + ", ".join(task_names))
    p.add_argument("--data", default="synthetic", metavar="SPEC",
                   help="data spec: synthetic, movielens:PATH, amazon:PATH, csv:PATH?..., "
                   "parquet:PATH, tfds:NAME")
    p.add_argument("--split", default="random:0.8", metavar="SPEC",
                   help="random:F, temporal:F, leave-one-out, tfrs:PATH or none (train on all "
                   "of --data; evaluate on --test-data). Validation for early stopping: the "
                   "split's own, else 10%% of the training part (the line after the split "
                   "says what the task does with it)")
    p.add_argument("--seed", type=int, default=42, help="split and training seed")
    p.add_argument("--epochs", type=positive_int, metavar="N", help="override the config's "
                   "epochs (default: the task's config; rating: 40, retrieval: 20, upper bounds "
                   "for early stopping)")
    p.add_argument("--batch-size", type=positive_int, metavar="N", help="override the "
                   "config's batch size (default: the task's config)")
    p.add_argument("--config", metavar="FILE.json", help="hyper-parameters (JSON object)")
    p.add_argument("--log-dir", metavar="DIR", help="TensorBoard log folder")
    p.add_argument("--stream", action="store_true", help="--task rating on a Parquet log "
                   "larger than memory (--data parquet:GLOB): counted once, split by a hash "
                   "of each row's position, read batch by batch on every epoch")
    p.add_argument("--test-data", metavar="SPEC", help="also evaluate on this data after "
                   "training (e.g. a separate test file with --split none)")
    p.add_argument("--no-references", action="store_true",
                   help="skip the simple references (bias baseline, most popular, EASE / "
                   "item-KNN) that are fitted on the same rows and scored beside the model "
                   "(default: shown in the table and the JSON as reference_*)")
    p.add_argument("--serve", choices=("best", "model"), default="best",
                   help="what to export: best (default) = the model, or a simple reference "
                   "that beats it on validation where the task can serve one (rating: the "
                   "bias baseline; retrieval: EASE, item-KNN or most popular); model = "
                   "always the model. Either way the table shows both and a note says "
                   "which was served")
    p.add_argument("--json", action="store_true", help="print the metrics JSON on stdout "
                   "(progress goes to stderr)")
    p.add_argument("--weights", metavar="TASK=W,...", help="--task all: loss weight per head, "
                   "e.g. rating=1,retrieval=1,ranking=0 (0 switches a head off)")
    p.add_argument("--top-k", type=positive_int, metavar="K", help="items the exported "
                   "recommend / next_items signature returns (default: 100)")
    p.add_argument("--include-seen", action="store_true", help="recommend may return the "
                   "user's training items (default: excluded)")
    p.add_argument("--items", metavar="SPEC", help="item catalog: a CSV / Parquet file with "
                   "an ID column and feature columns (FILE?id=COL&text=a&numeric=b&multi=c). "
                   "Its features describe every item; items with no training rows are "
                   "served from them (needs use_side_features in --config). Default: the "
                   "data's own metadata (MovieLens u.item, Amazon attributes)")
    p.add_argument("--users", metavar="SPEC", help="user catalog, read like --items")
    p.add_argument("--index", choices=("brute_force", "scann"), help="how recommend finds "
                   "its top k: brute_force (default, exact; loads in stock TF Serving) or "
                   "scann (approximate, for large catalogs; needs a retrieval head, "
                   "pip install 'tfrec_p5[scann]', and TF Serving built with the ScaNN ops)")
    add_run_options(p, BACKUP_PREFIX + "TASK")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="export folder, e.g. saved_models/NAME (versions 1, 2, ... inside)")
    p.set_defaults(func=cmd_train)
