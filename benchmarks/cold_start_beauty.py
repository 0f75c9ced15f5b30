"""Cold start on Amazon Beauty, part (d): next items that no training sequence holds.

Protocol (per seed ``s``):

* a seeded 10 % of Beauty's items (``default_rng(s).permutation`` of the sorted IDs) are
  *new*: every event on them leaves training and validation, while the catalog (the
  ``Beauty_item2attributes.json`` attributes, ``load_catalog``) still lists them;
* per user, leave-one-out as in ``sequential_beauty.py``: last event → test, second last
  → validation, the rest → training; training keeps only events on the other items;
* *cold test*: users whose test item is new. The input history is their training and
  warm validation events; the target is ranked (a) among the new items only and (b)
  among the whole catalog minus the history. *Cold validation*: users whose validation
  item is new (history: their training events); every model choice was made there;
* the model is ``train_sequential`` with the default ``SequentialConfig`` and the
  catalog (``catalog=``: new items get rows of their own, scored from their attributes
  and left out of the loss), early stopping on the warm validation items, no refit (the
  validation items stay out of training, so cold validation is clean).

References: random order (expected value), attribute popularity (``FeaturePopularity``:
the mean training count of the items sharing an item's attributes), attribute profile
(``FeatureProfile``: cosine between the user's history attribute counts and the item's),
and today's model without a catalog, which puts every new item on the one OOV row that
``next_items`` never returns (HR 0 on the full catalog; random order among new items).
Metrics: HR@10 / NDCG@10 with ties in random order (``expected_ranking_metrics``).

    PYTHONPATH=. .venv/bin/python benchmarks/cold_start_beauty.py --seeds 0 \\
        --arms attributes attributes_drop25 --out benchmarks/results/cold_start_beauty.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

import tfrec_p5  # noqa: F401  (before TensorFlow)
from tfrec_p5 import data
from tfrec_p5.data import Interactions, load_catalog
from tfrec_p5.data.pipeline import user_histories
from tfrec_p5.evaluation import FeaturePopularity, FeatureProfile, expected_ranking_metrics
from tfrec_p5.models.sequential import SequentialConfig, train_sequential

DEFAULT_DATA = "/work/shared/data/amazon/Beauty.txt"
NEW_FRACTION = 0.1
KEYS = ("recall@10", "ndcg@10")
ARMS = {"attributes": {}, "attributes_drop25": {"item_id_dropout": 0.25},
        "attributes_drop50": {"item_id_dropout": 0.5}}


def attribute_matrix(vocab, catalog: Interactions) -> np.ndarray:
    """``[I, F]`` multi-hot attributes by item vocabulary index (row 0 = OOV, empty)."""
    attrs = catalog.columns["item_attributes"]
    rows = vocab.lookup(catalog.item_id)
    out = np.zeros((len(vocab), int(attrs.max()) + 1), np.float32)
    for r, a in zip(rows, attrs, strict=True):
        out[r, a[a >= 0]] = 1.0
    out[0] = 0.0
    return out


def split_cold(table: Interactions, new: np.ndarray):
    split = data.leave_one_out(table)
    def part(t, cold):  # noqa: E306
        return t.take(np.flatnonzero(np.isin(t.item_id, new) == cold))
    return (part(split.train, False), part(split.validation, False),
            part(split.validation, True), part(split.test, False), part(split.test, True))


def evaluate(score_all, vocabs, history: Interactions, held_out: Interactions,
             new_index: np.ndarray, max_len: int) -> dict[str, dict[str, float]]:
    """Cold targets ranked among the new items and among the whole catalog."""
    users, hist = user_histories(history, vocabs, max_len)
    row = {u: i for i, u in enumerate(users.tolist())}
    u_idx = vocabs.user.lookup(held_out.user_id)
    keep = np.array([u in row for u in u_idx.tolist()])
    queries = np.array([row[u] for u in u_idx[keep].tolist()], np.int64)
    targets = vocabs.item.lookup(held_out.item_id)[keep]
    position = {int(i): p for p, i in enumerate(new_index)}
    among_new = expected_ranking_metrics(
        lambda q: score_all(hist[q])[:, new_index], queries,
        np.array([[position[int(t)]] for t in targets]), ks=(10,))

    def full(q):
        s = score_all(hist[q]).astype(np.float64)
        s[:, 0] = -np.inf
        np.put_along_axis(s, hist[q], -np.inf, axis=1)  # history items (0 = padding)
        return s
    among_all = expected_ranking_metrics(full, queries, targets[:, None], ks=(10,))
    return {"new_items": {k: among_new[k] for k in KEYS},
            "catalog": {k: among_all[k] for k in KEYS}, "users": int(keep.sum())}


def run_seed(table: Interactions, catalog: Interactions, seed: int, arms: list[str],
             epochs: int | None) -> dict:
    items = np.unique(table.item_id)
    new = np.sort(np.random.default_rng(seed).permutation(items)[
        :int(round(NEW_FRACTION * len(items)))])
    train, val_warm, val_cold, test_warm, test_cold = split_cold(table, new)
    history_test = Interactions.concat(train, val_warm)
    out = {"new_items": len(new), "train_rows": len(train), "cold_validation_users":
           len(val_cold), "cold_test_users": len(test_cold), "arms": {}, "references": {}}
    config = SequentialConfig(refit=False, max_minutes=None)
    if epochs:
        config = config.replace(epochs=epochs)
    for name in arms:
        t0 = time.perf_counter()
        trained = train_sequential(train, val_warm, config.replace(**ARMS[name]), seed=seed,
                                   catalog=catalog)
        vocabs = trained.vocabs
        new_index = vocabs.item.lookup(new)

        def score_all(h, head=trained.head):
            return head.score_history(np.asarray(h, np.int64)).numpy()
        result = {"validation": evaluate(score_all, vocabs, train, val_cold, new_index,
                                         config.max_len),
                  "test": evaluate(score_all, vocabs, history_test, test_cold, new_index,
                                   config.max_len),
                  "epochs": trained.epochs_run, "best_epoch": trained.best_epoch,
                  "warm_validation": trained.best_metrics,
                  "seconds": round(time.perf_counter() - t0, 1)}
        out["arms"][name] = result
        print(f"seed {seed} {name}: {json.dumps(result)}", flush=True)
    # References on the last arm's vocabulary (the same for every arm: same catalog).
    feats = attribute_matrix(vocabs.item, catalog)
    train_items = vocabs.item.lookup(train.item_id)
    popularity = FeaturePopularity.fit(train_items, feats)
    for part, hist_table, held in (("validation", train, val_cold),
                                   ("test", history_test, test_cold)):
        users, hist = user_histories(hist_table, vocabs, config.max_len)
        profile = FeatureProfile.fit(np.repeat(np.arange(len(users)), config.max_len),
                                     hist.reshape(-1), feats, len(users))
        # FeatureProfile indexes by history row; score_all receives histories, so map
        # each history back to its row through a dictionary of row tuples.
        row_of = {tuple(h): i for i, h in enumerate(hist.tolist())}
        refs = {"random order": lambda h: np.zeros((len(h), len(feats))),
                "attribute popularity": lambda h: np.tile(popularity.item_scores,
                                                          (len(h), 1)),
                "attribute profile": lambda h, p=profile, rows=row_of: p.score(
                    np.array([rows[tuple(r)] for r in h.tolist()]))}
        for name, fn in refs.items():
            out["references"].setdefault(name, {})[part] = evaluate(
                fn, vocabs, hist_table, held, new_index, config.max_len)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--arms", nargs="+", default=["attributes", "attributes_drop25"],
                        choices=sorted(ARMS))
    parser.add_argument("--epochs", type=int, help="cap the epochs (default: the config's)")
    parser.add_argument("--out", default="benchmarks/results/cold_start_beauty.json")
    args = parser.parse_args(argv)
    if not os.path.exists(args.data):
        print(f"no data at {args.data}", file=sys.stderr)
        return 2
    table = data.load(f"amazon:{args.data}")
    catalog = load_catalog(f"amazon:{args.data}").items
    started = time.time()
    runs = {s: run_seed(table, catalog, s, args.arms, args.epochs) for s in args.seeds}
    print(f"\n{'scorer':26s} {'part':10s} {'among':10s} {'HR@10':>8s} {'NDCG@10':>8s}")
    for run in runs.values():
        rows = [(n, r) for n, r in run["arms"].items()] + list(run["references"].items())
        for name, r in rows:
            for part in ("validation", "test"):
                for among in ("new_items", "catalog"):
                    m = r[part][among]
                    print(f"{name:26s} {part:10s} {among:10s} {m['recall@10']:8.4f} "
                          f"{m['ndcg@10']:8.4f}")
    result = {"runs": runs, "command": " ".join(sys.argv), "seconds": round(
        time.time() - started, 1), "machine": platform.platform(),
        "load_at_end": os.getloadavg()}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
