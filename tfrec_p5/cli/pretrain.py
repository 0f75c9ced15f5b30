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
from collections.abc import Mapping, Sequence
from typing import Any

from tfrec_p5.cli.builtin import parse_weights
from tfrec_p5.cli.common import (
    BACKUP_PREFIX,
    add_run_options,
    flat,
    format_table,
    format_value,
    guarded,
    positive_int,
    read_config,
    resolve_strategy,
)
from tfrec_p5.cli.registry import PROG, CliError, get_task, run_evaluate

__all__ = ["add_parsers", "rising_loss_note"]


def _split(table, spec: str, seed: int, *, prefer_validation: bool = False):
    """``(train, held-out, its name)``: the split's test part (``"test"``), or
    (``prefer_validation``, for pretraining metrics) its own validation part when it has
    one (``"validation"``; leave-one-out: the item right after each user's training items,
    which next-item validation ranks)."""
    from tfrec_p5.data import parse_split

    split = parse_split(spec, table, seed=seed)
    if split is None:
        return table, None, "test"
    if prefer_validation and split.validation is not None and len(split.validation):
        return split.train, split.validation, "validation"
    return split.train, split.test, "test"


def rising_loss_note(history: Mapping[str, Sequence[float]], part: str, epochs: int,
                     patience: int) -> str | None:
    """A note when the held-out loss was lowest before the last epoch of a run without
    early stopping (``None`` otherwise).

    Why a note and not early stopping by default: the published pretraining defaults run a
    fixed 20 epochs (more epochs helped the fine-tuned models although the pretraining
    validation loss rose), so the run keeps them and says what happened instead. The
    advice depends on the part: stopping on the *test* part would tune on it.
    """
    losses = list(history.get("val_loss") or [])
    if patience > 0 or len(losses) < 2:
        return None
    best = min(range(len(losses)), key=losses.__getitem__)
    rose = len(losses) - 1 - best
    if rose == 0:
        return None
    advice = ('set "patience" > 0 in --config FILE.json to stop early at the best epoch'
              if part == "validation" else
              'early stopping needs a validation part that is not the test part: '
              '--split leave-one-out and "patience" > 0 in --config FILE.json')
    return (f"note: {part} loss rose for the last {rose} epoch{'s' if rose > 1 else ''} "
            f"(lowest after epoch {best + 1} of {len(losses)}); pretraining runs its fixed "
            f"{epochs} epochs ({advice})")


@guarded
def cmd_pretrain(args: argparse.Namespace, guard) -> int:
    """Pretrain on the training part of ``--data`` and write the backbone to ``--out``."""
    # --strategy (tfrec_p5.distribute): parameter-server worker / ps tasks serve here.
    strategy = resolve_strategy(getattr(args, "strategy", None))
    from tfrec_p5 import distribute

    overrides = read_config(args.config)
    if os.path.exists(os.path.join(args.out, "manifest.json")) and not args.overwrite:
        raise CliError(f"{args.out} already holds a backbone (pass --overwrite to replace "
                       "it)")
    from tfrec_p5.data import load
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
    train, held_out, part = _split(table, args.split, args.seed, prefer_validation=True)
    if config.patience > 0 and held_out is not None and part == "test":
        raise CliError(f'"patience" {config.patience} early-stops pretraining on its '
                       f"held-out part, and with --split {args.split} that is the test part "
                       "a finetune is tested on; use --split leave-one-out (its own "
                       'validation part) or "patience": 0', status=2)
    print(f"pretrain on {args.data} ({args.split}, seed {args.seed}): {len(train):,} "
          f"training rows; tasks {', '.join(tasks)}"
          + (f"; held-out metrics on the {part} part ({len(held_out):,} rows)"
             if held_out is not None else ""), file=info)
    # Like `train`: a killed run leaves a BackupAndRestore checkpoint; the same command
    # resumes from its last finished epoch.
    backup_dir = os.path.join(args.out, BACKUP_PREFIX + "pretrain")
    guard.check_backup(backup_dir, {
        "command": "pretrain", "data": args.data, "split": args.split, "seed": args.seed,
        "tasks": tasks, "weights": args.weights, "label_fraction": args.label_fraction,
        "epochs": args.epochs, "batch_size": args.batch_size, "config": overrides,
    }, data=[train], restart=args.restart, write=distribute.is_chief(strategy), info=info)
    redirect = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with redirect:
        pre = pretrain(train, weights=parse_weights(args.weights) or None, config=config,
                       label_fraction=args.label_fraction, validation=held_out,
                       seed=args.seed, out=args.out, data_spec=args.data,
                       verbose=0 if args.quiet else 1, backup_dir=backup_dir,
                       strategy=strategy, held_out_name=part)
    if distribute.is_chief(strategy):
        shutil.rmtree(backup_dir, ignore_errors=True)
    manifest = dict(pre.backbone.manifest)
    manifest.update(split=args.split)
    note = rising_loss_note(pre.trained.history, part, config.epochs, config.patience)
    if note:
        print(note, file=info)
    print(f"backbone {args.out}: tasks {manifest['tasks']}, {manifest['epochs']} epochs, "
          f"{pre.seconds:.1f} s in total", file=info)
    # train_*: the last epoch's averages (as its progress line); {part}_*: the held-out part
    for key, value in sorted(pre.metrics.items()):
        print(f"  {key:<40}{format_value(key, value):>12}", file=info)
    if args.json:
        print(json.dumps({"backbone": args.out, "metrics": pre.metrics}, sort_keys=True,
                         allow_nan=False))
    return 0


@guarded
def cmd_finetune(args: argparse.Namespace, guard) -> int:
    """Fine-tune a backbone on the training part of ``--data``, test, export."""
    overrides = read_config(args.config)
    from tfrec_p5.data import load
    from tfrec_p5.export.saved_model import export, validate_export_dir
    from tfrec_p5.export.unified import item_titles, serving_module

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
    from tfrec_p5.training import check_training_data, command_line

    guard.lock(args.out, command_line(PROG, args), info=info)
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
        train, test, _ = _split(table, args.split, args.seed)
    print(f"finetune {args.backbone} for {args.task} (freeze {config.freeze}) on "
          f"{args.data} ({args.split}, seed {args.seed}): {len(train):,} training rows",
          file=info)
    # Like `train`: a killed run leaves a backup; the same command resumes from it.
    backup_dir = os.path.join(args.out, BACKUP_PREFIX + "finetune")
    guard.check_backup(backup_dir, {
        "command": "finetune", "backbone": os.path.abspath(args.backbone),
        "task": args.task, "data": args.data, "split": args.split, "seed": args.seed,
        "freeze": args.freeze, "epochs": args.epochs, "batch_size": args.batch_size,
        "backbone_lr_scale": args.backbone_lr_scale, "config": overrides,
    }, data=[train, validation], restart=args.restart, info=info)
    redirect = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with redirect:
        tuned = finetune(backbone, train, config=config, validation=validation,
                         seed=args.seed, verbose=0 if args.quiet else 1,
                         backup_dir=backup_dir)
    module = serving_module(tuned, k=args.top_k, titles=item_titles(train, tuned.vocabs))
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
    shutil.rmtree(backup_dir, ignore_errors=True)
    if rows:
        print(format_table(rows), file=info)
    print(f"exported {path} (signatures: {', '.join(module.signature_names())})", file=info)
    if args.json:
        print(json.dumps(metrics, sort_keys=True, allow_nan=False))
    return 0


def add_parsers(sub) -> None:
    """Add the ``pretrain`` and ``finetune`` subcommands to ``tfrec-p5``'s subparsers.

    Defaults of options that have one are shown by the parser's help formatter; options
    that default to "the config's value" say so, with the value of the default config.
    """
    p = sub.add_parser("pretrain", help="pretrain shared towers on several tasks, save a "
                       "backbone", description="Train the joint model of 'train --task "
                       "all' on --tasks over the training part of --data and save its "
                       "backbone (towers, the next-item encoder, vocabularies, side "
                       "features, manifest.json) to --out.")
    p.add_argument("--data", default="synthetic", metavar="SPEC", help="data spec: "
                   "synthetic, movielens:PATH, amazon:PATH, csv:PATH?..., parquet:PATH, "
                   "tfds:NAME")
    p.add_argument("--split", default="random:0.8", metavar="SPEC", help="pretrain on the "
                   "training part of this split (random:F, temporal:F, leave-one-out, "
                   "tfrs:PATH, none); the held-out part (leave-one-out: its validation part, "
                   "else the test part) is only evaluated")
    p.add_argument("--seed", type=int, default=42, help="split, label-mask and training "
                   "seed")
    p.add_argument("--tasks", default="retrieval,rating", help="comma-separated: retrieval, "
                   "rating, next_item (rating is dropped for data without ratings; "
                   "next_item orders each user's rows by timestamp)")
    p.add_argument("--weights", metavar="TASK=W,...", help="loss weight per task, e.g. "
                   "retrieval=1,rating=1 (0 switches a task off; default: 1 each)")
    p.add_argument("--label-fraction", type=float, metavar="F", help="share of training "
                   "ratings the rating task sees (default: all)")
    p.add_argument("--epochs", type=positive_int, metavar="N", help="training epochs (default: the "
                   "config's, 20 for PretrainConfig)")
    p.add_argument("--batch-size", type=positive_int, metavar="N",
                   help="examples per step (default: the config's, 1024 for PretrainConfig)")
    p.add_argument("--config", metavar="FILE.json", help="PretrainConfig overrides (JSON "
                   "object)")
    p.add_argument("--overwrite", action="store_true", help="replace a backbone in --out")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    add_run_options(p, BACKUP_PREFIX + "pretrain")
    p.add_argument("--out", required=True, metavar="DIR", help="backbone folder, e.g. "
                   "backbones/NAME")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("finetune", help="fine-tune a backbone with a fresh head, export it",
                       description="Load --backbone, grow it to new IDs, attach a fresh "
                       "--task head, train on the training part of --data, report test "
                       "metrics, export to --out/<version>/ like 'train' does.")
    p.add_argument("--backbone", required=True, metavar="DIR", help="backbone folder "
                   "written by 'tfrec-p5 pretrain'")
    p.add_argument("--task", default="rating", choices=["rating", "retrieval", "next_item"],
                   help="the fresh head; next_item: the backbone's item tower + its "
                   "pretrained next-item encoder (use --split leave-one-out); exports "
                   "next_items / score_items")
    p.add_argument("--data", default="synthetic", metavar="SPEC", help="data spec (as "
                   "'pretrain --data')")
    p.add_argument("--split", default="random:0.8", metavar="SPEC", help="fine-tune on the "
                   "training part, report metrics on the test part; the same --split and "
                   "--seed as 'pretrain' test on rows the backbone never saw")
    p.add_argument("--seed", type=int, default=42, help="split and training seed")
    p.add_argument("--freeze", choices=["none", "towers", "embeddings", "lower_lr", "auto"],
                   help="what to freeze (default: the config's, auto; towers: only the new "
                   "head trains; lower_lr: everything trains, the backbone at "
                   "--backbone-lr-scale x the LR; auto: towers with few labels per user, "
                   "lower_lr with many, none for next_item)")
    p.add_argument("--backbone-lr-scale", type=float, metavar="X", help="--freeze lower_lr: "
                   "the backbone's learning rate as a multiple of the head's (default: the "
                   "config's, 0.1)")
    p.add_argument("--epochs", type=positive_int, metavar="N", help="maximum epochs of the early-"
                   "stopping search (default: the config's, 40 for FinetuneConfig)")
    p.add_argument("--batch-size", type=positive_int, metavar="N",
                   help="examples per step (default: the config's, 512 for FinetuneConfig)")
    p.add_argument("--config", metavar="FILE.json", help="FinetuneConfig overrides (JSON "
                   "object)")
    p.add_argument("--top-k", type=positive_int, default=100, help="items the exported recommend "
                   "signature returns")
    p.add_argument("--json", action="store_true", help="print the metrics JSON on stdout")
    add_run_options(p, BACKUP_PREFIX + "finetune", strategy=False)
    p.add_argument("--out", required=True, metavar="DIR", help="export folder, e.g. "
                   "saved_models/NAME")
    p.set_defaults(func=cmd_finetune)
