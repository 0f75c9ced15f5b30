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
import contextlib
import json
import os
import sys

from tfrec_p5.cli.common import flat, format_table, positive_int
from tfrec_p5.cli.registry import CliError, SignatureGetter, get_task, run_evaluate
from tfrec_p5.cli.stream import cmd_evaluate_stream

__all__ = ["add_parsers", "cmd_evaluate", "cmd_inspect", "cmd_predict", "cmd_recommend"]

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


#: How much more of the test part may be training pairs than at training time before
#: ``evaluate`` refuses (repeat events make a few legitimate).
OVERLAP_TOLERANCE = 0.01


def _evaluation_data(args: argparse.Namespace, meta: dict, version_dir: str, info) -> str:
    """The data spec to evaluate on: ``--data``, else the one recorded at training (its
    resolved absolute form when the typed path does not exist from here)."""
    from tfrec_p5.data.sources import parse_spec

    if args.data:
        return args.data
    key = "data"
    if getattr(args, "split", None) is None and meta.get("split") == "none" \
            and meta.get("test_data"):
        key = "test_data"  # trained on all of --data, tested on --test-data
    typed = meta.get(key)
    if not typed:
        raise CliError(f"export {version_dir} does not record the data it was trained on "
                       "(exported from Python?); pass --data, and --split / --seed as "
                       "used in training", status=2)
    resolved = meta.get(f"{key}_resolved") or typed
    path = parse_spec(typed)[1]
    if path and not os.path.exists(path) and resolved != typed:
        print(f"note: {typed!r} does not exist from here; using the path recorded at "
              f"training, {resolved!r}", file=info)
        return resolved
    return typed


def _check_test_rows(record, meta: dict, test, *, same_run: bool, allow_overlap: bool,
                     by_history: bool, info) -> None:
    """Refuse test rows the model trained on; say how many test IDs it does not know."""
    if record is None:
        print("note: the export records no training rows, so whether the test rows were "
              "trained on cannot be checked", file=info)
        return
    share = record.trained_share(test)
    expected = meta.get("test_data_overlap" if meta.get("split") == "none"
                        else "test_overlap") if same_run else None
    expected = float(expected or 0.0)
    if share > expected + OVERLAP_TOLERANCE:
        rows = round(share * len(test))
        message = (f"{rows:,} of {len(test):,} test rows ({share:.1%}) are (user, item) pairs "
                   f"the model trained on (training's own test part had {expected:.1%})")
        if not allow_overlap:
            raise CliError(f"{message}: their metrics would flatter the model. Evaluate on "
                           f"the training run's split (data {meta.get('data')!r}, split "
                           f"{meta.get('split')!r}, seed {meta.get('seed')}) or pass "
                           "--allow-overlap", status=2)
        print(f"warning: {message}; scored anyway (--allow-overlap)", file=info)
    unknown = record.unknown_shares(test)
    if unknown["users"] or unknown["items"]:
        counts = {k: round(v * len(test)) for k, v in unknown.items()}
        print(f"note: unknown to the model: the user of {counts['users']:,} and the item of "
              f"{counts['items']:,} of the {len(test):,} test rows ({unknown['users']:.1%} / "
              f"{unknown['items']:.1%}; scored as unknown IDs: the out-of-vocabulary rows, "
              "or for a rating model's unknown users each item's mean rating)", file=info)
    if unknown["items"] == 1.0 or (not by_history and unknown["users"] == 1.0):
        raise CliError("the test rows share no IDs with the model (every "
                       + ("item" if unknown["items"] == 1.0 else "user")
                       + " is unknown): is --data the data it was trained on?", status=2)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score the test part of ``--data``/``--split``/``--seed`` with the export, after
    checking that those rows are not training rows."""
    from tfrec_p5.data import load, parse_split
    from tfrec_p5.data.fingerprint import table_fingerprint
    from tfrec_p5.export.saved_model import TrainingRecord

    if args.protocol is not None:
        from tfrec_p5.evaluation.signatures import parse_protocol

        try:
            parse_protocol(args.protocol)
        except ValueError as err:
            raise CliError(str(err), status=2) from err
    loaded, version_dir, meta = _load(args.model)
    if meta.get("stream"):
        return cmd_evaluate_stream(args, loaded, version_dir, meta)
    names = meta.get("tasks") or (["rating"] if "predict_rating" in loaded.signatures else [])
    if args.task:
        names = [args.task]
    if not names:
        raise CliError(f"export {version_dir} names no task it was trained for; pass --task",
                       status=2)
    tasks = [get_task(name) for name in names]
    if args.protocol is not None and not any(t.wants_history for t in tasks):
        raise CliError(f"--protocol applies to --task sequential, not {', '.join(names)}",
                       status=2)
    info = sys.stderr if args.json else sys.stdout
    data = _evaluation_data(args, meta, version_dir, info)
    split_spec = args.split or meta.get("split") or "random:0.8"
    seed = args.seed if args.seed is not None else int(meta.get("seed", 42))
    table = load(data)
    recorded = meta.get("data_fingerprint")
    same_data = data in (meta.get("data"), meta.get("data_resolved"), meta.get("test_data"),
                         meta.get("test_data_resolved"))
    if same_data and recorded and table_fingerprint(table) != recorded \
            and meta.get("split") != "none":
        print(f"warning: the data behind {data!r} changed since training (fingerprint "
              f"{recorded} → {table_fingerprint(table)})", file=info)
    split = parse_split(split_spec, table, seed=seed)
    test = table if split is None else split.test
    same_run = same_data and split_spec == meta.get("split") and seed == meta.get("seed")
    _check_test_rows(TrainingRecord.load(version_dir), meta, test, same_run=same_run,
                     allow_overlap=args.allow_overlap,
                     by_history=all(t.wants_history for t in tasks), info=info)
    getter = _signature_getter(loaded, version_dir)
    metrics: dict[str, float | int] = {}
    rows = []
    for task in tasks:
        values = run_evaluate(task, getter, test, () if split is None else
                              (split.train, split.validation), protocol=args.protocol)
        rows.append((f"test ({task.name})" if len(tasks) > 1 else "test", len(test), values))
        # Tasks may name a metric alike (ndcg@10 of recommend and of next_items): a key an
        # earlier task already holds carries the task's name (test_sequential_ndcg@10).
        row = flat("test", len(test), values)
        clash = (set(row) & set(metrics)) - {"test_examples"}
        metrics.update({f"test_{task.name}_{k[len('test_'):]}" if k in clash else k: v
                        for k, v in row.items()})
    if args.json:
        print(json.dumps(metrics, sort_keys=True, allow_nan=False))
    else:
        print(f"model {version_dir}; data {data}, split {split_spec}, seed {seed}")
        print(format_table(rows))
    return 0


def _note_unknown(version_dir: str, users=(), items=()) -> None:
    """One stderr line per ID the model has no training row for (answered from the
    out-of-vocabulary row, or the popularity fallback), when the export records them."""
    import numpy as np

    from tfrec_p5.data.fingerprint import contains, id_hashes
    from tfrec_p5.export.saved_model import TrainingRecord

    record = TrainingRecord.load(version_dir)
    if record is None:
        return
    for kind, ids, known_hashes, fallback in (
            ("user", users, record.users, "answered as for an unknown user"),
            ("item", items, record.items, "scored from the out-of-vocabulary item row")):
        ids = np.asarray(list(ids), dtype=str)
        if not len(ids):
            continue
        for value in ids[~contains(known_hashes, id_hashes(ids, unique=False))]:
            print(f"note: {kind} {str(value)!r} is not in the model's training data; {fallback}",
                  file=sys.stderr)


def cmd_predict(args: argparse.Namespace) -> int:
    """One user's predicted rating of one item."""
    loaded, version_dir, _ = _load(args.model)
    import tensorflow as tf

    _note_unknown(version_dir, [args.user], [args.item])
    signature = _signature_getter(loaded, version_dir)("predict_rating")
    out = signature(user_id=tf.constant([args.user]), item_id=tf.constant([args.item]))
    rating = float(out["rating"].numpy().reshape(-1)[0])
    if args.json:
        print(json.dumps({"user_id": args.user, "item_id": args.item, "rating": rating},
                         allow_nan=False))
    else:
        print(f"{rating:.4f}")
    return 0


def _titles(loaded) -> dict[str, str]:
    """``{item ID: title}`` when the export stores titles (``recommend`` exports)."""
    from tfrec_p5.evaluation.signatures import decode_strings

    index = getattr(loaded, "retrieval_index", None)
    if index is None or not hasattr(index, "item_titles"):
        return {}
    tokens = decode_strings(index.item_tokens.numpy())
    names = decode_strings(index.item_titles.numpy())
    return {t: n for t, n in zip(tokens.tolist(), names.tolist(), strict=False) if n}


def _ranked(loaded, version_dir: str, users: list[str] | None, history: list[str] | None,
            k: int):
    """``(ids [B, <=k], scores [B, <=k])`` from ``recommend`` (``users``) or
    ``next_items`` (``history``); padding (``""``: fewer items than k) is dropped."""
    import tensorflow as tf

    from tfrec_p5.evaluation.signatures import decode_strings
    from tfrec_p5.export.boundary import drop_padding

    name = "next_items" if history is not None else "recommend"
    if name not in loaded.signatures:
        raise CliError(f"export {version_dir} has no {name!r} signature (it has "
                       f"{sorted(loaded.signatures)})"
                       + ("; --history needs a --task sequential export"
                          if history is not None else ""), status=2)
    if history is not None:
        out = loaded.signatures[name](history=tf.constant([history]))
    else:
        out = loaded.signatures[name](user_id=tf.constant(users))
    ids = decode_strings(out["item_ids"].numpy())
    return drop_padding(ids, out["scores"].numpy(), k), ids.shape[1]


def _recommend_all(loaded, version_dir: str, meta: dict, args: argparse.Namespace) -> int:
    """``--all-users --out FILE``: every user of the data, streamed to CSV or Parquet in
    batches with a progress bar, so the table never sits in memory at once."""
    import csv

    import numpy as np
    import tensorflow as tf

    from tfrec_p5.data import load

    data = _evaluation_data(args, meta, version_dir, sys.stderr)
    users = np.unique(load(data).user_id).astype(str)
    parquet = args.out.endswith(".parquet")
    if parquet:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ModuleNotFoundError as err:
            raise CliError("--out FILE.parquet needs pyarrow (pip install "
                           "'tfrec_p5[parquet]'); or write .csv", status=2) from err
    titles = _titles(loaded)
    columns = ["user_id", "rank", "item_id", "score"] + (["title"] if titles else [])
    progress = tf.keras.utils.Progbar(len(users), unit_name="user", verbose=1
                                      if sys.stderr.isatty() else 2)
    tmp = args.out + ".tmp"
    writer = None
    with open(tmp, "w", newline="", encoding="utf-8") if not parquet else \
            contextlib.nullcontext() as fh:
        table_writer = csv.writer(fh) if fh else None
        if table_writer:
            table_writer.writerow(columns)
        for start in range(0, len(users), args.batch_size):
            batch = users[start:start + args.batch_size].tolist()
            ranked, _ = _ranked(loaded, version_dir, batch, None, args.top_k)
            rows = [(u, r + 1, i, s) + ((titles.get(i, ""),) if titles else ())
                    for u, items in zip(batch, ranked, strict=True)
                    for r, (i, s) in enumerate(items)]
            if parquet:
                chunk = pa.table({c: [row[n] for row in rows] for n, c in enumerate(columns)})
                writer = writer or pq.ParquetWriter(tmp, chunk.schema)
                writer.write_table(chunk)
            else:
                table_writer.writerows(rows)
            progress.update(min(start + args.batch_size, len(users)))
    if writer is not None:
        writer.close()
    os.replace(tmp, args.out)  # a killed run leaves FILE.tmp, never a half FILE
    print(f"wrote {args.out}: top-{args.top_k} items for {len(users):,} users of {data}",
          file=sys.stderr)
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    """Top-k items: for each ``--user`` (``recommend``), after a ``--history``
    (``next_items``), or for every user into ``--out`` (``--all-users``); titles shown
    when the export stores them. Seen items are never padded in: a user with fewer unseen
    items gets a shorter list."""
    chosen = [bool(args.user), args.history is not None, args.all_users]
    if sum(chosen) != 1:
        raise CliError("give exactly one of --user, --history or --all-users", status=2)
    if args.all_users != bool(args.out):
        raise CliError("--all-users writes to --out FILE (.csv or .parquet); --out needs "
                       "--all-users", status=2)
    loaded, version_dir, meta = _load(args.model)
    if args.all_users:
        return _recommend_all(loaded, version_dir, meta, args)
    history = [h.strip() for h in args.history.split(",") if h.strip()] \
        if args.history is not None else None
    if args.user:
        _note_unknown(version_dir, users=args.user)
    else:
        _note_unknown(version_dir, items=history)
    ranked, exported_k = _ranked(loaded, version_dir, args.user, history, args.top_k)
    if args.top_k > exported_k:
        print(f"note: the export returns at most {exported_k} items (train --top-k); "
              f"showing at most {exported_k}, not {args.top_k}", file=sys.stderr)
    titles = _titles(loaded)
    keys = args.user or [",".join(history)]
    for key, items in zip(keys, ranked, strict=True):
        if len(items) < min(args.top_k, exported_k):
            print(f"note: {key!r} has {len(items)} unseen items to recommend, fewer than "
                  f"{min(args.top_k, exported_k)}", file=sys.stderr)
    if args.json:
        print(json.dumps({key: [{"item_id": i, "score": s,
                                 **({"title": titles.get(i, "")} if titles else {})}
                                for i, s in items] for key, items in zip(keys, ranked,
                                                                           strict=True)},
                         allow_nan=False))
        return 0
    for key, items in zip(keys, ranked, strict=True):
        print(f"user {key}:" if args.user else f"after {key}:")
        for rank, (item, score) in enumerate(items, 1):
            title = f"  {titles[item]}" if item in titles else ""
            print(f"{rank:>4}. {item:<12} {score:>9.4f}{title}")
    sys.stdout.flush()
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """What an export or a backbone folder holds: signatures with their inputs and
    outputs, the data / split / seed it was trained on, metrics and sizes."""
    path = args.path
    if os.path.isfile(os.path.join(path, "manifest.json")):
        with open(os.path.join(path, "manifest.json"), encoding="utf-8") as fh:
            manifest = json.load(fh)
        report = {"kind": "backbone", "path": path, "bytes": _folder_bytes(path),
                  **{k: manifest.get(k) for k in ("data", "split", "tasks", "weights",
                                                   "epochs", "metrics", "package_version",
                                                   "format_version") if k in manifest}}
    else:
        loaded, version_dir, meta = _load(path)
        signatures = {}
        for name, fn in sorted(loaded.signatures.items()):
            inputs = fn.structured_input_signature[1]
            signatures[name] = {
                "inputs": {k: _spec(v) for k, v in inputs.items()},
                "outputs": {k: _spec(v) for k, v in fn.structured_outputs.items()}}
        report = {"kind": "export", "path": version_dir, "bytes": _folder_bytes(version_dir),
                  "signatures": signatures,
                  **{k: meta.get(k) for k in ("tasks", "served", "data", "data_resolved",
                                               "split", "seed", "test_data", "vocab_sizes",
                                               "rating_range", "metrics", "training_data",
                                               "package_version", "tensorflow_version",
                                               "created_utc") if meta.get(k) is not None}}
    if args.json:
        print(json.dumps(report, sort_keys=True, allow_nan=False))
        return 0
    for key, value in report.items():
        if key == "signatures":
            print("signatures:")
            for name, spec in value.items():
                ins = ", ".join(f"{k}: {v}" for k, v in spec["inputs"].items())
                outs = ", ".join(f"{k}: {v}" for k, v in spec["outputs"].items())
                print(f"  {name}({ins}) -> {outs}")
        elif key == "metrics" and isinstance(value, dict):
            print("metrics:")
            for name, number in sorted(value.items()):
                print(f"  {name:<28} {number:.4f}" if isinstance(number, float)
                      else f"  {name:<28} {number}")
        else:
            print(f"{key}: {value:,}" if isinstance(value, int) else f"{key}: {value}")
    return 0


def _spec(tensor) -> str:
    """``"string[None, 10]"``; ``"string[?]"`` for an input of unchecked rank (the
    signature checks its shape itself)."""
    shape = tensor.shape.as_list() if tensor.shape.rank is not None else "[?]"
    return f"{tensor.dtype.name}{shape}"


def _folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f))
               for root, _, files in os.walk(path) for f in files)


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
    p.add_argument("--allow-overlap", action="store_true", help="score test rows even when "
                   "they are (user, item) pairs the model trained on (refused by default: "
                   "their metrics flatter the model)")
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

    p = sub.add_parser("recommend", help="top-k items for a user, a history or every user",
                       description="Call the export's recommend signature (--user, "
                       "--all-users) or next_items (--history); prints item IDs, scores and "
                       "titles when the export stores them. The user's training items are "
                       "never returned (a list may be shorter than -k). Unknown users get "
                       "the most popular items.")
    p.add_argument("--model", required=True, metavar="DIR", help=MODEL_HELP)
    p.add_argument("--user", action="append", help="user ID as in the data (repeatable)")
    p.add_argument("--history", metavar="ITEM,ITEM,...", help="a sequential export's "
                   "next items after these items (oldest first)")
    p.add_argument("--all-users", action="store_true", help="every user of --data (default: "
                   "the training data) into --out")
    p.add_argument("--data", metavar="SPEC", help="--all-users: whose users to score")
    p.add_argument("--out", metavar="FILE", help="--all-users: write user_id, rank, item_id, "
                   "score[, title] rows to FILE.csv or FILE.parquet")
    p.add_argument("--batch-size", type=positive_int, default=1024, help="--all-users: users "
                   "per signature call (default 1024)")
    p.add_argument("-k", "--top-k", type=positive_int, default=10, help="how many items "
                   "(default 10; at most the export's top-k)")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("inspect", help="what an export or backbone holds",
                       description="Print an export's signatures (inputs and outputs), the "
                       "data, split and seed it was trained on, its metrics and sizes; or a "
                       "backbone folder's manifest.")
    p.add_argument("path", metavar="MODEL_OR_BACKBONE", help=MODEL_HELP + ", or a backbone "
                   "folder (holds manifest.json)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_inspect)
