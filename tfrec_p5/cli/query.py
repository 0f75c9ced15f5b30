"""``tfrec-p5 evaluate``, ``predict`` and ``recommend``: questions asked of an export.

Each command loads ``OUT`` (its latest version) or ``OUT/<version>`` with
``load_export`` (digests checked) and calls the export's own signatures, so the answers
are what TF Serving would give.

    tfrec-p5 evaluate --model saved_models/demo --json
    tfrec-p5 predict --model saved_models/demo --user u1 --item i1
    tfrec-p5 recommend --model saved_models/ml100k --user 42 -k 10
"""

from __future__ import annotations

import argparse
import json
import sys

from tfrec_p5.cli.common import flat, format_table
from tfrec_p5.cli.registry import CliError, SignatureGetter, get_task, run_evaluate

__all__ = ["add_parsers"]

MODEL_HELP = "saved_models/NAME (latest version) or saved_models/NAME/<version>"


def _load(model_path: str):
    from tfrec_p5.export.saved_model import load_export

    return load_export(model_path)


def _signature_getter(loaded, version_dir: str) -> SignatureGetter:
    def get(name: str):
        if name not in loaded.signatures:
            raise CliError(f"export {version_dir} has no {name!r} signature (it has "
                           f"{sorted(loaded.signatures)})")
        return loaded.signatures[name]
    return get


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score the test part of ``--data``/``--split``/``--seed`` with the export."""
    loaded, version_dir, meta = _load(args.model)
    names = meta.get("tasks") or (["rating"] if "predict_rating" in loaded.signatures else [])
    if args.task:
        names = [args.task]
    if not names:
        raise CliError(f"export {version_dir} names no task it was trained for; pass --task")
    default_data = meta.get("data") or "synthetic"
    if args.split is None and meta.get("split") == "none" and meta.get("test_data"):
        default_data = meta["test_data"]  # trained on all of --data, tested on --test-data
    data = args.data or default_data
    split_spec = args.split or meta.get("split") or "random:0.8"
    seed = args.seed if args.seed is not None else int(meta.get("seed", 42))
    from tfrec_p5.data import load, parse_split

    table = load(data)
    split = parse_split(split_spec, table, seed=seed)
    test = table if split is None else split.test
    getter = _signature_getter(loaded, version_dir)
    metrics: dict[str, float | int] = {}
    rows = []
    for name in names:
        values = run_evaluate(get_task(name), getter, test, () if split is None else
                              (split.train, split.validation), protocol=args.protocol)
        rows.append((f"test ({name})" if len(names) > 1 else "test", len(test), values))
        metrics.update(flat("test", len(test), values))
    if args.json:
        print(json.dumps(metrics, sort_keys=True))
    else:
        print(f"model {version_dir}; data {data}, split {split_spec}, seed {seed}")
        print(format_table(rows))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """One user's predicted rating of one item."""
    loaded, version_dir, _ = _load(args.model)
    import tensorflow as tf

    signature = _signature_getter(loaded, version_dir)("predict_rating")
    out = signature(user_id=tf.constant([args.user]), item_id=tf.constant([args.item]))
    rating = float(out["rating"].numpy().reshape(-1)[0])
    if args.json:
        print(json.dumps({"user_id": args.user, "item_id": args.item, "rating": rating}))
    else:
        print(f"{rating:.4f}")
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    """The top-k items of ``recommend`` for each ``--user``, with titles if exported."""
    import numpy as np
    import tensorflow as tf

    from tfrec_p5.evaluation.signatures import decode_strings

    loaded, version_dir, meta = _load(args.model)
    if "recommend" not in loaded.signatures:
        raise CliError(f"export {version_dir} has no 'recommend' signature (it has "
                       f"{sorted(loaded.signatures)})")
    if args.top_k < 1:
        raise CliError("-k must be at least 1")
    out = loaded.signatures["recommend"](user_id=tf.constant(args.user))
    ids = decode_strings(out["item_ids"].numpy())[:, :args.top_k]
    scores = out["scores"].numpy()[:, :args.top_k]
    titles = None
    index = getattr(loaded, "retrieval_index", None)
    if index is not None and hasattr(index, "item_titles"):
        tokens = decode_strings(index.item_tokens.numpy())
        names = decode_strings(index.item_titles.numpy())
        lookup = dict(zip(tokens.tolist(), names.tolist(), strict=False))
        titles = np.vectorize(lambda i: lookup.get(i, ""), otypes=[object])(ids)
    if args.json:
        print(json.dumps({u: [{"item_id": i, "score": float(s),
                               **({"title": titles[r][c]} if titles is not None else {})}
                              for c, (i, s) in enumerate(zip(ids[r], scores[r], strict=False))]
                          for r, u in enumerate(args.user)}))
        return 0
    for r, user in enumerate(args.user):
        print(f"user {user}:")
        for c, (item, score) in enumerate(zip(ids[r], scores[r], strict=False)):
            title = f"  {titles[r][c]}" if titles is not None and titles[r][c] else ""
            print(f"{c + 1:>4}. {item:<12} {score:>9.4f}{title}")
    sys.stdout.flush()
    return 0


def add_parsers(sub, task_names: list[str]) -> None:
    """Add ``evaluate``, ``predict`` and ``recommend`` to ``tfrec-p5``'s subparsers."""
    p = sub.add_parser("evaluate", help="recompute test metrics from an export",
                       description="Score the test part of --data/--split/--seed with the "
                       "export's signatures. Missing options default to those recorded in the "
                       "export's metadata.")
    p.add_argument("--model", required=True, metavar="DIR", help=MODEL_HELP)
    p.add_argument("--data", metavar="SPEC", help="data spec (default: the training data)")
    p.add_argument("--split", metavar="SPEC", help="split spec; 'none' scores all of --data "
                   "(default: the training split)")
    p.add_argument("--seed", type=int, help="split seed (default: the training seed)")
    p.add_argument("--task", choices=task_names, help="default: the export's tasks")
    p.add_argument("--protocol", metavar="P", help="--task sequential: full (rank among all "
                   "items), sampled:99 (P5 direct: 1 + 99 negatives, seed 2022) or all "
                   "(default)")
    p.add_argument("--json", action="store_true", help="print one JSON object metric → value")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="predict one user's rating of one item",
                       description="Call the export's predict_rating signature for one pair; "
                       "unknown IDs use the out-of-vocabulary rows.")
    p.add_argument("--model", required=True, metavar="DIR", help=MODEL_HELP)
    p.add_argument("--user", required=True, help="user ID as in the data, e.g. u1")
    p.add_argument("--item", required=True, help="item ID as in the data, e.g. i1")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("recommend", help="top-k items for a user from an export",
                       description="Call the export's recommend signature; prints item IDs, "
                       "scores and titles when the export stores them. Unknown users get "
                       "the most popular items.")
    p.add_argument("--model", required=True, metavar="DIR", help=MODEL_HELP)
    p.add_argument("--user", required=True, action="append",
                   help="user ID as in the data (repeatable)")
    p.add_argument("-k", "--top-k", type=int, default=10, help="how many items (default 10; "
                   "at most the export's top-k)")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=cmd_recommend)
