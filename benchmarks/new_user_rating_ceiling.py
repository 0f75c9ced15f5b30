"""How far can demographics move a new user's rating? (issue #19, part (b), a ceiling probe)

Same splits as ``cold_start.py --part users`` (validation carve and test, seeds 0-2, the
item-bias lambda chosen there). On top of the item-bias baseline (global mean + ridge
item bias), closed-form ridge biases of the residual: per demographic segment (gender,
age bucket, gender x age, occupation, all three) and per segment x item genre (a rating
of a movie with k genres counts for each; the offset is the mean over its genres).
Prints each one's RMSE change relative to the item-bias baseline (negative = better) and
writes them to JSON.

    PYTHONPATH=. .venv/bin/python benchmarks/new_user_rating_ceiling.py \\
        --data ../shared/data/ml-100k --out benchmarks/results/new_user_rating_ceiling.json
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

SEGMENTS = {"gender": ["user_gender"], "age": ["bucketized_user_age"],
            "gender_age": ["user_gender", "bucketized_user_age"],
            "occupation": ["user_occupation_label"],
            "gender_age_occupation": ["user_gender", "bucketized_user_age",
                                      "user_occupation_label"]}
SEGMENT_L2 = (10, 100, 1000)
GENRE_L2 = (30, 300)


def rmse(pred: np.ndarray, table) -> float:
    return float(np.sqrt(np.mean((pred - table.rating) ** 2)))


class Offsets:
    """Residuals of the item-bias fit and the keys they are pooled by."""

    def __init__(self, table, users) -> None:
        self.columns = {c: np.asarray(users.columns[c]).astype(str)
                        for c in users.user_features}
        self.row = {u: i for i, u in enumerate(users.user_id.tolist())}
        self.genres: dict[str, list[int]] = {}
        for item, g in zip(table.item_id.tolist(), table.columns["movie_genres"].tolist(),
                           strict=True):
            self.genres.setdefault(item, [x for x in g if x >= 0])

    def keys(self, table, features: list[str]) -> list[str]:
        rows = np.array([self.row[u] for u in table.user_id.tolist()])
        return cs._key_join([self.columns[f][rows] for f in features]).tolist()

    def predict(self, train, cold, l2_item: float, features: list[str], l2: float,
                by_genre: bool) -> np.ndarray:
        mean, bias = cs.item_bias_fit(train, l2_item)
        residual = train.rating - mean - np.array([bias.get(i, 0.0)
                                                   for i in train.item_id.tolist()])
        sums: dict = {}
        counts: dict = {}
        for key, item, r in zip(self.keys(train, features), train.item_id.tolist(),
                                residual.tolist(), strict=True):
            for k in ([(key, g) for g in self.genres[item]] if by_genre else [key]):
                sums[k] = sums.get(k, 0.0) + r
                counts[k] = counts.get(k, 0) + 1
        offset = {k: sums[k] / (counts[k] + l2) for k in sums}
        out = []
        for key, item in zip(self.keys(cold, features), cold.item_id.tolist(), strict=True):
            ks = [(key, g) for g in self.genres[item]] if by_genre else [key]
            out.append(mean + bias.get(item, 0.0)
                       + float(np.mean([offset.get(k, 0.0) for k in ks] or [0.0])))
        return np.clip(np.array(out), 1.0, 5.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/ml-100k")
    parser.add_argument("--out", default="benchmarks/results/new_user_rating_ceiling.json")
    args = parser.parse_args(argv)
    table, _ = load_ml100k(args.data)
    table = cs.with_zip_prefix(table)
    users = table.user_rows()
    offsets = Offsets(table, users)
    result = {}
    for part in ("validation", "test"):
        for seed in (0, 1, 2):
            warm, cold, _ = cs.carve_new(table, "user_id", cs.NEW_USER_FRACTION, seed)
            train = data.random_split(warm, 0.8, seed=seed).train
            if part == "validation":
                train, cold, _ = cs.carve_new(train, "user_id", cs.NEW_USER_FRACTION,
                                              seed + 1000)
                train = data.random_split(train, 0.9, seed=seed + 1000).train
            l2_item = cs.choose_baselines(train, users, seed + 2000)["item_bias_l2"]
            base = rmse(cs.item_bias_predict(cs.item_bias_fit(train, l2_item), cold), cold)
            row = {"item_bias_rmse": base}
            for name, feats in SEGMENTS.items():
                for by_genre, grid in ((False, SEGMENT_L2), (True, GENRE_L2)):
                    for l2 in grid:
                        pred = offsets.predict(train, cold, l2_item, feats, l2, by_genre)
                        label = f"{name}{'_x_genre' if by_genre else ''}/l2={l2}"
                        row[label] = rmse(pred, cold) / base - 1.0
            result[f"{part}/{seed}"] = row
            best = min((k for k in row if k != "item_bias_rmse"), key=row.get)
            print(f"{part} seed {seed}: item-bias {base:.4f}; best {best} "
                  f"{row[best] * 100:+.2f} %", flush=True)
    cs.write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
