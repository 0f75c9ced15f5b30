"""The TFRS multitask tutorial's table on our UnifiedModel: rating / retrieval loss weights.

Same protocol as ``retrieval_ml100k.py``: the TFRS 80/20 split; epochs chosen on a
validation slice of train (``random_split(train, 0.9, seed=42)``; rating-only by val RMSE,
retrieval-only and joint by val Recall@10); then retrained on all of train and evaluated
once on test. One architecture for all three rows (the default ``UnifiedConfig`` towers +
retrieval head + the rating head of ``RatingConfig``), as in the tutorial.

    .venv/bin/python benchmarks/multitask_ml100k.py --data /work/shared/data/ml-100k \
        --out benchmarks/results/multitask_ml100k.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _ml100k import load_tfrs_split  # noqa: E402  (imports tfrec_p5 first)

from tfrec_p5 import data  # noqa: E402
from tfrec_p5.models.unified import UnifiedConfig, train_unified  # noqa: E402

SETTINGS = {"rating_only": {"rating": 1.0, "retrieval": 0.0},
            "retrieval_only": {"rating": 0.0, "retrieval": 1.0},
            "joint": {"rating": 1.0, "retrieval": 1.0}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/shared/data/ml-100k")
    parser.add_argument("--out", default="benchmarks/results/multitask_ml100k.json")
    parser.add_argument("--max-epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    table, _, split = load_tfrs_split(args.data)
    train, test = split.train, split.test
    vocabs = data.Vocabularies.build(train)
    inner = data.random_split(train, 0.9, seed=args.seed)
    result: dict = {"config": UnifiedConfig().to_dict(), "rows": {}}
    for name, weights in SETTINGS.items():
        cfg = UnifiedConfig(weights=weights, epochs=args.max_epochs, patience=100)
        t0 = time.perf_counter()
        searched = train_unified(inner.train, inner.test, cfg, vocabs=vocabs, seed=args.seed,
                                 verbose=0)
        h = searched.history
        if weights["retrieval"] > 0:
            epochs = int(np.argmax(h["val_recall@10"])) + 1
        else:
            epochs = int(np.argmin(h["val_rmse"])) + 1
        final = train_unified(train, None, cfg.replace(epochs=epochs, patience=0),
                              vocabs=vocabs, seed=args.seed, verbose=0)
        test_metrics = final.evaluate(test)
        row = {"weights": weights, "epochs": epochs,
               "val_curves": {k: [round(x, 4) for x in h[k]] for k in
                              ("val_rmse", "val_recall@10") if k in h},
               "test": {k: round(v, 4) for k, v in test_metrics.items()
                        if k in ("rating_rmse", "rating_mae", "retrieval_recall@10",
                                 "retrieval_recall@100", "retrieval_ndcg@10",
                                 "retrieval_factorized_top_100")},
               "wall_s": round(time.perf_counter() - t0, 1)}
        result["rows"][name] = row
        print(name, row, flush=True)
    rows = result["rows"]
    joint = rows["joint"]["test"]
    result["joint_within_1pct"] = {
        "rmse": joint["rating_rmse"] <= 1.01 * rows["rating_only"]["test"]["rating_rmse"],
        "top100": joint["retrieval_factorized_top_100"]
        >= 0.99 * rows["retrieval_only"]["test"]["retrieval_factorized_top_100"],
    }
    result["total_wall_s"] = round(time.perf_counter() - t_start, 1)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result["joint_within_1pct"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
