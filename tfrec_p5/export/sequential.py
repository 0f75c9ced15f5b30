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

``tfrec_p5.evaluation.evaluate_next_items`` computes both protocols from these two
signatures, whether they come from an in-memory module (``tfrec-p5 train``) or a loaded
export (``tfrec-p5 evaluate``), so both commands report the same numbers.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfrec_p5.export.boundary import top_k_or_pad
from tfrec_p5.export.serving import ServingModule

HISTORY_SPEC = tf.TensorSpec([None, None], tf.string, name="history")
CANDIDATES_SPEC = tf.TensorSpec([None, None], tf.string, name="item_id")


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
