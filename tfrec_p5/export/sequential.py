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
  history. Unknown IDs are left out of the history the model reads (the last ``max_len``
  known items are); a history with no known item gets the most popular items (the
  vocabulary is popularity-ordered and ties go to the lower index). If fewer than ``k``
  items remain, the tail is padding: ``""`` with score ``PAD_SCORE`` (the lowest float32;
  ``boundary.top_k_or_pad``).
* ``score_items(history, item_id)``: scores ``[batch, C]`` of the given candidates
  (``item_id`` ``[batch, C]``; unknown candidates get the OOV row's score). Used by the
  sampled (P5 "direct", 1 + 99) protocol, which needs scores of chosen candidates.
* ``score_new_items(history, <one input per item feature> [n])`` → ``scores [batch, n]``
  (only for an item tower with side features, e.g. Amazon ``item_attributes``: pass
  ``side_features``): items described by raw feature values (encoded as
  ``export.new_items`` says), scored ``query(history) · feature_only_vector(item)``,
  exactly what ``next_items`` gives a catalog item with these features that no training
  sequence holds (``train_sequential(catalog=...)``).

Functions of the module (not signatures), for ``tfrec-p5 add-items``, which serves added
items from the next version's ``next_items`` / ``score_items`` without retraining:
``next_item_query(history)`` → ``[batch, d]`` (the query ``next_items`` scores the
catalog with) and, with ``score_new_items``, ``new_item_vectors({feature: [n]})`` →
``[n, d]``. The metadata entry ``NEXT_ITEMS_KEY`` records the list size.

``item_item_next_module`` serves an item-item model (item-KNN, most popular:
``models.item_item``) under the same two signatures, for ``tfrec-p5 train --task
sequential`` when one of them wins the validation race.

``tfrec_p5.evaluation.evaluate_next_items`` computes both protocols from these two
signatures, whether they come from an in-memory module (``tfrec-p5 train``) or a loaded
export (``tfrec-p5 evaluate``), so both commands report the same numbers.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfrec_p5.export.boundary import top_k_or_pad, with_parameters
from tfrec_p5.export.new_items import (
    NEW_ITEMS_KEY,
    add_new_item_vectors,
    describable_item_features,
    new_items_metadata,
)
from tfrec_p5.export.serving import ServingModule
from tfrec_p5.models.item_item import ItemItemModel
from tfrec_p5.towers.side_features import DEFAULT_MAX_TOKENS, SideFeatures

__all__ = ["CANDIDATES_SPEC", "HISTORY_SPEC", "NEXT_ITEMS_KEY", "add_next_item_signatures",
           "add_next_item_feature_scoring", "item_item_next_module", "sequential_module"]

HISTORY_SPEC = tf.TensorSpec([None, None], tf.string, name="history")
CANDIDATES_SPEC = tf.TensorSpec([None, None], tf.string, name="item_id")
#: Metadata key of a next-item export: ``{"k": list size, "top_k": the size asked for}``
#: (``k`` is smaller when the catalog is; ``add-items`` recomputes it for a larger one).
NEXT_ITEMS_KEY = "next_items"


def _window(module: ServingModule, history: tf.Tensor, max_len: int):
    """``(indices [B, L], window [B, W])``: all history indices, and the last ``W <=
    max_len`` *known* items, in order, left-padded with 0 (``W`` = the batch's most, at
    least 1). Unknown IDs and ``""`` holes are left out rather than kept as 0 positions:
    the encoder reads a 0 as padding, so an unknown newest item would otherwise leave the
    query without anything after it to read."""
    idx = module.item_index(history)
    known = tf.cast(idx > 0, tf.int32)
    from_end = tf.cumsum(known, axis=1, reverse=True)           # 1 = newest known item
    width = tf.maximum(tf.minimum(tf.reduce_max(tf.concat(
        [tf.reduce_sum(known, axis=1), [0]], 0)), max_len), 1)
    keep = tf.logical_and(known > 0, from_end <= width)
    where = tf.where(keep)                                       # [n, 2]: (row, position)
    column = width - tf.gather_nd(from_end, where)
    window = tf.scatter_nd(tf.stack([where[:, 0], tf.cast(column, tf.int64)], 1),
                           tf.gather_nd(idx, where),
                           tf.stack([tf.shape(idx, out_type=tf.int64)[0],
                                     tf.cast(width, tf.int64)]))
    return idx, window


def _history_counts(idx: tf.Tensor, num_items: int) -> tf.Tensor:
    """``[B, num_items]`` float32: how often each item index occurs in each row of ``idx``
    (``[B, L]`` item indices; 0 = unknown or padding, counted in column 0)."""
    b = tf.shape(idx, out_type=tf.int64)[0]
    rows = tf.repeat(tf.range(b), tf.shape(idx, out_type=tf.int64)[1])
    return tf.scatter_nd(tf.stack([rows, tf.reshape(idx, [-1])], 1),
                         tf.ones_like(rows, tf.float32), tf.stack([b, num_items]))


def _never_served(counts: tf.Tensor) -> tf.Tensor:
    """``[B, N]`` bool: the history's items and the OOV column, which no list holds."""
    return tf.logical_or(counts > 0, tf.range(tf.shape(counts)[1])[None] == 0)


def _track_tokens(module: ServingModule, item_tokens: np.ndarray) -> int:
    """Track ``[""] + item_tokens`` as ``module.next_item_tokens``; return the list size
    bound (the item lookup's size, which the tokens must match)."""
    num_items = int(module.vocab_sizes["item_id"])
    tokens = np.concatenate([[""], np.asarray(item_tokens, dtype=str)])
    if len(tokens) != num_items:
        raise ValueError(f"{len(tokens) - 1} item tokens for a {num_items - 1}-item lookup")
    module.track("next_item_tokens", tf.Variable(tokens.astype(object), dtype=tf.string,
                                                 trainable=False, name="next_item_tokens"))
    return num_items


def add_next_item_signatures(module: ServingModule, head, item_tokens: np.ndarray,
                             top_k: int = 100) -> None:
    """Add ``next_items`` and ``score_items`` for a trained ``NextItemTask`` head.

    ``item_tokens`` is ``vocabs.item.tokens`` (index ``i + 1`` ↔ ``item_tokens[i]``), the
    vocabulary the module's lookups were built from.
    """
    num_items = _track_tokens(module, item_tokens)
    k = int(min(top_k, num_items))
    max_len = int(head.max_len)
    module.track("next_item_head", head)

    def next_items(history: tf.Tensor) -> dict[str, tf.Tensor]:
        idx, window = _window(module, history, max_len)
        scores = module.next_item_head.score_history(window)             # [B, N]
        never = _never_served(_history_counts(idx, num_items))
        scores = tf.where(never, tf.constant(-np.inf, scores.dtype), scores)
        return top_k_or_pad(scores, k, module.next_item_tokens)

    def query(history: tf.Tensor) -> tf.Tensor:
        _, window = _window(module, history, max_len)
        return module.next_item_head.query(window)                      # [B, d]

    module.track("next_item_query", tf.function(query, input_signature=[HISTORY_SPEC],
                                                autograph=False))

    def score_items(history: tf.Tensor, item_id: tf.Tensor) -> dict[str, tf.Tensor]:
        q = module.next_item_query(history)                              # [B, d]
        cand = module.next_item_head.encoder.embed_items(module.item_index(item_id))
        return {"scores": tf.einsum("bd,bcd->bc", q, cand)}

    module.add_signature("next_items", next_items, [HISTORY_SPEC], task="sequential")
    module.add_signature("score_items", score_items, [HISTORY_SPEC, CANDIDATES_SPEC])
    module.extra_metadata[NEXT_ITEMS_KEY] = {"k": k, "top_k": int(top_k)}


def item_item_next_module(model: ItemItemModel, vocabs, top_k: int = 100) -> ServingModule:
    """A ``ServingModule`` whose ``next_items`` and ``score_items`` are ``model``'s:
    ``scores(h) = c_h · W + b``, ``c_h`` = how often each item occurs in the history
    (every item of it, not only the last ``max_len``), with the outputs and exclusions of
    a model's ``next_items`` (the history's items and unknown IDs never listed).

    Why: item-KNN (``W`` = cosine similarity) or most popular (``W = 0``, ``b`` = training
    counts) can beat a sequence model on data with short or missing histories; ``train``
    then exports this module in the model's place, with the same signatures, so a client
    does not change. ``vocabs``: the rows ``model`` was fit on.

        module = item_item_next_module(ref.model, ref.vocabs, top_k=100)
        module.signature("next_items")(history=tf.constant([["i1", "i7"]]))
    """
    module = ServingModule(vocabs)
    num_items = _track_tokens(module, vocabs.item.tokens)
    if model.num_items != num_items:
        raise ValueError(f"the model scores {model.num_items} item indices, the vocabulary "
                         f"has {num_items}")
    k = int(min(top_k, num_items))
    weights = None if model.weights is None else tf.Variable(
        model.weights, trainable=False, name="item_weights")            # [I, I]
    bias = tf.Variable(np.zeros(num_items, np.float32) if model.item_bias is None
                       else model.item_bias, trainable=False, name="item_bias")
    module.track("next_item_weights", [bias] + ([] if weights is None else [weights]))

    def scores_of(counts: tf.Tensor) -> tf.Tensor:
        dot = tf.zeros_like(counts) if weights is None else tf.matmul(counts, weights)
        return dot + bias[None, :]

    def next_items(history: tf.Tensor) -> dict[str, tf.Tensor]:
        counts = _history_counts(module.item_index(history), num_items)
        scores = tf.where(_never_served(counts), tf.constant(-np.inf, tf.float32),
                          scores_of(counts))
        return top_k_or_pad(scores, k, module.next_item_tokens)

    def score_items(history: tf.Tensor, item_id: tf.Tensor) -> dict[str, tf.Tensor]:
        full = scores_of(_history_counts(module.item_index(history), num_items))
        return {"scores": tf.gather(full, module.item_index(item_id), batch_dims=1)}

    module.add_signature("next_items", next_items, [HISTORY_SPEC], task="sequential")
    module.add_signature("score_items", score_items, [HISTORY_SPEC, CANDIDATES_SPEC])
    module.extra_metadata[NEXT_ITEMS_KEY] = {"k": k, "top_k": int(top_k)}
    return module


def add_next_item_feature_scoring(module: ServingModule, head,
                                  side_features: SideFeatures | None,
                                  max_tokens: int = DEFAULT_MAX_TOKENS) -> bool:
    """Add ``score_new_items(history, <features>)`` and ``new_item_vectors`` to a module
    with the next-item signatures, when ``head``'s item tower reads side features a
    client can give (``new_items.describable_item_features``); return whether it did.

    ``side_features`` are the training split's (``TrainedSequential.side_features``):
    their vocabularies and statistics encode the raw values in-graph, as the catalog's
    were encoded. A described item's score is ``query(history) · v`` with ``v`` the item
    tower's vector without the ID embedding: the row ``score_history`` gives a catalog
    item beyond ``feature_only_from`` (no bias is added to a real item's column).
    """
    tables = describable_item_features(side_features, head.item_tower)
    if tables is None:
        return False
    specs = add_new_item_vectors(module, tables, max_tokens, head.item_tower)

    def score_new_items(history: tf.Tensor, *features: tf.Tensor) -> dict[str, tf.Tensor]:
        q = module.next_item_query(history)                              # [B, d]
        items = module.new_item_vectors({s.name: f for s, f in zip(specs, features,
                                                                   strict=True)})
        return {"scores": tf.matmul(q, items, transpose_b=True)}

    # B histories and n items: two groups of inputs, each with its own first dimension.
    names = [HISTORY_SPEC.name, *(s.name for s in specs)]
    module.add_signature("score_new_items", with_parameters(score_new_items, names),
                         [HISTORY_SPEC, *specs],
                         batch_groups=[[0], list(range(1, len(specs) + 1))])
    module.extra_metadata[NEW_ITEMS_KEY] = new_items_metadata(
        module.item_features, getattr(module.item_lookup, "hash_buckets", None) is not None,
        HISTORY_SPEC.name)
    return True


def sequential_module(vocabs, head, top_k: int = 100,
                      side_features: SideFeatures | None = None,
                      max_tokens: int = DEFAULT_MAX_TOKENS) -> ServingModule:
    """A ``ServingModule`` over ``vocabs`` with the next-item signatures added, and
    ``score_new_items`` when ``side_features`` (the training split's) describe items the
    head's item tower reads (``add_next_item_feature_scoring``)."""
    module = ServingModule(vocabs)
    add_next_item_signatures(module, head, vocabs.item.tokens, top_k=top_k)
    add_next_item_feature_scoring(module, head, side_features, max_tokens)
    return module
