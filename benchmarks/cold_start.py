"""Cold start on MovieLens-100K (issue #19): (a) new items, (b) new users, (c) warm pairs.

``--part items`` (default): part (a), new items ranked from their features. ``--part
users``: parts (b) and (c), new users answered from their demographics, and the warm test
with user features on; its protocol is ``USERS_PROTOCOL`` below.

Protocol of part (a) (per seed ``s`` of ``--seeds``):

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
    PYTHONPATH=. .venv/bin/python benchmarks/cold_start.py --part users --validation \\
        --data /work/shared/data/ml-100k --arms ARM ... --out RUN.json
    PYTHONPATH=. .venv/bin/python benchmarks/cold_start.py --merge RUN1.json RUN2.json ... \\
        --out benchmarks/results/cold_start_users_validation.json
    PYTHONPATH=. .venv/bin/python benchmarks/cold_start.py --part users \\
        --data /work/shared/data/ml-100k --out benchmarks/results/cold_start_users.json
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
    rating_metrics,
)
from tfrec_p5.models.rating import RatingConfig  # noqa: E402
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


def carve_new(table: Interactions, column: str, fraction: float, seed: int
              ) -> tuple[Interactions, Interactions, np.ndarray]:
    """A seeded ``fraction`` of the IDs in ``column`` (``item_id`` / ``user_id``) made new:
    (rows of the other IDs, rows of the new ones, the new IDs sorted)."""
    ids = np.unique(table.columns[column])
    new = np.sort(np.random.default_rng(seed).permutation(ids)[:int(round(fraction
                                                                         * len(ids)))])
    is_new = np.isin(table.columns[column], new)
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
    warm, cold, new_items = carve_new(table, "item_id", NEW_FRACTION, seed)
    split = data.random_split(warm, 0.8, seed=seed)
    train, warm_test = split.train, split.test
    if validation:  # the same protocol inside the training part: test is never read
        train, cold, new_items = carve_new(train, "item_id", NEW_FRACTION, seed + 1000)
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


# ====================================================================== parts (b), (c)
USERS_PROTOCOL = """Parts (b) and (c), per seed ``s``: a seeded 20 % of the users
(``default_rng(s).permutation`` of the sorted user IDs) lose every rating: the *new
users*; u.user still lists them, so their gender, age bucket, raw age, occupation and zip
prefix (``user_zip1``: the first character of the zip code) are known. The other users'
ratings are split 80/20 at random (``random_split(warm, 0.8, seed=s)``): models and
baselines see only the 80 % (*train*); the 20 % is the *warm test* (part (c)). Rating:
RMSE over every rating of the new users (items unknown to train included: every scorer
answers them with its item-less fallback). Retrieval: each new user's rated items (all of
them: the retrieval models are trained on which movies a user rates, the repo's
retrieval protocol; ``liked_*`` keys: ratings >= 4 only) ranked among every trained item
(nothing is excluded: a new user has seen nothing), ``expected_ranking_metrics`` (ties in
random order, exact expectation); Recall@10 is the capped recall of part (a). Baselines:
the item-bias baseline (global mean + ridge item bias, lambda chosen on the validation
carve below), most popular, and most popular within the user's demographic segment (the
segment definition with the best Recall@10 on the validation carve, among
``SEGMENTS``; ties broken by overall popularity). ``--validation``: the same protocol
inside train (a further seeded 20 % of the training users become new, seed ``s + 1000``;
the rest is split 90/10 into fit / warm validation): every model arm (``USER_CHOSEN``)
was chosen there; the baselines' lambda and segment are chosen per seed on that carve
(cheap, so it is redone in every run)."""

NEW_USER_FRACTION = 0.2
USER_KEYS = ("capped_recall@10", "ndcg@10", "recall@10", "liked_capped_recall@10",
             "liked_ndcg@10")
DEMOGRAPHICS = {"gender": "user_gender", "age": "bucketized_user_age",
                "occupation": "user_occupation_label", "zip1": "user_zip1"}
#: Demographic segments tried for the "most popular within the segment" baseline.
SEGMENTS = {"gender": ("gender",), "age": ("age",), "occupation": ("occupation",),
            "zip1": ("zip1",), "gender_x_age": ("gender", "age"),
            "gender_x_occupation": ("gender", "occupation"),
            "age_x_occupation": ("age", "occupation")}
#: The declared user features of the arms that name them (zip prefix last).
DEMOGRAPHIC_COLUMNS = ("user_gender", "bucketized_user_age", "user_occupation_label",
                       "raw_user_age", "user_zip1")
ITEM_BIAS_GRID = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
RATING_BASE = UnifiedConfig.rating_only(RatingConfig())   # the rating model's default
RETRIEVAL_USERS = dict(use_side_features=True, item_features=(), use_user_tower=True)
RETRIEVAL_COLD = dict(use_side_features=True, item_features=(), cold_user_tower=True)


def _rating_arm(users: bool, **changes) -> dict:
    return dict(config=RATING_BASE.replace(**changes).to_dict(), users=users)


def _retrieval_arm(users: bool, **changes) -> dict:
    return dict(config=UnifiedConfig(**changes).to_dict(), users=users)


#: Model arms of parts (b) / (c): ``config`` (a ``UnifiedConfig`` dict) and whether the
#: user catalog (u.user) reaches training (``train_unified(users=...)``). The two
#: ``*_default`` arms are today's models (every new user on the OOV row); the others
#: were candidates on ``--validation``, ``USER_CHOSEN`` won there.
USER_ARMS = {
    "rating_default": _rating_arm(False),
    "rating_users": _rating_arm(True),
    "rating_users_drop25": _rating_arm(True, user_id_dropout=0.25),
    "rating_users_drop50": _rating_arm(True, user_id_dropout=0.5),
    "rating_users_drop10": _rating_arm(True, user_id_dropout=0.1),
    "rating_users_nozip_drop25": _rating_arm(True, user_id_dropout=0.25,
                                             user_features=DEMOGRAPHIC_COLUMNS[:-1]),
    "rating_users_agegender_drop25": _rating_arm(True, user_id_dropout=0.25,
                                                 user_features=DEMOGRAPHIC_COLUMNS[:2]),
    "retrieval_default": _retrieval_arm(False),
    "retrieval_users": _retrieval_arm(True, **RETRIEVAL_USERS),
    "retrieval_users_drop25": _retrieval_arm(True, **RETRIEVAL_USERS, user_id_dropout=0.25),
    "retrieval_users_drop50": _retrieval_arm(True, **RETRIEVAL_USERS, user_id_dropout=0.5),
    "retrieval_users_drop10": _retrieval_arm(True, **RETRIEVAL_USERS, user_id_dropout=0.1),
    "retrieval_users_nozip_drop25": _retrieval_arm(
        True, **RETRIEVAL_USERS, user_id_dropout=0.25, user_features=DEMOGRAPHIC_COLUMNS[:-1]),
    "retrieval_users_items_drop25": _retrieval_arm(
        True, **{**RETRIEVAL_USERS, "item_features": None}, user_id_dropout=0.25),
    "retrieval_cold_drop25": _retrieval_arm(True, **RETRIEVAL_COLD, user_id_dropout=0.25),
    "retrieval_cold_drop50": _retrieval_arm(True, **RETRIEVAL_COLD, user_id_dropout=0.5),
    "retrieval_users_agegender_drop25": _retrieval_arm(
        True, **RETRIEVAL_USERS, user_id_dropout=0.25, user_features=DEMOGRAPHIC_COLUMNS[:2]),
    "retrieval_cold_agegender_drop25": _retrieval_arm(
        True, **RETRIEVAL_COLD, user_id_dropout=0.25, user_features=DEMOGRAPHIC_COLUMNS[:2]),
    "retrieval_users_bias_drop25": _retrieval_arm(True, **RETRIEVAL_USERS, item_bias=True,
                                                  user_id_dropout=0.25),
    "retrieval_users_bias_drop50": _retrieval_arm(True, **RETRIEVAL_USERS, item_bias=True,
                                                  user_id_dropout=0.5),
}
USER_CHOSEN = {"rating": "rating_users_drop10", "retrieval": "retrieval_cold_agegender_drop25"}


def with_zip_prefix(table: Interactions) -> Interactions:
    """The table with ``user_zip1`` (the zip code's first character: a US region, or a
    Canadian province letter) declared a categorical user feature."""
    zip1 = np.array([z[:1] for z in table.columns["user_zip_code"].astype(str)])
    out = table.with_columns(user_zip1=zip1)
    return dataclasses.replace(out, user_features=(*table.user_features, "user_zip1"),
                               feature_kinds={**table.feature_kinds,
                                              "user_zip1": "categorical"})


def item_bias_fit(train: Interactions, l2: float) -> tuple[float, dict[str, float]]:
    """Global mean and ridge item biases ``sum(r - mean) / (n_i + l2)`` by item ID."""
    mean = float(np.mean(train.rating))
    items, inverse = np.unique(train.item_id, return_inverse=True)
    sums = np.bincount(inverse, train.rating - mean)
    counts = np.bincount(inverse)
    return mean, dict(zip(items.tolist(), (sums / (counts + l2)).tolist(), strict=True))


def item_bias_predict(fit: tuple[float, dict[str, float]], table: Interactions
                      ) -> np.ndarray:
    mean, bias = fit
    return np.clip(mean + np.array([bias.get(i, 0.0) for i in table.item_id.tolist()]),
                   1.0, 5.0)


class NewUserTask:
    """The new users, their targets and the trained items they are ranked among."""

    def __init__(self, train: Interactions, cold: Interactions, users: Interactions) -> None:
        self.train, self.cold = train, cold
        self.items = np.unique(train.item_id)                   # candidates (column order)
        self.new_users = np.unique(cold.user_id)
        known = np.isin(cold.item_id, self.items)
        u = np.searchsorted(self.new_users, cold.user_id[known])
        i = np.searchsorted(self.items, cold.item_id[known])
        liked = cold.rating[known] >= LIKED
        self.targets = group_by_row(u, i, len(self.new_users))
        self.liked = group_by_row(u[liked], i[liked], len(self.new_users))
        ids, first = np.unique(users.user_id, return_index=True)
        self.demographics = {k: users.columns[c][first[np.searchsorted(ids, self.new_users)]]
                             .astype(str) for k, c in DEMOGRAPHICS.items()}
        rows = first[np.searchsorted(ids, train.user_id)]
        self.train_demographics = {k: users.columns[c][rows].astype(str)
                                   for k, c in DEMOGRAPHICS.items()}

    def ranking(self, score_fn) -> dict[str, float]:
        """``score_fn(rows of self.new_users) -> [B, len(self.items)]``."""
        out = {}
        for prefix, targets in (("", self.targets), ("liked_", self.liked)):
            query = np.flatnonzero((targets >= 0).any(axis=1))
            m = expected_ranking_metrics(lambda q, query=query: score_fn(q), query,
                                         targets[query], ks=(K,))
            out.update({f"{prefix}{k}": m[k] for k in ("capped_recall@10", "ndcg@10",
                                                       "recall@10")})
            out[f"{prefix}users"] = int(len(query))
        return {k: v for k, v in out.items() if k in (*USER_KEYS, "users", "liked_users")}

    def popularity(self, segment: tuple[str, ...] | None) -> np.ndarray:
        """``[new users, items]`` training counts, within the user's segment if given
        (plus a 1e-6 share of the overall count: ties broken by overall popularity)."""
        cols = np.searchsorted(self.items, self.train.item_id)
        overall = np.bincount(cols, minlength=len(self.items)).astype(np.float64)
        if segment is None:
            return np.tile(overall, (len(self.new_users), 1))
        key_train = _key_join([self.train_demographics[d] for d in segment])
        key_new = _key_join([self.demographics[d] for d in segment])
        keys, inverse = np.unique(key_train, return_inverse=True)
        counts = np.zeros((len(keys) + 1, len(self.items)))
        np.add.at(counts, (inverse, cols), 1.0)
        pos = np.minimum(np.searchsorted(keys, key_new), len(keys) - 1)
        row = np.where(keys[pos] == key_new, pos, len(keys))      # unseen segment: 0s
        return counts[row] + 1e-6 * overall

    def popular(self, segment: tuple[str, ...] | None) -> dict[str, float]:
        """``ranking`` of the (segment's) most popular items."""
        scores = self.popularity(segment)
        return self.ranking(lambda q: scores[q])

    def rating(self, predictions: np.ndarray) -> float:
        return rating_metrics(predictions, self.cold.rating)["rmse"]


def _key_join(parts: list[np.ndarray]) -> np.ndarray:
    out = parts[0]
    for p in parts[1:]:
        out = np.char.add(np.char.add(out, "|"), p)
    return out


def choose_baselines(train: Interactions, users: Interactions, seed: int) -> dict:
    """The item-bias lambda (new-user RMSE) and the segment definition (new-user
    Recall@10) chosen on a carve of ``train``: a seeded 20 % of its users made new."""
    fit, cold, _ = carve_new(train, "user_id", NEW_USER_FRACTION, seed)
    task = NewUserTask(fit, cold, users)
    rmse = {l2: task.rating(item_bias_predict(item_bias_fit(fit, l2), cold))
            for l2 in ITEM_BIAS_GRID}
    recall = {name: task.popular(seg)["capped_recall@10"] for name, seg in SEGMENTS.items()}
    return {"item_bias_l2": min(rmse, key=rmse.get), "segment": max(recall, key=recall.get),
            "item_bias_rmse": rmse, "segment_recall@10": recall}


def train_user_arm(name: str, train: Interactions, users: Interactions, seed: int,
                   epochs: int | None):
    arm = USER_ARMS[name]
    config = UnifiedConfig.from_dict(arm["config"])
    if epochs is not None:
        config = config.replace(epochs=epochs)
    tf.keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    trained = train_unified(train, None, config, seed=seed, verbose=0,
                            users=users if arm["users"] else None)
    return trained, time.perf_counter() - start


def run_users_seed(table: Interactions, seed: int, arms: list[str], validation: bool,
                   epochs: int | None) -> dict:
    warm, cold, new_users = carve_new(table, "user_id", NEW_USER_FRACTION, seed)
    split = data.random_split(warm, 0.8, seed=seed)
    train, warm_test = split.train, split.test
    if validation:  # the same protocol inside the training part: test is never read
        train, cold, new_users = carve_new(train, "user_id", NEW_USER_FRACTION, seed + 1000)
        split = data.random_split(train, 0.9, seed=seed + 1000)
        train, warm_test = split.train, split.test
    users = table.user_rows()       # what u.user lists: every user's demographics
    task = NewUserTask(train, cold, users)
    # The baselines' own choices, on a carve of train (seed + 2000: not the validation one).
    chosen = choose_baselines(train, users, seed + 2000)
    segment = SEGMENTS[chosen["segment"]]
    item_bias = item_bias_predict(item_bias_fit(train, chosen["item_bias_l2"]), cold)
    out = {"new_users": int(len(new_users)), "train_rows": int(len(train)),
           "new_user_ratings": int(len(cold)), "baseline_choices": chosen,
           "rating": {"item_bias": {"rmse": task.rating(item_bias)}},
           "retrieval": {
               "most_popular": task.popular(None),
               f"segment_popular ({chosen['segment']})": task.popular(segment)},
           "warm": {}, "seconds": {}}
    for name in arms:
        trained, took = train_user_arm(name, train, users, seed, epochs)
        out["seconds"][name] = round(took, 1)
        if "rating" in trained.tasks:
            pred = trained.predict_ratings(cold)
            out["rating"][name] = {"rmse": task.rating(pred),
                                   "distinct_predictions": int(len(np.unique(
                                       pred.round(4))))}
            out["warm"][name] = {"rmse": rating_metrics(trained.predict_ratings(warm_test),
                                                        warm_test.rating)["rmse"]}
        if "retrieval" in trained.tasks:
            uv, iv = trained.user_vectors(), trained.item_vectors()
            rows = trained.vocabs.user.lookup(task.new_users)
            cand = iv[trained.vocabs.item.lookup(task.items)]
            out["retrieval"][name] = task.ranking(
                lambda q, uv=uv, rows=rows, cand=cand: uv[rows[q]] @ cand.T)
            metrics = retrieval_metrics(trained.retrieval_scores, warm_test, trained.vocabs,
                                        trained.seen_splits, trained.seen_values, ks=(K,),
                                        factorized_ks=())
            out["warm"][name] = {"recall@10": metrics["recall@10"],
                                 "ndcg@10": metrics["ndcg@10"]}
        print(f"  seed {seed} {name}: "
              f"{out['rating'].get(name) or out['retrieval'].get(name)} "
              f"warm {out['warm'][name]} ({took:.0f} s)", flush=True)
    return out


def summarize_users(per_seed: dict) -> dict:
    seeds = list(per_seed.values())

    def stats(values):
        return {"mean": float(np.mean(values)), "std": float(np.std(values))}

    out = {"rating": {}, "retrieval": {}, "warm": {}}
    for name in seeds[0]["rating"]:
        out["rating"][name] = {"rmse": stats([s["rating"][name]["rmse"] for s in seeds])}
    # Segment names can differ by seed (chosen per seed): summarized under one key.
    for name in seeds[0]["retrieval"]:
        key = "segment_popular" if name.startswith("segment_popular") else name

        def value(s, k, name=name):
            n = name if name in s["retrieval"] else next(
                x for x in s["retrieval"] if x.startswith("segment_popular"))
            return s["retrieval"][n][k]
        out["retrieval"][key] = {k: stats([value(s, k) for s in seeds]) for k in USER_KEYS}
    for name in seeds[0]["warm"]:
        out["warm"][name] = {k: stats([s["warm"][name][k] for s in seeds])
                             for k in seeds[0]["warm"][name]}
    out["segments"] = [s["baseline_choices"]["segment"] for s in seeds]
    out["item_bias_l2"] = [s["baseline_choices"]["item_bias_l2"] for s in seeds]
    return out


def print_users_table(summary: dict, title: str) -> None:
    print(f"\n{title}\n")
    print("new users, rating: RMSE over their every rating\n")
    print("| scorer | RMSE |\n| --- | --- |")
    for name, m in summary["rating"].items():
        print(f"| {name} | {m['rmse']['mean']:.4f} ± {m['rmse']['std']:.4f} |")
    print(f"\nnew users, retrieval among the trained items (segments chosen per seed: "
          f"{summary['segments']})\n")
    print("| scorer | " + " | ".join(USER_KEYS) + " |")
    print("| --- |" + " --- |" * len(USER_KEYS))
    for name, m in summary["retrieval"].items():
        print(f"| {name} | " + " | ".join(f"{m[k]['mean']:.4f} ± {m[k]['std']:.4f}"
                                          for k in USER_KEYS) + " |")
    print("\nwarm test (users and items with training ratings; the repo's protocols: RMSE, "
          "pooled recall@10 / NDCG@10 with training items excluded)\n")
    print("| model | metric | mean ± std |\n| --- | --- | --- |")
    for name, m in summary["warm"].items():
        for k, v in m.items():
            print(f"| {name} | {k} | {v['mean']:.4f} ± {v['std']:.4f} |")


def merge_users(paths: list[str], out: str | None) -> int:
    """One JSON from several ``--part users`` runs of the same part and seeds (arms run as
    separate processes): per seed, the union of their scorers; baselines are
    deterministic, so every run has the same."""
    runs = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            runs.append(json.load(f))
    if len({(r["part"], tuple(r["seeds"])) for r in runs}) != 1:
        raise SystemExit("--merge needs runs of the same part and seeds")
    per_seed = {}
    for seed in runs[0]["per_seed"]:
        merged = json.loads(json.dumps(runs[0]["per_seed"][seed]))
        for run in runs[1:]:
            for key in ("rating", "retrieval", "warm", "seconds"):
                merged[key].update(run["per_seed"][seed][key])
        per_seed[seed] = merged
    summary = summarize_users(per_seed)
    print_users_table(summary, f"{runs[0]['part']}: new users, merged from {paths}")
    write_json(out, {**runs[0], "arms": {a: v for r in runs for a, v in r["arms"].items()},
                 "summary": summary, "per_seed": per_seed,
                 "seconds": round(sum(r["seconds"] for r in runs), 1),
                 "load_average": [r["load_average"] for r in runs],
                 "merged_from": [os.path.basename(p) for p in paths]})
    return 0


def main_users(args, table: Interactions, how: str) -> int:
    table = with_zip_prefix(table)
    arms = args.arms or ["rating_default", USER_CHOSEN["rating"], "retrieval_default",
                         USER_CHOSEN["retrieval"]]
    unknown = sorted(set(arms) - set(USER_ARMS))
    if unknown:
        raise SystemExit(f"unknown --part users arm(s) {unknown}; known: {list(USER_ARMS)}")
    start = time.perf_counter()
    per_seed = {str(seed): run_users_seed(table, seed, arms, args.validation, args.epochs)
                for seed in args.seeds}
    summary = summarize_users(per_seed)
    seconds = time.perf_counter() - start
    print_users_table(summary, f"{'validation' if args.validation else 'test'}: new users, "
                      f"seeds {args.seeds}, mean ± std ({seconds:.0f} s)")
    write_json(args.out, {
        "protocol": USERS_PROTOCOL, "part": "validation" if args.validation else "test",
        "data": how, "seeds": args.seeds, "arms": {a: USER_ARMS[a] for a in arms},
        "epochs": args.epochs, "chosen": USER_CHOSEN, "summary": summary,
        "per_seed": per_seed, "seconds": round(seconds, 1),
        "load_average": list(os.getloadavg()), "machine": _machine()})
    return 0


def _machine() -> dict:
    return {"python": platform.python_version(), "tensorflow": tf.__version__,
            "cpus": os.cpu_count()}


def write_json(path: str | None, result: dict) -> None:
    """``result`` as indented JSON at ``path`` (folders made), said on stdout."""
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1, default=str)
        print(f"\nwrote {path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("items", "users"), default="items",
                        help="items: part (a); users: parts (b) and (c)")
    parser.add_argument("--data", default="../shared/data/ml-100k")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="*", default=None,
                        help=f"part (a): {list(ARMS)}; part (b/c): {list(USER_ARMS)}")
    parser.add_argument("--validation", action="store_true",
                        help="evaluate on new items / users carved from the training part")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--train-seeds", type=int, default=1,
                        help="part (a): models per data seed (seeds s, s + 100, ...), "
                             "averaged")
    parser.add_argument("--out", default=None, help="JSON results file")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="part (b/c): merge these runs' JSON into --out, train nothing")
    args = parser.parse_args(argv)
    if args.merge:
        return merge_users(args.merge, args.out)

    table, how = load_ml100k(args.data)
    if args.part == "users":
        return main_users(args, table, how)
    arms = args.arms or ["ids_only", "features", CHOSEN]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise SystemExit(f"unknown --part items arm(s) {unknown}; known: {list(ARMS)}")
    table = with_release_year(table)
    start = time.perf_counter()
    per_seed = {}
    for seed in args.seeds:
        per_seed[str(seed)] = run_seed(table, seed, arms, args.validation, args.epochs,
                                       args.train_seeds)
    summary = summarize(per_seed)
    seconds = time.perf_counter() - start
    print_table(summary, f"{'validation' if args.validation else 'test'}: new items, "
                f"seeds {args.seeds}, mean ± std ({seconds:.0f} s)")
    write_json(args.out, {
        "protocol": next(p for p in __doc__.split("\n\n") if p.startswith("Protocol")),
        "part": "validation" if args.validation else "test",
        "data": how, "seeds": args.seeds, "arms": {a: ARMS[a] for a in arms},
        "epochs": args.epochs, "train_seeds": args.train_seeds, "chosen": CHOSEN,
        "summary": summary, "per_seed": per_seed,
        "seconds": round(seconds, 1), "load_average": list(os.getloadavg()),
        "machine": _machine(),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
