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
index order a popularity ranking and keeps ``min_count`` cut-offs cheap.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from tfrec_p5.data.errors import DataError

OOV_INDEX = 0


class Vocabulary:
    """An ordered list of tokens; ``lookup`` maps token i to i + 1 and unknowns to 0."""

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
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        try:
            with open(path, encoding="utf-8") as f:
                obj = json.load(f)
            return cls(obj["tokens"], name=obj.get("name", ""))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataError(f"cannot read vocabulary: {err}", path=str(path)) from err
