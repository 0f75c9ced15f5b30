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

import math

import numpy as np

from tfrec_p5.data.errors import DataError
from tfrec_p5.data.interactions import Interactions

GENRE_WORDS = ("action", "comedy", "drama", "horror", "romance", "scifi", "thriller",
               "animation", "documentary", "western", "musical", "mystery")


#: Argument bounds ``synthetic`` accepts (a ``DataError`` names the argument otherwise):
#: at least one of everything, and sizes that fit in memory.
LIMITS = {"num_users": (1, 10 ** 8), "num_items": (1, 10 ** 8),
          "num_interactions": (1, 10 ** 9), "dim": (2, 1024), "seed": (0, 2 ** 63 - 1)}


def _check_args(values: dict) -> dict:
    """Validated ``synthetic`` arguments (``synthetic?num_users=abc`` arrives as a string)."""
    out = {}
    for name, value in values.items():
        if name == "noise":
            ok = isinstance(value, (int, float, np.integer, np.floating)) and \
                not isinstance(value, bool) and math.isfinite(value) and 0 <= value <= 100
            if not ok:
                raise DataError(f"synthetic: noise must be a number in [0, 100], got "
                                f"{value!r:.40}", field="noise")
            out[name] = float(value)
            continue
        lo, hi = LIMITS[name]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
                or not lo <= value <= hi:
            raise DataError(f"synthetic: {name} must be an integer in [{lo}, {hi}], got "
                            f"{value!r:.40}", field=name)
        out[name] = int(value)
    return out


def synthetic(num_users: int = 2000, num_items: int = 1000, num_interactions: int = 100_000,
              dim: int = 8, seed: int = 0, noise: float = 0.5, **unknown) -> Interactions:
    """A seeded synthetic interactions table (the generative model: its module,
    ``tfrec_p5.data.sources.synthetic``).

    Arguments outside ``LIMITS`` (or unknown ones) are a ``DataError`` naming them.
    """
    if unknown:
        raise DataError(f"unknown synthetic option(s) {sorted(unknown)}; known: "
                        f"{sorted([*LIMITS, 'noise'])}", field=sorted(unknown)[0])
    args = _check_args({"num_users": num_users, "num_items": num_items,
                        "num_interactions": num_interactions, "dim": dim, "seed": seed,
                        "noise": noise})
    num_users, num_items, num_interactions = (args["num_users"], args["num_items"],
                                              args["num_interactions"])
    dim, seed, noise = args["dim"], args["seed"], args["noise"]
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
    # Speed (5M rows in a few seconds): per-user counts come from one multinomial draw
    # (already sorted by user), popularity draws use an alias table (O(1) per draw instead
    # of rng.choice(p=...)'s binary search), and the Gumbel-max pick uses -log(Exp(1)),
    # which is Gumbel-distributed, drawn in float32.
    n_draw = int(num_interactions * 1.3) + 100
    users = np.repeat(np.arange(num_users), rng.multinomial(n_draw, activity))
    alias_prob, alias_idx = _alias_table(pop)
    items = np.empty(n_draw, dtype=np.int64)
    chunk = 200_000
    n_cand = 16
    for s in range(0, n_draw, chunk):
        u = users[s:s + chunk]
        cand = _alias_draw(rng, alias_prob, alias_idx, (len(u), n_cand))
        # np.take is ~10x faster than fancy indexing for these 2-D gathers.
        score = 3.0 * np.matmul(np.take(q, cand, axis=0), np.take(p, u, axis=0)[:, :, None])
        score = score[..., 0] - np.log(
            rng.standard_exponential(score.shape[:2], dtype=np.float32) + 1e-30)
        items[s:s + chunk] = np.take_along_axis(cand, score.argmax(axis=1)[:, None], 1)[:, 0]
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
            # One string per distinct ID, then a gather: np.char.add over millions of
            # rows was most of the old run time.
            "user_id": _id_strings("u", num_users)[users],
            "item_id": _id_strings("i", num_items)[items],
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


def _id_strings(prefix: str, n: int) -> np.ndarray:
    """``[prefix + "0", prefix + "1", ...]`` as a numpy unicode array."""
    return np.array([f"{prefix}{i}" for i in range(n)])


def _alias_table(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker/Vose alias table for drawing from the discrete distribution ``p`` in O(1)."""
    n = len(p)
    scaled = np.asarray(p, dtype=np.float64) * n
    prob = np.ones(n, dtype=np.float64)
    alias = np.arange(n, dtype=np.int64)
    small = [i for i in range(n) if scaled[i] < 1.0]
    large = [i for i in range(n) if scaled[i] >= 1.0]
    while small and large:
        s, g = small.pop(), large.pop()
        prob[s], alias[s] = scaled[s], g
        scaled[g] -= 1.0 - scaled[s]
        (small if scaled[g] < 1.0 else large).append(g)
    return prob, alias  # leftovers keep prob 1 (numerical round-off only)


def _alias_draw(rng: np.random.Generator, prob: np.ndarray, alias: np.ndarray,
                shape: tuple[int, ...]) -> np.ndarray:
    k = rng.integers(0, len(prob), size=shape)
    return np.where(rng.random(shape, dtype=np.float32) < np.take(prob, k), k, np.take(alias, k))
