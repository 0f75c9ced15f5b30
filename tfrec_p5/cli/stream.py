"""``tfrec-p5 train --stream`` and ``evaluate`` of its export: a rating log read from files.

    tfrec-p5 train --task rating --data "parquet:logs/*.parquet" --stream --out saved_models/big
    tfrec-p5 evaluate --model saved_models/big

Why a path of its own: ``train``'s usual flow holds the whole table in memory (split
parts, hashes of every training row, in-memory references), which is what streaming
exists to avoid. Here the log is counted once (vocabularies, part sizes), split by a
seeded hash of each row's position (``tfrec_p5.data.stream``), trained on batch by batch,
and evaluated the same way; the export is the rating model's usual ``predict_rating``.
What it cannot do (other tasks, other splits, ``--test-data``, catalogs, other
strategies) is refused before the data is read.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys

from tfrec_p5.cli.builtin import _rating_config
from tfrec_p5.cli.common import BACKUP_PREFIX, flat, format_table
from tfrec_p5.cli.registry import CliError, TrainRequest

__all__ = ["STREAM_DEFAULTS", "cmd_evaluate_stream", "stream_split", "train_streamed"]

#: Config values a streamed run uses unless ``--config`` says otherwise (then it is
#: refused): both need every user's rows in memory (``stream_refusals``).
STREAM_DEFAULTS = {"history_len": 0, "unknown_users": "model"}


def stream_split(spec: str, validation: float, seed: int):
    """``--split random:F`` → ``LogSplit(test=1 - F)``, ``none`` → no test part."""
    from tfrec_p5.data.stream import LogSplit

    if spec == "none":
        return LogSplit(0.0, validation, seed)
    kind, _, fraction = spec.partition(":")
    try:
        train = float(fraction or 0.8)
    except ValueError:
        train = -1.0
    if kind != "random" or not 0.0 < train <= 1.0:
        raise CliError(f"--stream splits by a hash of each row's position: --split "
                       f"random:F or none, not {spec!r}", status=2)
    return LogSplit(round(1.0 - train, 12), validation, seed)


def check_stream_args(args: argparse.Namespace, task_name: str, strategy) -> None:
    """Refuse (exit 2) what a streamed run cannot do, before anything is read."""
    from tfrec_p5 import distribute

    problems = []
    if task_name != "rating":
        problems.append(f"--task {task_name} (streaming trains --task rating)")
    if not args.data.startswith("parquet:"):
        problems.append(f"--data {args.data} (streaming reads parquet:PATH, a glob, folder "
                        "or file)")
    for flag in ("test_data", "items", "users"):
        if getattr(args, flag, None):
            problems.append(f"--{flag.replace('_', '-')}")
    if distribute.is_parameter_server(strategy):
        problems.append("--strategy parameter_server (mirrored and multi_worker stream)")
    if problems:
        raise CliError("--stream cannot take " + "; ".join(problems), status=2)


def _config(request: TrainRequest):
    """The rating config of a streamed run and a note per value it changed."""
    from tfrec_p5.models.rating import stream_refusals

    config = _rating_config(request)
    changed = {k: v for k, v in STREAM_DEFAULTS.items()
               if k not in request.config and getattr(config, k) != v}
    config = config.replace(**changed)
    refused = stream_refusals(config)
    if refused:
        raise CliError("--stream cannot train with " + "; ".join(refused), status=2)
    notes = [f"streamed: {k} {v!r} instead of the default (it needs every user's rows in "
             "memory)" for k, v in changed.items()]
    return config, notes


def train_streamed(args: argparse.Namespace, guard, request: TrainRequest, strategy,
                   info) -> int:
    """``cmd_train`` with ``--stream`` (the module says what it does)."""
    from tfrec_p5 import distribute
    from tfrec_p5.data.stream import open_log
    from tfrec_p5.evaluation.streamed import streamed_bias_baseline
    from tfrec_p5.export.saved_model import export
    from tfrec_p5.export.serving import ServingModule, add_rating_signatures
    from tfrec_p5.models.bias import build_bias_model
    from tfrec_p5.models.rating import evaluate_rating_stream, train_rating_stream
    from tfrec_p5.training import command_line, optimizer_note

    config, notes = _config(request)
    split = stream_split(args.split, config.validation_fraction, args.seed)
    out = os.fspath(args.out)
    chief = distribute.is_chief(strategy)
    guard.lock(out, command_line("tfrec-p5", args), enabled=chief, info=info)
    log = open_log(args.data)
    print(f"data {args.data}: {len(log.files):,} Parquet file(s), {log.rows:,} rows in "
          f"{len(log.groups):,} row groups (streamed)", file=info)
    scan = log.scan(split, config.min_count)
    rows = scan.rows
    print(f"split {args.split} (seed {args.seed}, by a hash of each row's position): train "
          f"{rows['fit'] + rows['validation']:,}, test {rows['test']:,}; "
          f"{len(scan.vocabs.user) - 1:,} users, {len(scan.vocabs.item) - 1:,} items",
          file=info)
    print(f"validation: {rows['validation']:,} training rows ({split.validation:.0%}) for "
          "early stopping on val_rmse" + (", then a refit on all training rows"
                                          if config.refit and rows["validation"] else ""),
          file=info)
    backup_dir = os.path.join(out, BACKUP_PREFIX + "rating")
    guard.check_backup(backup_dir, {
        "command": "train --stream", "task": "rating", "data": args.data,
        "files": log.fingerprint(), "split": args.split, "seed": args.seed,
        "config": config.to_dict()}, data=[], restart=args.restart, write=chief, info=info)
    with distribute.use_strategy(strategy):
        trained = train_rating_stream(log, scan, config, seed=args.seed,
                                      verbose=0 if args.quiet else 1, log_dir=args.log_dir,
                                      backup_dir=backup_dir, strategy=strategy)
    note = optimizer_note(config.optimizer, trained.model)
    notes += [note] if note else []
    module = ServingModule(scan.vocabs)
    add_rating_signatures(module, trained.model, scan.rating_range)
    table, metrics, served = [], {}, "model"

    def report(label: str, key: str, n: int, values: dict) -> dict:
        table.append((label, n, values))
        metrics.update(flat(key, n, values))
        return values

    history = trained.history
    prefix = "search_val_" if "search_val_rmse" in history else "val_"
    ref = None
    if history.get(prefix + "rmse"):
        best = min(range(len(history[prefix + "rmse"])),
                   key=history[prefix + "rmse"].__getitem__)
        model_val = report("validation", "validation", rows["validation"],
                           {k: float(history[prefix + k][best]) for k in ("rmse", "mae")})
        if not args.no_references:
            ref = streamed_bias_baseline(log, scan)
            ref_val = report("validation: bias baseline", "bias_baseline_validation",
                             rows["validation"], ref.validation[ref.fit.l2])
            notes.append(f"reference bias baseline: {ref.choice}")
            if args.serve == "best" and ref_val["rmse"] < model_val["rmse"]:
                module = ServingModule(scan.vocabs)
                add_rating_signatures(module, build_bias_model(ref.fit), scan.rating_range)
                served = "bias baseline"
                notes.append("serving the bias baseline reference: it has the lower "
                             "validation RMSE; --serve model exports the model instead")
    elif not args.no_references:
        notes.append("no bias baseline: it chooses its λ on the validation part, and "
                     "there is none (validation_fraction 0)")
    if rows["test"]:
        scorers = {"model": lambda: evaluate_rating_stream(trained.model, log, scan)}
        if ref is not None:
            scorers["bias baseline"] = lambda: ref.evaluate(log, scan)
        report("test", "test", rows["test"], scorers.pop(served)())
        for name, score in scorers.items():
            label, key = (("test: model (not served)", "model_test") if name == "model"
                          else ("test: bias baseline", "bias_baseline_test"))
            report(label, key, rows["test"], score())
    metadata = {
        "data": args.data, "split": args.split, "seed": args.seed,
        "stream": dataclasses.asdict(split), "stream_files": log.fingerprint(),
        "validation": f"{split.validation:.0%} of the training rows (hash of the position)",
        "sizes": {"data": log.rows, "train": rows["fit"] + rows["validation"],
                  "validation": rows["validation"], "test": rows["test"]},
        "config": {"rating": config.to_dict()}, "rating_range": scan.rating_range,
        "epochs_run": len(history.get("loss", [])), "served": served,
        "strategy": getattr(args, "strategy", None) or "default", "tasks": ["rating"]}
    with distribute.write_dir(out, strategy) as target:
        path = export(module, target, metadata=metadata, metrics=metrics)
    if chief:
        shutil.rmtree(backup_dir, ignore_errors=True)
    print(format_table(table), file=info)
    for note in notes:
        print(f"note: {note}", file=info)
    print(f"exported {path} (signatures: {', '.join(module.signature_names())})", file=info)
    if not rows["test"]:
        print("note: no test metrics (--split none)", file=info)
    if args.json:
        print(json.dumps(metrics, sort_keys=True, allow_nan=False))
    return 0


def cmd_evaluate_stream(args: argparse.Namespace, loaded, version_dir: str,
                        meta: dict) -> int:
    """``evaluate`` of an export trained with ``--stream``: its test part, streamed again
    through ``predict_rating`` (the split is the export's; other data is refused)."""
    from tfrec_p5.data.stream import LogSplit, open_log
    from tfrec_p5.evaluation.streamed import evaluate_signature_stream

    info = sys.stderr if args.json else sys.stdout
    given = [flag for flag in ("split", "seed", "task", "protocol")
             if getattr(args, flag, None) is not None]
    if given:
        raise CliError(f"{version_dir} was trained on a streamed log; its test part is "
                       "fixed by the export (no --" + ", --".join(given) + ")", status=2)
    data = args.data or meta["data"]
    log = open_log(data)
    if log.fingerprint() != meta.get("stream_files"):
        print(f"warning: the files behind {data!r} changed since training (or are other "
              "files): the test part is recomputed from the row positions", file=info)
    split = LogSplit(**meta["stream"])
    if split.test == 0:
        raise CliError(f"{version_dir} was trained on every row (--split none): no test "
                       "part to evaluate", status=2)
    values, n = evaluate_signature_stream(loaded.signatures["predict_rating"], log, split)
    if args.json:
        print(json.dumps(flat("test", n, values), sort_keys=True, allow_nan=False))
    else:
        print(f"model {version_dir}; data {data} (streamed), split {meta['split']}, seed "
              f"{meta['seed']}")
        print(format_table([("test", n, values)]))
    return 0
