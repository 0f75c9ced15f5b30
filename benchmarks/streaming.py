"""Logs larger than memory: rating (and retrieval training) streamed from Parquet vs
loaded, up to 100M rows.

    .venv/bin/python benchmarks/streaming.py      # 1M, 10M, 100M; 1M, 10M also in memory
    .venv/bin/python benchmarks/streaming.py --sizes 1e6 --memory 1e6 --retrieval 1e6  # quick

For each size a synthetic rating log (``benchmarks/_parquet_log.py``: rows / 50 users,
min(rows / 200, 1M) items, int64 IDs, 500k-row row groups, 5M rows per file) is written
once under ``--root``; then a fresh process per (size, mode) runs what
``tfrec-p5 train --stream`` runs and times each phase:

* ``scan``: opening the files and the counting pass (vocabularies, part sizes);
* ``epoch``: one epoch of ``train_rating_stream`` on the fit rows (80 % × 90 %) with a
  validation pass (the rating model's defaults with the streamed changes ``history_len 0``,
  ``unknown_users "model"``, and ``--batch`` 8192; ``epochs 1``, no refit);
* ``test``: RMSE of the test part, streamed; ``bias``: the streamed bias baseline (five
  passes) and its test RMSE; ``export``: the SavedModel.

The rating config's ``optimizer`` is the default ``"auto"``, which is ``LazyAdam`` (Adam on
the batch's embedding rows only) at every size here (100k+ embedding rows); ``--adam SIZES``
streams the same with plain tf-keras Adam, which moves every row of every table each step.

``--memory SIZES`` adds, for those sizes, the same in one process that loads the log into an
``Interactions`` table (``data.load("parquet:DIR")``) and trains ``train_rating`` on the
same parts: its peak memory is what streaming saves. Peak memory is the child's
``ru_maxrss`` (``os.wait4``).

``--retrieval SIZES`` (default 1M, 10M, 100M) measures the *training cost* of a retrieval
model on the same streamed log: there is no ``--stream`` retrieval task (its evaluation
excludes each user's training items, which needs them in memory), so the benchmark
assembles one from the library's parts: ID towers (``UserTower`` / ``ItemTower``, 32-d),
the retrieval head with the in-batch softmax and logQ correction (TFRS's
``tfrs.tasks.Retrieval``; item frequencies from one counting pass over the fit rows),
``log.dataset(pointwise=False)`` batches of ``--retrieval-batch`` (1024, the retrieval
default's batch; the in-batch softmax costs O(batch²) a step), optimizer ``"auto"``,
``fit`` for
``--retrieval-seconds`` of steps after a warm-up; examples/s and the extrapolated epoch
(fit rows / examples/s) are reported with the peak memory.

Results: ``benchmarks/results/streaming.json`` (a rerun replaces its own rows only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _parquet_log import write_log  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       "streaming.json")


def child(args) -> dict:
    """One (size, mode) run in this process; returns its phase timings."""
    # isort: off
    import tfrec_p5  # noqa: F401
    import tensorflow as tf
    # isort: on
    import numpy as np

    from tfrec_p5 import data
    from tfrec_p5.data.stream import PARTS, LogSplit, open_log
    from tfrec_p5.evaluation.streamed import streamed_bias_baseline
    from tfrec_p5.export.saved_model import export
    from tfrec_p5.models.rating import (
        RatingConfig,
        evaluate_rating,
        evaluate_rating_stream,
        train_rating,
        train_rating_stream,
    )

    config = RatingConfig(history_len=0, unknown_users="model", batch_size=args.batch,
                          epochs=1, refit=False,
                          optimizer="adam" if args.mode == "adam" else "auto")
    split = LogSplit(0.2, config.validation_fraction, 42)
    times, out = {}, {}

    class EpochTimer(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times["epoch"] = round(time.perf_counter() - self.start, 1)

    start = time.perf_counter()
    if args.mode == "retrieval":
        return retrieval_child(args, split)
    if args.mode in ("stream", "adam"):
        log = open_log(f"parquet:{args.dir}")
        scan = log.scan(split)
        rows = scan.rows
        times["scan"] = round(time.perf_counter() - start, 1)
        trained = train_rating_stream(log, scan, config, verbose=0,
                                      callbacks=[EpochTimer()])
        start = time.perf_counter()
        out["test_rmse"] = evaluate_rating_stream(trained.model, log, scan)["rmse"]
        times["test"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        ref = streamed_bias_baseline(log, scan)
        out["bias_test_rmse"] = ref.evaluate(log, scan)["rmse"]
        times["bias"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        export(trained.model, os.path.join(args.scratch, "export"), vocabs=trained.vocabs,
               rating_range=scan.rating_range)
        times["export"] = round(time.perf_counter() - start, 1)
    else:
        table = data.load(f"parquet:{args.dir}")
        parts = split.parts(np.arange(len(table)))
        take = {name: table.take(np.flatnonzero(parts == i)) for i, name in enumerate(PARTS)}
        rows = {name: len(t) for name, t in take.items()}
        del table, parts
        times["scan"] = round(time.perf_counter() - start, 1)  # load + split
        trained = train_rating(data.Interactions.concat(take["fit"], take["validation"]),
                               take["validation"], config, verbose=0,
                               callbacks=[EpochTimer()])
        start = time.perf_counter()
        out["test_rmse"] = evaluate_rating(trained.model, take["test"], trained.vocabs)["rmse"]
        times["test"] = round(time.perf_counter() - start, 1)
    fit_rows = rows["fit"]
    return {"rows": sum(rows.values()), "fit_rows": fit_rows, "times": times,
            "examples_per_second": round(fit_rows / times["epoch"]),
            "users": len(trained.vocabs.user) - 1, "items": len(trained.vocabs.item) - 1,
            "loss": round(float(trained.history["loss"][-1]), 4),
            **{k: round(v, 4) for k, v in out.items()}}


def retrieval_child(args, split) -> dict:
    """Streamed retrieval training for a fixed time (see the module)."""
    import numpy as np

    import tfrec_p5  # noqa: F401  (before TensorFlow)
    from tfrec_p5.data.stream import open_log
    from tfrec_p5.models.unified import UnifiedModel
    from tfrec_p5.tasks.registry import HeadContext, RetrievalOptions, build_heads
    from tfrec_p5.towers import ItemTower, UserTower
    from tfrec_p5.training import fit, optimizer

    start = time.perf_counter()
    log = open_log(f"parquet:{args.dir}?rating=none")
    scan = log.scan(split)
    vocabs = scan.vocabs
    counts = np.zeros(len(vocabs.item))
    for _, items, _ in log.batches(scan, ("fit",), 1 << 20):
        counts += np.bincount(items, minlength=len(vocabs.item))
    scan_seconds = round(time.perf_counter() - start, 1)
    counts[0] = 0
    probs = np.maximum(counts / counts.sum(), counts[counts > 0].min() / counts.sum())
    towers = {"embedding_dim": 32, "output_dim": None, "feature_dim": None, "l2": 0.0}
    user, item = UserTower.from_vocab(vocabs, None, **towers), \
        ItemTower.from_vocab(vocabs, None, **towers)
    context = HeadContext(len(vocabs.user), len(vocabs.item), user.dim,
                          np.zeros(len(vocabs.user) + 1, np.int64), np.zeros(0, np.int64),
                          probs.astype(np.float32))
    heads = build_heads({"retrieval": RetrievalOptions(loss="softmax")}, context)
    model = UnifiedModel(user, item, heads, {"retrieval": 1.0})
    model.compile(optimizer=optimizer("auto", 1e-3, model=model), steps_per_execution=16)
    timer = _step_timer(args.retrieval_seconds)
    ds = log.dataset(scan, ("fit",), args.retrieval_batch, shuffle=True, seed=0,
                     pointwise=False)
    history = fit(model, ds, epochs=1, verbose=0, callbacks=[timer], name="retrieval")
    rate = timer.rate(args.retrieval_batch)
    return {"rows": sum(scan.rows.values()), "fit_rows": scan.rows["fit"],
            "times": {"scan": scan_seconds, "epoch": round(scan.rows["fit"] / rate, 1),
                      "timed": round(timer.seconds, 1)},
            "examples_per_second": round(rate),
            "extrapolated": timer.seconds >= args.retrieval_seconds,
            "users": len(vocabs.user) - 1, "items": len(vocabs.item) - 1,
            "loss": round(float(history.history["loss"][-1]), 4)}


def _step_timer(seconds: float):
    """A Keras callback timing the steps after the first call (16 steps: the warm-up) and
    stopping training after ``seconds`` of them (TensorFlow is imported in the child)."""
    import tensorflow as tf

    class Timer(tf.keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.first = self.start = None
            self.steps, self.seconds = 0, 0.0

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            if self.start is None:
                self.first, self.start = batch, now
                return
            self.steps, self.seconds = batch - self.first, now - self.start
            if self.seconds >= seconds:
                self.model.stop_training = True

        def rate(self, batch_size: int) -> float:
            return self.steps * batch_size / self.seconds

    return Timer()


def run_child(argv: list[str]) -> dict:
    """Run this script as a child; its JSON line plus its peak RSS (MiB)."""
    proc = subprocess.Popen([sys.executable, __file__, *argv], stdout=subprocess.PIPE,
                            text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    output = proc.stdout.read()
    if status != 0:
        raise SystemExit(f"child {argv} failed with status {status}")
    result = json.loads(output.strip().splitlines()[-1])
    result["peak_rss_mib"] = round(usage.ru_maxrss / 1024)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="*", default=[1e6, 1e7, 1e8],
                        help="sizes whose streamed rating run is measured")
    parser.add_argument("--memory", type=float, nargs="*", default=[1e6, 1e7],
                        help="sizes also run with the log loaded in memory")
    parser.add_argument("--retrieval", type=float, nargs="*", default=[1e6, 1e7, 1e8],
                        help="sizes whose streamed retrieval training is timed")
    parser.add_argument("--retrieval-seconds", type=float, default=120.0)
    parser.add_argument("--retrieval-batch", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--root", default="/tmp/tfrec_p5_stream_logs")
    parser.add_argument("--adam", type=float, nargs="*", default=[1e6, 1e7, 1e8],
                        help="sizes also streamed with optimizer adam instead of auto")
    parser.add_argument("--child", choices=("stream", "memory", "retrieval", "adam"),
                        dest="mode")
    parser.add_argument("--dir")
    parser.add_argument("--scratch")
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(child(args)))
        return
    runs = []
    sizes = sorted({int(s) for s in [*args.sizes, *args.memory, *args.adam, *args.retrieval]})
    for size in sizes:
        directory = os.path.join(args.root, f"rows{size}")
        if not os.path.isdir(directory):
            print(f"writing {size:,} rows to {directory}", flush=True)
            written = write_log(directory, size)
            print(f"  {written}", flush=True)
        modes = ["stream"] if size in map(int, args.sizes) else []
        modes += ["memory"] if size in map(int, args.memory) else []
        modes += ["adam"] if size in map(int, args.adam) else []
        modes += ["retrieval"] if size in map(int, args.retrieval) else []
        for mode in modes:
            load = os.getloadavg()[0]
            scratch = os.path.join(args.root, f"scratch-{size}-{mode}")
            result = run_child(["--child", mode, "--dir", directory, "--scratch", scratch,
                                "--batch", str(args.batch), "--retrieval-seconds",
                                str(args.retrieval_seconds), "--retrieval-batch",
                                str(args.retrieval_batch)])
            result.update(mode=mode, size=size, load_before=round(load, 2),
                          load_after=round(os.getloadavg()[0], 2))
            runs.append(result)
            print(json.dumps(result), flush=True)
    print(f"\n{'rows':>12} {'mode':>9} {'scan s':>7} {'epoch s':>8} {'ex/s':>8} "
          f"{'test s':>7} {'peak MiB':>9} {'test RMSE':>10} {'bias RMSE':>10}")
    for r in runs:
        t = r["times"]
        print(f"{r['rows']:>12,} {r['mode']:>9} {t['scan']:>7} {t['epoch']:>8} "
              f"{r['examples_per_second']:>8,} {t.get('test', '-'):>7} {r['peak_rss_mib']:>9,} "
              f"{r.get('test_rmse', '-'):>10} {r.get('bias_test_rmse', '-'):>10}")
    # Rows of earlier invocations (other sizes / modes) are kept; a rerun replaces its own.
    previous = {"runs": [], "commands": []}
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            previous = json.load(f)
    done = {(r["mode"], r["size"]) for r in runs}
    kept = [r for r in previous["runs"] if (r["mode"], r["size"]) not in done]
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump({"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                   "commands": [*previous.get("commands", []), " ".join(sys.argv)],
                   "batch": args.batch, "runs": kept + runs}, f, indent=1)


if __name__ == "__main__":
    main()
