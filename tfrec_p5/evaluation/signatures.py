"""Metrics of what an export serves: its signatures' answers, scored on held-out rows.

Why score the signatures and not the model: ``tfrec-p5 train`` reports test metrics and
``tfrec-p5 evaluate`` recomputes them from the export; both go through the *same*
signatures (string IDs in), so the two numbers agree and measure exactly what TF Serving
returns (seen items excluded as exported, unknown users' fallback, padding), for an
in-memory ``ServingModule`` and a loaded SavedModel alike.

    evaluate_signature(loaded.signatures["predict_rating"], test)   # {"rmse", "mae"}
    evaluate_recommend(module.signature, test)    # {"recall@10": ..., "ndcg@10": ...}
    evaluate_next_items(module.signature, test, history)   # HR/NDCG@5/10, sampled_*
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from tfrec_p5.data.errors import DataError
from tfrec_p5.data.interactions import Interactions
from tfrec_p5.data.splits import first_events
from tfrec_p5.evaluation.ranking import metrics_from_ranks, ranks_of_targets, sample_negatives
from tfrec_p5.evaluation.rating import rating_metrics

__all__ = ["PROTOCOLS", "decode_strings", "evaluate_after_history", "evaluate_next_items",
           "evaluate_rank", "evaluate_recommend", "evaluate_signature", "parse_protocol",
           "predict_ratings"]

PROTOCOLS = ("full", "sampled")
"""Next-item protocols: rank among the full catalog, or P5's 1 + N sampled candidates."""

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


# ---------------------------------------------------------------------- rating
def predict_ratings(signature: Callable[..., dict], table: Interactions,
                    batch_size: int = 8192) -> np.ndarray:
    """``signature(user_id=, item_id=)["rating"]`` for every row of ``table``, as float32."""
    out = []
    for start in range(0, len(table), batch_size):
        result = signature(
            user_id=tf.constant(table.user_id[start:start + batch_size].astype(object)),
            item_id=tf.constant(table.item_id[start:start + batch_size].astype(object)))
        out.append(np.asarray(result["rating"], dtype=np.float32).reshape(-1))
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def evaluate_signature(signature: Callable[..., dict], table: Interactions,
                       batch_size: int = 8192) -> dict[str, float]:
    """RMSE/MAE of a ``predict_rating`` signature on ``table`` (needs a rating column)."""
    if table.rating is None:
        raise DataError("evaluating ratings needs a 'rating' column", path=table.source or None,
                        field="rating")
    return rating_metrics(predict_ratings(signature, table, batch_size), table.rating)


# ---------------------------------------------------------------------- next item
def _histories(history: Interactions, users: np.ndarray) -> list[np.ndarray]:
    """Each user's history item IDs in time order (table order breaks ties)."""
    n = len(history)
    ts = history.timestamp if history.timestamp is not None else np.arange(n)
    order = np.lexsort((np.arange(n), ts, history.user_id))
    u, items = history.user_id[order], history.item_id[order]
    lo = np.searchsorted(u, users, side="left")
    hi = np.searchsorted(u, users, side="right")
    return [items[a:b] for a, b in zip(lo, hi, strict=True)]


def parse_protocol(protocol: str, num_negatives: int = 99) -> tuple[str, int]:
    """``"full"`` / ``"all"`` / ``"sampled"`` / ``"sampled:N"`` → ``(kind, negatives)``;
    anything else (``sampled:0``, ``sampled:abc``) is a ``ValueError``, since 0 negatives
    would make every metric 1.0.

        parse_protocol("sampled:99")     # ('sampled', 99)
    """
    kind, colon, arg = protocol.partition(":")
    if kind not in (*PROTOCOLS, "all") or (colon and kind != "sampled"):
        raise ValueError(f"unknown protocol {protocol!r}; use full, sampled:N or all")
    if colon:
        try:
            num_negatives = int(arg)
        except ValueError:
            num_negatives = 0
        if num_negatives < 1 or str(num_negatives) != arg.strip():
            raise ValueError(f"protocol {protocol!r}: N must be a whole number of negatives "
                             ">= 1 (P5 uses sampled:99)")
    return kind, num_negatives


def evaluate_next_items(signatures: Signatures,
                        held_out: Interactions, history: Interactions, *,
                        protocol: str = "all", num_negatives: int = 99, seed: int = 2022,
                        catalog: np.ndarray | None = None,
                        batch_size: int = 256) -> dict[str, float]:
    """Leave-one-out next-item metrics of each user's ``held_out`` item after ``history``.

    ``protocol``: ``"full"`` — rank among all items, history items excluded, via
    ``next_items`` (HR@5/10, NDCG@5/10; an item outside the returned top-k is a miss);
    ``"sampled"`` or ``"sampled:N"`` — P5's direct protocol: the item among itself +
    ``N`` (default 99) items drawn uniformly (``numpy`` seed ``seed``) from the
    ``catalog`` (default: every item of ``history`` and ``held_out``) minus everything the
    user interacted with (history + held-out), via ``score_items``; keys ``sampled_*``;
    ``"all"`` — both. A catalog too small to draw ``N`` never-seen items for some user
    refuses ``"sampled"`` (``DataError``) and leaves the sampled keys out of ``"all"``
    with a warning that says why. Ties rank the held-out item last. A user with several held-out
    events (a temporal split) is scored on the first in time (table order breaks ties):
    the item that comes next after the history.
    """
    kind, num_negatives = parse_protocol(protocol, num_negatives)
    held_out = first_events(held_out)
    users, targets = held_out.user_id, held_out.item_id
    hists = _histories(history, users)
    keep = np.array([len(h) > 0 for h in hists], bool)
    users, targets = users[keep], targets[keep]
    hists = [h for h, k in zip(hists, keep, strict=True) if k]
    out: dict[str, float] = {"users": float(len(users))}
    if not len(users):
        return out
    width = max(len(h) for h in hists)
    padded = np.full((len(users), width), "", dtype=object)
    for row, h in enumerate(hists):
        padded[row, :len(h)] = h

    if kind in ("full", "all"):
        fn = signatures("next_items")
        ranks = np.zeros(len(users), np.int64)
        for s in range(0, len(users), batch_size):
            got = np.asarray(fn(history=tf.constant(padded[s:s + batch_size]))["item_ids"])
            got = got.astype(str)
            hit = got == targets[s:s + batch_size, None].astype(str)
            ranks[s:s + batch_size] = np.where(hit.any(1), hit.argmax(1) + 1, 10 ** 9)
        m = metrics_from_ranks(ranks[:, None], ks=(5, 10))
        out.update({k: v for k, v in m.items() if k.startswith(("hr@", "ndcg@"))})

    if kind in ("sampled", "all"):
        if catalog is None:
            catalog = np.unique(np.concatenate([history.item_id, held_out.item_id]))
        catalog = np.asarray(catalog, dtype=str)
        seen = [np.searchsorted(catalog, np.append(h, t)) for h, t in
                zip(hists, targets, strict=True)]
        inter = np.full((len(users), max(len(x) for x in seen)), -1, np.int64)
        for row, x in enumerate(seen):
            inter[row, :len(x)] = x
        fewest = len(catalog) - max(len(np.unique(x)) for x in seen)
        if fewest < num_negatives:
            why = (f"a user has only {fewest} never-seen items of the {len(catalog):,}, "
                   f"fewer than the {num_negatives} negatives the sampled protocol draws")
            if kind == "sampled":
                raise DataError(why, field="protocol")
            warnings.warn(f"sampled 1 + {num_negatives} metrics left out: {why}",
                          stacklevel=2)
            return out
        negatives = sample_negatives(inter, len(catalog), num_negatives, seed=seed,
                                     first_item=0)
        cand = np.concatenate([targets[:, None].astype(str), catalog[negatives]], axis=1)
        fn = signatures("score_items")
        ranks = []
        for s in range(0, len(users), batch_size):
            sc = np.asarray(fn(history=tf.constant(padded[s:s + batch_size]),
                               item_id=tf.constant(cand[s:s + batch_size].astype(object)))
                            ["scores"])
            ranks.append(ranks_of_targets(sc, np.zeros((len(sc), 1), np.int64)))
        m = metrics_from_ranks(np.concatenate(ranks), ks=(1, 5, 10))
        out.update({f"sampled_{k}": v for k, v in m.items()
                    if k.startswith(("hr@", "ndcg@")) and k != "ndcg@1"})
    return out


def evaluate_after_history(signatures: Signatures, table: Interactions, *,
                           history: Interactions | None = None,
                           protocol: str | None = None) -> dict[str, float]:
    """``evaluate_next_items`` with both protocols unless ``protocol``; refuses a missing
    history (the events before the held-out items) in one line."""
    if history is None or len(history) == 0:
        raise DataError("sequential evaluation needs the events before the held-out items: "
                        "use --split leave-one-out", field="split")
    return evaluate_next_items(signatures, table, history, protocol=protocol or "all")
