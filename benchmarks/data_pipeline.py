"""Throughput of the pointwise tf.data pipeline vs the naive TFRS-tutorial pipelines.

Why: the pipeline must not be the bottleneck of training. We time a full shuffled epoch at
batch 8192 (the size the benchmarks train with) and quote the speed as a ratio to two
naive references built in the same run on the same data:

* ``naive_int``: ``from_tensor_slices(ints).cache().shuffle(n).batch(b).prefetch()`` on the
  very same integer arrays (what you would write after integerizing in numpy);
* ``naive_str``: the TFRS-tutorial style, string IDs through ``StringLookup`` in a ``map``
  (``from_tensor_slices(strings).cache().shuffle(n).batch(b).map(lookup).prefetch()``).

    .venv/bin/python benchmarks/data_pipeline.py            # ML-100K (if present) + 1M synthetic
    .venv/bin/python benchmarks/data_pipeline.py --epochs 5 --synthetic-rows 1000000

Prints a table and writes ``benchmarks/results/data_pipeline.json``. Each number is the
median over ``--epochs`` full passes after one warm-up pass (the warm-up fills caches and
traces functions).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import tfrec_p5  # noqa: F401  (must precede TensorFlow: sets TF_USE_LEGACY_KERAS)

# isort: split
import numpy as np
import tensorflow as tf

from tfrec_p5.data import Interactions, Vocabularies, load, pointwise_dataset, synthetic

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ML100K = Path(os.environ.get("TFREC_P5_SHARED_DATA", REPO.parent / "shared" / "data"))
BATCH = 8192


def _epoch_seconds(ds: tf.data.Dataset) -> tuple[float, int]:
    start = time.perf_counter()
    n = 0
    for batch in ds:
        label = batch[1] if isinstance(batch, tuple) else batch
        n += int(label.shape[0])
    return time.perf_counter() - start, n


def _measure(ds: tf.data.Dataset, epochs: int, expected: int) -> float:
    _, n = _epoch_seconds(ds)  # warm-up
    if n != expected:
        raise RuntimeError(f"pipeline yielded {n} examples, expected {expected}")
    times = [_epoch_seconds(ds)[0] for _ in range(epochs)]
    return expected / statistics.median(times)


def naive_int(ids: dict, rating, n: int, seed: int) -> tf.data.Dataset:
    return (tf.data.Dataset.from_tensor_slices((ids, rating)).cache()
            .shuffle(n, seed=seed).batch(BATCH).prefetch(tf.data.AUTOTUNE))


def naive_str(table: Interactions, vocabs: Vocabularies, seed: int) -> tf.data.Dataset:
    user_lookup, item_lookup = vocabs.user.string_lookup(), vocabs.item.string_lookup()

    def lookup(feats, rating):
        return ({"user_id": user_lookup(feats["user_id"]),
                 "item_id": item_lookup(feats["item_id"])}, rating)

    strings = {"user_id": table.user_id, "item_id": table.item_id}
    return (tf.data.Dataset.from_tensor_slices((strings, table.rating)).cache()
            .shuffle(len(table), seed=seed).batch(BATCH)
            .map(lookup, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))


def bench(name: str, table: Interactions, epochs: int, seed: int = 0) -> dict:
    vocabs = Vocabularies.build(table)
    n = len(table)
    ids = vocabs.encode(table)
    ours = _measure(pointwise_dataset(table, vocabs, BATCH, shuffle=True, seed=seed), epochs, n)
    ints = _measure(naive_int(ids, table.rating, n, seed), epochs, n)
    strs = _measure(naive_str(table, vocabs, seed), epochs, n)
    return {"dataset": name, "rows": n, "batch_size": BATCH, "epochs_timed": epochs,
            "examples_per_s": {"tfrec_p5": ours, "naive_int": ints, "naive_str": strs},
            "speedup_vs_naive_int": ours / ints, "speedup_vs_naive_str": ours / strs}


def machine() -> dict:
    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines()
                      if ln.startswith("Model name")), "")
    except (OSError, subprocess.SubprocessError):
        pass
    return {"cpu": model or platform.processor(), "cores": os.cpu_count(),
            "python": sys.version.split()[0], "tensorflow": tf.__version__,
            "platform": platform.platform()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ml100k", default=str(DEFAULT_ML100K / "ml-100k"))
    parser.add_argument("--synthetic-rows", type=int, default=1_000_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" /
                                             "data_pipeline.json"))
    args = parser.parse_args(argv)

    rows = []
    if Path(args.ml100k, "u.data").exists():
        rows.append(bench("ml-100k", load(f"movielens:{args.ml100k}"), args.epochs))
    else:
        print(f"ML-100K not found at {args.ml100k}: skipped", file=sys.stderr)
    t0 = time.perf_counter()
    table = synthetic(num_users=50_000, num_items=20_000,
                      num_interactions=int(args.synthetic_rows * 1.5), seed=0)
    if len(table) > args.synthetic_rows:  # repeats are dropped, so ask for more, then trim
        table = table.take(np.arange(args.synthetic_rows))
    gen_s = time.perf_counter() - t0
    rows.append(bench(f"synthetic-{len(table) // 1000}k", table, args.epochs))

    print(f"{'dataset':<16}{'rows':>10}{'tfrec_p5 ex/s':>16}{'naive_int ex/s':>16}"
          f"{'naive_str ex/s':>16}{'x naive_int':>13}{'x naive_str':>13}")
    for r in rows:
        e = r["examples_per_s"]
        print(f"{r['dataset']:<16}{r['rows']:>10,}{e['tfrec_p5']:>16,.0f}"
              f"{e['naive_int']:>16,.0f}{e['naive_str']:>16,.0f}"
              f"{r['speedup_vs_naive_int']:>12.1f}x{r['speedup_vs_naive_str']:>12.1f}x")
    result = {"benchmark": "data_pipeline", "command": "python " + " ".join(
        [f"benchmarks/{Path(__file__).name}", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(), "synthetic_generation_s": gen_s, "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
