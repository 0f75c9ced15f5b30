"""Helpers every command shares: config files, splits, metric tables, strategies.

TensorFlow and the data layer are imported inside the functions that need them, so that
``tfrec-p5 --help`` and a usage error answer without loading TensorFlow.
"""

from __future__ import annotations

import argparse
import functools
import json
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tfrec_p5.cli.registry import CliError

if TYPE_CHECKING:
    from tfrec_p5.data.catalog import Catalog
    from tfrec_p5.data.interactions import Interactions

__all__ = ["BACKUP_PREFIX", "COUNT_METRICS", "DISTRIBUTED_TASKS", "STRATEGIES",
           "VALIDATION_FRACTION", "add_run_options", "describe", "describe_catalog",
           "flat", "format_table", "format_value", "guarded", "positive_int", "read_config",
           "resolve_strategy", "split_parts"]

#: Share of the training data held out for early stopping when the split makes no
#: validation part (``random:F``, ``temporal:F``, ``none``, ``tfrs:PATH``).
VALIDATION_FRACTION = 0.1
#: ``OUT/.backup-TASK`` holds an interrupted run's ``BackupAndRestore`` checkpoints.
BACKUP_PREFIX = ".backup-"
#: Tasks that train under ``--strategy`` other than ``default`` (``tfrec_p5.distribute``).
DISTRIBUTED_TASKS = ("rating", "retrieval", "ranking", "all")
#: Metric names (or their last ``_`` part: ``test_retrieval_users``) that count things:
#: printed as integers. A rate that happens to be whole (recall 1.0) keeps its decimals.
COUNT_METRICS = frozenset({"users", "items", "targets", "examples", "rows", "queries"})


def guarded(command: Callable[[argparse.Namespace, Any], int]
            ) -> Callable[[argparse.Namespace], int]:
    """``command(args, guard)`` run as ``command(args)`` inside a ``RunGuard``
    (``tfrec_p5.training``): the ``--out`` lock and the backup's settings record, released
    and cleared however the command ends, Ctrl-C included; a refusal exits 2.

        @guarded
        def cmd_train(args, guard): guard.lock(args.out); ...
    """
    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        from tfrec_p5.training import RunGuard

        with RunGuard(refuse=lambda message: CliError(message, status=2)) as guard:
            return command(args, guard)
    return run


STRATEGIES = ("default", "mirrored", "multi_worker", "parameter_server")


def add_run_options(parser: argparse.ArgumentParser, backup: str, *,
                    strategy: bool = True) -> None:
    """The options every training command shares: ``--restart`` (its backup folder is
    ``OUT/<backup>``), ``--quiet``, and unless ``strategy=False`` ``--strategy`` and
    ``--deterministic``."""
    parser.add_argument("--restart", action="store_true", help="discard the backup an "
                        f"interrupted run left in OUT/{backup} and start over (without it, "
                        "a rerun resumes from that backup, and refuses if its settings or "
                        "training data differ)")
    parser.add_argument("--quiet", action="store_true", help="no Keras progress bar")
    if not strategy:
        return
    parser.add_argument("--strategy", default="default", choices=STRATEGIES,
                        help="tf.distribute strategy ('default' is one process). "
                        "multi_worker and parameter_server read the cluster from TF_CONFIG; "
                        "run the same command on every task (parameter-server workers / ps "
                        "then just serve). --batch-size is the global batch")
    parser.add_argument("--deterministic", action="store_true", help="bit-identical reruns "
                        "(same seed and data): oneDNN off and TF op determinism; a bit "
                        "slower")


def positive_int(text: str) -> int:
    """argparse ``type`` for counts (``--epochs``, ``--batch-size``, ``--top-k``): an
    integer >= 1, else a usage error (exit 2) before anything is loaded."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") \
            from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def read_config(path: str | None) -> dict[str, Any]:
    """The JSON object in ``--config FILE`` (``{}`` without one); one-line errors."""
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError as err:
        raise CliError(f"config file {path!r} does not exist", status=2) from err
    except (OSError, ValueError) as err:
        raise CliError(f"cannot read config file {path!r}: {err}", status=2) from err
    if not isinstance(obj, dict):
        raise CliError(f"config file {path!r} must hold a JSON object", status=2)
    return obj


def split_parts(table: Interactions, split_spec: str, seed: int):
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


def format_value(name: str, value: float) -> str:
    """One metric value for people: a count (an ``int``, or a whole number named in
    ``COUNT_METRICS``) as ``2000``, anything else with 4 decimals (``0.8731``)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(int(value))
    is_count = name in COUNT_METRICS or name.rsplit("_", 1)[-1] in COUNT_METRICS
    if is_count and float(value).is_integer():
        return str(int(value))
    return f"{value:.4f}"


def format_table(rows: Sequence[tuple[str, int, Mapping[str, float]]]) -> str:
    """Metric rows ``(part, examples, {metric: value})`` as an aligned text table."""
    names = list(dict.fromkeys(m for _, _, metrics in rows for m in metrics))
    # Every column at least one space wider than its header / part name, so they never touch.
    w = {m: max(10, len(m) + 1) for m in names}
    pw = max([12] + [len(part) + 1 for part, _, _ in rows])
    lines = [f"{'part':<{pw}}{'examples':>10}" + "".join(f"{m:>{w[m]}}" for m in names)]
    for part, count, metrics in rows:
        lines.append(f"{part:<{pw}}{count:>10,}" + "".join(
            f"{format_value(m, metrics[m]):>{w[m]}}" if m in metrics else f"{'-':>{w[m]}}"
            for m in names))
    return "\n".join(lines)


def flat(part: str, count: int, metrics: Mapping[str, float]) -> dict[str, float | int]:
    """``{"test_rmse": ..., "test_examples": N}``: the JSON form of one table row."""
    out: dict[str, float | int] = {f"{part}_{k}": float(v) for k, v in metrics.items()}
    out[f"{part}_examples"] = int(count)
    return out


def describe(table: Interactions) -> str:
    """``"80,000 rows, 943 users, 1,650 items"``."""
    return f"{len(table):,} rows, {table.num_users:,} users, {table.num_items:,} items"


def describe_catalog(catalog: Catalog, train: Interactions) -> str:
    """``"1,682 items (32 without training rows), 943 users (0 without)"``."""
    new = catalog.new_ids(train)
    parts = [f"{len(table):,} {side}s ({len(new[side]):,} without training rows)"
             for side, table in (("item", catalog.items), ("user", catalog.users))
             if table is not None]
    return ", ".join(parts)


def resolve_strategy(name: str | None, task: str | None = None):
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
