"""Scale: 1 vs 2 workers (tf.distribute), and peak memory vs hashed vocabulary size.

    .venv/bin/python benchmarks/scale.py                  # both parts, ~15 min on 2 cores
    .venv/bin/python benchmarks/scale.py --skip-workers   # memory part only

**Workers.** The rating model (``RatingConfig``: 32-d ID towers, MLP 64-32, biases, dot,
no side features / history, Adam) is trained with ``train_rating`` on the same synthetic
rows (``--rows``, 50k users × 20k items) with the same global batch (``--batch``), in
fresh processes, one after the other:

* ``1 process``: the default strategy (``steps_per_execution`` 16, the library default);
* ``1 process, steps_per_execution=1``: the same, one step per call (what multi-worker
  training runs, see ``tfrec_p5.distribute.steps_per_execution``);
* ``2 workers``: ``--strategy multi_worker``, two processes on 127.0.0.1 with
  ``TF_CONFIG``; each computes on half of every global batch, gradients all-reduced.

Each run trains ``--epochs`` epochs; the first (tracing, warm-up) is dropped and the
median of the others is reported as training examples / second (global: rows / wall
time of the epoch on worker 0).

**Memory.** For each vocabulary size (total hashed rows, split 2:1 between users and
items; the largest is 2M users × 1M items) a fresh process builds the same rating model
with ``HashedVocabulary`` towers (no vocabulary: IDs are ``"u" + str(random int)``
strings made in ``tf.data`` and hashed in the pipeline with ``tf.keras.layers.Hashing``)
and trains ``--memory-steps`` batches of 8192 with Adam (3 epochs over the same seeded
batches, so the loss shows it learns), then the largest size once more with Adagrad
(``--compare-optimizer``: one slot, updated sparsely; learning rate 0.1 as in the TFRS
tutorial). That run checks the memory arithmetic, not learning: in 60 steps, where most
rows are seen once, Adagrad's first steps are tiny and its loss barely moves (Adam's are
normalized per row). Peak memory is the process's
``resource.getrusage(RUSAGE_SELF).ru_maxrss``; "baseline" is the same process before the
model is built (TensorFlow + tf-keras imported), and "predicted" is
``embedding_memory_bytes`` (rows × dim × 4 bytes × (1 + 2 Adam slots)) of the ID and bias
tables.

Results: ``benchmarks/results/scale.json`` and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
MEMORY_BATCH = 8192


def _config(batch: int, steps_per_execution: int = 16):
    from tfrec_p5.models.rating import RatingConfig

    return RatingConfig(embedding_dim=32, hidden_units=(64, 32), use_side_features=False,
                        history_len=0, batch_size=batch, validation_fraction=0.0,
                        refit=False, patience=0, steps_per_execution=steps_per_execution)


# ---------------------------------------------------------------------- subprocess roles
def role_throughput(args) -> dict:
    """One training process (or one worker of a multi_worker job)."""
    # isort: off
    import tfrec_p5  # noqa: F401
    import tensorflow as tf
    # isort: on
    from tfrec_p5 import data, distribute
    from tfrec_p5.models.rating import train_rating

    strategy = distribute.resolve_strategy(args.strategy)
    table = data.load("synthetic", num_users=50_000, num_items=20_000,
                      num_interactions=args.rows, seed=0)

    class Timer(tf.keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.t)

    timer = Timer()
    trained = train_rating(table, None, _config(args.batch, args.steps_per_execution).replace(
        epochs=args.epochs), seed=0, verbose=0, strategy=strategy, callbacks=[timer])
    timed = sorted(timer.seconds[1:])
    median = timed[len(timed) // 2]
    return {"rows": len(table), "epoch_seconds": [round(s, 2) for s in timer.seconds],
            "examples_per_sec": round(len(table) / median),
            "replicas": strategy.num_replicas_in_sync, "chief": distribute.is_chief(strategy),
            "final_loss": float(trained.history["loss"][-1])}


def role_memory(args) -> dict:
    """Train the hashed rating model on a tf.data stream of string IDs; report peak RSS."""
    # isort: off
    import tfrec_p5  # noqa: F401
    import tensorflow as tf
    # isort: on
    from tfrec_p5.data.pipeline import Vocabularies
    from tfrec_p5.data.vocabulary import HashedVocabulary
    from tfrec_p5.models.rating import build_rating_model, compile_rating_model
    from tfrec_p5.towers import embedding_memory_bytes

    def rss_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    baseline = rss_mb()
    vocabs = Vocabularies(HashedVocabulary(args.users, name="user_id"),
                          HashedVocabulary(args.items, name="item_id"))
    user_hash, item_hash = vocabs.user.hashing(), vocabs.item.hashing()

    def batch(step):
        """One batch of random interactions as *strings*, hashed in the pipeline."""
        seed = tf.stack([tf.constant(1, tf.int64), step])
        u = tf.random.stateless_uniform([MEMORY_BATCH], seed, maxval=args.users * 4,
                                        dtype=tf.int64)  # 4x more IDs than buckets
        i = tf.random.stateless_uniform([MEMORY_BATCH], seed + 1, maxval=args.items * 4,
                                        dtype=tf.int64)
        users = tf.strings.join(["u", tf.strings.as_string(u)])
        items = tf.strings.join(["i", tf.strings.as_string(i)])
        noise = tf.random.stateless_normal([MEMORY_BATCH], seed + 2, stddev=0.3)
        rating = 3.0 + 0.5 * tf.cast(u % 5 - 2, tf.float32) + \
            0.5 * tf.cast(i % 3 - 1, tf.float32) + noise
        features = {"user_id": user_hash(users) + 1, "item_id": item_hash(items) + 1}
        return features, tf.clip_by_value(rating, 1.0, 5.0)

    # 3 epochs over the same seeded batches: the loss must fall (it trains, not just fits).
    ds = tf.data.Dataset.range(max(1, args.steps // 3)).map(
        batch, num_parallel_calls=tf.data.AUTOTUNE)
    config = _config(MEMORY_BATCH).replace(  # Adagrad needs the tutorial's larger step
        optimizer=args.optimizer, learning_rate=0.1 if args.optimizer == "adagrad" else 1e-3)
    model = build_rating_model(vocabs, None, config, global_mean=3.0, rating_range=(1.0, 5.0))
    compile_rating_model(model, config)
    built = rss_mb()
    t0 = time.perf_counter()
    hist = model.fit(ds.prefetch(2), epochs=3, verbose=0)
    seconds = time.perf_counter() - t0
    steps = 3 * max(1, args.steps // 3)
    dim = config.embedding_dim
    predicted = sum(embedding_memory_bytes(len(v), d, config.optimizer)
                    for v in (vocabs.user, vocabs.item) for d in (dim, 1))
    return {"users": args.users, "items": args.items, "rows": args.users + args.items,
            "optimizer": config.optimizer, "embedding_dim": dim,
            "steps": steps, "batch": MEMORY_BATCH, "seconds": round(seconds, 1),
            "examples_per_sec": round(steps * MEMORY_BATCH / seconds),
            "loss": [float(x) for x in hist.history["loss"]],
            "baseline_rss_mb": round(baseline), "after_build_rss_mb": round(built),
            "peak_rss_mb": round(rss_mb()),
            "predicted_tables_mb": round(predicted / 2 ** 20),
            "tensorflow": tf.__version__}


# ---------------------------------------------------------------------- driver
def _run(role_args: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), *role_args],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env, cwd=REPO)


def _result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"subprocess failed ({proc.returncode}): {out[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def workers_part(args) -> dict:
    base = ["--role", "throughput", "--rows", str(args.rows), "--batch", str(args.batch),
            "--epochs", str(args.epochs)]
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG",)}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    out = {"1 process": _result(_run([*base, "--strategy", "default"], env)),
           "1 process, steps_per_execution=1": _result(_run(
               [*base, "--strategy", "default", "--steps-per-execution", "1"], env))}
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    procs = []
    for i in range(2):
        wenv = dict(env, TF_CONFIG=json.dumps({"cluster": cluster,
                                                "task": {"type": "worker", "index": i}}))
        procs.append(_run([*base, "--strategy", "multi_worker"], wenv))
    results = [_result(p) for p in procs]
    out["2 workers (multi_worker)"] = next(r for r in results if r["chief"])
    one, one_spe1 = out["1 process"], out["1 process, steps_per_execution=1"]
    two = out["2 workers (multi_worker)"]
    return {"runs": out, "ratio_2_workers_vs_1_process":
            round(two["examples_per_sec"] / one["examples_per_sec"], 3),
            "ratio_2_workers_vs_1_process_spe1":
            round(two["examples_per_sec"] / one_spe1["examples_per_sec"], 3)}


def memory_part(args) -> list[dict]:
    runs = [(rows, "adam") for rows in args.sizes]
    if args.compare_optimizer:  # the largest size again: 1 slot, sparse slot updates
        runs.append((max(args.sizes), args.compare_optimizer))
    out = []
    for rows, optimizer in runs:
        users = int(round(rows * 2 / 3))
        proc = _run(["--role", "memory", "--users", str(users), "--items", str(rows - users),
                     "--steps", str(args.memory_steps), "--optimizer", optimizer],
                    {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        out.append(_result(proc))
        print(f"  {rows:>10,} rows, {optimizer}: peak {out[-1]['peak_rss_mb']:,} MB",
              flush=True)
    return out


def main(argv=None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=400_000, help="workers part: training rows")
    p.add_argument("--batch", type=int, default=4096, help="workers part: global batch")
    p.add_argument("--epochs", type=int, default=4, help="workers part: epochs (1st dropped)")
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 3_000_000],
                   help="memory part: hashed rows (users + items, 2:1)")
    p.add_argument("--memory-steps", type=int, default=60,
                   help="memory part: batches of 8192 per run (3 epochs of a third each)")
    p.add_argument("--compare-optimizer", default="adagrad",
                   help="memory part: also train the largest size with this optimizer "
                   "('' to skip)")
    p.add_argument("--skip-workers", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--out", default=os.path.join(RESULTS, "scale.json"))
    # subprocess roles
    p.add_argument("--role", choices=["throughput", "memory"], help=argparse.SUPPRESS)
    p.add_argument("--strategy", default="default", help=argparse.SUPPRESS)
    p.add_argument("--steps-per-execution", type=int, default=16, help=argparse.SUPPRESS)
    p.add_argument("--users", type=int, help=argparse.SUPPRESS)
    p.add_argument("--items", type=int, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    p.add_argument("--optimizer", default="adam", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role:
        result = role_throughput(args) if args.role == "throughput" else role_memory(args)
        print(json.dumps(result), flush=True)
        return None
    started = time.time()
    result: dict = {"benchmark": "scale", "command": " ".join(["benchmarks/scale.py",
                                                               *(argv or sys.argv[1:])]),
                    "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                "python": platform.python_version(),
                                "load_average_at_start": os.getloadavg()}}
    if not args.skip_workers:
        print("workers: 1 process, then 2 multi_worker processes ...", flush=True)
        result["workers"] = {"rows": args.rows, "global_batch": args.batch,
                             "epochs": args.epochs, **workers_part(args)}
    if not args.skip_memory:
        print("memory: one process per vocabulary size ...", flush=True)
        result["memory"] = memory_part(args)
    result["wall_seconds"] = round(time.time() - started, 1)
    result["machine"]["load_average_at_end"] = os.getloadavg()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
    if "workers" in result:
        w = result["workers"]
        print("\n| run | examples/s | epoch seconds |\n|---|---|---|")
        for name, r in w["runs"].items():
            print(f"| {name} | {r['examples_per_sec']:,} | {r['epoch_seconds']} |")
        print(f"\n2 workers / 1 process: {w['ratio_2_workers_vs_1_process']:.2f}x "
              f"(vs steps_per_execution=1: {w['ratio_2_workers_vs_1_process_spe1']:.2f}x)")
    if "memory" in result:
        print("\n| hashed rows (users × items) | optimizer | predicted tables (MB) | "
              "baseline RSS (MB) | peak RSS (MB) | examples/s | loss by epoch |"
              "\n|---|---|---|---|---|---|---|")
        for r in result["memory"]:
            print(f"| {r['rows']:,} ({r['users']:,} × {r['items']:,}) | {r['optimizer']} | "
                  f"{r['predicted_tables_mb']:,} | {r['baseline_rss_mb']:,} | "
                  f"{r['peak_rss_mb']:,} | {r['examples_per_sec']:,} | "
                  f"{', '.join(f'{x:.3f}' for x in r['loss'])} |")
    print(f"\nwall time {result['wall_seconds']:.0f}s; results in {args.out}")
    return result


if __name__ == "__main__":
    main()
