"""The seed rating model's RMSE on new users (issue #19, part (b)), against the item-bias
baseline of ``cold_start.py --part users`` on the same splits (seeds 0-2).

A new user has no training rows, so ``train_rating``'s model answers them with its
``UnknownUserRating`` gate: each item's item-only ridge mean rating. This prints how that
compares with the benchmark's item-bias baseline (its own λ choice) and writes JSON.

    PYTHONPATH=. .venv/bin/python benchmarks/new_user_rating_model.py \\
        --out benchmarks/results/new_user_rating_model.json
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

import tfrec_p5  # noqa: F401  (before TensorFlow)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cold_start as cs  # noqa: E402
from _ml100k import load_ml100k  # noqa: E402

from tfrec_p5 import data  # noqa: E402
from tfrec_p5.models.rating import RatingConfig, predict_ratings, train_rating  # noqa: E402


def rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((pred - truth) ** 2)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/ml-100k")
    parser.add_argument("--out", default="benchmarks/results/new_user_rating_model.json")
    args = parser.parse_args(argv)
    table = cs.with_zip_prefix(load_ml100k(args.data)[0])
    users = table.user_rows()
    result = {}
    for seed in (0, 1, 2):
        warm, cold, _ = cs.carve_new(table, "user_id", cs.NEW_USER_FRACTION, seed)
        train = data.random_split(warm, 0.8, seed=seed).train
        l2_item = cs.choose_baselines(train, users, seed + 2000)["item_bias_l2"]
        base = rmse(cs.item_bias_predict(cs.item_bias_fit(train, l2_item), cold), cold.rating)
        trained = train_rating(train, None, RatingConfig(), seed=seed, verbose=0)
        pred = np.clip(predict_ratings(trained.model, cold, trained.vocabs), 1.0, 5.0)
        result[str(seed)] = {"item_bias": base, "rating_model": rmse(pred, cold.rating)}
        print(f"seed {seed}: item-bias {base:.4f}, rating model "
              f"{result[str(seed)]['rating_model']:.4f}", flush=True)
    cs.write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
