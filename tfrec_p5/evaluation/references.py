"""Cheap reference recommenders every benchmark reports beside the model.

Why: a number means little without the scale. Most-popular is the floor any personalised
model must clear (on MovieLens it is strong); EASE (Steck, WWW 2019) is a closed-form
item-item model that is hard to beat on small catalogs; item-KNN is the classic sequential
baseline. For items nobody has interacted with yet (cold start), only their features can
rank them: ``FeatureProfile`` (cosine between a user's liked-feature counts and an item's
features, the classic content-based recommender) and ``FeaturePopularity`` (how popular
the items sharing an item's features are). Each exposes the ``score_fn`` shape the metrics
in ``ranking.py`` take.

    pop = MostPopular.fit(train_users, train_items, num_items)
    ease = EASE.fit(train_users, train_items, num_users, num_items, l2=500.0)
    full_ranking_metrics(ease.score, users, targets, exclude=seen)
    genres = np.array([[1, 0, 1], [0, 1, 0], ...])       # [items, features] multi-hot
    profile = FeatureProfile.fit(liked_users, liked_items, genres, num_users)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def interaction_matrix(users: np.ndarray, items: np.ndarray, num_users: int,
                       num_items: int) -> np.ndarray:
    """Dense binary user × item matrix (float32) — fine for catalogs up to ~20k items."""
    x = np.zeros((num_users, num_items), dtype=np.float32)
    x[users, items] = 1.0
    return x


@dataclass
class MostPopular:
    """Scores every item by its training count, the same for every user."""

    counts: np.ndarray

    @classmethod
    def fit(cls, items: np.ndarray, num_items: int) -> MostPopular:
        return cls(np.bincount(items, minlength=num_items).astype(np.float64))

    def score(self, queries: np.ndarray) -> np.ndarray:
        return np.tile(self.counts, (len(queries), 1))


@dataclass
class EASE:
    """Embarrassingly Shallow Autoencoder: ``B = I - P·diagMat(1/diag(P))``,
    ``P = (XᵀX + λI)⁻¹``; scores are ``X_u B``."""

    x: np.ndarray
    weights: np.ndarray

    @classmethod
    def fit(cls, users: np.ndarray, items: np.ndarray, num_users: int, num_items: int,
            l2: float = 500.0) -> EASE:
        x = interaction_matrix(users, items, num_users, num_items)
        gram = (x.T @ x).astype(np.float64)
        gram[np.diag_indices(num_items)] += l2
        p = np.linalg.inv(gram)
        b = p / (-np.diag(p))
        b[np.diag_indices(num_items)] = 0.0
        return cls(x, b.astype(np.float32))

    def score(self, queries: np.ndarray) -> np.ndarray:
        return self.x[queries] @ self.weights


@dataclass
class ItemKNN:
    """Cosine item-item similarity on co-occurrence; a history scores items by the summed
    similarity to its items (``queries`` are user rows of the training matrix)."""

    x: np.ndarray
    sim: np.ndarray

    @classmethod
    def fit(cls, users: np.ndarray, items: np.ndarray, num_users: int,
            num_items: int) -> ItemKNN:
        x = interaction_matrix(users, items, num_users, num_items)
        co = x.T @ x
        norm = np.sqrt(np.diag(co)) + 1e-9
        sim = co / norm[:, None] / norm[None, :]
        sim[np.diag_indices(num_items)] = 0.0
        return cls(x, sim.astype(np.float32))

    def score(self, queries: np.ndarray) -> np.ndarray:
        return self.x[queries] @ self.sim


@dataclass
class FeatureProfile:
    """Content-based: a user's profile is the summed feature vectors of their (liked)
    training items; an item scores the cosine between that profile and its features.

    With ``item_features`` the items' genre multi-hot vectors this is the genre-profile
    baseline of the cold-start benchmark; it needs no interaction with the scored item.
    A user without training items (a zero profile) scores every item 0.
    """

    profiles: np.ndarray        # [U, F]
    item_features: np.ndarray   # [I, F]

    @classmethod
    def fit(cls, users: np.ndarray, items: np.ndarray, item_features: np.ndarray,
            num_users: int) -> FeatureProfile:
        feats = np.asarray(item_features, dtype=np.float64)
        profiles = np.zeros((num_users, feats.shape[1]))
        np.add.at(profiles, np.asarray(users), feats[np.asarray(items)])
        return cls(profiles, feats)

    def score(self, queries: np.ndarray) -> np.ndarray:
        p = self.profiles[np.asarray(queries)]
        norms = np.linalg.norm(p, axis=1)[:, None] * np.linalg.norm(self.item_features,
                                                                     axis=1)[None, :]
        dots = p @ self.item_features.T
        return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


@dataclass
class FeaturePopularity:
    """Popularity by feature: each feature's mean training count over the items that carry
    it (items with at least one training interaction); an item scores the mean over its
    features (the overall mean without features). The same for every user: what an item's
    features say about how popular it will be (popularity-by-genre with genre vectors).
    """

    item_scores: np.ndarray     # [I]

    @classmethod
    def fit(cls, items: np.ndarray, item_features: np.ndarray) -> FeaturePopularity:
        feats = np.asarray(item_features, dtype=np.float64) > 0
        counts = np.bincount(np.asarray(items), minlength=len(feats)).astype(np.float64)
        seen = counts > 0
        carriers = feats[seen].sum(axis=0)
        per_feature = np.divide(counts[seen] @ feats[seen], carriers,
                                out=np.zeros(feats.shape[1]), where=carriers > 0)
        n = feats.sum(axis=1)
        fallback = counts[seen].mean() if seen.any() else 0.0
        scores = np.divide(feats @ per_feature, n, out=np.full(len(feats), fallback),
                           where=n > 0)
        return cls(scores)

    def score(self, queries: np.ndarray) -> np.ndarray:
        return np.tile(self.item_scores, (len(queries), 1))
