"""Cold start on MovieLens-100K (issue #19), part (a): new items, ranked from their features.

Protocol (per seed ``s`` of ``--seeds``):

* a seeded 20 % of the items (``default_rng(s).permutation`` of the sorted item IDs) lose
  every rating: they are the *new items*; u.item still lists them, so their genres, title
  and release year are known;
* the remaining ratings are split 80/20 at random (``random_split(warm, 0.8, seed=s)``):
  the model and every baseline see only the 80 % part (*train*); the 20 % part is the
  *warm test*;
* for each user, the new items they rated >= 4 are the targets; every user with one is
  ranked over *all* new items (nothing else competes). Metrics come from
  ``tfrec_p5.evaluation.expected_ranking_metrics``: equal scores are put in a uniformly
  random order and the metric is its exact expectation, so "random order" and a constant
  scorer (every new item on the one OOV row) get the same number. ``Recall@10`` is the
  capped recall the issue quotes (hits / min(10, #targets), per user, then averaged;
  Liang et al. 2018); the pooled recall (hits / all targets) is reported beside it.

Scorers: random order (expected value), the genre-profile content baseline (cosine between
the user's liked-genre counts -- train ratings >= 4 -- and the item's genre vector,
``FeatureProfile``), popularity by genre (``FeaturePopularity``: the mean training count
of the items sharing the item's genres), and the two-tower retrieval model of
``train_unified`` (the retrieval default) in the ``ARMS`` below: ``ids_only`` is today's
model (every new item on the OOV row); the others get the catalog (``u.item``: one row
per item with its features, ``Interactions.item_rows``) through ``train_unified(...,
catalog=...)``, so new items have rows of their own, represented by their item features
(genres, title words, the release year as a number and as a category). ``--train-seeds
n`` trains n models per data seed (seeds s, s + 100, ...) and averages them.

``--validation`` runs the same protocol *inside* the training part (a further seeded 20 %
of the training items become new, seed ``s + 1000``) and reports those numbers: every
model choice (``CHOSEN``) was made there, never on the test part. The warm test is
reported twice: ranked among the trained items (comparable with ``ids_only``) and among
the whole catalog, new items included (``warm_metrics``).

    PYTHONPATH=. .venv/bin/python benchmarks/cold_start.py --data /work/shared/data/ml-100k \\
        --seeds 0 1 2 --train-seeds 2 --out benchmarks/results/cold_start.json
    PYTHONPATH=. .venv/bin/python benchmarks/cold_start.py --data /work/shared/data/ml-100k \\
        --validation --train-seeds 2 --arms genres_years genres_years_drop25 ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import sys
import time

import numpy as np

import tfrec_p5  # noqa: F401  (before TensorFlow: sets TF_USE_LEGACY_KERAS)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tensorflow as tf  # noqa: E402
from _ml100k import load_ml100k  # noqa: E402

from tfrec_p5 import data  # noqa: E402
from tfrec_p5.data import (
    Interactions,  # noqa: E402
    catalog_items,  # noqa: E402
)
from tfrec_p5.evaluation import (  # noqa: E402
    FeaturePopularity,
    FeatureProfile,
    expected_ranking_metrics,
    group_by_row,
)
from tfrec_p5.models.unified import (  # noqa: E402
    UnifiedConfig,
    retrieval_metrics,
    train_unified,
)

NEW_FRACTION = 0.2
LIKED = 4.0
K = 10
KEYS = ("capped_recall@10", "ndcg@10", "recall@10")
GTY = ("movie_genres", "movie_title", "movie_release_year")
GYY = ("movie_genres", "movie_release_year", "movie_year")
GTYY = ("movie_genres", "movie_title", "movie_release_year", "movie_year")
BASE = dict(use_side_features=True, item_features=GTY, user_features=())


def _arm(features=GTY, **config) -> dict:
    return dict(config=dict(BASE, item_features=features, **config), catalog=True)


#: Model arms: overrides of ``UnifiedConfig()`` (the retrieval default) and whether new
#: items reach the model through the catalog (``train_unified(catalog=...)``). Every arm
#: but the first two was a candidate on ``--validation``; ``CHOSEN`` won there.
ARMS = {
    "ids_only": dict(config={}, catalog=False),   # today: every new item on the OOV row
    "features": _arm(),                          # the plain model: genres, title, year
    "features_drop25": _arm(item_id_dropout=0.25),
    "features_drop50": _arm(item_id_dropout=0.5),
    "features_min5_drop25": _arm(item_id_dropout=0.25, text_min_count=5),
    "genres_year_drop25": _arm(("movie_genres", "movie_release_year"), item_id_dropout=0.25),
    "genres_years": _arm(GYY),
    "genres_years_drop25": _arm(GYY, item_id_dropout=0.25),
    "genres_years_drop50": _arm(GYY, item_id_dropout=0.5),
    "all_drop25": _arm(GTYY, item_id_dropout=0.25),
    "all_min5_drop25": _arm(GTYY, item_id_dropout=0.25, text_min_count=5),
    "features_drop25_epochs15": _arm(item_id_dropout=0.25, epochs=15),
}
CHOSEN = "genres_years_drop25"


def with_release_year(table: Interactions) -> Interactions:
    """The table with two declared item features read from the ``(1995)`` that ends each
    title: ``movie_release_year`` (numeric; NaN without one, "unknown") and ``movie_year``
    (the same year as a category, "" = unknown, so each year can matter on its own)."""
    titles = table.columns["movie_title"].astype(str)
    uniq, inverse = np.unique(titles, return_inverse=True)
    years = np.array([float(m.group(1)) if (m := re.search(r"\((\d{4})\)\s*$", t)) else np.nan
                      for t in uniq], dtype=np.float32)
    year = years[inverse.reshape(-1)]
    out = table.with_columns(movie_release_year=year,
                             movie_year=np.where(np.isnan(year), "",
                                                 np.nan_to_num(year).astype(int).astype(str)))
    return dataclasses.replace(
        out, item_features=(*table.item_features, "movie_release_year", "movie_year"),
        feature_kinds={**table.feature_kinds, "movie_release_year": "numeric",
                       "movie_year": "categorical"})


def carve_new_items(table: Interactions, fraction: float, seed: int
                    ) -> tuple[Interactions, Interactions, np.ndarray]:
    """(rows of the other items, rows of the new items, the new item IDs sorted)."""
    items = np.unique(table.item_id)
    new = np.sort(np.random.default_rng(seed).permutation(items)[:int(round(fraction
                                                                           * len(items)))])
    is_new = np.isin(table.item_id, new)
    return table.take(np.flatnonzero(~is_new)), table.take(np.flatnonzero(is_new)), new


def genre_matrix(table: Interactions, items: np.ndarray) -> np.ndarray:
    """``[len(items), genres]`` multi-hot genre vectors of ``items`` (from any row)."""
    ids, first = np.unique(table.item_id, return_index=True)
    genres = table.columns["movie_genres"][first[np.searchsorted(ids, items)]]
    out = np.zeros((len(items), int(table.columns["movie_genres"].max()) + 1))
    rows, cols = np.nonzero(genres >= 0)
    out[rows, genres[rows, cols]] = 1.0
    return out


class ColdTask:
    """The users, targets and candidate new items of one cold-item evaluation."""

    def __init__(self, full: Interactions, train: Interactions, cold: Interactions,
                 new_items: np.ndarray) -> None:
        self.full, self.train, self.new_items = full, train, new_items
        self.users = np.unique(full.user_id)                 # baseline user index
        liked = cold.rating >= LIKED
        u = np.searchsorted(self.users, cold.user_id[liked])
        targets = group_by_row(u, np.searchsorted(new_items, cold.item_id[liked]),
                               len(self.users))
        self.query = np.flatnonzero((targets >= 0).any(axis=1))
        self.targets = targets[self.query]

    def metrics(self, score_fn) -> dict[str, float]:
        """``score_fn(user rows of self.users) -> [B, len(new_items)]``."""
        out = expected_ranking_metrics(score_fn, self.query, self.targets, ks=(K,))
        return {k: out[k] for k in (*KEYS, "users", "targets")}

    def baselines(self) -> dict[str, dict[str, float]]:
        tr = self.train
        items = np.unique(np.concatenate([tr.item_id, self.new_items]))
        genres = genre_matrix(self.full, items)
        new_cols = np.searchsorted(items, self.new_items)
        user_rows = np.searchsorted(self.users, tr.user_id)
        item_rows = np.searchsorted(items, tr.item_id)
        liked = tr.rating >= LIKED
        profile = FeatureProfile.fit(user_rows[liked], item_rows[liked], genres,
                                     len(self.users))
        popular = FeaturePopularity.fit(item_rows, genres)
        return {
            "random": self.metrics(lambda q: np.zeros((len(q), len(self.new_items)))),
            "genre_profile": self.metrics(lambda q: profile.score(q)[:, new_cols]),
            "popularity_by_genre": self.metrics(lambda q: popular.score(q)[:, new_cols]),
        }

    def model_metrics(self, trained) -> dict[str, float]:
        """The retrieval score (query · candidate, as the export's ``rank``) of every
        new item; an item outside the vocabulary takes the OOV row's vector."""
        uv, iv = trained.user_vectors(), trained.item_vectors()
        user_index = trained.vocabs.user.lookup(self.users)
        cand = iv[trained.vocabs.item.lookup(self.new_items)]
        return self.metrics(lambda q: uv[user_index[q]] @ cand.T)


def train_arm(name: str, train: Interactions, catalog: Interactions, seed: int,
              epochs: int | None):
    arm = ARMS[name]
    config = UnifiedConfig(**arm["config"])
    if epochs is not None:
        config = config.replace(epochs=epochs)
    tf.keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    trained = train_unified(train, None, config, seed=seed, verbose=0,
                            catalog=catalog if arm["catalog"] else None)
    return trained, time.perf_counter() - start


WARM_KEYS = ("recall@10", "ndcg@10", "catalog_recall@10", "catalog_ndcg@10")


def warm_metrics(trained, train: Interactions, warm_test: Interactions) -> dict[str, float]:
    """Warm test (its items have training ratings), the repo's retrieval protocol
    (``retrieval_metrics``: every test pair a target, training items excluded), ranked
    among the trained items only (``recall@10``: comparable with a model without new
    items) and among the model's whole catalog, new items included (``catalog_*``: what
    ``recommend`` serves; a new item in a top 10 is a miss here, its likes are the cold
    part's targets)."""
    table = warm_test.take(np.flatnonzero(np.isin(warm_test.item_id, train.item_id)))
    new = catalog_items(train, trained.vocabs)

    def trained_only(users):
        scores = trained.retrieval_scores(users)
        scores[:, new] = -np.inf
        return scores

    out = {}
    for prefix, score_fn in (("", trained_only), ("catalog_", trained.retrieval_scores)):
        metrics = retrieval_metrics(score_fn, table, trained.vocabs, trained.seen_splits,
                                    trained.seen_values, ks=(K,), factorized_ks=())
        out.update({f"{prefix}{k}": metrics[k] for k in ("recall@10", "ndcg@10")})
    return out


def run_seed(table: Interactions, seed: int, arms: list[str], validation: bool,
             epochs: int | None, train_seeds: int = 1) -> dict:
    warm, cold, new_items = carve_new_items(table, NEW_FRACTION, seed)
    split = data.random_split(warm, 0.8, seed=seed)
    train, warm_test = split.train, split.test
    if validation:  # the same protocol inside the training part: test is never read
        train, cold, new_items = carve_new_items(train, NEW_FRACTION, seed + 1000)
        warm_test = None
    task = ColdTask(table, train, cold, new_items)
    out = {"new_items": int(len(new_items)), "train_rows": int(len(train)),
           "users": int(len(task.query)), "targets": int((task.targets >= 0).sum()),
           "scorers": task.baselines(), "warm": {}, "seconds": {}}
    # What u.item lists: one row per item with its features, no interaction of new items.
    catalog = (table if not validation else Interactions.concat(train, cold)).item_rows()
    for name in arms:
        runs, warm_runs, seconds = [], [], 0.0
        for j in range(train_seeds):   # model seeds seed, seed + 100, ...: training noise
            trained, took = train_arm(name, train, catalog, seed + 100 * j, epochs)
            seconds += took
            runs.append(task.model_metrics(trained))
            if warm_test is not None:
                warm_runs.append(warm_metrics(trained, train, warm_test))
        out["scorers"][name] = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
        if train_seeds > 1:
            out.setdefault("model_seed_runs", {})[name] = runs
        if warm_runs:
            out["warm"][name] = {k: float(np.mean([r[k] for r in warm_runs]))
                                 for k in warm_runs[0]}
        out["seconds"][name] = round(seconds, 1)
        print(f"  seed {seed} {name}: {[round(r['capped_recall@10'], 4) for r in runs]} "
              f"{[round(r['ndcg@10'], 4) for r in runs]} ({seconds:.0f} s)", flush=True)
    return out


def summarize(per_seed: dict) -> dict:
    seeds = list(per_seed.values())
    names = list(seeds[0]["scorers"])
    mean = {}
    for name in names:
        values = {k: [s["scorers"][name][k] for s in seeds] for k in KEYS}
        mean[name] = {k: {"mean": float(np.mean(v)), "std": float(np.std(v))}
                      for k, v in values.items()}
    warm = {}
    for name in seeds[0]["warm"]:
        warm[name] = {k: {"mean": float(np.mean([s["warm"][name][k] for s in seeds])),
                          "std": float(np.std([s["warm"][name][k] for s in seeds]))}
                      for k in WARM_KEYS}
    return {"new_items": mean, "warm": warm}


def print_table(summary: dict, title: str) -> None:
    ref = summary["new_items"]["genre_profile"]
    print(f"\n{title}\n")
    print("| scorer | Recall@10 (capped) | NDCG@10 | pooled recall@10 | × genre-profile "
          "(R / N) |")
    print("| --- | --- | --- | --- | --- |")
    for name, m in summary["new_items"].items():
        cells = [f"{m[k]['mean']:.4f} ± {m[k]['std']:.4f}" for k in KEYS]
        ratio = (f"{m['capped_recall@10']['mean'] / ref['capped_recall@10']['mean']:.2f} / "
                 f"{m['ndcg@10']['mean'] / ref['ndcg@10']['mean']:.2f}")
        print(f"| {name} | " + " | ".join(cells) + f" | {ratio} |")
    if summary["warm"]:
        print("\nwarm test (its items have training ratings; training items excluded), "
              "ranked among the trained items / among the whole catalog (new items too)\n")
        print("| model | recall@10 | ndcg@10 | catalog recall@10 | catalog ndcg@10 |")
        print("| --- | --- | --- | --- | --- |")
        for name, m in summary["warm"].items():
            print(f"| {name} | " + " | ".join(f"{m[k]['mean']:.4f} ± {m[k]['std']:.4f}"
                                              for k in WARM_KEYS) + " |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/ml-100k")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="*", default=["ids_only", "features", CHOSEN],
                        choices=list(ARMS))
    parser.add_argument("--validation", action="store_true",
                        help="evaluate on new items carved from the training part")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--train-seeds", type=int, default=1,
                        help="models per data seed (seeds s, s + 100, ...), averaged")
    parser.add_argument("--out", default=None, help="JSON results file")
    args = parser.parse_args(argv)

    table, how = load_ml100k(args.data)
    table = with_release_year(table)
    start = time.perf_counter()
    per_seed = {}
    for seed in args.seeds:
        per_seed[str(seed)] = run_seed(table, seed, args.arms, args.validation, args.epochs,
                                       args.train_seeds)
    summary = summarize(per_seed)
    seconds = time.perf_counter() - start
    print_table(summary, f"{'validation' if args.validation else 'test'}: new items, "
                f"seeds {args.seeds}, mean ± std ({seconds:.0f} s)")
    result = {
        "protocol": __doc__.split("\n\n")[1].strip(),
        "part": "validation" if args.validation else "test",
        "data": how, "seeds": args.seeds, "arms": {a: ARMS[a] for a in args.arms},
        "epochs": args.epochs, "train_seeds": args.train_seeds, "chosen": CHOSEN,
        "summary": summary, "per_seed": per_seed,
        "seconds": round(seconds, 1), "load_average": list(os.getloadavg()),
        "machine": {"python": platform.python_version(), "tensorflow": tf.__version__,
                    "cpus": os.cpu_count()},
    }
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
