"""Rating training throughput: ours vs the TFRS basic-ranking tutorial, same architecture.

    .venv/bin/python benchmarks/rating_throughput.py [--rows 5000000] [--steps 300]
    .venv/bin/python benchmarks/rating_throughput.py --core --rounds 15   # tutorial vs ours only

Data: ``load("synthetic", num_users=100_000, num_items=50_000, num_interactions=ROWS)``.
Every variant trains ``--steps`` batches of 8192 (the history-feature variants, 10-30x
slower, ``--slow-steps``) with Adagrad(0.1) on the same rows: one
untimed warm-up epoch (tracing, tf.data cache fill); then ``--rounds`` timed epochs per
variant, the variants interleaved round by round (the order rotated each round) so machine
noise hits them alike; the median epoch is reported as training examples / second and
the ratio to the tutorial.

* ``tutorial``: string features, ``StringLookup`` inside a ``tfrs.Model`` with
  ``tfrs.tasks.Ranking``, ``from_tensor_slices(...).shuffle(100_000, seed=42,
  reshuffle_each_iteration=False).batch(8192).cache()`` as in the tutorial.
* ``ours (tutorial arch)``: ``RatingConfig.tutorial()`` (ID embeddings 32, Dense 256-64-1,
  no biases / dot / side features), integer IDs from ``pointwise_dataset``; with
  ``steps_per_execution`` 1 and 16.
* ``+ feature``: the tutorial architecture plus one side feature (its cost).
* ``ours full``: the default ``RatingConfig`` model (side features, history, biases, dot,
  dropout, L2) at batch 8192.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

# isort: off
import tfrec_p5  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
# isort: on

from tfrec_p5 import data
from tfrec_p5.models import RatingConfig, build_rating_model, compile_rating_model
from tfrec_p5.towers import SideFeatures
from tfrec_p5.towers.side_features import HISTORY_FEATURES

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rating_ml100k import TutorialRankingModel, tutorial_dataset  # noqa: E402

BATCH = 8192
REF = "tutorial (tfrs.Model, StringLookup)"  # the reference every ratio is taken against
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _epoch(model, ds) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for one epoch."""
    t0, c0 = time.perf_counter(), time.process_time()
    model.fit(ds, epochs=1, verbose=0)
    return time.perf_counter() - t0, time.process_time() - c0


def run_tutorial(full: data.Interactions, rows: data.Interactions):
    tf.keras.utils.set_random_seed(0)
    model = TutorialRankingModel(np.unique(full.user_id), np.unique(full.item_id))
    model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
    # As the tutorial: one fixed shuffle (100k buffer), then batch + cache. Without it the
    # synthetic rows arrive sorted by user, which flatters the reference (few distinct
    # users per batch → cheaper sparse updates, better cache locality).
    return model, tutorial_dataset(rows).shuffle(
        100_000, seed=42, reshuffle_each_iteration=False).batch(BATCH).cache()


def run_ours(vocabs, side, rows, config: RatingConfig):
    tf.keras.utils.set_random_seed(0)
    mean = float(rows.rating.mean())
    model = build_rating_model(vocabs, side, config, global_mean=mean, rating_range=(1, 5))
    compile_rating_model(model, config)
    return model, data.pointwise_dataset(rows, vocabs, BATCH, shuffle=True, seed=0)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rounds", type=int, default=3, help="timed epochs per variant")
    p.add_argument("--slow-steps", type=int, default=40,
                   help="batches per epoch for the (much slower) history-feature variants")
    p.add_argument("--core", action="store_true",
                   help="only the tutorial and ours at its architecture (no side features): "
                        "cheap rounds, so use many (--rounds 15) for a tight ratio")
    p.add_argument("--out", default=os.path.join(RESULTS, "rating_throughput.json"))
    args = p.parse_args(argv)
    start = time.time()
    t0 = time.time()
    table = data.load("synthetic", num_users=100_000, num_items=50_000,
                      num_interactions=args.rows)
    vocabs = data.Vocabularies.build(table)
    side = SideFeatures.build(table, vocabs).with_histories(table, vocabs, 128)
    prep = time.time() - t0
    n = min(len(table), args.steps * BATCH)
    # Rows in random order, as real logs arrive (the generator emits them sorted by user,
    # which would make any fixed-order pipeline look cheaper: few users per batch).
    order = np.random.default_rng(0).permutation(len(table))
    rows = table.take(order[:n])
    n_slow = min(n, args.slow_steps * BATCH)
    slow_rows = table.take(order[:n_slow])
    tut = RatingConfig.tutorial()
    slow: set[str] = set()  # variants timed on ``slow_rows``
    variants: list[tuple[str, object]] = [
        (REF, lambda: run_tutorial(table, rows)),
        ("ours, tutorial arch, steps_per_execution=1",
         lambda: run_ours(vocabs, None, rows, tut.replace(steps_per_execution=1))),
        ("ours, tutorial arch, steps_per_execution=16",
         lambda: run_ours(vocabs, None, rows, tut.replace(steps_per_execution=16)))]
    feature_variants = () if args.core else (
        ("user", ("user_segment", "bucketized_user_age")),
        ("item", ("item_genres", "item_title")),
        ("user", ("rated_items",)), ("item", ("rated_by",)))
    for side_name, names in feature_variants:
        for name in names:
            chosen = side.select([name] if side_name == "user" else [],
                                 [name] if side_name == "item" else [])
            some = slow_rows if name in HISTORY_FEATURES else rows
            if name in HISTORY_FEATURES:
                slow.add(f"ours, tutorial arch + {name}")
            variants.append((f"ours, tutorial arch + {name}", lambda c=chosen, r=some: run_ours(
                vocabs, c, r, tut.replace(use_side_features=True))))
    if not args.core:
        slow.add("ours, full default model (batch 8192)")
        variants.append(("ours, full default model (batch 8192)", lambda: run_ours(
            vocabs, side, slow_rows, RatingConfig(batch_size=BATCH, optimizer="adagrad",
                                                  learning_rate=0.1))))
    built = {}
    n_rows = {}
    for name, fn in variants:
        model, ds = fn()
        n_rows[name] = n_slow if name in slow else n
        _epoch(model, ds)  # warm-up: tracing, cache fill
        built[name] = (model, ds)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in built}
    names = list(built)
    for r in range(args.rounds):  # rotate the order, so no variant always runs first
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(_epoch(*built[name]))
    out = {}
    for name, ts in times.items():
        seconds = float(np.median([w for w, _ in ts]))
        best = float(min(w for w, _ in ts))
        cpu = float(np.median([c for _, c in ts]))
        out[name] = {"seconds": round(seconds, 2), "all_seconds": [round(w, 2) for w, _ in ts],
                     "best_seconds": round(best, 2),
                     "cpu_seconds": round(cpu, 2), "all_cpu_seconds": [round(c, 2) for _, c in ts],
                     "rows_per_epoch": n_rows[name],
                     "examples_per_sec": round(n_rows[name] / seconds),
                     "examples_per_sec_best": round(n_rows[name] / best),
                     "examples_per_cpu_sec": round(n_rows[name] / cpu)}
        print(f"{name:<48} {n_rows[name] / seconds:>10,.0f} ex/s (median) "
              f"{n_rows[name] / best:>10,.0f} ex/s (best) "
              f"{n_rows[name] / cpu:>10,.0f} ex/CPU-s", flush=True)
    ref, ref_cpu, ref_best = (out[REF][k] for k in (
        "examples_per_sec", "examples_per_cpu_sec", "examples_per_sec_best"))
    base = out["ours, tutorial arch, steps_per_execution=16"]["examples_per_sec"]
    for r in out.values():
        r["cpu_ratio_vs_tutorial"] = round(r["examples_per_cpu_sec"] / ref_cpu, 3)
        r["best_ratio_vs_tutorial"] = round(r["examples_per_sec_best"] / ref_best, 3)
        r["ratio_vs_tutorial"] = round(r["examples_per_sec"] / ref, 3)
        r["ratio_vs_ours_tutorial_arch"] = round(r["examples_per_sec"] / base, 3)
    # Paired by round (each round times every variant once, back to back): the per-round
    # ratio of CPU time per example cancels slow phases of the machine that hit a round.
    ref_per_row = np.array(out[REF]["all_cpu_seconds"]) / out[REF]["rows_per_epoch"]
    for r in out.values():
        mine = np.array(r["all_cpu_seconds"]) / r["rows_per_epoch"]
        paired = ref_per_row / mine
        r["paired_cpu_ratio_median"] = round(float(np.median(paired)), 3)
        r["rounds_faster_than_tutorial"] = f"{int((paired > 1).sum())}/{len(paired)}"
    wall = time.time() - start
    result = {"benchmark": "rating_throughput", "rows_generated": len(table),
              "rows_timed": n, "batch_size": BATCH, "optimizer": "Adagrad(0.1)",
              "data_prep_seconds": round(prep, 1), "variants": out,
              "wall_seconds": round(wall, 1),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "tensorflow": tf.__version__}}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
    print("\n| variant | examples/s (median epoch) | vs tutorial | examples/s (best epoch) "
          "| vs tutorial | examples/CPU-s | vs tutorial (CPU) |\n|---|---|---|---|---|---|---|")
    for name, r in out.items():
        print(f"| {name} | {r['examples_per_sec']:,} | {r['ratio_vs_tutorial']:.2f}x | "
              f"{r['examples_per_sec_best']:,} | {r['best_ratio_vs_tutorial']:.2f}x | "
              f"{r['examples_per_cpu_sec']:,} | {r['cpu_ratio_vs_tutorial']:.2f}x |")
    print("\npaired per round (CPU): " + "; ".join(
        f"{name}: median {r['paired_cpu_ratio_median']:.3f}x, faster in "
        f"{r['rounds_faster_than_tutorial']} rounds" for name, r in out.items()))
    print(f"\nwall time {wall:.0f}s (data prep {prep:.0f}s); results in {args.out}")
    return result


if __name__ == "__main__":
    main()
