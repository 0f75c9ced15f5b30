"""Rating accuracy on MovieLens-100K: ours vs a biased baseline and the TFRS tutorial.

    .venv/bin/python benchmarks/rating_ml100k.py [--data PATH] [--folds 5] [--no-ablations]

Protocols:

* ``tfrs``: the exact TFRS-tutorial 80,000 / 20,000 split (``tfrs_split_seed42.tsv``).
  Hyper-parameters (the ``RatingConfig`` defaults, the baseline's lambdas) were chosen on
  a validation slice = 10% of the *training* pairs (``random_split(train, 0.9, seed=42)``);
  the test set is only evaluated, never used for a choice. Ablations report both.
* ``5-fold``: u.data rows shuffled with ``np.random.default_rng(2024).permutation``, cut
  into 5 disjoint chunks of 20,000; fold k tests on chunk k and trains on the rest.

Writes ``benchmarks/results/rating_ml100k.json`` and prints a table.
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
import tensorflow_recommenders as tfrs
# isort: on

from tfrec_p5 import data
from tfrec_p5.models import RatingConfig, evaluate_rating, train_rating

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _ml100k import load_tfrs_split  # noqa: E402

FOLD_SEED = 2024
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    err = pred.astype(np.float64) - truth.astype(np.float64)
    return {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err)))}


# ----------------------------------------------------------------- biased baseline
def biased_baseline(train: data.Interactions, lam_u: float, lam_i: float, iters: int = 15):
    """mu + b_u + b_i by alternating closed-form ridge updates (Koren's baseline)."""
    vocabs = data.Vocabularies.build(train)
    ids = vocabs.encode(train)
    u, i, r = ids["user_id"], ids["item_id"], train.rating.astype(np.float64)
    mu = r.mean()
    bu, bi = np.zeros(len(vocabs.user)), np.zeros(len(vocabs.item))
    nu, ni = np.bincount(u, minlength=len(bu)), np.bincount(i, minlength=len(bi))
    for _ in range(iters):
        bi = np.bincount(i, r - mu - bu[u], len(bi)) / (ni + lam_i)
        bu = np.bincount(u, r - mu - bi[i], len(bu)) / (nu + lam_u)

    def predict(table: data.Interactions) -> np.ndarray:
        e = vocabs.encode(table)
        return np.clip(mu + bu[e["user_id"]] + bi[e["item_id"]], 1.0, 5.0)
    return predict


def tuned_baseline(train, fit, val):
    grid = [(lu, li) for lu in (1, 3, 5, 10) for li in (2, 5, 10, 25)]
    scores = {g: _metrics(biased_baseline(fit, *g)(val), val.rating)["rmse"] for g in grid}
    best = min(scores, key=scores.get)
    return biased_baseline(train, *best), {"lam_u": best[0], "lam_i": best[1],
                                           "val_rmse": scores[best]}


# ----------------------------------------------------------------- TFRS tutorial
class TutorialRankingModel(tfrs.models.Model):
    """The TFRS basic-ranking tutorial model, verbatim in structure."""

    def __init__(self, users: np.ndarray, items: np.ndarray) -> None:
        super().__init__()
        dim = 32
        self.user_embeddings = tf.keras.Sequential([
            tf.keras.layers.StringLookup(vocabulary=users, mask_token=None),
            tf.keras.layers.Embedding(len(users) + 1, dim)])
        self.movie_embeddings = tf.keras.Sequential([
            tf.keras.layers.StringLookup(vocabulary=items, mask_token=None),
            tf.keras.layers.Embedding(len(items) + 1, dim)])
        self.ratings = tf.keras.Sequential([
            tf.keras.layers.Dense(256, activation="relu"),
            tf.keras.layers.Dense(64, activation="relu"),
            tf.keras.layers.Dense(1)])
        self.task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.MeanSquaredError(),
            metrics=[tf.keras.metrics.RootMeanSquaredError()])

    def call(self, features):
        u = self.user_embeddings(features["user_id"])
        m = self.movie_embeddings(features["movie_title"])
        return self.ratings(tf.concat([u, m], axis=1))

    def compute_loss(self, features, training=False):
        labels = features.pop("user_rating")
        return self.task(labels=labels, predictions=self(features))


def tutorial_dataset(table: data.Interactions) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices({
        "user_id": table.user_id, "movie_title": table.item_id,
        "user_rating": table.rating.astype(np.float32)})


def run_tutorial(train, test, epochs: int, optimizer, seed: int = 42):
    tf.keras.utils.set_random_seed(seed)
    model = TutorialRankingModel(np.unique(train.user_id), np.unique(train.item_id))
    model.compile(optimizer=optimizer)
    ds = tutorial_dataset(train).shuffle(100_000, seed=seed).batch(8192).cache()
    model.fit(ds, epochs=epochs, verbose=0)
    pred = model.predict(tutorial_dataset(test).batch(4096).map(
        lambda f: {k: v for k, v in f.items() if k != "user_rating"}), verbose=0)
    return _metrics(pred.reshape(-1), test.rating)


# ----------------------------------------------------------------- ours
def run_ours(train, test, config: RatingConfig, validation=None, seed: int = 42) -> dict:
    t0 = time.time()
    trained = train_rating(train, validation, config, seed=seed, verbose=0)
    out = evaluate_rating(trained.model, test, trained.vocabs)
    hist = trained.history
    val_key = "search_val_rmse" if "search_val_rmse" in hist else "val_rmse"
    if val_key in hist:
        out["val_rmse"] = float(min(hist[val_key]))
        out["best_epoch"] = int(np.argmin(hist[val_key])) + 1
    out["seconds"] = round(time.time() - t0, 1)
    return out


def kfold(table: data.Interactions, k: int, seed: int = FOLD_SEED):
    perm = np.random.default_rng(seed).permutation(len(table))
    chunks = np.array_split(perm, k)
    for f in range(k):
        rest = np.concatenate([c for j, c in enumerate(chunks) if j != f])
        yield table.take(np.sort(rest)), table.take(np.sort(chunks[f]))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="/work/shared/data/ml-100k")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--no-ablations", action="store_true")
    p.add_argument("--out", default=os.path.join(RESULTS, "rating_ml100k.json"))
    args = p.parse_args(argv)
    start = time.time()
    table, how, split = load_tfrs_split(args.data)
    train, test = split.train, split.test
    sel = data.random_split(train, 0.9, seed=42)  # selection slice (never test)
    default = RatingConfig()
    rows: dict[str, dict] = {}

    def row(name, fn):
        t0 = time.time()
        res = fn()
        res.setdefault("seconds", round(time.time() - t0, 1))
        rows[name] = res
        print(f"{name:<44} rmse={res['rmse']:.4f} mae={res['mae']:.4f} "
              f"({res['seconds']}s)", flush=True)

    def baseline():
        predict, chosen = tuned_baseline(train, sel.train, sel.test)
        return {**_metrics(predict(test), test.rating), **chosen}

    row("biased baseline (mu+b_u+b_i, ridge)", baseline)
    row("TFRS tutorial (Adagrad 0.1, 3 ep)",
        lambda: run_tutorial(train, test, 3, tf.keras.optimizers.Adagrad(0.1)))
    row("TFRS tutorial (Adam 1e-3, 20 ep)",
        lambda: run_tutorial(train, test, 20, tf.keras.optimizers.Adam(1e-3)))
    row("ours: default (side feats + history)", lambda: run_ours(train, test, default))
    row("ours: IDs only (use_side_features=False)",
        lambda: run_ours(train, test, default.replace(use_side_features=False)))
    if not args.no_ablations:
        # One change at a time from the default, no refit: val = selection slice.
        base = default.replace(refit=False)
        for name, cfg in [
                ("ablation: default w/o refit", base),
                ("ablation: - history (rated_items/rated_by)", base.replace(history_len=0)),
                ("ablation: - side features", base.replace(use_side_features=False)),
                ("ablation: - dot term", base.replace(use_dot=False)),
                ("ablation: - user/item biases", base.replace(use_biases=False)),
                ("ablation: - L2 (l2=bias_l2=0)", base.replace(l2=0.0, bias_l2=0.0)),
                ("ablation: - dropout", base.replace(dropout=0.0)),
                ("ablation: tutorial arch (no extras), Adam", RatingConfig.tutorial(
                    optimizer="adam", learning_rate=1e-3, epochs=40, patience=3,
                    batch_size=512))]:
            row(name, lambda cfg=cfg: run_ours(sel.train, test, cfg, validation=sel.test))
    folds = []
    for f, (tr, te) in enumerate(kfold(table, args.folds)):
        t0 = time.time()
        res = run_ours(tr, te, default)
        res["baseline_rmse"] = _metrics(tuned_baseline(tr, *_sel(tr))[0](te), te.rating)[
            "rmse"]
        folds.append(res)
        print(f"fold {f}: rmse={res['rmse']:.4f} mae={res['mae']:.4f} "
              f"baseline={res['baseline_rmse']:.4f} ({time.time() - t0:.0f}s)", flush=True)
    wall = time.time() - start
    result = {
        "benchmark": "rating_ml100k", "data": args.data, "loaded_with": how,
        "split": "tfrs_split_seed42 (80000/20000)", "selection": "10% of train, seed 42",
        "default_config": default.to_dict(), "rows": rows,
        "kfold": {"k": args.folds, "seed": FOLD_SEED, "folds": folds,
                  "mean_rmse": float(np.mean([f["rmse"] for f in folds])) if folds else None,
                  "mean_mae": float(np.mean([f["mae"] for f in folds])) if folds else None,
                  "mean_baseline_rmse": float(np.mean([f["baseline_rmse"] for f in folds]))
                  if folds else None},
        "wall_seconds": round(wall, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "tensorflow": tf.__version__},
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
    print("\n| model | test RMSE | test MAE | val RMSE | s |\n|---|---|---|---|---|")
    for name, r in rows.items():
        val = f"{r['val_rmse']:.4f}" if "val_rmse" in r else ""
        print(f"| {name} | {r['rmse']:.4f} | {r['mae']:.4f} | {val} | {r['seconds']} |")
    if folds:
        print(f"| ours default, {args.folds}-fold mean | {result['kfold']['mean_rmse']:.4f} | "
              f"{result['kfold']['mean_mae']:.4f} | | |")
        print(f"| biased baseline, {args.folds}-fold mean | "
              f"{result['kfold']['mean_baseline_rmse']:.4f} | | | |")
    print(f"\nwall time {wall:.0f}s; results in {args.out}")
    return result


def _sel(train: data.Interactions):
    s = data.random_split(train, 0.9, seed=42)
    return s.train, s.test


if __name__ == "__main__":
    main()
