"""ScaNN vs brute force behind the exported ``recommend`` (k=100): recall, latency, build.

For synthetic catalogs of 100k and 1M items we build one ``RetrievalIndex`` (64-d vectors
drawn around 1,000 cluster centres, item norms varied by a log-normal factor; 1,000 users,
50 seen items each, excluded from ``recommend``), export it twice -- brute force (the
default) and ``ann=ScannOptions()`` (the default ScaNN options: ``round(sqrt(N))`` leaves,
20 % of them searched, asymmetric hashing, exact re-scoring) -- and load both with
``load_export`` (which imports scann for the ScaNN export). Then:

* recall@10 / recall@100: share of brute force's top 10 / 100 that the ScaNN export also
  returns in its top 10 / 100, over the 1,000 users (1,000 queries);
* latency: median (and p90) ms of one ``recommend`` call for batch 1 and batch 100, after
  warm-up, on the loaded exports;
* build: seconds to build the ScaNN index (k-means tree + hashing), and how often
  ``recommend`` fell back to brute force because ScaNN found fewer than k unseen items.

    .venv/bin/python benchmarks/scann_recall.py --out benchmarks/results/scann_recall.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

# isort: off
import tfrec_p5  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
# isort: on

from tfrec_p5 import data
from tfrec_p5.data.vocabulary import Vocabulary
from tfrec_p5.export import ServingModule, export, load_export
from tfrec_p5.export.retrieval import RetrievalIndex, add_retrieval_signatures
from tfrec_p5.export.scann_index import ScannOptions, scann_recommend

K = 100


def clustered_index(num_items: int, num_users: int = 1000, dim: int = 64, seen: int = 50,
                    clusters: int = 1000, seed: int = 0):
    """Vocabularies and a ``RetrievalIndex`` of clustered user / item vectors."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)

    def around(n: int) -> np.ndarray:
        x = centres[rng.integers(clusters, size=n)] + 0.7 * rng.normal(size=(n, dim))
        return (x * rng.lognormal(0.0, 0.3, size=(n, 1))).astype(np.float32)

    users = Vocabulary([f"u{i}" for i in range(num_users)], name="user_id")
    items = Vocabulary([f"i{i}" for i in range(num_items)], name="item_id")
    seen_values = np.sort(np.stack([rng.choice(np.arange(1, num_items + 1), seen,
                                               replace=False)
                                    for _ in range(num_users)]), axis=1).reshape(-1)
    splits = np.r_[0, 0, np.arange(1, num_users + 1) * seen].astype(np.int64)
    item_vectors = np.concatenate([np.zeros((1, dim), np.float32), around(num_items)])
    user_vectors = np.concatenate([np.zeros((1, dim), np.float32), around(num_users)])
    index = RetrievalIndex(user_vectors, item_vectors, items.tokens,
                           rng.random(num_items + 1).astype(np.float32), splits, seen_values)
    return data.Vocabularies(users, items), index


def timings(fn, users: np.ndarray, batch: int, calls: int) -> dict:
    rng = np.random.default_rng(1)
    requests = [tf.constant(rng.choice(users, batch).astype(object)) for _ in range(calls)]
    for r in requests[:5]:
        fn(user_id=r)
    times = []
    for r in requests:
        t0 = time.perf_counter()
        fn(user_id=r)["item_ids"].numpy()
        times.append((time.perf_counter() - t0) * 1000)
    return {"median_ms": round(float(np.median(times)), 2),
            "p90_ms": round(float(np.percentile(times, 90)), 2), "calls": calls}


def recommend_all(fn, users: np.ndarray, batch: int = 100) -> np.ndarray:
    return np.concatenate([fn(user_id=tf.constant(users[i:i + batch].astype(object)))
                           ["item_ids"].numpy().astype(str)
                           for i in range(0, len(users), batch)])


def recall(approx: np.ndarray, exact: np.ndarray, n: int) -> float:
    return float(np.mean([len(set(a[:n]) & set(e[:n])) / n
                          for a, e in zip(approx, exact, strict=True)]))


def fallbacks(module: ServingModule, users: np.ndarray, vocabs) -> dict:
    """Requests (batch 1 and batch 100) that ScaNN could not fill with k unseen items."""
    index, ann = module.retrieval_index, module.scann_index
    marker = {"item_ids": tf.fill([1, K], "FALLBACK"), "scores": tf.zeros([1, K])}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
    def fell_back(user_index):
        sentinel = {k: tf.tile(v, [tf.shape(user_index)[0], 1]) for k, v in marker.items()}
        out = scann_recommend(index, ann, user_index, K, True, lambda: sentinel)
        return tf.reduce_all(tf.equal(out["item_ids"], "FALLBACK"))

    idx = vocabs.user.lookup(users)
    single = sum(bool(fell_back(tf.constant([u], tf.int64))) for u in idx)
    batched = sum(bool(fell_back(tf.constant(idx[i:i + 100], tf.int64)))
                  for i in range(0, len(idx), 100))
    return {"batch1": f"{single}/{len(idx)}", "batch100": f"{batched}/{len(idx) // 100}"}


def run_catalog(num_items: int, tmp: str) -> dict:
    t0 = time.perf_counter()
    vocabs, index = clustered_index(num_items)
    print(f"{num_items:,} items: vectors in {time.perf_counter() - t0:.1f} s", flush=True)
    brute = ServingModule(vocabs)
    add_retrieval_signatures(brute, index, k=K)
    scann = ServingModule(vocabs)
    t0 = time.perf_counter()
    add_retrieval_signatures(scann, index, k=K, ann=ScannOptions())
    build_s = time.perf_counter() - t0
    print(f"  ScaNN index built in {build_s:.1f} s: {dict(scann.recommend_index)}", flush=True)
    users = vocabs.user.tokens.astype(str)
    fell_back = fallbacks(scann, users, vocabs)
    out = {"items": num_items, "queries": len(users), "k": K, "seen_per_user": 50,
           "scann_build_s": round(build_s, 1), "scann_options": dict(scann.recommend_index),
           "fallbacks_to_brute_force": fell_back}
    loaded = {}
    for name, module in (("brute_force", brute), ("scann", scann)):
        t0 = time.perf_counter()
        path = export(module, os.path.join(tmp, f"{name}_{num_items}"))
        export_s = time.perf_counter() - t0
        size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path)
                   for f in fs)
        loaded[name] = load_export(path)[0].signatures["recommend"]
        out[f"{name}_export_mb"] = round(size / 2**20, 1)
        out[f"{name}_export_s"] = round(export_s, 1)
    exact = recommend_all(loaded["brute_force"], users)
    approx = recommend_all(loaded["scann"], users)
    out["recall@10"] = round(recall(approx, exact, 10), 4)
    out["recall@100"] = round(recall(approx, exact, 100), 4)
    for name, fn in loaded.items():
        out[f"{name}_latency"] = {"batch1": timings(fn, users, 1, 100),
                                  "batch100": timings(fn, users, 100, 20)}
    print(f"  {json.dumps({k: v for k, v in out.items() if k != 'scann_options'})}",
          flush=True)
    return out


def table(rows: list[dict]) -> str:
    lines = ["| items | recall@10 | recall@100 | brute force b1 / b100 (ms) | "
             "ScaNN b1 / b100 (ms) | ScaNN build (s) | fallbacks b1 / b100 |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        bf, sc = r["brute_force_latency"], r["scann_latency"]
        lines.append(
            f"| {r['items']:,} | {r['recall@10']:.3f} | {r['recall@100']:.3f} | "
            f"{bf['batch1']['median_ms']:.1f} / {bf['batch100']['median_ms']:.1f} | "
            f"{sc['batch1']['median_ms']:.1f} / {sc['batch100']['median_ms']:.1f} | "
            f"{r['scann_build_s']:.1f} | {r['fallbacks_to_brute_force']['batch1']} / "
            f"{r['fallbacks_to_brute_force']['batch100']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", default="100000,1000000",
                        help="catalog sizes, comma-separated")
    parser.add_argument("--out", default="benchmarks/results/scann_recall.json")
    args = parser.parse_args(argv)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    result = {"machine": {"cpus": os.cpu_count(), "tensorflow": tf.__version__,
                          "uptime_before": load},
              "k": K, "command": "python benchmarks/scann_recall.py " + " ".join(
                  argv if argv is not None else sys.argv[1:]),
              "catalogs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.items.split(",")):
            result["catalogs"].append(run_catalog(n, tmp))
            os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
            with open(args.out, "w", encoding="utf-8") as f:  # partial results survive
                json.dump(result, f, indent=2)
    result["machine"]["uptime_after"] = subprocess.run(
        ["uptime"], capture_output=True, text=True).stdout.strip()
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(table(result["catalogs"]))
    print(f"load before: {result['machine']['uptime_before']}")
    print(f"load after:  {result['machine']['uptime_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
