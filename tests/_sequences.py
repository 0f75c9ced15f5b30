"""Tiny sequential data with a planted rule, shared by the sequence tests.

Each user walks the item ring ``i0 → i1 → … → i{n-1} → i0`` from a random start, one step
per timestamp, so "next item = current item + 1" is learnable and checkable.
"""

from __future__ import annotations

import numpy as np

from tfrec_p5.data import Interactions


def cyclic_interactions(num_users: int = 160, num_items: int = 40, length: int = 9,
                        seed: int = 0, ratings: bool = False) -> Interactions:
    """``num_users`` × ``length`` events on a ring of ``num_items`` items (optional ratings)."""
    rng = np.random.default_rng(seed)
    users, items, ts = [], [], []
    for u in range(num_users):
        start = rng.integers(num_items)
        for t in range(length):
            users.append(f"u{u}")
            items.append(f"i{(start + t) % num_items}")
            ts.append(t)
    columns = {"user_id": users, "item_id": items, "timestamp": ts}
    if ratings:
        columns["rating"] = rng.integers(1, 6, len(users)).astype(np.float32)
    return Interactions.from_columns(columns)
