"""The built-in synthetic dataset: MovieLens-shaped, offline, with planted structure.

Why: the demo and most tests must run anywhere without downloads, and a model must be able
to *learn* something from the data, or a test proves nothing. Each user and item has a
hidden ``dim``-dimensional factor; who interacts with what and how they rate it both follow
those factors, so retrieval, rating and sequence models all have signal to recover.

    table = synthetic(num_users=2000, num_items=1000, num_interactions=100_000, seed=0)

Generative story (documented noise level):

* user factor ``p_u ~ N(0, I/dim)``, item factor ``q_i ~ N(0, I/dim)``; user bias ~ N(0, .3²),
  item bias ~ N(0, .3²).
* item popularity follows a power law (Zipf exponent 1.0); users' activity is log-normal.
* each event: 16 candidate items drawn by popularity, the user picks the one with the
  largest ``3·p_u·q_i`` + Gumbel noise (planted retrieval signal).
* rating = clip(round(3.6 + b_u + b_i + 2·p_u·q_i + ε), 1, 5) with ε ~ N(0, 0.5²): an
  oracle that knows the factors reaches RMSE ≈ 0.55 (noise + rounding); the global mean
  alone ≈ 1.0.
* timestamps increase along each user's session; the next item drifts toward the previous
  one's factor (planted sequential signal).
* side features: item genres (the 1–2 largest factor coordinates, planted), item titles
  (genre words + id), user segment (sign pattern of the first 2 factor coordinates), age
  bucket (noise, as a control).
"""

from __future__ import annotations

import numpy as np

from tfrec_p5.data.interactions import Interactions

GENRE_WORDS = ("action", "comedy", "drama", "horror", "romance", "scifi", "thriller",
               "animation", "documentary", "western", "musical", "mystery")


def synthetic(num_users: int = 2000, num_items: int = 1000, num_interactions: int = 100_000,
              dim: int = 8, seed: int = 0, noise: float = 0.5) -> Interactions:
    """A seeded synthetic interactions table (see module docstring for the model)."""
    rng = np.random.default_rng(seed)
    n_genres = min(dim, len(GENRE_WORDS))
    p = rng.normal(0, 1 / np.sqrt(dim), (num_users, dim)).astype(np.float32)
    q = rng.normal(0, 1 / np.sqrt(dim), (num_items, dim)).astype(np.float32)
    bu = rng.normal(0, 0.3, num_users).astype(np.float32)
    bi = rng.normal(0, 0.3, num_items).astype(np.float32)
    pop = 1.0 / np.arange(1, num_items + 1) ** 1.0
    pop = pop[rng.permutation(num_items)]
    pop /= pop.sum()
    activity = rng.lognormal(0, 1.0, num_users)
    activity /= activity.sum()

    # Oversample, then drop repeated (user, item) pairs and trim to size.
    n_draw = int(num_interactions * 1.3) + 100
    users = rng.choice(num_users, size=n_draw, p=activity)
    users.sort(kind="stable")
    items = np.empty(n_draw, dtype=np.int64)
    chunk = 200_000
    n_cand = 16
    for s in range(0, n_draw, chunk):
        u = users[s:s + chunk]
        cand = rng.choice(num_items, size=(len(u), n_cand), p=pop)
        score = 3.0 * np.einsum("nd,nkd->nk", p[u], q[cand])
        score += rng.gumbel(size=score.shape)
        items[s:s + chunk] = cand[np.arange(len(u)), score.argmax(axis=1)]
    key = users.astype(np.int64) * num_items + items
    _, first = np.unique(key, return_index=True)
    first = np.sort(first)
    if len(first) > num_interactions:
        first = np.sort(rng.choice(first, size=num_interactions, replace=False))
    users, items = users[first], items[first]
    n = len(users)

    affinity = np.einsum("nd,nd->n", p[users], q[items])
    raw = 3.6 + bu[users] + bi[items] + 2.0 * affinity + rng.normal(0, noise, n)
    rating = np.clip(np.round(raw), 1, 5).astype(np.float32)
    # Timestamps: per-user sessions starting at random times, one event every ~hour.
    start = rng.integers(880_000_000, 890_000_000, num_users)
    step = rng.integers(60, 7200, n)
    order = np.lexsort((rng.random(n), users))
    users, items, rating, step = users[order], items[order], rating[order], step[order]
    seg_start = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1]
    csum = np.cumsum(step)
    offset = csum - np.repeat(csum[seg_start] - step[seg_start], np.diff(np.r_[seg_start, n]))
    timestamp = (start[users] + offset).astype(np.int64)

    top = np.argsort(-q[:, :n_genres], axis=1)[:, :2]
    second = q[np.arange(num_items), top[:, 1]] > 0.15
    genres = np.where(np.c_[np.ones(num_items, bool), second], top, -1).astype(np.int64)
    titles = np.array([f"{GENRE_WORDS[g[0]]} {GENRE_WORDS[g[1]] if g[1] >= 0 else 'story'} "
                       f"{i}" for i, g in enumerate(genres)])
    segment = ((p[:, 0] > 0).astype(np.int64) * 2 + (p[:, 1] > 0)).astype(np.int64)
    age = rng.choice(np.array([1, 18, 25, 35, 45, 50, 56], dtype=np.float32), num_users)

    return Interactions.from_columns(
        {
            "user_id": np.char.add("u", users.astype(str)),
            "item_id": np.char.add("i", items.astype(str)),
            "rating": rating,
            "timestamp": timestamp,
            "user_segment": segment[users],
            "bucketized_user_age": age[users],
            "item_genres": genres[items],
            "item_title": titles[items],
        },
        source="synthetic",
        user_features=("user_segment", "bucketized_user_age"),
        item_features=("item_genres", "item_title"),
        rating_range=(1.0, 5.0),
        feature_kinds={"user_segment": "categorical", "bucketized_user_age": "categorical",
                       "item_genres": "multi_categorical", "item_title": "text"},
    )
