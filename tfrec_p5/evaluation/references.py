"""Cheap reference recommenders every benchmark reports beside the model.

Why: a number means little without the scale. Most-popular is the floor any personalised
model must clear (on MovieLens it is strong); EASE (Steck, WWW 2019) is a closed-form
item-item model that is hard to beat on small catalogs; item-KNN is the classic sequential
baseline. Each exposes the ``score_fn`` shape the metrics in ``ranking.py`` take.

    pop = MostPopular.fit(train_users, train_items, num_items)
    ease = EASE.fit(train_users, train_items, num_users, num_items, l2=500.0)
    full_ranking_metrics(ease.score, users, targets, exclude=seen)
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
