"""``tfrec-p5 pretrain`` and ``tfrec-p5 finetune``: the pretraining workflow from the shell.

Why two commands: a backbone is pretrained once (on all interactions you have) and then
fine-tuned many times, for different tasks or label sets, each fine-tuned model exported
like any ``tfrec-p5 train`` model (same signatures, so ``predict`` / ``recommend`` /
``evaluate`` work on it unchanged).

    tfrec-p5 pretrain --data movielens:ml-100k --tasks retrieval,rating \\
        --out backbones/ml100k
    tfrec-p5 finetune --backbone backbones/ml100k --task rating \\
        --data movielens:ml-100k --out saved_models/ml100k_ft
    tfrec-p5 predict --model saved_models/ml100k_ft --user 1 --item 50

Both commands split ``--data`` with ``--split``/``--seed`` (default ``random:0.8``, seed
42) and use only the training part, so a finetune with the same split and seed is tested
on rows the backbone never saw. TensorFlow is imported only when a command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
from typing import Any

from tfrec_p5.cli.builtin import parse_weights
from tfrec_p5.cli.common import BACKUP_PREFIX, flat, format_table, read_config, resolve_strategy
from tfrec_p5.cli.registry import PROG, CliError, get_task, run_evaluate

__all__ = ["add_parsers"]


def _split(table, spec: str, seed: int, *, prefer_validation: bool = False):
    """``(train, held-out)``: the split's test part, or (``prefer_validation``, for
    pretraining metrics) its own validation part when it has one (leave-one-out: the
    item right after each user's training items, which next-item validation ranks)."""
    from tfrec_p5.data import parse_split

    split = parse_split(spec, table, seed=seed)
    if split is None:
        return table, None
    if prefer_validation and split.validation is not None and len(split.validation):
        return split.train, split.validation
    return split.train, split.test


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Pretrain on the training part of ``--data`` and write the backbone to ``--out``."""
    from tfrec_p5.training import RunGuard

    # The --out lock and the backup's settings record (tfrec_p5.training.backup), released
    # and cleared however the run ends.
    with RunGuard(refuse=lambda message: CliError(message, status=2)) as guard:
        return _pretrain_guarded(args, guard)


def _pretrain_guarded(args: argparse.Namespace, guard) -> int:
    # --strategy (tfrec_p5.distribute): parameter-server worker / ps tasks serve here.
    strategy = resolve_strategy(getattr(args, "strategy", None))
    from tfrec_p5 import distribute

    overrides = read_config(args.config)
    if os.path.exists(os.path.join(args.out, "manifest.json")) and not args.overwrite:
        raise CliError(f"{args.out} already holds a backbone (pass --overwrite to replace "
                       "it)")
    from tfrec_p5.data import load
    from tfrec_p5.models.refit import resume_message
    from tfrec_p5.pretraining.pretrainer import PretrainConfig, pretrain

    try:
        config = PretrainConfig.from_dict(overrides)
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        changes: dict[str, Any] = {"tasks": tuple(tasks)}
        if args.epochs is not None:
            changes["epochs"] = args.epochs
        if args.batch_size is not None:
            changes["batch_size"] = args.batch_size
        config = config.replace(**changes)
    except ValueError as err:
        raise CliError(str(err), status=2) from err
    info = sys.stderr if args.json else sys.stdout
    from tfrec_p5.training import check_training_data, command_line

    guard.lock(args.out, command_line(PROG, args), enabled=distribute.is_chief(strategy),
               info=info)
    table = check_training_data(load(args.data), args.split, info)
    train, test = _split(table, args.split, args.seed, prefer_validation=True)
    print(f"pretrain on {args.data} ({args.split}, seed {args.seed}): {len(train):,} "
          f"training rows; tasks {', '.join(tasks)}", file=info)
    # Like `train`: a killed run leaves a BackupAndRestore checkpoint; the same command
    # resumes from its last finished epoch.
    backup_dir = os.path.join(args.out, BACKUP_PREFIX + "pretrain")
    guard.check_backup(backup_dir, {
        "command": "pretrain", "data": args.data, "split": args.split, "seed": args.seed,
        "tasks": tasks, "weights": args.weights, "label_fraction": args.label_fraction,
        "epochs": args.epochs, "batch_size": args.batch_size, "config": overrides,
    }, data=[train], restart=args.restart, write=distribute.is_chief(strategy), info=info)
    message = resume_message(backup_dir)
    if message:
        print(message, file=info)
    redirect = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with redirect:
        pre = pretrain(train, weights=parse_weights(args.weights) or None, config=config,
                       label_fraction=args.label_fraction, validation=test, seed=args.seed,
                       out=args.out, data_spec=args.data, verbose=0 if args.quiet else 1,
                       backup_dir=backup_dir, strategy=strategy)
    if distribute.is_chief(strategy):
        shutil.rmtree(backup_dir, ignore_errors=True)
    manifest = dict(pre.backbone.manifest)
    manifest.update(split=args.split)
    print(f"backbone {args.out}: tasks {manifest['tasks']}, {manifest['epochs']} epochs, "
          f"{pre.seconds:.1f} s", file=info)
    for key, value in sorted(pre.metrics.items()):
        print(f"  {key:<40}{value:>12.4f}", file=info)
    if args.json:
        print(json.dumps({"backbone": args.out, "metrics": pre.metrics}, sort_keys=True,
                         allow_nan=False))
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tune a backbone on the training part of ``--data``, test, export."""
    overrides = read_config(args.config)
    from tfrec_p5.data import load
    from tfrec_p5.export.saved_model import export, validate_export_dir
    from tfrec_p5.export.unified import serving_module

    validate_export_dir(args.out)  # a bad --out fails now, not after training
    from tfrec_p5.pretraining.backbone import load_backbone
    from tfrec_p5.pretraining.finetuner import FinetuneConfig, finetune

    try:
        changes: dict[str, Any] = {"task": args.task}
        for key in ("freeze", "epochs", "batch_size", "backbone_lr_scale"):
            if getattr(args, key) is not None:
                changes[key] = getattr(args, key)
        config = FinetuneConfig.from_dict({**overrides, **changes})
    except ValueError as err:
        raise CliError(str(err), status=2) from err
    backbone = load_backbone(args.backbone)  # fail fast, before loading data
    info = sys.stderr if args.json else sys.stdout
    from tfrec_p5.training import check_training_data

    table = check_training_data(load(args.data), args.split, info)
    validation = None
    if args.task == "next_item":
        # next-item validation is the split's own (leave-one-out: each user's second-last
        # item); without one, finetune carves each user's last training item.
        from tfrec_p5.data import parse_split

        split = parse_split(args.split, table, seed=args.seed)
        train, validation, test = (table, None, None) if split is None else \
            (split.train, split.validation, split.test)
    else:
        train, test = _split(table, args.split, args.seed)
    print(f"finetune {args.backbone} for {args.task} (freeze {config.freeze}) on "
          f"{args.data} ({args.split}, seed {args.seed}): {len(train):,} training rows",
          file=info)
    redirect = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with redirect:
        tuned = finetune(backbone, train, config=config, validation=validation,
                         seed=args.seed, verbose=0 if args.quiet else 1)
    module = serving_module(tuned, k=args.top_k)
    task = get_task("sequential" if args.task == "next_item" else args.task)
    rows, metrics = [], {}
    if test is not None and len(test):
        values = run_evaluate(task, module.signature, test, (train, validation))
        rows.append(("test", len(test), values))
        metrics.update(flat("test", len(test), values))
    grown = tuned.backbone.manifest.get("grown") if tuned.backbone else None
    metadata = {
        "data": args.data, "split": args.split, "seed": args.seed,
        "backbone": os.path.abspath(args.backbone),
        "backbone_manifest": {k: backbone.manifest.get(k) for k in
                              ("data", "tasks", "weights", "epochs", "metrics",
                               "package_version", "format_version")},
        "backbone_grown": grown, "config": {"finetune": config.to_dict()},
        "epochs_run": tuned.epochs_run if isinstance(tuned.history, list)
        else len(tuned.history.get("loss", [])),
    }
    path = export(module, args.out, metadata=metadata, metrics=metrics)
    if rows:
        print(format_table(rows), file=info)
    print(f"exported {path} (signatures: {', '.join(module.signature_names())})", file=info)
    if args.json:
        print(json.dumps(metrics, sort_keys=True, allow_nan=False))
    return 0


def add_parsers(sub) -> None:
    """Add the ``pretrain`` and ``finetune`` subcommands to ``tfrec-p5``'s subparsers."""
    p = sub.add_parser("pretrain", help="pretrain shared towers on several tasks, save a "
                       "backbone", description="Train the towers of a unified model on "
                       "--tasks over the training part of --data and save a backbone "
                       "(towers, vocabularies, side features, manifest.json) to --out.")
    p.add_argument("--data", default="synthetic", metavar="SPEC", help="data spec "
                   "(default: synthetic)")
    p.add_argument("--split", default="random:0.8", metavar="SPEC", help="pretrain on the "
                   "training part of this split (random:F, temporal:F, leave-one-out, "
                   "tfrs:PATH, none); the test part (leave-one-out: the validation part) is "
                   "only evaluated (default random:0.8)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--tasks", default="retrieval,rating", help="comma-separated: retrieval, "
                   "rating, next_item (default retrieval,rating; rating is dropped for data "
                   "without ratings; next_item orders each user's rows by timestamp)")
    p.add_argument("--weights", metavar="TASK=W,...", help="loss weight per task")
    p.add_argument("--label-fraction", type=float, help="share of training ratings the "
                   "rating task sees (default all)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--config", metavar="FILE.json", help="PretrainConfig overrides (JSON)")
    p.add_argument("--overwrite", action="store_true", help="replace a backbone in --out")
    p.add_argument("--restart", action="store_true", help="discard the backup an "
                   "interrupted pretrain left in OUT/.backup-pretrain and start over "
                   "(without it, a rerun resumes from that backup, and refuses if its "
                   "settings or training data differ)")
    p.add_argument("--strategy", default="default",
                   choices=["default", "mirrored", "multi_worker", "parameter_server"],
                   help="tf.distribute strategy (see 'tfrec-p5 train --help'); multi_worker "
                   "and parameter_server read TF_CONFIG; --batch-size is the global batch")
    p.add_argument("--deterministic", action="store_true", help="bit-identical reruns "
                   "(oneDNN off, TF op determinism; see 'train --help')")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("--quiet", action="store_true", help="no Keras progress bar")
    p.add_argument("--out", required=True, metavar="DIR", help="backbone folder, e.g. "
                   "backbones/NAME")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("finetune", help="fine-tune a backbone with a fresh head, export it",
                       description="Load --backbone, grow it to new IDs, attach a fresh "
                       "--task head, train on the training part of --data, report test "
                       "metrics, export to --out/<version>/ like 'train' does.")
    p.add_argument("--backbone", required=True, metavar="DIR")
    p.add_argument("--task", default="rating", choices=["rating", "retrieval", "next_item"],
                   help="next_item: the backbone's item tower + its pretrained next-item "
                   "encoder (use --split leave-one-out); exports next_items / score_items")
    p.add_argument("--data", default="synthetic", metavar="SPEC")
    p.add_argument("--split", default="random:0.8", metavar="SPEC")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--freeze", choices=["none", "towers", "embeddings", "lower_lr", "auto"],
                   help="what to freeze (default auto; towers: only the new head trains; lower_lr: "
                   "everything trains, the backbone at --backbone-lr-scale x the LR; auto: "
                   "towers with few labels per user, lower_lr with many)")
    p.add_argument("--backbone-lr-scale", type=float)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--config", metavar="FILE.json", help="FinetuneConfig overrides (JSON)")
    p.add_argument("--top-k", type=int, default=100, help="recommend signature size")
    p.add_argument("--json", action="store_true", help="print the metrics JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no Keras progress bar")
    p.add_argument("--out", required=True, metavar="DIR", help="export folder, e.g. "
                   "saved_models/NAME")
    p.set_defaults(func=cmd_finetune)
