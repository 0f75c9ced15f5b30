"""Cost curves: examples/s, wall time per epoch and peak RSS as the data grows.

    PYTHONPATH=. .venv/bin/python benchmarks/cost_curves.py            # 28 min on 2 shared cores
    PYTHONPATH=. .venv/bin/python benchmarks/cost_curves.py --quick    # tiny sizes, < 1 min
    PYTHONPATH=. .venv/bin/python benchmarks/cost_curves.py --sizes rating=1M,10M \\
        next_item=0.2M

**Data.** ``data.load("synthetic", num_users=..., num_items=..., num_interactions=...,
seed=0)`` at each size (its generator gives every user a timed session, so the same table
serves the next-item task). Users and items grow with the rows: rating and retrieval
have 20 rows per user and 50 per item (1M rows: 50k users x 20k items, 10M: 500k x 200k);
next item has 20 events per user and per item (0.2M: 10k x 10k, 20M: 1M users x a
1M-item catalog), so the histories keep a realistic length at every size.

**Models.** Each task's *default* configuration, changed only to time a fixed number of
epochs: no validation carve, no refit, no early stopping, ``--epochs`` (3) epochs.

* rating: ``train_rating(table, None, RatingConfig(validation_fraction=0, refit=False,
  patience=0, epochs=3))`` (side features, 128-item histories, batch 512);
* retrieval: ``train_unified(table, None, UnifiedConfig(epochs=3))`` (the retrieval head
  only: the squared full-catalog loss over a history query, batch 1024; the default has
  no carve, refit or early stopping);
* next item: ``train_sequential(table, None, SequentialConfig(epochs=3))`` (no validation:
  no early stopping, no refit; ``max_len`` and ``loss`` "auto": the full softmax while a
  batch's logits fit in 1 GiB, else the logQ-corrected sampled softmax, reported per run).

**Measurement.** Every (task, size) runs in a fresh child process (this script with
``--role run``), so ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is that run's peak RSS.
The child reports: the data build seconds (``data.load``), the setup seconds (from the
train call to the first step: vocabularies, side features, input pipeline, model), the
first epoch apart (tracing, warm-up) and the median wall seconds of the other epochs;
examples/s = training examples per epoch / that median (rating and retrieval: one
example per row; next item: one example per user sequence, so "rows/s" is reported too);
and the training loss of the last timed epoch (against the first: it learns).

**Large sizes.** The first epoch is cut into windows of at least ``--window-seconds``
(20 s; a window ends at a step end, every 16 steps: ``steps_per_execution``). When the
second window projects a full epoch longer than ``--max-epoch-seconds`` (150 s), the run
is *capped*: it stops after ``1 + --windows`` (4) windows, the first is the warm-up, the
median seconds per step of the others gives examples/s, and wall seconds per epoch is
*extrapolated* (examples per epoch / examples/s), marked so in the table and the JSON. The
loss is then the mean over a window (first → last window).

**Growth.** "per-row cost vs smallest" = (wall seconds per epoch / rows) of the run over
that of the task's smallest size: 1.0 everywhere means a linear cost.

**Diagnosis.** ``--set TASK:KEY=VALUE`` changes one field of a task's default config
(``--sizes rating=10M --set rating:optimizer=adagrad rating:learning_rate=0.1``: is the
step's cost the optimizer's?); such rows are marked in the table and the JSON.

**100M rows (rating, retrieval).** Measured by ``benchmarks/streaming.py``: the rows
streamed from Parquet (``train --stream``), never one in-memory table; the JSON's
``elsewhere`` list points there.

Results: ``benchmarks/results/cost_curves.json`` (machine facts: ``nproc``, the load
average before and after each run, TensorFlow version) and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")

TASKS = ("rating", "retrieval", "next_item")
SIZES = {"rating": (1_000_000, 10_000_000), "retrieval": (1_000_000, 10_000_000),
         "next_item": (200_000, 2_000_000, 20_000_000)}
QUICK_SIZES = {"rating": (20_000, 40_000), "retrieval": (20_000, 40_000),
               "next_item": (10_000, 20_000)}
#: Rows per user and per item (the catalog and the user base grow with the data).
ROWS_PER_USER = {"rating": 20, "retrieval": 20, "next_item": 20}
ROWS_PER_ITEM = {"rating": 50, "retrieval": 50, "next_item": 20}
LOSS_NAMES = {"softmax": "full softmax", "sampled": "sampled softmax (logQ)"}
#: Sizes measured streamed from Parquet by ``benchmarks/streaming.py``, not here.
STREAM_SIZES = {"rating": (100_000_000,), "retrieval": (100_000_000,)}


def shape(task: str, rows: int) -> tuple[int, int]:
    """(users, items) of the synthetic table of ``rows`` interactions for ``task``."""
    return max(2, rows // ROWS_PER_USER[task]), max(2, rows // ROWS_PER_ITEM[task])


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---------------------------------------------------------------------- child process
def role_run(args) -> dict:
    """Generate one table, train one task on it, time it; one JSON line of results."""
    # isort: off
    import tfrec_p5  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
    import tensorflow as tf
    # isort: on
    from tfrec_p5 import data

    users, items = shape(args.task, args.rows)
    t0 = time.perf_counter()
    table = data.load("synthetic", num_users=users, num_items=items,
                      num_interactions=args.rows, seed=0)
    data_seconds = time.perf_counter() - t0
    rss_data = _rss_mib()

    class Timer(tf.keras.callbacks.Callback):
        """Epoch wall times; in the first epoch, windows of at least ``window_seconds``
        (steps, seconds, mean loss), and the switch to the capped mode when the second
        window projects a full epoch longer than ``max_epoch_seconds``."""

        def __init__(self):
            super().__init__()
            self.epochs: list[dict] = []
            self.windows: list[dict] = []
            self.capped = False
            self.train_begin = None

        def on_train_begin(self, logs=None):
            self.train_begin = time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None):
            self.t_epoch = self.t_window = time.perf_counter()
            self.window_start_step, self.window_start_sum = 0, 0.0

        def on_train_batch_end(self, batch, logs=None):
            if self.epochs:  # windows are timed in the first epoch only
                return
            done = batch + 1  # steps finished in this epoch (batch = last step's index)
            now = time.perf_counter()
            if now - self.t_window < args.window_seconds or done == self.window_start_step:
                return
            loss_sum = float(logs["loss"]) * done  # the logs' loss is the epoch's mean
            self.windows.append({"steps": done - self.window_start_step,
                                 "seconds": now - self.t_window,
                                 "loss": (loss_sum - self.window_start_sum)
                                 / (done - self.window_start_step)})
            self.t_window, self.window_start_step, self.window_start_sum = now, done, loss_sum
            total = self.params.get("steps") or 0
            if len(self.windows) == 2 and total > 2 * done:
                rate = self.windows[1]["steps"] / self.windows[1]["seconds"]
                self.capped = total / rate > args.max_epoch_seconds
            if self.capped and len(self.windows) >= 1 + args.windows:
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            self.epochs.append({"seconds": time.perf_counter() - self.t_epoch,
                                "loss": float(logs["loss"])})

    timer = Timer()
    overrides = parse_overrides(args.set).get(args.task, {})
    t_call = time.perf_counter()
    extra: dict = {}
    if args.task == "rating":
        from tfrec_p5.models.rating import RatingConfig, train_rating

        config = RatingConfig(validation_fraction=0.0, refit=False, patience=0,
                              epochs=args.epochs).replace(**overrides)
        train_rating(table, None, config, seed=0, verbose=0, callbacks=[timer])
        batch, examples = config.batch_size, len(table)
    elif args.task == "retrieval":
        from tfrec_p5.models.unified import UnifiedConfig, train_unified

        config = UnifiedConfig(epochs=args.epochs).replace(**overrides)
        assert config.validation_fraction == 0 and not config.refit and config.patience == 0
        train_unified(table, None, config, seed=0, verbose=0, callbacks=[timer])
        batch, examples = config.batch_size, len(table)
    else:
        from tfrec_p5.models.sequential import SequentialConfig, train_sequential

        trained = train_sequential(table, None,
                                   SequentialConfig(epochs=args.epochs).replace(**overrides),
                                   seed=0, verbose=0, callbacks=[timer])
        config = trained.config
        batch = config.batch_size
        _, lengths = __import__("numpy").unique(table.user_id, return_counts=True)
        examples = int((lengths >= 2).sum())  # one sequence per user with a target
        extra = {"loss_variant": config.loss, "max_len": config.max_len,
                 "num_negatives": config.num_negatives if config.loss == "sampled" else None,
                 "data_rules": list(trained.data_rules)}
    setup_seconds = timer.train_begin - t_call
    if timer.capped:
        timed = timer.windows[1:]
        median = statistics.median(w["seconds"] / w["steps"] for w in timed)  # s / step
        examples_per_sec = batch / median
        warmup = timer.windows[0]["seconds"]
        epoch_seconds = examples / examples_per_sec
        first_loss, final_loss = timer.windows[0]["loss"], timed[-1]["loss"]
        measured = {"windows": [{k: round(v, 4) for k, v in w.items()} for w in timer.windows],
                    "window_seconds": args.window_seconds}
    else:
        timed = timer.epochs[1:] or timer.epochs
        epoch_seconds = statistics.median(e["seconds"] for e in timed)
        examples_per_sec = examples / epoch_seconds
        warmup = timer.epochs[0]["seconds"]
        first_loss, final_loss = timer.epochs[0]["loss"], timer.epochs[-1]["loss"]
        measured = {"each_epoch_seconds": [round(e["seconds"], 2) for e in timer.epochs],
                    "each_epoch_loss": [round(e["loss"], 5) for e in timer.epochs]}
    return {"task": args.task, "requested_rows": args.rows, "rows": len(table),
            "users": int(table.num_users), "items": int(table.num_items),
            "examples_per_epoch": examples, "batch_size": batch,
            "steps_per_epoch": -(-examples // batch),
            "data_seconds": round(data_seconds, 2), "setup_seconds": round(setup_seconds, 2),
            "warmup_seconds": round(warmup, 2), "epoch_seconds": round(epoch_seconds, 2),
            "extrapolated": timer.capped, "examples_per_sec": round(examples_per_sec, 1),
            "rows_per_sec": round(len(table) / epoch_seconds, 1),
            "first_loss": round(first_loss, 5), "final_loss": round(final_loss, 5),
            "rss_after_data_mib": round(rss_data), "peak_rss_mib": round(_rss_mib()),
            "tensorflow": tf.__version__, "overrides": overrides, **measured, **extra}


# ---------------------------------------------------------------------- driver
def parse_rows(text: str) -> int:
    """``"1M"`` / ``"0.2M"`` / ``"50k"`` / ``"1000000"`` -> rows."""
    text = text.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(round(float(text[:-1] if scale > 1 else text) * scale))


def parse_overrides(specs: list[str] | None) -> dict[str, dict]:
    """``["rating:optimizer=adagrad"]`` -> ``{"rating": {"optimizer": "adagrad"}}`` (values
    read as JSON when they parse, else as strings)."""
    out: dict[str, dict] = {}
    for spec in specs or ():
        task, _, assignment = spec.partition(":")
        key, _, value = assignment.partition("=")
        if task not in TASKS or not key or not value:
            raise SystemExit(f"--set: expected TASK:KEY=VALUE with TASK in {TASKS}, got "
                             f"{spec!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(task, {})[key] = parsed
    return out


def parse_sizes(specs: list[str] | None, quick: bool) -> dict[str, tuple[int, ...]]:
    """``["rating=1M,10M", "next_item=0.2M"]`` -> ``{task: sizes}`` (tasks not named keep
    out); ``None``: every task at its default (or ``--quick``) sizes."""
    if not specs:
        return dict(QUICK_SIZES if quick else SIZES)
    out: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        task, _, sizes = spec.partition("=")
        if task not in TASKS or not sizes:
            raise SystemExit(f"--sizes: expected TASK=N[,N...] with TASK in {TASKS}, "
                             f"got {spec!r}")
        out[task] = tuple(parse_rows(s) for s in sizes.split(","))
    return out


def run_child(task: str, rows: int, args, overrides: list[str] | None = None) -> dict:
    """One (task, size) run in a fresh process; ``overrides``: its ``--set`` (default:
    the command's own)."""
    overrides = args.set if overrides is None else overrides
    cmd = [sys.executable, os.path.abspath(__file__), "--role", "run", "--task", task,
           "--rows", str(rows), "--epochs", str(args.epochs),
           "--window-seconds", str(args.window_seconds), "--windows", str(args.windows),
           "--max-epoch-seconds", str(args.max_epoch_seconds),
           *(["--set", *overrides] if overrides else [])]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
    load_before = os.getloadavg()
    started = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{task} at {rows:,} rows failed ({proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(process_seconds=round(time.time() - started, 1),
                  load_before=[round(x, 2) for x in load_before],
                  load_after=[round(x, 2) for x in os.getloadavg()])
    return result


def add_growth(runs: list[dict]) -> None:
    """``relative_row_cost``: (epoch seconds / row) over that of the task's smallest run
    (of the same kind: the default or the ``--reference`` runs)."""
    for task, reference in ((t, ref) for t in TASKS for ref in (False, True)):
        mine = [r for r in runs if r["task"] == task and r.get("reference", False) == reference]
        if not mine:
            continue
        base = min(mine, key=lambda r: r["rows"])
        unit = base["epoch_seconds"] / base["rows"]
        for r in mine:
            r["seconds_per_million_rows"] = round(r["epoch_seconds"] / r["rows"] * 1e6, 2)
            r["relative_row_cost"] = round(r["epoch_seconds"] / r["rows"] / unit, 2)


def table(result: dict) -> str:
    lines = ["| task | rows | users | items | data build s | setup s | first epoch s | "
             "examples/s | wall s / epoch | per-row cost vs smallest | peak RSS MiB | "
             "loss first → last | notes |", "|" + "---|" * 13]
    for r in result["runs"]:
        notes = [f"{k}={v}" for k, v in r.get("overrides", {}).items()]
        if r["extrapolated"]:
            steps = [w["steps"] for w in r["windows"][1:]]
            notes.append(f"extrapolated from {len(steps)} windows of {min(steps)}-"
                         f"{max(steps)} steps")
        if "loss_variant" in r:
            notes.append(f"{LOSS_NAMES[r['loss_variant']]}, max_len {r['max_len']}; "
                         f"{r['rows_per_sec']:,.0f} rows/s")
        epoch = f"{r['epoch_seconds']:,.1f}" + (" (extrapolated)" if r["extrapolated"] else "")
        first = ("first window " if r["extrapolated"] else "") + f"{r['warmup_seconds']:,.1f}"
        lines.append(
            f"| {r['task']} | {r['rows']:,} | {r['users']:,} | {r['items']:,} | "
            f"{r['data_seconds']:,.1f} | {r['setup_seconds']:,.1f} | {first} | "
            f"{r['examples_per_sec']:,.0f} | {epoch} | {r['relative_row_cost']:.2f} | "
            f"{r['peak_rss_mib']:,} | {r['first_loss']:.4f} → {r['final_loss']:.4f} | "
            f"{'; '.join(notes)} |")
    for p in result["elsewhere"]:
        lines.append(f"| {p['task']} | {p['rows']:,} | | | | | | | | | | | "
                     f"streamed: {p['where']} |")
    return "\n".join(lines)


def main(argv=None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", metavar="TASK=N[,N...]",
                   help="rows per task, e.g. rating=1M,10M next_item=0.2M (default: "
                   "rating and retrieval 1M, 10M; next_item 0.2M, 2M, 20M)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (< 1 minute)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (1st = warm-up)")
    p.add_argument("--window-seconds", type=float, default=20.0,
                   help="capped runs: a timed window ends at the first step end after this")
    p.add_argument("--windows", type=int, default=3,
                   help="capped runs: timed windows after the warm-up window")
    p.add_argument("--max-epoch-seconds", type=float, default=150.0,
                   help="cap (and extrapolate) runs whose epoch is projected longer")
    p.add_argument("--set", nargs="+", metavar="TASK:KEY=VALUE",
                   help="change a config field of a task's default, e.g. rating:optimizer="
                   "adagrad (a diagnosis; the table's rows are the defaults)")
    p.add_argument("--reference", nargs="+", metavar="TASK:KEY=VALUE",
                   help="also run each size of TASK with these fields changed, right after "
                   "its default run: a reference row timed by the same command")
    p.add_argument("--out", default=os.path.join(RESULTS, "cost_curves.json"))
    p.add_argument("--role", choices=["run"], help=argparse.SUPPRESS)
    p.add_argument("--task", choices=TASKS, help=argparse.SUPPRESS)
    p.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role:
        print(json.dumps(role_run(args)), flush=True)
        return None
    if args.quick:
        args.epochs, args.window_seconds = 2, 0.5
    sizes = parse_sizes(args.sizes, args.quick)
    started = time.time()
    # isort: off
    import tfrec_p5  # noqa: F401  (before TensorFlow)
    import tensorflow as tf
    # isort: on

    result: dict = {
        "benchmark": "cost_curves",
        "command": " ".join(["benchmarks/cost_curves.py", *(argv if argv is not None
                                                              else sys.argv[1:])]),
        "machine": {"nproc": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "tensorflow": tf.__version__,
                    "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
        "settings": {"overrides": parse_overrides(args.set),
                     "reference": parse_overrides(args.reference), "epochs": args.epochs,
                     "window_seconds": args.window_seconds,
                     "windows": args.windows, "max_epoch_seconds": args.max_epoch_seconds,
                     "rows_per_user": ROWS_PER_USER, "rows_per_item": ROWS_PER_ITEM},
        "runs": [],
        "elsewhere": [] if args.quick or args.sizes else [
            {"task": t, "rows": n, "where": "benchmarks/streaming.py"}
            for t, ns in STREAM_SIZES.items() for n in ns]}
    references = list(args.reference or ())
    for task in TASKS:
        mine = [spec for spec in references if spec.partition(":")[0] == task]
        for rows in sizes.get(task, ()):
            for overrides in [None] + ([mine] if mine else []):
                print(f"{task} at {rows:,} rows{' with ' + ' '.join(mine) if overrides else ''}"
                      " ...", flush=True)
                r = run_child(task, rows, args,
                              None if overrides is None else [*(args.set or ()), *mine])
                r["reference"] = overrides is not None
                result["runs"].append(r)
                print(f"  {r['examples_per_sec']:,.0f} examples/s, {r['epoch_seconds']:,.1f} "
                      f"s / epoch{' (extrapolated)' if r['extrapolated'] else ''}, peak "
                      f"{r['peak_rss_mib']:,} MiB, load {r['load_before']} → "
                      f"{r['load_after']}", flush=True)
    add_growth(result["runs"])
    result["wall_seconds"] = round(time.time() - started, 1)
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
    print("\n" + table(result))
    print(f"\nwall time {result['wall_seconds']:.0f}s; results in {args.out}")
    return result


if __name__ == "__main__":
    main()
