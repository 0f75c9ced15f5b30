"""The history encoder: an item sequence in, one vector per position out (SASRec / GRU4Rec).

Why a tower of its own: next-item prediction describes a user by *what they did last*, not
by a user ID. The encoder reads the item sequence through the **same** item embedding
table as ``ItemTower`` (so a ``UnifiedModel`` that pretrains retrieval and next-item tasks
shares one set of item vectors, and the output scores are ``h_t · e_i`` with tied
weights), adds learned positions, and runs either a causal Transformer (SASRec, Kang &
McAuley 2018: pre-LayerNorm self-attention blocks, dropout, a final LayerNorm) or a GRU
(GRU4Rec-style). Output ``t`` depends only on items ``<= t`` (causal), which is what lets
one forward pass train on *every* prefix of a sequence at once.

    item_tower = ItemTower.from_vocab(vocabs, embedding_dim=64)
    encoder = SequenceEncoder(item_tower, max_len=50, num_blocks=2, num_heads=1,
                              dropout=0.5)
    hist = tf.constant([[0, 0, 5, 9, 2]], tf.int64)      # left-padded, newest last
    states = encoder(hist)                               # [1, 5, 64]
    user_vec = encoder.last_state(hist)                  # [1, 64]
    scores = tf.matmul(user_vec, encoder.item_table(), transpose_b=True)  # [1, n_items]

Conventions: histories are int64 item indices **left-padded** with 0 (the OOV/padding
index, as ``data.user_histories`` builds them), so the newest item is always the last
column and learned position ``max_len - 1`` always means "most recent". Padding keys are
masked out of attention and padding outputs are zeroed. Inputs shorter than ``max_len``
are fine (positions are aligned to the right); longer ones must be cut by the caller.
"""

from __future__ import annotations

import math

import tensorflow as tf

from tfrec_p5.towers.tower import Tower

_PACKAGE = "tfrec_p5"
ENCODER_KINDS = ("transformer", "gru")


class _Block(tf.keras.layers.Layer):
    """One pre-LN Transformer block: x + MHA(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.attn_norm = tf.keras.layers.LayerNormalization(epsilon=1e-8, name="attn_norm")
        self.attention = tf.keras.layers.MultiHeadAttention(
            num_heads=num_heads, key_dim=max(dim // num_heads, 1), dropout=dropout,
            name="attention")
        self.ffn_norm = tf.keras.layers.LayerNormalization(epsilon=1e-8, name="ffn_norm")
        self.ffn_in = tf.keras.layers.Dense(ffn_dim, activation="relu", name="ffn_in")
        self.ffn_out = tf.keras.layers.Dense(dim, name="ffn_out")
        self.drop1 = tf.keras.layers.Dropout(dropout)
        self.drop2 = tf.keras.layers.Dropout(dropout)
        self.drop3 = tf.keras.layers.Dropout(dropout)

    def call(self, x: tf.Tensor, attention_mask: tf.Tensor, valid: tf.Tensor,
             training: bool | None = None) -> tf.Tensor:
        h = self.attn_norm(x)
        # SASRec: queries are normalized, keys/values are the block input.
        a = self.attention(h, x, attention_mask=attention_mask, training=training)
        x = (x + self.drop1(a, training=training)) * valid
        h = self.ffn_norm(x)
        f = self.ffn_out(self.drop2(self.ffn_in(h), training=training))
        return (x + self.drop3(f, training=training)) * valid


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class SequenceEncoder(tf.keras.layers.Layer):
    """Causal encoder of left-padded item-index histories ``[B, L]`` → states ``[B, L, d]``.

    Args:
      item_tower: the ``ItemTower`` whose ``id_embedding`` is shared (input embeddings
        and, through ``item_table()``, the tied output weights). Its width is ``d``.
      max_len: longest history (learned position table size).
      kind: ``"transformer"`` (SASRec) or ``"gru"``.
      num_blocks, num_heads, ffn_dim: Transformer shape (``ffn_dim`` default ``d``, as in
        SASRec); ``num_blocks`` stacked GRU layers for ``kind="gru"``.
      dropout: on embeddings, attention weights, residual branches (Beauty is sparse:
        0.5 works best there).
    """

    def __init__(self, item_tower: Tower, max_len: int = 50, *, kind: str = "transformer",
                 num_blocks: int = 2, num_heads: int = 1, ffn_dim: int | None = None,
                 dropout: float = 0.5, **kwargs) -> None:
        kwargs.setdefault("name", "sequence_encoder")
        super().__init__(**kwargs)
        if kind not in ENCODER_KINDS:
            raise ValueError(f"encoder kind {kind!r}; expected one of {ENCODER_KINDS}")
        self.item_tower = item_tower
        self.max_len = int(max_len)
        self.kind = kind
        self.dim = int(item_tower.embedding_dim)
        self.num_blocks = int(num_blocks)
        self.num_heads = int(num_heads)
        self.ffn_dim = int(ffn_dim or self.dim)
        self.dropout = float(dropout)
        self.position = tf.keras.layers.Embedding(self.max_len, self.dim, name="position")
        self.input_dropout = tf.keras.layers.Dropout(self.dropout)
        if kind == "transformer":
            self.blocks = [_Block(self.dim, self.num_heads, self.ffn_dim, self.dropout,
                                  name=f"block_{i}") for i in range(self.num_blocks)]
            self.gru = []
        else:
            self.blocks = []
            self.gru = [tf.keras.layers.GRU(self.dim, return_sequences=True, name=f"gru_{i}")
                        for i in range(self.num_blocks)]
        self.final_norm = tf.keras.layers.LayerNormalization(epsilon=1e-8, name="final_norm")

    # ------------------------------------------------------------------ item side
    def item_table(self) -> tf.Tensor:
        """All item vectors ``[num_items, d]`` (row 0 = OOV/padding): the tied output layer.

        A bare ID tower is read directly (no gather); a tower with side features or a
        projection is run over every index, so attributes shape the output scores too.
        """
        tower = self.item_tower
        if tower.projection is None and not tower.features:
            if not tower.id_embedding.built:
                tower(tf.zeros((1,), tf.int64))
            return tower.id_embedding.embeddings
        return tower(tf.range(tower.num_ids, dtype=tf.int64))

    def embed_items(self, items: tf.Tensor) -> tf.Tensor:
        """Item vectors for an index tensor of any shape (``[..., d]``)."""
        flat = tf.reshape(items, [-1])
        vec = self.item_tower(flat)
        return tf.reshape(vec, tf.concat([tf.shape(items), [self.dim]], axis=0))

    # ------------------------------------------------------------------ sequence side
    def call(self, history: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        history = tf.cast(history, tf.int64)
        length = tf.shape(history)[1]
        valid = tf.cast(history > 0, tf.float32)[..., None]               # [B, L, 1]
        x = self.embed_items(history) * math.sqrt(self.dim)
        positions = tf.range(self.max_len - length, self.max_len)          # right-aligned
        x = x + self.position(positions)[None]
        x = self.input_dropout(x, training=training) * valid
        if self.kind == "transformer":
            causal = tf.linalg.band_part(tf.ones((length, length), tf.bool), -1, 0)
            mask = tf.logical_and(causal[None], (history > 0)[:, None, :])  # [B, Lq, Lk]
            for block in self.blocks:
                x = block(x, attention_mask=mask, valid=valid, training=training)
        else:
            seq_mask = history > 0
            for layer in self.gru:
                x = layer(x, mask=seq_mask, training=training) * valid
        return self.final_norm(x) * valid

    def last_state(self, history: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        """The state after the newest item (last column): the user's query vector."""
        return self(history, training=training)[:, -1, :]

    def get_config(self) -> dict:
        # The item tower is shared state, not config: rebuild with the same tower.
        return {"max_len": self.max_len, "kind": self.kind, "num_blocks": self.num_blocks,
                "num_heads": self.num_heads, "ffn_dim": self.ffn_dim,
                "dropout": self.dropout, "name": self.name}
