"""Write a large synthetic rating log as Parquet shards, chunk by chunk (for streaming runs).

    .venv/bin/python benchmarks/_parquet_log.py /tmp/log100m --rows 100_000_000

Why not ``data.load("synthetic")``: that builds the whole table in memory (string IDs),
which is what a streamed run must never need. Here every chunk of ``--chunk`` rows is
drawn and written on its own, from factors shared by all chunks:

* users ``u0..``, activity log-normal; items ``i0..``, popularity Zipf(1.0);
* rating = clip(round(3.6 + b_u + b_i + 2·p_u·q_i + ε), 1, 5), ε ~ N(0, 0.5²), factors
  ``p, q ~ N(0, I/8)``, biases ~ N(0, 0.3²) (the built-in generator's rating story,
  without its candidate pick);
* IDs are written as int64 (``--string-ids``: ``"u123"`` / ``"i45"`` strings).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

DIM = 8


def write_log(directory: str, rows: int, *, users: int | None = None,
              items: int | None = None, chunk: int = 5_000_000, row_group: int = 500_000,
              seed: int = 0, string_ids: bool = False) -> dict:
    """Write ``rows`` ratings into ``directory/part-NNNNN.parquet``; return its sizes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    users = users or max(1000, rows // 50)
    items = items or max(500, min(rows // 200, 1_000_000))
    rng = np.random.default_rng(seed)
    p = rng.normal(0, 1 / np.sqrt(DIM), (users, DIM)).astype(np.float32)
    q = rng.normal(0, 1 / np.sqrt(DIM), (items, DIM)).astype(np.float32)
    bu, bi = rng.normal(0, 0.3, users), rng.normal(0, 0.3, items)
    activity = np.cumsum(rng.lognormal(0, 1, users))
    activity /= activity[-1]
    popularity = np.cumsum(1.0 / np.arange(1, items + 1))
    popularity /= popularity[-1]
    item_order = rng.permutation(items)  # popularity is not ID order
    os.makedirs(directory, exist_ok=True)
    start = time.perf_counter()
    for part, first in enumerate(range(0, rows, chunk)):
        n = min(chunk, rows - first)
        u = np.minimum(np.searchsorted(activity, rng.random(n)), users - 1)
        i = item_order[np.minimum(np.searchsorted(popularity, rng.random(n)), items - 1)]
        score = 3.6 + bu[u] + bi[i] + 2 * np.einsum("nd,nd->n", p[u], q[i]) \
            + rng.normal(0, 0.5, n)
        rating = np.clip(np.round(score), 1, 5).astype(np.float32)
        if string_ids:
            columns = {"user_id": np.char.add("u", u.astype(str)),
                       "item_id": np.char.add("i", i.astype(str))}
        else:
            columns = {"user_id": u.astype(np.int64), "item_id": i.astype(np.int64)}
        pq.write_table(pa.table({**columns, "rating": rating}),
                       os.path.join(directory, f"part-{part:05d}.parquet"),
                       row_group_size=row_group)
    return {"rows": rows, "users": users, "items": items,
            "write_seconds": round(time.perf_counter() - start, 1),
            "bytes": sum(os.path.getsize(os.path.join(directory, f))
                         for f in os.listdir(directory))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory")
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--users", type=int)
    parser.add_argument("--items", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--string-ids", action="store_true")
    args = parser.parse_args()
    print(write_log(args.directory, args.rows, users=args.users, items=args.items,
                    seed=args.seed, string_ids=args.string_ids))


if __name__ == "__main__":
    main()
