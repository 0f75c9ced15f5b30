"""Fingerprints of a table: what a model was trained on, in a form small enough to ship.

Why: an export must be able to tell, later and without the training data, whether rows
it is asked to score were rows it trained on (``tfrec-p5 evaluate`` with another split,
seed or file would otherwise report a flattering number), and which test IDs it has never
seen. ``pair_hashes`` turns (user, item) pairs into sorted 64-bit hashes (8 bytes a pair);
``id_hashes`` does the same for IDs; ``table_fingerprint`` names a table's content in one
string, so a changed data file is noticed.

    train_pairs = pair_hashes(train.user_id, train.item_id)
    seen = contains(train_pairs, pair_hashes(test.user_id, test.item_id))
    seen.mean()        # share of test rows that were training pairs
"""

from __future__ import annotations

import hashlib

import numpy as np

from tfrec_p5.data.interactions import Interactions

__all__ = ["contains", "id_hashes", "pair_hashes", "table_fingerprint"]

_SEP = "\x1f"  # unit separator: cannot occur in an ID read from a text file
_CHUNK_ROWS = 1 << 20


def _hash_strings(values: np.ndarray) -> np.ndarray:
    """64-bit BLAKE2b of each string (stable across processes and machines)."""
    out = np.empty(len(values), np.uint64)
    for i, value in enumerate(values.astype(str).tolist()):
        out[i] = int.from_bytes(hashlib.blake2b(value.encode("utf-8"), digest_size=8)
                                .digest(), "little")
    return out


def id_hashes(ids: np.ndarray, *, unique: bool = True) -> np.ndarray:
    """Sorted unique 64-bit hashes of ``ids``; one per row, in row order, if
    ``unique=False`` (each distinct ID is hashed once either way)."""
    values, inverse = np.unique(np.asarray(ids).astype(str), return_inverse=True)
    hashes = _hash_strings(values)
    return np.unique(hashes) if unique else hashes[inverse.reshape(-1)]


def pair_hashes(users: np.ndarray, items: np.ndarray, *, unique: bool = True) -> np.ndarray:
    """64-bit hashes of (user, item) pairs; sorted unique unless ``unique=False`` (then one
    hash per row, in row order)."""
    users = np.asarray(users).astype(str)
    items = np.asarray(items).astype(str)
    joined = np.char.add(np.char.add(users, _SEP), items) if len(users) else users
    hashes = _hash_strings(joined)
    return np.unique(hashes) if unique else hashes


def contains(sorted_hashes: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """Boolean mask: which of ``hashes`` are in ``sorted_hashes`` (sorted, unique)."""
    if len(sorted_hashes) == 0:
        return np.zeros(len(hashes), bool)
    pos = np.searchsorted(sorted_hashes, hashes)
    pos[pos == len(sorted_hashes)] = 0
    return sorted_hashes[pos] == hashes


def table_fingerprint(*tables: Interactions | None) -> str:
    """BLAKE2b (hex, 32 characters) of the tables' rows in order: every column (name,
    dtype, values) and the metadata that shape a model (declared rating range, side
    features); a ``None`` table (no validation part) counts as such. Equal for the same
    data, different after any change; 1M rows at a time, so cheap.

        table_fingerprint(train, validation)   # '9c1e...'
    """
    digest = hashlib.blake2b(digest_size=16)
    for table in tables:
        if table is None:
            digest.update(b"<none>")
            continue
        digest.update(f"<table {len(table)}>".encode())
        for name in sorted(table.columns):
            column = np.asarray(table.columns[name])
            digest.update(f"{name}:{column.dtype.str}:{column.shape}".encode())
            for start in range(0, len(column), _CHUNK_ROWS):
                chunk = column[start:start + _CHUNK_ROWS]
                if chunk.dtype.kind in "OU":
                    digest.update(_SEP.join(map(str, chunk.tolist())).encode(
                        "utf-8", "surrogatepass"))
                else:
                    digest.update(np.ascontiguousarray(chunk).tobytes())
        meta = (table.rating_range, table.user_features, table.item_features,
                sorted(dict(table.feature_kinds or {}).items()))
        digest.update(repr(meta).encode())
    return digest.hexdigest()
