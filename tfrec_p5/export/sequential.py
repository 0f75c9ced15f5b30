"""The ``next_items`` serving signature and the sequential evaluation that goes through it.

Why in the export: a client sends raw item IDs, oldest first, and wants the next items.
The signature does everything in-graph — string → index lookup, keeping the last
``max_len`` real items, the causal encoder, scoring the whole catalog with the tied item
table, removing every item of the history, ``top_k`` — so the SavedModel loads and serves
with bare TensorFlow (no tfrec_p5, Keras or TFRS in the serving process).

    module = ServingModule(trained.vocabs)
    add_next_item_signatures(module, trained.head, trained.vocabs.item.tokens, top_k=100)
    out = module.signature("next_items")(history=tf.constant([["i1", "i7", ""]]))
    out["item_ids"], out["scores"]                      # [1, 100] each

Signatures:

* ``next_items(history)``: ``history`` string ``[batch, any length]``, right-padded with
  ``""``. Returns ``item_ids`` / ``scores`` ``[batch, k]`` best first, none of them in the
  history. Unknown IDs count as history positions but carry no information; an empty
  history gets the most popular items (the vocabulary is popularity-ordered and ties go to
  the lower index). If fewer than ``k`` items remain, the tail is padding: ``""`` with
  score ``PAD_SCORE`` (the lowest float32; ``boundary.top_k_or_pad``).
* ``score_items(history, item_id)``: scores ``[batch, C]`` of the given candidates
  (``item_id`` ``[batch, C]``; unknown candidates get the OOV row's score). Used by the
  sampled (P5 "direct", 1 + 99) protocol, which needs scores of chosen candidates.

``evaluate_next_items`` computes both protocols from these two signatures, whether they
come from an in-memory module (``tfrec-p5 train``) or a loaded export
(``tfrec-p5 evaluate``), so both commands report the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import tensorflow as tf

from tfrec_p5.data.errors import DataError
from tfrec_p5.data.interactions import Interactions
from tfrec_p5.evaluation.ranking import metrics_from_ranks, ranks_of_targets, sample_negatives
from tfrec_p5.export.boundary import top_k_or_pad
from tfrec_p5.export.serving import ServingModule

HISTORY_SPEC = tf.TensorSpec([None, None], tf.string, name="history")
CANDIDATES_SPEC = tf.TensorSpec([None, None], tf.string, name="item_id")
PROTOCOLS = ("full", "sampled")


def _window(module: ServingModule, history: tf.Tensor, max_len: int):
    """``(indices [B, L], window [B, W])``: all history indices, and the last ``W <=
    max_len`` real items left-padded with 0 (``W`` = the batch's longest, at least 1)."""
    idx = module.item_index(history)
    valid = tf.not_equal(history, "")
    length = tf.shape(history)[1]
    # Number of positions up to the last real item (robust to "" holes).
    n = tf.reduce_max(tf.where(valid, tf.range(1, length + 1)[None], 0), axis=1)
    width = tf.maximum(tf.minimum(tf.reduce_max(tf.concat([n, [0]], 0)), max_len), 1)
    pos = n[:, None] - width + tf.range(width)[None]                     # [B, W]
    safe = tf.clip_by_value(pos, 0, tf.maximum(length - 1, 0))
    pad = tf.zeros([tf.shape(idx)[0], 1], idx.dtype)  # works for a [B, 0] history too
    gathered = tf.gather(tf.concat([idx, pad], 1), safe, batch_dims=1)
    return idx, tf.where(pos >= 0, gathered, tf.zeros_like(gathered))


def add_next_item_signatures(module: ServingModule, head, item_tokens: np.ndarray,
                             top_k: int = 100) -> None:
    """Add ``next_items`` and ``score_items`` for a trained ``NextItemTask`` head.

    ``item_tokens`` is ``vocabs.item.tokens`` (index ``i + 1`` ↔ ``item_tokens[i]``), the
    vocabulary the module's lookups were built from.
    """
    num_items = int(module.vocab_sizes["item_id"])
    k = int(min(top_k, num_items))
    max_len = int(head.max_len)
    module.track("next_item_head", head)
    tokens = np.concatenate([[""], np.asarray(item_tokens, dtype=str)])
    if len(tokens) != num_items:
        raise ValueError(f"{len(tokens) - 1} item tokens for a {num_items - 1}-item lookup")
    module.track("next_item_tokens", tf.Variable(tokens.astype(object), dtype=tf.string,
                                                 trainable=False, name="next_item_tokens"))

    def next_items(history: tf.Tensor) -> dict[str, tf.Tensor]:
        idx, window = _window(module, history, max_len)
        scores = module.next_item_head.score_history(window)             # [B, N]
        b = tf.shape(idx, out_type=tf.int64)[0]
        rows = tf.repeat(tf.range(b), tf.shape(idx, out_type=tf.int64)[1])
        seen = tf.scatter_nd(tf.stack([rows, tf.reshape(idx, [-1])], 1),
                             tf.ones_like(rows, tf.int32), tf.stack([b, num_items]))
        never = tf.logical_or(seen > 0, tf.range(num_items)[None] == 0)  # history, OOV
        scores = tf.where(never, tf.constant(-np.inf, scores.dtype), scores)
        return top_k_or_pad(scores, k, module.next_item_tokens)

    def score_items(history: tf.Tensor, item_id: tf.Tensor) -> dict[str, tf.Tensor]:
        _, window = _window(module, history, max_len)
        q = module.next_item_head.query(window)                          # [B, d]
        cand = module.next_item_head.encoder.embed_items(module.item_index(item_id))
        return {"scores": tf.einsum("bd,bcd->bc", q, cand)}

    module.add_signature("next_items", next_items, [HISTORY_SPEC], task="sequential")
    module.add_signature("score_items", score_items, [HISTORY_SPEC, CANDIDATES_SPEC])


def sequential_module(vocabs, head, top_k: int = 100) -> ServingModule:
    """A ``ServingModule`` over ``vocabs`` with the next-item signatures added."""
    module = ServingModule(vocabs)
    add_next_item_signatures(module, head, vocabs.item.tokens, top_k=top_k)
    return module


# ---------------------------------------------------------------------- evaluation
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


def evaluate_next_items(signatures: Callable[[str], Callable[..., Mapping]],
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
    ``"all"`` — both. Ties rank the held-out item last.
    """
    kind, num_negatives = parse_protocol(protocol, num_negatives)
    users, first = np.unique(held_out.user_id, return_index=True)
    targets = held_out.item_id[first]
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


def concat_tables(*tables: Interactions) -> Interactions:
    """Rows of ``tables`` one after the other (user, item and timestamp columns only)."""
    cols = ["user_id", "item_id"]
    if all(t.timestamp is not None for t in tables):
        cols.append("timestamp")
    return Interactions.from_columns(
        {c: np.concatenate([t.columns[c] for t in tables]) for c in cols},
        source=tables[0].source if tables else "")


def cli_evaluate(signatures: Callable[[str], Callable[..., Mapping]], table: Interactions, *,
                 history: Interactions | None = None,
                 protocol: str | None = None) -> dict[str, float]:
    """``tfrec-p5 train/evaluate --task sequential``: both protocols unless ``protocol``."""
    if history is None or len(history) == 0:
        raise DataError("sequential evaluation needs the events before the held-out items: "
                        "use --split leave-one-out", field="split")
    return evaluate_next_items(signatures, table, history, protocol=protocol or "all")
