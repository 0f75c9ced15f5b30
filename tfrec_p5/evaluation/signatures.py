"""Metrics of what an export serves: its ``recommend`` and ``rank`` signatures' answers.

Why score the signatures and not the model: the numbers then measure exactly what TF
Serving returns (seen items excluded as exported, unknown users' fallback, padding), for
an in-memory ``ServingModule`` and a loaded SavedModel alike.

    evaluate_recommend(module.signature, test)    # {"recall@10": ..., "ndcg@10": ...}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

__all__ = ["decode_strings", "evaluate_rank", "evaluate_recommend"]

#: ``signatures(name)`` → a callable signature, as ``ServingModule.signature`` gives.
Signatures = Callable[[str], Callable[..., Mapping[str, Any]]]


def decode_strings(array) -> np.ndarray:
    """A ``tf.string`` result → numpy array of ``str`` (UTF-8; ``astype(str)`` is ASCII)."""
    values = np.asarray(array)
    return np.vectorize(lambda b: b.decode("utf-8") if isinstance(b, bytes) else str(b),
                        otypes=[object])(values).astype(str) if values.size else \
        values.astype(str)


def evaluate_recommend(signatures: Signatures, table, ks=(10, 100), batch_size: int = 512
                       ) -> dict[str, float]:
    """Recall@K (pooled), NDCG@10 and MRR@k from the ``recommend`` signature's top-k.

    Measures what is served: seen items excluded as exported, unknown users get the
    popularity fallback. K larger than the exported k is skipped.
    """
    users, inverse = np.unique(table.user_id, return_inverse=True)
    held = [set() for _ in users]
    for row, item in zip(inverse.reshape(-1), table.item_id.tolist(), strict=False):
        held[row].add(item)
    recommend = signatures("recommend")
    hits = {k: 0 for k in ks}
    ndcg, rr, n_targets = [], [], 0
    top_k = None
    for start in range(0, len(users), batch_size):
        out = recommend(user_id=tf.constant(users[start:start + batch_size].astype(object)))
        recs = decode_strings(out["item_ids"].numpy())
        top_k = recs.shape[1]
        for row, rec in enumerate(recs):
            targets = held[start + row]
            n_targets += len(targets)
            hit = np.array([r in targets for r in rec])
            for k in ks:
                hits[k] += int(hit[:k].sum())
            gains = hit[:10] / np.log2(np.arange(2, min(10, len(rec)) + 2))
            ideal = (1.0 / np.log2(np.arange(2, min(10, len(targets)) + 2))).sum()
            ndcg.append(gains.sum() / ideal)
            first = np.flatnonzero(hit)
            rr.append(1.0 / (first[0] + 1) if len(first) else 0.0)
    out = {f"recall@{k}": hits[k] / max(n_targets, 1) for k in ks if top_k and k <= top_k}
    out["ndcg@10"] = float(np.mean(ndcg)) if ndcg else 0.0
    out[f"mrr@{top_k}"] = float(np.mean(rr)) if rr else 0.0
    return out


def evaluate_rank(signatures: Signatures, table, batch_size: int = 256) -> dict[str, float]:
    """NDCG@10 of each user's held-out items re-ordered by ``rank`` (gain = rating).

    Users with at least two held-out items. Graded gains over short lists make the number
    high even for a weak order, so compare models with it rather than reading it alone.
    """
    if table.rating is None:
        return {}
    order = np.argsort(table.user_id, kind="stable")
    users, items, ratings = (table.user_id[order], table.item_id[order],
                             table.rating[order].astype(np.float64))
    starts = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1]
    ends = np.r_[starts[1:], len(users)]
    groups = [(s, e) for s, e in zip(starts, ends, strict=False) if e - s >= 2]
    rank = signatures("rank")
    scores = []
    for b in range(0, len(groups), batch_size):
        chunk = groups[b:b + batch_size]
        width = max(e - s for s, e in chunk)
        lists = np.full((len(chunk), width), "", dtype=object)
        for row, (s, e) in enumerate(chunk):
            lists[row, :e - s] = items[s:e]
        out = rank(user_id=tf.constant(np.array([users[s] for s, _ in chunk], dtype=object)),
                   item_ids=tf.constant(lists))
        ranked = decode_strings(out["item_ids"].numpy())
        for row, (s, e) in enumerate(chunk):
            gain = dict(zip(items[s:e].tolist(), ratings[s:e].tolist(), strict=False))
            g = np.array([gain.get(i, 0.0) for i in ranked[row] if i])[:10]
            ideal = np.sort(ratings[s:e])[::-1][:10]
            disc = 1.0 / np.log2(np.arange(2, len(g) + 2))
            scores.append(float((g * disc).sum() / (ideal * disc[:len(ideal)]).sum()))
    return {"ndcg@10": float(np.mean(scores)) if scores else 0.0}
