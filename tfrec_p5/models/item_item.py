"""Item-item models ``scores(u) = x_u · W + b``: the retrieval references, servable.

Why it lives with the models: on small catalogs EASE (Steck, WWW 2019: ``W = B``, the
closed-form item-item regression) is often the best top-k recommender there is, and
``tfrec-p5 train --task retrieval`` serves it instead of the two-tower model when it wins
on validation. So it is both a reference (``tfrec_p5.evaluation.served`` scores it beside
the model) and what ``tfrec_p5.export.retrieval.item_item_module`` exports under the
model's ``recommend`` / ``rank``. Item-KNN (``W`` = cosine similarity) and most popular
(``W = 0``, ``b`` = training counts) are the same shape.

    model = ItemItemModel.from_rows(users, items, num_users, weights=ease.weights)
    model.score(np.array([1, 2]))           # [2, I] = x_u · W for user indices 1, 2
    model.score_histories(np.array([[3, 5, 5]]))   # [1, I]: counts of items 3, 5 · W

``x_u`` is user ``u``'s row of the binary fitted-item matrix: the export stores it as the
user's fitted items (the CSR ``history_splits`` / ``history_items``, which ``recommend``
also excludes), so a served EASE holds ``W`` (``I x I``) and the rows it was fit on,
never a dense user x item matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ItemItemModel"]


@dataclass(frozen=True)
class ItemItemModel:
    """``scores(u) = x_u · weights + item_bias`` over item vocabulary indices.

    Attributes:
      history_splits: ``[U + 1]`` CSR row splits of each user index's fitted items.
      history_items: their item indices, each user's sorted and without repeats (``x_u``
        is binary).
      num_items: ``I``, the item vocabulary size (index 0 = unknown).
      weights: ``[I, I]`` float32 item-item weights (row and column 0 zero), or ``None``
        (``W = 0``: the same scores for every user).
      item_bias: ``[I]`` float32 scores added for every user, or ``None``.
    """

    history_splits: np.ndarray
    history_items: np.ndarray
    num_items: int
    weights: np.ndarray | None = None
    item_bias: np.ndarray | None = None

    @classmethod
    def from_rows(cls, users: np.ndarray, items: np.ndarray, num_users: int, num_items: int,
                  *, weights: np.ndarray | None = None,
                  item_bias: np.ndarray | None = None) -> ItemItemModel:
        """The model of fitted rows ``(users, items)`` (vocabulary indices; repeated pairs
        count once)."""
        pairs = np.unique(np.asarray(users, np.int64) * num_items + np.asarray(items, np.int64))
        rows, cols = pairs // num_items, pairs % num_items
        splits = np.r_[0, np.cumsum(np.bincount(rows, minlength=num_users))].astype(np.int64)
        if weights is not None:
            weights = np.asarray(weights, np.float32)
            if weights.shape != (num_items, num_items):
                raise ValueError(f"weights must be [{num_items}, {num_items}], got "
                                 f"{weights.shape}")
        if item_bias is not None:
            item_bias = np.asarray(item_bias, np.float32)
        return cls(splits, cols.astype(np.int64), int(num_items), weights, item_bias)

    def rows(self, users: np.ndarray) -> np.ndarray:
        """``[B, I]`` float32 binary fitted-item rows ``x_u`` of user indices ``users``."""
        users = np.asarray(users, np.int64)
        x = np.zeros((len(users), self.num_items), np.float32)
        for row, u in enumerate(users):
            x[row, self.history_items[self.history_splits[u]:self.history_splits[u + 1]]] = 1.0
        return x

    def score(self, users: np.ndarray) -> np.ndarray:
        """``[B, I]`` float32 scores of every item index for user indices ``users``."""
        return self._scores(self.rows(users))

    def score_histories(self, histories: np.ndarray) -> np.ndarray:
        """``[B, I]`` float32 scores of every item index after each row of ``histories``
        (``[B, L]`` item indices, 0 = padding or unknown): ``x`` is then the history's
        item counts (a repeated item counts each time), what a next-item reference and
        ``export.sequential.item_item_next_module`` score with."""
        h = np.asarray(histories, np.int64).reshape(len(histories), -1)
        x = np.zeros((len(h), self.num_items), np.float32)
        np.add.at(x, (np.repeat(np.arange(len(h)), h.shape[1]), h.reshape(-1)), 1.0)
        return self._scores(x)

    def _scores(self, x: np.ndarray) -> np.ndarray:
        """``x · weights + item_bias`` of ``[B, I]`` item rows ``x``."""
        scores = x @ self.weights if self.weights is not None else \
            np.zeros((len(x), self.num_items), np.float32)
        if self.item_bias is not None:
            scores = scores + self.item_bias[None, :]
        return scores
