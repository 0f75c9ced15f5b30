"""Simple references served through an export's signature names, for ``train``'s table.

Why: a model's number means little without the scale, and a user should never get a
model worse than a one-line baseline without being told. ``tfrec-p5 train`` fits these
references on the rows the model was fit on, serves them with the same signature names
(``predict_rating``, ``recommend``, ``rank``, ``next_items``, ``score_items``) and scores
them with the task's own metric code on the same held-out rows, so the table compares
like with like:

* rating: the **bias baseline** ``mean + b_user + b_item`` (ridge λ chosen on a
  validation carve of the fitted rows, then refit on all of them);
* retrieval: **most popular** and **EASE** (λ chosen on the carve), or **item-KNN**
  (cosine, no parameter) when the catalog is too large for EASE's inverse;
* next item: **most popular** and **item-KNN** over the history's items.

Every reference excludes the user's fitted items from ``recommend`` (as the export does)
and answers an unknown user with the most popular items. The bias baseline and the
retrieval references also carry what ``train`` exports when they beat the model on
validation (``ServedReference.model``): a Keras bias model, or an
``models.item_item.ItemItemModel`` whose ``score`` is the one the reference serves.

    for ref in retrieval_references(fitted, k=100, seed=42):
        print(ref.name, ref.choice, evaluate_recommend(ref.signature, test))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from tfrec_p5.data.interactions import Interactions
from tfrec_p5.data.pipeline import Vocabularies
from tfrec_p5.data.splits import random_split
from tfrec_p5.evaluation.references import EASE
from tfrec_p5.evaluation.signatures import decode_strings, evaluate_recommend
from tfrec_p5.models.bias import BIAS_GRID, build_bias_model, select_bias_fit
from tfrec_p5.models.item_item import ItemItemModel

__all__ = ["EASE_MAX_ITEMS", "KNN_MAX_ITEMS", "ServedReference", "bias_baseline",
           "edge_search", "next_item_references", "retrieval_references"]

EASE_MAX_ITEMS = 5_000
"""Largest catalog EASE is fitted on (one dense ``I x I`` inverse per λ tried)."""
KNN_MAX_ITEMS = 20_000
"""Largest catalog the dense item-KNN similarity is built for (``I x I`` float32)."""
_EASE_GRID = (10.0, 50.0, 200.0, 500.0, 1000.0)
#: ``[B]`` user indices → ``[B, I]`` scores of every item index (column 0 = OOV).
UserScorer = Callable[[np.ndarray], np.ndarray]
#: ``[B, L]`` history item indices (0 = padding) → ``[B, I]`` scores.
HistoryScorer = Callable[[np.ndarray], np.ndarray]


def _strings(values) -> np.ndarray:
    return decode_strings(values.numpy() if isinstance(values, tf.Tensor) else values)


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` best columns per row, best first; equal scores in index order
    (which of several items tied at the k-th score make the list is fixed but arbitrary).

    Why ``argpartition``: a full sort of a 10^4-item catalog per row dominated the
    references' cost on Amazon Beauty; selecting ``k`` first is linear."""
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.lexsort((top, -np.take_along_axis(scores, top, axis=1)), axis=1)
    return np.take_along_axis(top, order, axis=1)


@dataclass
class ServedReference:
    """A reference recommender behind the export's signature names.

    ``signature(name)`` returns a callable taking and returning what the export's
    signature of that name does (string IDs in, ``item_ids`` / ``scores`` / ``rating``
    out), so ``tfrec_p5.evaluation.signatures`` scores it like a model.

    Attributes:
      name: what the table calls it (``"bias baseline"``, ``"EASE"``, ...).
      vocabs: the fitted rows' vocabularies (index 0 = unknown).
      k: length of ``recommend`` / ``next_items`` lists (the model's ``--top-k``).
      rate: ``(user_index, item_index) -> ratings`` for ``predict_rating`` / ``rank``.
      score_users: ``UserScorer`` for ``recommend`` / ``rank`` (``None``: by popularity).
      score_histories: ``HistoryScorer`` for ``next_items`` / ``score_items``.
      seen: CSR ``(splits, items)`` of each user index's fitted items (excluded).
      popularity: ``[I]`` fitted counts, the answer for an unknown user.
      choice: what validation chose (``"l2=10 (RMSE 0.9312 on a 10% validation carve
        of the fitted rows)"``), or ``""``.
      model: what ``train`` can export in the model's place when the reference wins on
        validation: the bias baseline as a Keras model with the rating model's inputs,
        a retrieval reference as its ``ItemItemModel`` (``score_users`` is its
        ``score``); ``None``: it cannot be served.
    """

    name: str
    vocabs: Vocabularies
    k: int = 100
    rate: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    score_users: UserScorer | None = None
    score_histories: HistoryScorer | None = None
    seen: tuple[np.ndarray, np.ndarray] | None = None
    popularity: np.ndarray | None = None
    choice: str = ""
    model: tf.keras.Model | ItemItemModel | None = None
    tokens: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.tokens = np.concatenate([[""], np.asarray(self.vocabs.item.tokens, str)])

    def signature(self, name: str) -> Callable[..., dict]:
        """The callable served under ``name``; ``KeyError`` for one it cannot back."""
        fns = {"predict_rating": self._predict_rating if self.rate else None,
               "recommend": self._recommend if self.seen is not None else None,
               "rank": self._rank if (self.seen is not None or self.rate) else None,
               "next_items": self._next_items if self.score_histories else None,
               "score_items": self._score_items if self.score_histories else None}
        if fns.get(name) is None:
            raise KeyError(f"the {self.name} reference has no {name!r} signature")
        return fns[name]

    # ------------------------------------------------------------------ pairs
    def _users(self, user_id) -> np.ndarray:
        return self.vocabs.user.lookup(_strings(user_id))

    def _user_scores(self, users: np.ndarray) -> np.ndarray:
        scores = np.asarray(self.score_users(users), np.float64).copy()
        scores[users == 0] = self.popularity
        scores[:, 0] = -np.inf
        return scores

    def _predict_rating(self, user_id, item_id) -> dict:
        items = self.vocabs.item.lookup(_strings(item_id))
        return {"rating": self.rate(self._users(user_id), items).astype(np.float32)}

    def _recommend(self, user_id) -> dict:
        users = self._users(user_id)
        splits, items = self.seen
        if self.score_users is None:  # most popular: one ranking for every user
            return self._popular(users)
        scores = self._user_scores(users)
        for row, u in enumerate(users):
            scores[row, items[splits[u]:splits[u + 1]]] = -np.inf
        top = _top_k(scores, self.k)
        best = np.take_along_axis(scores, top, axis=1)
        return {"item_ids": tf.constant(np.where(np.isfinite(best), self.tokens[top], "")),
                "scores": tf.constant(best.astype(np.float32))}

    def _popular(self, users: np.ndarray) -> dict:
        """Most popular unseen items without a ``[B, I]`` matrix (large catalogs): the
        ``k`` + most-seen best items once, then each user's seen items dropped."""
        splits, items = self.seen
        extra = int(np.max(np.diff(splits)[users], initial=0))
        best = _top_k(self.popularity[None, :], self.k + extra)[0]
        ids = np.full((len(users), self.k), "", dtype=object)
        scores = np.full((len(users), self.k), -np.inf, np.float32)
        for row, u in enumerate(users):
            keep = best[~np.isin(best, items[splits[u]:splits[u + 1]])]
            keep = keep[np.isfinite(self.popularity[keep])][:self.k]
            ids[row, :len(keep)] = self.tokens[keep]
            scores[row, :len(keep)] = self.popularity[keep]
        return {"item_ids": tf.constant(ids.astype(str)), "scores": tf.constant(scores)}

    def _rank(self, user_id, item_ids) -> dict:
        names = _strings(item_ids)
        users, items = self._users(user_id), self.vocabs.item.lookup(names)
        if self.rate is not None:
            scores = self.rate(np.repeat(users, items.shape[1]), items.reshape(-1))
            scores = scores.reshape(items.shape).astype(np.float64)
        elif self.score_users is None:
            scores = self.popularity[items]
        else:
            scores = np.take_along_axis(self._user_scores(users), items, axis=1)
        scores = np.where(items > 0, scores, -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")
        return {"item_ids": tf.constant(np.take_along_axis(names, order, axis=1)),
                "scores": tf.constant(np.take_along_axis(scores, order, 1).astype(np.float32))}

    # ------------------------------------------------------------------ histories
    def _history_scores(self, history) -> tuple[np.ndarray, np.ndarray]:
        idx = self.vocabs.item.lookup(_strings(history))
        return idx, np.asarray(self.score_histories(idx), np.float64).copy()

    def _next_items(self, history) -> dict:
        idx, scores = self._history_scores(history)
        np.put_along_axis(scores, idx, -np.inf, axis=1)
        scores[:, 0] = -np.inf
        top = _top_k(scores, self.k)
        return {"item_ids": tf.constant(self.tokens[top]),
                "scores": tf.constant(np.take_along_axis(scores, top, 1).astype(np.float32))}

    def _score_items(self, history, item_id) -> dict:
        _, scores = self._history_scores(history)
        cand = self.vocabs.item.lookup(_strings(item_id))
        return {"scores": tf.constant(np.take_along_axis(scores, cand, 1).astype(np.float32))}


# ---------------------------------------------------------------------- fitting
def _indices(table: Interactions, vocabs: Vocabularies) -> tuple[np.ndarray, np.ndarray]:
    return vocabs.user.lookup(table.user_id), vocabs.item.lookup(table.item_id)


def _seen(users: np.ndarray, items: np.ndarray, num_users: int
          ) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((items, users))
    splits = np.r_[0, np.cumsum(np.bincount(users, minlength=num_users))]
    return splits.astype(np.int64), items[order]


def _popularity(items: np.ndarray, num_items: int) -> np.ndarray:
    counts = np.bincount(items, minlength=num_items).astype(np.float64)
    counts[0] = -np.inf
    return counts


def bias_baseline(fitted: Interactions, *, seed: int = 42, fraction: float = 0.1,
                  grid: Sequence[float] = BIAS_GRID) -> ServedReference:
    """``mean + b_user + b_item`` (clipped to the fitted ratings' range), λ by validation.

    Why this reference: it is what a rating model must beat to have learned anything
    about *pairs*; on sparse data it is hard to beat. λ is chosen on a random
    ``fraction`` of ``fitted`` (seeded), then the biases are refit on all of it
    (``tfrec_p5.models.bias.select_bias_fit``).
    """
    low, high = float(np.min(fitted.rating)), float(np.max(fitted.rating))
    vocabs = Vocabularies.build(fitted)
    fit, scores = select_bias_fit(fitted, vocabs, seed=seed, fraction=fraction,
                                  grid=tuple(grid))
    return ServedReference(
        "bias baseline", vocabs,
        rate=lambda users, items: np.clip(fit.predict(users, items), low, high),
        model=build_bias_model(fit),
        choice=f"l2={fit.l2:g} (RMSE {scores[fit.l2]:.4f} on a {fraction:.0%} validation carve "
               "of the fitted rows)")


def _pair_reference(name: str, fitted: Interactions, vocabs: Vocabularies, k: int,
                    weights: np.ndarray | None, choice: str = "") -> ServedReference:
    """A retrieval reference scoring ``x_u · weights`` (``None``: most popular)."""
    users, items = _indices(fitted, vocabs)
    pop = _popularity(items, len(vocabs.item))
    model = ItemItemModel.from_rows(
        users, items, len(vocabs.user), len(vocabs.item), weights=weights,
        item_bias=None if weights is not None else np.where(np.isfinite(pop), pop, 0.0))
    return ServedReference(name, vocabs, k=k,
                           score_users=model.score if weights is not None else None,
                           seen=_seen(users, items, len(vocabs.user)), popularity=pop,
                           choice=choice, model=model)


def _ease(fitted: Interactions, vocabs: Vocabularies, l2: float) -> np.ndarray:
    """EASE's ``[I, I]`` item-item weights ``B`` on ``fitted``."""
    users, items = _indices(fitted, vocabs)
    return EASE.fit(users, items, len(vocabs.user), len(vocabs.item), l2=l2).weights


def _cosine_knn(users: np.ndarray, items: np.ndarray, num_users: int,
                num_items: int) -> np.ndarray:
    """Cosine item-item similarity of user co-occurrence, ``[I, I]`` float32, no self."""
    order = np.lexsort((items, users))
    users, items = users[order], items[order]
    starts = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1, len(users)]
    sim = np.zeros((num_items, num_items), np.float32)
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        it = items[a:b]
        sim[np.repeat(it, len(it)), np.tile(it, len(it))] += 1.0
    norm = np.sqrt(np.diag(sim)) + 1e-9
    sim /= norm[:, None]
    sim /= norm[None, :]
    sim[np.diag_indices(num_items)] = 0.0
    sim[0] = 0.0
    return sim


def edge_search(score: Callable[[float], float], grid: Sequence[float], *, factor: float = 4.0,
                steps: int = 3) -> dict[float, float]:
    """``{λ: score(λ)}`` over ``grid``, extended past an edge while the edge wins (higher
    is better): ``factor`` times the largest (or a ``factor``-th of the smallest) value,
    at most ``steps`` times, until a step scores no better than the edge before it.

    Why: a grid chosen on one data set ends too early on another (EASE's λ landed on the
    top of its grid on ML-1M and on a sparse synthetic set): the best value must not be
    the grid's border by construction.

        edge_search(lambda l2: recall_at_10(l2), (10.0, 100.0, 1000.0))  # may try 4000
    """
    scores = {float(v): score(float(v)) for v in grid}
    for pick, step in ((max, factor), (min, 1.0 / factor)):
        for _ in range(steps):
            edge = pick(scores)
            if max(scores, key=scores.get) != edge:
                break
            scores[edge * step] = score(edge * step)
    return scores


def retrieval_references(fitted: Interactions, *, k: int = 100, seed: int = 42,
                         fraction: float = 0.1,
                         grid: Sequence[float] = _EASE_GRID) -> list[ServedReference]:
    """Most popular, and EASE (λ by validation Recall@10 on a seeded ``fraction`` of
    ``fitted``, over ``grid`` extended past a winning edge by ``edge_search``, refit on
    all of it) or, above ``EASE_MAX_ITEMS`` items, item-KNN (up to
    ``KNN_MAX_ITEMS``)."""
    vocabs = Vocabularies.build(fitted)
    refs = [_pair_reference("most popular", fitted, vocabs, k, None)]
    num_items = len(vocabs.item)
    if num_items <= EASE_MAX_ITEMS:
        carve = random_split(fitted, 1.0 - fraction, seed=seed)
        carve_vocabs = Vocabularies.build(carve.train)

        def score(l2: float) -> float:
            ref = _pair_reference("EASE", carve.train, carve_vocabs, 10,
                                  _ease(carve.train, carve_vocabs, l2))
            return evaluate_recommend(ref.signature, carve.test, ks=(10,))["recall@10"]

        recall = edge_search(score, grid)
        best = max(recall, key=recall.get)
        refs.append(_pair_reference("EASE", fitted, vocabs, k, _ease(fitted, vocabs, best),
                                    f"l2={best:g} (Recall@10 {recall[best]:.4f} on a "
                                    f"{fraction:.0%} validation carve of the fitted rows)"))
    elif num_items <= KNN_MAX_ITEMS:
        users, items = _indices(fitted, vocabs)
        sim = _cosine_knn(users, items, len(vocabs.user), num_items)
        refs.append(_pair_reference("item-KNN", fitted, vocabs, k, sim))
    return refs


def next_item_references(fitted: Interactions, *, k: int = 100) -> list[ServedReference]:
    """Most popular and (up to ``KNN_MAX_ITEMS`` items) item-KNN: the summed cosine
    similarity of every history item, from the co-occurrence of ``fitted`` users. Each
    carries its ``ItemItemModel`` (``export.sequential.item_item_next_module`` serves it)."""
    vocabs = Vocabularies.build(fitted)
    users, items = _indices(fitted, vocabs)
    n_users, n_items = len(vocabs.user), len(vocabs.item)
    pop = _popularity(items, n_items)
    popular = ItemItemModel.from_rows(users, items, n_users, n_items, item_bias=pop)
    refs = [ServedReference("most popular", vocabs, k=k, popularity=pop,
                            score_histories=popular.score_histories, model=popular)]
    if n_items <= KNN_MAX_ITEMS:
        knn = ItemItemModel.from_rows(users, items, n_users, n_items,
                                      weights=_cosine_knn(users, items, n_users, n_items))
        refs.append(ServedReference("item-KNN", vocabs, k=k, popularity=pop,
                                    score_histories=knn.score_histories, model=knn))
    return refs

