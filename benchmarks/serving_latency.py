"""Latency of the exported ``recommend`` signature (k=10), loaded with bare TensorFlow.

For ML-100K (the trained default retrieval model) and synthetic catalogs of 10k and 100k
items (random 64-d vectors, 1k users with 50 seen items each), we export the same
``RetrievalIndex`` SavedModel, load it with ``tf.saved_model.load`` and time
``signatures["recommend"]`` for batch 1 and batch 256 (median and p99 over repeated calls,
after warm-up). Brute force: one ``[B, d] x [d, N]`` matmul + seen-item masking + top-k.

    .venv/bin/python benchmarks/serving_latency.py --data /work/shared/data/ml-100k \
        --out benchmarks/results/serving_latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

import tfrec_p5  # noqa: F401  (before TensorFlow: sets TF_USE_LEGACY_KERAS)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tensorflow as tf  # noqa: E402
from _ml100k import load_tfrs_split  # noqa: E402  (imports tfrec_p5 first)

from tfrec_p5 import data  # noqa: E402
from tfrec_p5.data.vocabulary import Vocabulary  # noqa: E402
from tfrec_p5.export import ServingModule, export  # noqa: E402
from tfrec_p5.export.retrieval import RetrievalIndex, add_retrieval_signatures  # noqa: E402
from tfrec_p5.models.unified import UnifiedConfig, train_unified  # noqa: E402


def synthetic_index(num_items: int, num_users: int = 1000, dim: int = 64, seen: int = 50,
                    seed: int = 0):
    rng = np.random.default_rng(seed)
    users = Vocabulary([f"u{i}" for i in range(num_users)], name="user_id")
    items = Vocabulary([f"i{i}" for i in range(num_items)], name="item_id")
    seen_values = np.stack([rng.choice(np.arange(1, num_items + 1), seen, replace=False)
                            for _ in range(num_users)]).reshape(-1)
    splits = np.r_[0, 0, np.arange(1, num_users + 1) * seen].astype(np.int64)
    index = RetrievalIndex(rng.normal(size=(num_users + 1, dim)).astype(np.float32),
                           rng.normal(size=(num_items + 1, dim)).astype(np.float32),
                           items.tokens, rng.random(num_items + 1).astype(np.float32),
                           splits, np.sort(seen_values.reshape(num_users, seen), 1)
                           .reshape(-1))
    return data.Vocabularies(users, items), index


def time_export(vocabs, index, batches=(1, 256), repeats=200) -> dict:
    module = ServingModule(vocabs)
    add_retrieval_signatures(module, index, k=10)
    with tempfile.TemporaryDirectory() as tmp:
        path = export(module, tmp)
        loaded = tf.saved_model.load(path)
        fn = loaded.signatures["recommend"]
        rng = np.random.default_rng(0)
        out = {}
        for b in batches:
            users = tf.constant(rng.choice(vocabs.user.tokens, b).astype(object))
            for _ in range(10):
                fn(user_id=users)
            times = []
            n = repeats if b == 1 else max(20, repeats // 5)
            for _ in range(n):
                t0 = time.perf_counter()
                fn(user_id=users)["item_ids"].numpy()
                times.append((time.perf_counter() - t0) * 1000)
            out[f"batch{b}"] = {"median_ms": round(float(np.median(times)), 3),
                                "p99_ms": round(float(np.percentile(times, 99)), 3),
                                "calls": n}
        return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/shared/data/ml-100k")
    parser.add_argument("--out", default="benchmarks/results/serving_latency.json")
    args = parser.parse_args(argv)
    table, _, split = load_tfrs_split(args.data)
    trained = train_unified(split.train, None, UnifiedConfig(), verbose=0)
    result = {"machine": {"cpus": os.cpu_count(), "tensorflow": tf.__version__},
              "k": 10, "note": "shared 2-CPU machine; other jobs were running"}
    result["ml100k_1682_items"] = time_export(trained.vocabs,
                                              RetrievalIndex.from_trained(trained))
    print("ml100k", result["ml100k_1682_items"], flush=True)
    for n in (10_000, 100_000):
        vocabs, index = synthetic_index(n)
        result[f"synthetic_{n}_items"] = time_export(vocabs, index)
        print(n, result[f"synthetic_{n}_items"], flush=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
