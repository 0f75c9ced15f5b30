"""The next-item head: predict the item after every prefix of a history (P5's sequential task).

Why a ``Head``: P5 pretrains one model on many tasks. This head follows the protocol of
``tfrec_p5.tasks.base`` — ``bind(user_tower, item_tower)`` then
``compute_loss(features, user_vec, item_vec, training)`` — so ``UnifiedModel`` can train it
beside the retrieval / rating heads on the *same* ``ItemTower``: the history encoder reads
items through that tower's embedding table and scores the catalog with the same table
(tied weights). It ignores ``user_vec``/``item_vec``; its batch carries

* ``history``   int64 ``[B, L]``: item indices, left-padded with 0 (newest last);
* ``next_item`` int64 ``[B, L]``: the item that followed each position, 0 = no target.

One row per user with ``next_item = history`` shifted by one trains on every prefix of the
sequence in one causal forward pass (SASRec's all-positions training);
``tfrec_p5.models.sequential.next_item_examples`` builds those rows.

Losses:

* ``"softmax"`` (default): full softmax cross-entropy over the whole catalog. Far better
  than SASRec's original one-negative BCE, and exact; ``[positions, items]`` logits are
  cheap up to ~10^5 items.
* ``"sampled"``: sampled softmax for large catalogs: ``num_negatives`` items shared by the
  batch, drawn from ``item_probabilities`` (default uniform), with the logQ correction
  (``logit - log(num_negatives * q)``, Bengio & Senécal 2008; Yi et al. 2019) and
  accidental hits removed, so it estimates the full-softmax gradient without its bias.

    head = NextItemTask(max_len=50, num_blocks=2, dropout=0.5)
    head.bind(None, item_tower)                  # UnifiedModel does this
    loss = head.compute_loss({"history": h, "next_item": t}, None, None, training=True)
    scores = head.score_history(h)               # [B, num_items], OOV column = -inf
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from tfrec_p5.tasks.base import Head
from tfrec_p5.towers.history import SequenceEncoder

HISTORY = "history"
NEXT_ITEM = "next_item"
LOSSES = ("softmax", "sampled")
_NEG = -1e9


class NextItemTask(Head):
    """Causal history encoder + tied item table → next-item logits at every position.

    Args:
      max_len, kind, num_blocks, num_heads, ffn_dim, dropout: ``SequenceEncoder`` shape.
      loss: ``"softmax"`` (full catalog) or ``"sampled"`` (with logQ correction).
      num_negatives: shared negatives per batch for ``loss="sampled"``.
      item_probabilities: ``[num_items]`` sampling distribution for ``"sampled"`` (e.g.
        ``tasks.retrieval.item_frequencies``); ``None`` = uniform over real items.
      untrained_items: item indices with no training event (a catalog's new items,
        ``tfrec_p5.data.catalog_items``): left out of the training loss's catalog (no
        sequence could have chosen them, so pushing them down would teach the features
        of every new item to look unlikely) but scored at inference from their features.
    """

    task = "next_item"
    uses_user_tower = False  # a user is their history here, not an ID vector
    inputs = (HISTORY, NEXT_ITEM)

    def __init__(self, max_len: int = 50, *, kind: str = "transformer", num_blocks: int = 2,
                 num_heads: int = 1, ffn_dim: int | None = None, dropout: float = 0.5,
                 loss: str = "softmax", num_negatives: int = 1000,
                 item_probabilities: np.ndarray | None = None,
                 untrained_items: np.ndarray | None = None, **kwargs) -> None:
        kwargs.setdefault("name", "next_item_head")
        super().__init__(**kwargs)
        if loss not in LOSSES:
            raise ValueError(f"next-item loss {loss!r}; expected one of {LOSSES}")
        self.encoder_args = {"max_len": int(max_len), "kind": kind,
                             "num_blocks": int(num_blocks), "num_heads": int(num_heads),
                             "ffn_dim": ffn_dim, "dropout": float(dropout)}
        self.max_len = int(max_len)
        self.loss_kind = loss
        self.num_negatives = int(num_negatives)
        self._item_probabilities = None if item_probabilities is None else \
            np.asarray(item_probabilities, np.float64)
        self.untrained_items = np.zeros(0, np.int64) if untrained_items is None else \
            np.asarray(untrained_items, np.int64)
        self.encoder: SequenceEncoder | None = None
        self.item_tower = None

    # ------------------------------------------------------------------ protocol
    def bind(self, user_tower, item_tower) -> None:
        """Build the encoder on ``item_tower`` (shared embeddings, tied output)."""
        self.item_tower = item_tower
        self.encoder = SequenceEncoder(item_tower, **self.encoder_args)
        n = int(item_tower.num_ids)
        if self.loss_kind == "sampled":
            p = np.ones(n) if self._item_probabilities is None else \
                np.array(self._item_probabilities, np.float64, copy=True)
            if len(p) != n:
                raise ValueError(f"item_probabilities has {len(p)} entries, the item tower "
                                 f"{n}")
            p[0] = 0.0  # never sample the OOV / padding row
            p[self.untrained_items] = 0.0
            p = p / p.sum()
            self.sampling_logits = tf.constant(np.log(np.maximum(p, 1e-30)), tf.float32)
        # Added to every logit: the OOV / padding row can never be predicted.
        self.oov_bias = tf.constant(np.r_[_NEG, np.zeros(n - 1)], tf.float32)
        train_bias = self.oov_bias.numpy()
        train_bias[self.untrained_items] = _NEG
        self.train_bias = tf.constant(train_bias, tf.float32)

    def _check_bound(self) -> SequenceEncoder:
        if self.encoder is None:
            raise RuntimeError("NextItemTask is not bound: call head.bind(user_tower, "
                               "item_tower) (UnifiedModel does it)")
        return self.encoder

    def compute_loss(self, features: Mapping[str, tf.Tensor], user_vec: tf.Tensor | None,
                     item_vec: tf.Tensor | None, training: bool = False) -> tf.Tensor:
        encoder = self._check_bound()
        states = encoder(features[HISTORY], training=training)          # [B, L, d]
        targets = tf.cast(features[NEXT_ITEM], tf.int64)
        mask = targets > 0
        h = tf.boolean_mask(states, mask)                                # [n, d]
        t = tf.boolean_mask(targets, mask)                               # [n]
        if self.loss_kind == "softmax":
            logits = tf.matmul(h, encoder.item_table(), transpose_b=True) + self.train_bias
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=t, logits=logits)
        else:
            losses = self._sampled_loss(encoder, h, t)
        return tf.math.divide_no_nan(tf.reduce_sum(losses),
                                     tf.cast(tf.size(losses), tf.float32))

    def _sampled_loss(self, encoder: SequenceEncoder, h: tf.Tensor, t: tf.Tensor) -> tf.Tensor:
        neg = tf.random.categorical(self.sampling_logits[None], self.num_negatives,
                                    dtype=tf.int64)[0]                   # [M]
        log_q = tf.math.log(float(self.num_negatives)) + self.sampling_logits
        pos_logit = tf.reduce_sum(h * encoder.embed_items(t), axis=-1) \
            - tf.gather(log_q, t)                                        # [n]
        neg_logits = tf.matmul(h, encoder.embed_items(neg), transpose_b=True) \
            - tf.gather(log_q, neg)[None]                                # [n, M]
        hit = tf.equal(t[:, None], neg[None])                            # accidental hits
        neg_logits = tf.where(hit, _NEG, neg_logits)
        logits = tf.concat([pos_logit[:, None], neg_logits], axis=1)
        return tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.zeros_like(t), logits=logits)

    # ------------------------------------------------------------------ reuse
    def head_config(self) -> dict[str, Any]:
        """The constructor arguments (JSON-able, without ``item_probabilities``)."""
        return {**self.encoder_args, "loss": self.loss_kind,
                "num_negatives": self.num_negatives}

    def encoder_weights(self) -> list[tf.Variable]:
        """The encoder's own variables (positions, blocks, norms) in creation order,
        *without* the shared item tower's: what a backbone saves next to its towers."""
        encoder = self._check_bound()
        if not encoder.built:
            encoder(tf.zeros((1, 1), tf.int64))
        shared = {id(v) for v in self.item_tower.weights}
        return [w for w in encoder.weights if id(w) not in shared]

    def clone(self, item_tower) -> NextItemTask:
        """A new head with this one's shape and encoder weights, bound to ``item_tower``.

        Why: fine-tuning and vocabulary growth rebuild the item tower; the pretrained
        encoder must follow it (its weights do not depend on the catalog size). With a
        grown catalog the sampled-loss distribution falls back to uniform.
        """
        probs = self._item_probabilities
        if probs is not None and len(probs) != int(item_tower.num_ids):
            probs = None
        new = NextItemTask(**self.head_config(), item_probabilities=probs)
        new.bind(None, item_tower)
        copy_encoder_weights(self, new)
        return new

    # ------------------------------------------------------------------ inference
    def query(self, history: tf.Tensor, training: bool = False) -> tf.Tensor:
        """``[B, d]`` state after the newest item of each left-padded history."""
        return self._check_bound().last_state(history, training=training)

    def score_history(self, history: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Scores ``[B, num_items]`` of every item as the next one (OOV column ≈ -1e9)."""
        q = self.query(history, training=training)
        return tf.matmul(q, self._check_bound().item_table(), transpose_b=True) + self.oov_bias

    def score(self, features, user_vec, item_vec, training=False):
        """One score per (history, ``item_id``) row, for ``UnifiedModel.score``."""
        q = self.query(features[HISTORY], training=training)
        items = self._check_bound().embed_items(tf.cast(features["item_id"], tf.int64))
        return tf.reduce_sum(q * items, axis=-1)


def copy_encoder_weights(source: NextItemTask, target: NextItemTask) -> None:
    """Assign ``source``'s encoder weights to ``target`` (same shape; both bound).

    Raises ``ValueError`` naming the first variable whose shape differs."""
    src, dst = source.encoder_weights(), target.encoder_weights()
    if len(src) != len(dst):
        raise ValueError(f"next-item encoders differ: {len(src)} vs {len(dst)} variables")
    for a, b in zip(src, dst, strict=True):
        if tuple(a.shape) != tuple(b.shape):
            raise ValueError(f"next-item encoder variable {b.name} has shape {b.shape}, "
                             f"the source {a.shape}")
        b.assign(a)


HEAD_FILE, WEIGHTS_FILE = "head.json", "weights.npz"


def save_next_item_head(head: NextItemTask, directory: str | os.PathLike) -> dict[str, Any]:
    """Write the head's config (``head.json``) and encoder weights (``weights.npz``, no
    pickle) to ``directory``; return the JSON written. The item tower is not saved here
    (a backbone saves it once for every task)."""
    os.makedirs(directory, exist_ok=True)
    weights = head.encoder_weights()
    meta = {"class": type(head).__name__, "config": head.head_config(),
            "weights": [{"name": w.name, "shape": list(w.shape)} for w in weights]}
    arrays = {f"w{i}": w.numpy() for i, w in enumerate(weights)}
    if head._item_probabilities is not None:
        arrays["item_probabilities"] = head._item_probabilities
    np.savez(os.path.join(directory, WEIGHTS_FILE), **arrays)
    with open(os.path.join(directory, HEAD_FILE), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
    return meta


def load_next_item_head(directory: str | os.PathLike, item_tower) -> NextItemTask:
    """Rebuild a head saved by ``save_next_item_head`` on ``item_tower``.

    Raises ``ValueError`` (message names the file) if the files are unreadable or the
    weights do not fit the config."""
    path = os.path.join(directory, HEAD_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
        with np.load(os.path.join(directory, WEIGHTS_FILE), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        probs = arrays.get("item_probabilities")
        if probs is not None and len(probs) != int(item_tower.num_ids):
            probs = None
        head = NextItemTask(**meta["config"], item_probabilities=probs)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: cannot read the next-item head: {err}") from err
    head.bind(None, item_tower)
    weights = head.encoder_weights()
    if len(weights) != len(meta["weights"]) or any(f"w{i}" not in arrays
                                                   for i in range(len(weights))):
        raise ValueError(f"{path}: {len(meta['weights'])} saved encoder weights, the "
                         f"config builds {len(weights)}")
    for i, w in enumerate(weights):
        if tuple(arrays[f"w{i}"].shape) != tuple(w.shape):
            raise ValueError(f"{path}: encoder weight {i} ({w.name}) has shape "
                             f"{tuple(arrays[f'w{i}'].shape)}, expected {tuple(w.shape)}")
        w.assign(arrays[f"w{i}"])
    return head
