"""String ID → integer index, built from the training split only.

Why: models work on integer rows of embedding tables, and the mapping must be the same
in the tf.data pipeline (integerized once, outside the training step) and inside the
exported SavedModel (a ``StringLookup`` built from the same token list). Index 0 is the
out-of-vocabulary (OOV) row, exactly as ``tf.keras.layers.StringLookup`` numbers it, so an
unknown ID at evaluation or serving time lands on a trained OOV row instead of crashing.

    vocab = Vocabulary.build(train.user_id)
    ids = vocab.lookup(np.array(["u1", "never-seen"]))   # -> [k, 0]
    layer = vocab.string_lookup()                          # same mapping, in-graph

Tokens are ordered by training frequency (most frequent first, ties by token), which makes
index order a popularity ranking and keeps ``min_count`` cut-offs cheap: with
``Vocabulary.build(ids, min_count=5)`` an ID seen fewer than 5 times in training gets no
row of its own and shares the (trained) OOV row with every other rare or unseen ID.

Very large ID spaces (10M users) do not need a vocabulary at all: ``HashedVocabulary``
maps an ID to ``1 + hash(ID) mod num_buckets`` (``tf.keras.layers.Hashing``, FarmHash
fingerprint), keeps no per-ID list, and numbers rows like ``Vocabulary`` does (row 0 is
reserved, so padding and "no item" still mean 0):

    users = HashedVocabulary(2_000_000, name="user_id")
    users.lookup(np.array(["u1", "never-seen"]))           # -> two rows in 1..2_000_000
    len(users)                                              # 2_000_001 embedding rows
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from tfrec_p5.data.errors import DataError

OOV_INDEX = 0
"""Index of the shared out-of-vocabulary row: an ID not seen in training maps here, so a
model answers for every ID (the same numbering as ``tf.keras.layers.StringLookup``)."""
#: Token that ``HashedVocabulary.tokens`` shows for a bucket no training ID hashed into.
EMPTY_BUCKET = ""


class Vocabulary:
    """An ordered list of tokens; ``lookup`` maps token i to i + 1 and unknowns to 0."""

    hashed = False

    def __init__(self, tokens: Sequence[str], name: str = "") -> None:
        self.tokens = np.asarray(tokens, dtype=str)
        self.name = name
        if len(np.unique(self.tokens)) != len(self.tokens):
            raise DataError(f"vocabulary {name!r} has duplicate tokens", field=name or None)
        order = np.argsort(self.tokens, kind="stable")
        self._sorted = self.tokens[order]
        self._sorted_index = order.astype(np.int64) + 1

    @classmethod
    def build(cls, values: np.ndarray, min_count: int = 1, name: str = "") -> Vocabulary:
        """Tokens of ``values`` seen at least ``min_count`` times, most frequent first."""
        uniq, counts = np.unique(np.asarray(values, dtype=str), return_counts=True)
        keep = counts >= min_count
        uniq, counts = uniq[keep], counts[keep]
        order = np.lexsort((uniq, -counts))
        return cls(uniq[order], name=name)

    def __len__(self) -> int:
        """Number of rows an embedding table needs: tokens plus the OOV row."""
        return len(self.tokens) + 1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and np.array_equal(self.tokens, other.tokens)

    def __repr__(self) -> str:
        return f"Vocabulary({self.name!r}, {len(self.tokens)} tokens + OOV)"

    def lookup(self, values: np.ndarray) -> np.ndarray:
        """Vectorized token → index (int64); unknown tokens → ``OOV_INDEX``."""
        values = np.asarray(values, dtype=str)
        if len(self._sorted) == 0:
            return np.zeros(values.shape, dtype=np.int64)
        pos = np.searchsorted(self._sorted, values)
        pos = np.minimum(pos, len(self._sorted) - 1)
        found = self._sorted[pos] == values
        return np.where(found, self._sorted_index[pos], OOV_INDEX).astype(np.int64)

    def token(self, indices: np.ndarray) -> np.ndarray:
        """Index → token; the OOV index maps to ``"[UNK]"`` as in StringLookup."""
        table = np.concatenate([np.array(["[UNK]"]), self.tokens])
        return table[np.asarray(indices)]

    def string_lookup(self):
        """A ``tf.keras.layers.StringLookup`` with exactly this mapping (for export)."""
        import tensorflow as tf

        return tf.keras.layers.StringLookup(
            vocabulary=list(self.tokens) if len(self.tokens) else None,
            num_oov_indices=1, mask_token=None, name=f"{self.name or 'id'}_lookup")

    # JSON, never pickle: loading a vocabulary must not be able to execute code.
    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"name": self.name, "tokens": self.tokens.tolist()}, f)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary | HashedVocabulary:
        """Read a vocabulary saved by ``Vocabulary.save`` or ``HashedVocabulary.save``."""
        try:
            with open(path, encoding="utf-8") as f:
                obj = json.load(f)
            if "hash_buckets" in obj:
                tokens = obj.get("tokens")
                return HashedVocabulary(int(obj["hash_buckets"]), name=obj.get("name", ""),
                                        tokens=None if tokens is None else tokens)
            return cls(obj["tokens"], name=obj.get("name", ""))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataError(f"cannot read vocabulary: {err}", path=str(path)) from err


class HashedVocabulary:
    """String ID → ``1 + hash(ID) mod num_buckets``: no per-ID list in memory.

    Why: a vocabulary of 10M users is 10M Python/numpy strings on the host *and* a 10M-row
    hash table inside every export; hashing needs neither, and its memory is fixed by the
    bucket count you choose, not by how many IDs the data has. The price is collisions:
    with ``n`` distinct IDs in ``b`` buckets, about ``n / b`` IDs share a row on average
    (choose ``b`` ≥ the number of active IDs; rare IDs colliding with each other matters
    little). Unseen IDs land on some trained row instead of the OOV row.

    The hash is ``tf.keras.layers.Hashing(num_bins=num_buckets)`` (FarmHash64,
    ``tf.strings.to_hash_bucket_fast``), computed in numpy-land through TensorFlow for
    ``lookup`` and in-graph by the tower and the export, so the numbering is identical
    everywhere. Row 0 is never produced: it stays the reserved padding / "no item" row
    the rest of the package relies on, so ``len(vocab) == num_buckets + 1``.

        items = HashedVocabulary.build(train.item_id, 1_000_000, name="item_id",
                                       keep_tokens=True)
        items.lookup(np.array(["i1"]))     # -> [1 + hash("i1") % 1_000_000]
        items.tokens[:3]                   # the most frequent training ID of rows 1..3

    ``tokens`` (optional, ``keep_tokens=True``) lists, for rows ``1..num_buckets``, the
    most frequent training ID that hashed there (``EMPTY_BUCKET`` if none): what a
    ``recommend`` signature returns for a row. Keep them for items (the catalog), not for
    users.
    """

    hashed = True

    def __init__(self, num_buckets: int, name: str = "",
                 tokens: Sequence[str] | None = None) -> None:
        if int(num_buckets) < 1:
            raise ValueError(f"num_buckets must be positive, got {num_buckets}")
        self.num_buckets = int(num_buckets)
        self.name = name
        self.tokens = None if tokens is None else np.asarray(tokens, dtype=str)
        if self.tokens is not None and len(self.tokens) != self.num_buckets:
            raise DataError(f"hashed vocabulary {name!r}: {len(self.tokens)} tokens for "
                            f"{self.num_buckets} buckets", field=name or None)

    @classmethod
    def build(cls, values: np.ndarray, num_buckets: int, name: str = "",
              keep_tokens: bool = False) -> HashedVocabulary:
        """A hashed vocabulary; with ``keep_tokens`` each row's most frequent training ID."""
        vocab = cls(num_buckets, name=name)
        if keep_tokens:
            uniq, counts = np.unique(np.asarray(values, dtype=str), return_counts=True)
            rows = vocab.lookup(uniq) - 1
            order = np.lexsort((uniq, -counts, rows))  # per row: most frequent, then by token
            first = np.r_[True, rows[order][1:] != rows[order][:-1]]
            tokens = np.full(num_buckets, EMPTY_BUCKET, dtype=uniq.dtype if len(uniq) else str)
            tokens[rows[order][first]] = uniq[order][first]
            vocab.tokens = tokens
        return vocab

    def __len__(self) -> int:
        """Embedding rows: the buckets plus the reserved row 0."""
        return self.num_buckets + 1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HashedVocabulary) and other.num_buckets == self.num_buckets

    def __repr__(self) -> str:
        return f"HashedVocabulary({self.name!r}, {self.num_buckets} buckets)"

    def hashing(self):
        """The ``tf.keras.layers.Hashing`` layer this vocabulary numbers by (then + 1)."""
        import tensorflow as tf

        return tf.keras.layers.Hashing(num_bins=self.num_buckets,
                                       name=f"{self.name or 'id'}_hashing")

    def lookup(self, values: np.ndarray) -> np.ndarray:
        """Vectorized ID → row (int64, ``1..num_buckets``); never ``OOV_INDEX``."""
        import tensorflow as tf

        values = np.asarray(values)
        if values.size == 0:
            return np.zeros(values.shape, dtype=np.int64)
        strings = values if values.dtype.kind in "US" else values.astype(str)
        rows = tf.strings.to_hash_bucket_fast(tf.constant(strings), self.num_buckets)
        return rows.numpy().astype(np.int64) + 1

    def token(self, indices: np.ndarray) -> np.ndarray:
        """Row → its representative training ID (``keep_tokens=True`` only)."""
        if self.tokens is None:
            raise DataError(f"hashed vocabulary {self.name!r} keeps no tokens (build it with "
                            "keep_tokens=True)", field=self.name or None)
        table = np.concatenate([np.array(["[UNK]"]), self.tokens])
        return table[np.asarray(indices)]

    def save(self, path: str | os.PathLike) -> None:
        obj = {"name": self.name, "hash_buckets": self.num_buckets}
        if self.tokens is not None:
            obj["tokens"] = self.tokens.tolist()
        with open(path, "w", encoding="utf-8") as f:
            json.dump(obj, f)

    @classmethod
    def load(cls, path: str | os.PathLike) -> HashedVocabulary:
        vocab = Vocabulary.load(path)
        if not isinstance(vocab, HashedVocabulary):
            raise DataError("not a hashed vocabulary", path=str(path))
        return vocab
