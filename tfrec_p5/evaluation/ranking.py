"""Top-K ranking metrics over the full catalog, the field's protocol and TFRS's.

Why one module for every task: retrieval, next-item and candidate ranking are all judged by
where the held-out item(s) land among the candidates. Everything here works on the *rank*
of each held-out item, computed once from a ``score_fn`` that maps a batch of user (or
history) rows to scores over all items, so any model — two-tower, sequential, EASE,
most-popular — is evaluated by the same code.

    metrics = full_ranking_metrics(score_fn, queries, targets, exclude=seen, ks=(10, 100))
    metrics["recall@10"], metrics["ndcg@10"], metrics["mrr"]

Conventions (stated, because papers differ):

* **Field protocol** (``full_ranking_metrics``): items the user has in training are removed
  from the candidates (``exclude``). Ties are counted *pessimistically*: a held-out item
  ranks below every other candidate with an equal score, so a constant scorer earns
  nothing. ``rank = 1 + #{candidates j ≠ t : s_j >= s_t}``.
* ``recall@K`` is pooled (micro) over all held-out interactions: hits / held-out items.
  This is what the references quoted for the TFRS MovieLens split use (most-popular
  Recall@10 = 0.090). ``user_recall@K`` is the per-user mean; ``hr@K`` is the share of
  users with at least one hit (with one held-out item per user, as in leave-one-out,
  ``hr@K == recall@K``).
* ``ndcg@K``: per user, DCG over hits ``1/log2(rank + 1)`` divided by the ideal DCG of
  ``min(K, #held-out)`` hits; averaged over users. ``mrr``: 1 / rank of the user's best
  held-out item (no cut-off), averaged over users.
* **Ties in random order** (``expected_ranking_metrics``): the expected value of every
  metric when equal scores are put in a uniformly random order, computed exactly (no
  draws). A constant scorer then earns what random order earns; this is the protocol of
  the cold-start benchmark, where content baselines tie often (two items with the same
  genres). It also reports ``capped_recall@K``: per user, hits divided by
  ``min(K, #held-out)``, averaged over users (Liang et al. 2018, Mult-VAE's Recall@K), so
  a user with 40 held-out items can reach 1.
* **TFRS protocol** (``factorized_topk_accuracy``): per held-out (user, item) pair, is the
  item within the top K of *all* items, seen ones included, ties counted in its favour —
  what ``tfrs.metrics.FactorizedTopK`` reports in the tutorials.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

ScoreFn = Callable[[np.ndarray], np.ndarray]


def pad_lists(lists: Sequence[Sequence[int]], fill: int = -1) -> np.ndarray:
    """Ragged lists of indices → a ``[n, max_len]`` int64 array padded with ``fill``."""
    width = max((len(x) for x in lists), default=0)
    out = np.full((len(lists), max(width, 1)), fill, dtype=np.int64)
    for row, values in enumerate(lists):
        out[row, :len(values)] = values
    return out


def group_by_row(rows: np.ndarray, values: np.ndarray, num_rows: int) -> np.ndarray:
    """``values`` grouped by ``rows`` → padded ``[num_rows, max_count]`` (−1 padding)."""
    rows = np.asarray(rows, dtype=np.int64)
    values = np.asarray(values, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    rows, values = rows[order], values[order]
    counts = np.bincount(rows, minlength=num_rows)
    out = np.full((num_rows, max(int(counts.max(initial=0)), 1)), -1, dtype=np.int64)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    col = np.arange(len(rows)) - np.repeat(starts, counts)
    out[rows, col] = values
    return out


def ranks_of_targets(scores: np.ndarray, targets: np.ndarray,
                     exclude: np.ndarray | None = None,
                     ties: str = "pessimistic") -> np.ndarray:
    """1-based rank of each target among the candidates; 0 where ``targets`` is padding.

    Args:
      scores: ``[B, N]`` scores over all items.
      targets: ``[B, T]`` held-out item indices, ``-1`` padded.
      exclude: ``[B, E]`` item indices removed from the candidates (``-1`` padded).
        A target listed in ``exclude`` is still ranked (against the remaining items).
      ties: ``"pessimistic"`` (ties rank the target last) or ``"optimistic"`` (first).
    """
    scores = np.array(scores, dtype=np.float64, copy=True)
    b = np.arange(scores.shape[0])[:, None]
    valid = targets >= 0
    safe_t = np.where(valid, targets, 0)
    target_scores = scores[b, safe_t]                               # [B, T]
    if exclude is not None and exclude.size:
        ex_valid = exclude >= 0
        scores[np.broadcast_to(b, exclude.shape)[ex_valid], exclude[ex_valid]] = -np.inf
    cmp = np.greater_equal if ties == "pessimistic" else np.greater
    beats = cmp(scores[:, None, :], target_scores[:, :, None])      # [B, T, N]
    # The target never competes with itself.
    self_hit = np.zeros_like(beats)
    self_hit[np.arange(len(b))[:, None], np.arange(targets.shape[1])[None, :], safe_t] = True
    beats &= ~self_hit
    ranks = 1 + beats.sum(axis=2)
    return np.where(valid, ranks, 0)


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = (10,)) -> dict[str, float]:
    """Recall/HR/NDCG@K and MRR from ``[U, T]`` ranks (0 = padding)."""
    valid = ranks > 0
    n_targets = valid.sum(axis=1)
    users = n_targets > 0
    ranks, valid, n_targets = ranks[users], valid[users], n_targets[users]
    out: dict[str, float] = {"users": float(users.sum()), "targets": float(n_targets.sum())}
    if not users.any():
        return out
    safe = np.where(valid, ranks, np.inf)
    for k in ks:
        hit = valid & (ranks <= k)
        out[f"recall@{k}"] = float(hit.sum() / n_targets.sum())
        out[f"user_recall@{k}"] = float(np.mean(hit.sum(axis=1) / n_targets))
        out[f"hr@{k}"] = float(np.mean(hit.any(axis=1)))
        dcg = np.where(hit, 1.0 / np.log2(safe + 1.0), 0.0).sum(axis=1)
        ideal = np.array([np.sum(1.0 / np.log2(np.arange(2, min(k, n) + 2))) for n in n_targets])
        out[f"ndcg@{k}"] = float(np.mean(dcg / ideal))
    out["mrr"] = float(np.mean(1.0 / safe.min(axis=1)))
    return out


def cross_fitted_metrics(ranks: np.ndarray, ks: Sequence[int] = (5, 10),
                         monitor: str = "ndcg@10", seed: int = 0) -> dict[str, float] | None:
    """HR/NDCG@K of "train, keep the epoch with the best ``monitor``" on validation, scored
    on users that did not pick the epoch; ``ranks``: ``[epochs, users]``, each epoch's rank
    of each user's one held-out item. ``None`` below two users.

    Why: the kept epoch's own validation number is the largest of many noisy estimates,
    so it is biased upward, the more so the fewer the users (about 100 after a time cut);
    a simple reference scored once on the same users gets no such bonus, and a race
    between the two would favour the model. Two-fold cross-fitting removes the bonus:
    the users are halved at random (``seed``), the epoch is picked on one half and its
    ranks are taken on the other, both ways; the metrics are over the union.

        cross_fitted_metrics(np.stack(ranks_per_epoch))["ndcg@10"]
    """
    ranks = np.asarray(ranks)
    users = ranks.shape[1]
    if users < 2:
        return None
    kind, k = monitor.split("@")
    gains = np.where(ranks <= int(k), 1.0 / np.log2(ranks + 1.0) if kind == "ndcg" else 1.0,
                     0.0)
    half = np.zeros(users, bool)
    half[np.random.default_rng(seed).permutation(users)[:users // 2]] = True
    scored = [ranks[int(np.argmax(gains[:, pick].mean(axis=1))), ~pick]
              for pick in (half, ~half)]
    return single_target_metrics(np.concatenate(scored), ks)


def single_target_metrics(ranks: np.ndarray, ks: Sequence[int] = (5, 10)
                          ) -> dict[str, float]:
    """HR@K and NDCG@K from ``[U]`` ranks of one held-out item per user (leave-one-out,
    next item); 0.0 for every key without users.

        single_target_metrics(np.array([1, 3, 20]), ks=(10,))   # hr@10 = 2/3
    """
    ranks = np.asarray(ranks)
    if not len(ranks):
        return {f"{name}@{k}": 0.0 for k in ks for name in ("hr", "ndcg")}
    m = metrics_from_ranks(ranks[:, None], ks=ks)
    return {f"{name}@{k}": m[f"{name}@{k}"] for k in ks for name in ("hr", "ndcg")}


def full_ranking_metrics(score_fn: ScoreFn, queries: np.ndarray, targets: np.ndarray,
                         exclude: np.ndarray | None = None, ks: Sequence[int] = (10,),
                         batch_size: int = 128) -> dict[str, float]:
    """Field-protocol metrics: held-out items ranked against all non-excluded items.

    Args:
      score_fn: maps ``queries[i:j]`` (user indices, or history rows) to ``[B, N]`` scores.
      queries: one row per evaluated user.
      targets: ``[U, T]`` held-out item indices (−1 padded), aligned with ``queries``.
      exclude: ``[U, E]`` items to remove per user, usually the training items.
    """
    ranks = []
    for start in range(0, len(queries), batch_size):
        sl = slice(start, start + batch_size)
        scores = np.asarray(score_fn(queries[sl]))
        ranks.append(ranks_of_targets(scores, targets[sl],
                                      None if exclude is None else exclude[sl]))
    width = max(r.shape[1] for r in ranks)
    ranks = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]))) for r in ranks])
    return metrics_from_ranks(ranks, ks)


def factorized_topk_accuracy(score_fn: ScoreFn, queries: np.ndarray, items: np.ndarray,
                             ks: Sequence[int] = (10, 50, 100),
                             batch_size: int = 1024) -> dict[str, float]:
    """TFRS-tutorial protocol: share of held-out pairs whose item is in the top K of all
    items (nothing excluded, ties in the item's favour). One row per pair."""
    hits = {k: 0 for k in ks}
    for start in range(0, len(queries), batch_size):
        sl = slice(start, start + batch_size)
        scores = np.asarray(score_fn(queries[sl]))
        ranks = ranks_of_targets(scores, items[sl, None], ties="optimistic")[:, 0]
        for k in ks:
            hits[k] += int((ranks <= k).sum())
    return {f"factorized_top_{k}": hits[k] / max(len(queries), 1) for k in ks}


def sample_negatives(interacted: np.ndarray, num_items: int, num_negatives: int = 99,
                     seed: int = 2022, first_item: int = 1) -> np.ndarray:
    """P5's direct protocol: per user, ``num_negatives`` items drawn uniformly (without
    replacement) from items in ``[first_item, num_items)`` the user never interacted with.

    ``interacted`` is ``[U, E]`` (−1 padded) and must include the held-out items.
    Draws use ``numpy.random.seed(seed)`` order (one ``np.random.choice`` per user) so a
    given seed always gives the same candidate lists.
    """
    rng = np.random.RandomState(seed)
    out = np.empty((len(interacted), num_negatives), dtype=np.int64)
    all_items = np.arange(first_item, num_items)
    never = np.ones(len(all_items), bool)  # reused per user: cheaper than np.setdiff1d
    for row, seen in enumerate(interacted):
        seen = seen[(seen >= first_item) & (seen < num_items)] - first_item
        never[seen] = False
        pool = all_items[never]  # sorted, as np.setdiff1d gives it: the same draws
        never[seen] = True
        if len(pool) < num_negatives:
            raise ValueError(f"user row {row}: only {len(pool)} never-seen items, "
                             f"cannot sample {num_negatives} negatives")
        out[row] = rng.choice(pool, size=num_negatives, replace=False)
    return out


def sampled_ranking_metrics(score_fn: ScoreFn, queries: np.ndarray, targets: np.ndarray,
                            negatives: np.ndarray, ks: Sequence[int] = (1, 5, 10),
                            batch_size: int = 256) -> dict[str, float]:
    """Rank each user's single held-out item among itself + its sampled negatives.

    ``targets`` is ``[U]``; ``negatives`` is ``[U, M]`` (see ``sample_negatives``). Ties are
    pessimistic, as in ``full_ranking_metrics``.
    """
    ranks = []
    for start in range(0, len(queries), batch_size):
        sl = slice(start, start + batch_size)
        scores = np.asarray(score_fn(queries[sl]))
        cand = np.concatenate([targets[sl, None], negatives[sl]], axis=1)
        cand_scores = np.take_along_axis(scores, cand, axis=1)
        ranks.append(ranks_of_targets(cand_scores, np.zeros((len(cand), 1), np.int64)))
    return metrics_from_ranks(np.concatenate(ranks), ks)


def expected_ranking_metrics(score_fn: ScoreFn, queries: np.ndarray, targets: np.ndarray,
                             exclude: np.ndarray | None = None, ks: Sequence[int] = (10,),
                             batch_size: int = 128) -> dict[str, float]:
    """Recall / capped recall / NDCG@K with ties put in a uniformly random order, as exact
    expectations (the module docstring states the definitions).

    A held-out item with ``g`` candidates scored above it and ``e`` others tied with it
    takes each rank in ``g + 1 .. g + e + 1`` with probability ``1 / (e + 1)``; hits and
    DCG are sums over held-out items, so their expectations are sums of these. Arguments
    as ``full_ranking_metrics``. A constant ``score_fn`` gives the random-order value
    (``recall@K = K / #candidates``).

        expected_ranking_metrics(profile.score, users, targets, ks=(10,))["capped_recall@10"]
    """
    ks = tuple(int(k) for k in ks)
    kmax = max(ks)
    cum = np.r_[0.0, np.cumsum(1.0 / np.log2(np.arange(2, kmax + 2)))]   # DCG of n hits
    hits = {k: [] for k in ks}
    dcg = {k: [] for k in ks}
    counts = []
    for start in range(0, len(queries), batch_size):
        sl = slice(start, start + batch_size)
        scores = np.array(score_fn(queries[sl]), dtype=np.float64, copy=True)
        tgt = targets[sl]
        b = np.arange(len(scores))[:, None]
        valid = tgt >= 0
        safe = np.where(valid, tgt, 0)
        target_scores = scores[b, safe]
        if exclude is not None and exclude.size:
            ex = exclude[sl]
            ok = ex >= 0
            masked = np.zeros(scores.shape, dtype=bool)
            masked[np.broadcast_to(b, ex.shape)[ok], ex[ok]] = True
            masked[np.broadcast_to(b, tgt.shape)[valid], tgt[valid]] = False  # still ranked
            scores[masked] = -np.inf
        above = (scores[:, None, :] > target_scores[:, :, None]).sum(axis=2)
        tied = (scores[:, None, :] == target_scores[:, :, None]).sum(axis=2) - 1  # not itself
        first, last = above + 1, above + tied + 1          # the rank's range (inclusive)
        for k in ks:
            in_k = np.clip(np.minimum(last, k) - first + 1, 0, None)
            hits[k].append(np.where(valid, in_k / (tied + 1), 0.0).sum(axis=1))
            gain = cum[np.minimum(last, k)] - cum[np.minimum(first - 1, k)]
            dcg[k].append(np.where(valid, gain / (tied + 1), 0.0).sum(axis=1))
        counts.append(valid.sum(axis=1))
    n_targets = np.concatenate(counts)
    users = n_targets > 0
    out: dict[str, float] = {"users": float(users.sum()), "targets": float(n_targets.sum())}
    if not users.any():
        return out
    n = n_targets[users]
    for k in ks:
        h = np.concatenate(hits[k])[users]
        ideal = cum[np.minimum(n, k)]
        out[f"recall@{k}"] = float(h.sum() / n.sum())
        out[f"capped_recall@{k}"] = float(np.mean(h / np.minimum(n, k)))
        out[f"ndcg@{k}"] = float(np.mean(np.concatenate(dcg[k])[users] / ideal))
    return out
