"""MovieLens-100K for the rating benchmarks: the package loader, or a local fallback.

The fallback parses u.data / u.item / u.user into the same columns the package loader
(``load("movielens:PATH")``) produces (TFDS feature names), and is used only while that
loader is not available.
"""

from __future__ import annotations

import os

import numpy as np

import tfrec_p5  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from tfrec_p5 import data

AGE_BUCKETS = np.array([1, 18, 25, 35, 45, 50, 56])


def load_ml100k(path: str) -> tuple[data.Interactions, str]:
    """(table in u.data row order, how it was loaded)."""
    try:
        return data.load(f"movielens:{path}"), "tfrec_p5.data.load"
    except data.DataError as err:
        if "unknown data spec" not in str(err):
            raise
    raw = np.loadtxt(os.path.join(path, "u.data"), dtype=np.int64, delimiter="\t")
    users = {}
    with open(os.path.join(path, "u.user"), encoding="latin-1") as f:
        for line in f:
            uid, age, gender, occ, _ = line.rstrip("\n").split("|")
            bucket = AGE_BUCKETS[np.searchsorted(AGE_BUCKETS, int(age), side="right") - 1]
            users[int(uid)] = (gender, float(bucket), occ)
    items = {}
    with open(os.path.join(path, "u.item"), encoding="latin-1") as f:
        for line in f:
            parts = line.rstrip("\n").split("|")
            flags = np.array(parts[5:24], dtype=np.int64)
            genres = np.full(6, -1, dtype=np.int64)
            g = np.flatnonzero(flags)[:6]
            genres[:len(g)] = g
            items[int(parts[0])] = (parts[1], genres)
    u, i = raw[:, 0], raw[:, 1]
    table = data.Interactions.from_columns(
        {"user_id": u.astype(str), "item_id": i.astype(str),
         "rating": raw[:, 2].astype(np.float32), "timestamp": raw[:, 3],
         "user_gender": np.array([users[x][0] == "M" for x in u]),
         "bucketized_user_age": np.array([users[x][1] for x in u], dtype=np.float32),
         "user_occupation_label": np.array([users[x][2] for x in u]),
         "movie_genres": np.stack([items[x][1] for x in i]),
         "movie_title": np.array([items[x][0] for x in i])},
        source=path,
        user_features=("user_gender", "bucketized_user_age", "user_occupation_label"),
        item_features=("movie_genres", "movie_title"), rating_range=(1.0, 5.0),
        feature_kinds={"user_gender": "categorical", "bucketized_user_age": "categorical",
                       "user_occupation_label": "categorical",
                       "movie_genres": "multi_categorical", "movie_title": "text"})
    return table, "benchmarks/_ml100k.py fallback parser"


def load_tfrs_split(path: str) -> tuple[data.Interactions, str, data.Split]:
    """ML-100K from ``path`` and its exact TFRS-tutorial 80/20 split (``tfrs_split_seed42.tsv``
    in the same folder): the split every ML-100K benchmark reports on."""
    table, how = load_ml100k(path)
    return table, how, data.tfrs_split(table, os.path.join(path, "tfrs_split_seed42.tsv"))
