"""CLI tasks ``retrieval``, ``ranking`` and ``all`` and the ``recommend`` command.

Why here and not in ``tfrec_p5/cli.py``: the CLI keeps a registry of tasks; this module
registers the ones built on ``UnifiedModel`` (``register(cli_module)``), so ``cli.py``
changes by one import and a few options. TensorFlow is imported only inside functions
(``tfrec-p5 --help`` stays fast).

    tfrec-p5 train --task retrieval --data movielens:PATH --out saved_models/ml100k
    tfrec-p5 train --task all --weights rating=1,retrieval=1 --data ... --out ...
    tfrec-p5 recommend --model saved_models/ml100k --user 42 -k 10

* ``retrieval``: two-tower retrieval head (works on implicit feedback: no ratings needed);
  export ``recommend`` (= ``serving_default``) + ``rank``.
* ``ranking``: ranking head (pointwise MSE, or listwise with
  ``--config '{"listwise": "softmax"}'``); export ``rank`` (scored by the ranking MLP).
* ``all``: the unified model with ``--weights`` (default ``rating=1,retrieval=1``);
  export ``recommend``, ``rank``, ``predict_rating``; ``serving_default`` = ``recommend``.

``--top-k`` (default 100) sets how many items ``recommend`` returns; the user's training
items are excluded unless ``--include-seen``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

DEFAULT_WEIGHTS = {"all": {"rating": 1.0, "retrieval": 1.0},
                   "retrieval": {"retrieval": 1.0}, "ranking": {"ranking": 1.0}}
TITLE_COLUMNS = ("movie_title", "title", "item_title")


def _decode(array) -> Any:
    """A ``tf.string`` result → numpy array of ``str`` (UTF-8; ``astype(str)`` is ASCII)."""
    import numpy as np

    values = np.asarray(array)
    return np.vectorize(lambda b: b.decode("utf-8") if isinstance(b, bytes) else str(b),
                        otypes=[object])(values).astype(str) if values.size else \
        values.astype(str)


def parse_weights(spec: str | None) -> dict[str, float]:
    """``"rating=1,retrieval=0.5"`` → ``{"rating": 1.0, "retrieval": 0.5}``."""
    out: dict[str, float] = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError as err:
            raise ValueError(f"bad --weights entry {part!r}; use task=weight, e.g. "
                             "rating=1,retrieval=1") from err
    return out


def _config(task: str, request) -> Any:
    from tfrec_p5.models.unified import UnifiedConfig

    values: dict[str, Any] = {}
    values.update(dict(request.config))
    options = dict(getattr(request, "options", {}) or {})
    weights = dict(DEFAULT_WEIGHTS[task])
    if task == "all" and options.get("weights"):
        weights = parse_weights(options["weights"])
    elif "weights" in values:
        weights = {k: float(v) for k, v in values.pop("weights").items()}
    if task == "ranking" and weights.get("ranking", 0) <= 0:
        raise ValueError("--task ranking needs a positive ranking weight")
    if task == "all" and request.train.rating is None:  # implicit feedback: retrieval only
        weights = {k: v for k, v in weights.items() if k == "retrieval"} or {"retrieval": 1.0}
    values["weights"] = weights
    if request.epochs is not None:
        values["epochs"] = request.epochs
    if request.batch_size is not None:
        values["batch_size"] = request.batch_size
    try:
        return UnifiedConfig.from_dict(values)
    except ValueError as err:
        from tfrec_p5.cli import CliError

        raise CliError(str(err)) from err


def item_titles(table, vocabs) -> list[str] | None:
    """Titles of item rows ``1..I-1`` if the data has a title column, else ``None``."""
    column = next((c for c in TITLE_COLUMNS if c in table.columns), None)
    if column is None:
        return None
    title = dict(zip(table.item_id.tolist(), table.columns[column].astype(str).tolist(),
                     strict=True))
    return [title.get(t, "") for t in vocabs.item.tokens.tolist()]


def build_module(trained, *, k: int = 100, exclude_seen: bool = True,
                 titles: list[str] | None = None):
    """A ``ServingModule`` with every signature the trained heads can back
    (``tfrec_p5.export.unified.unified_module``)."""
    from tfrec_p5.export.unified import unified_module

    return unified_module(trained, k=k, exclude_seen=exclude_seen, titles=titles)


def _train(task: str):
    def train(request):
        from tfrec_p5.cli import TrainResult
        from tfrec_p5.models.unified import train_unified

        config = _config(task, request)
        options = dict(getattr(request, "options", {}) or {})
        trained = train_unified(request.train, request.validation, config,
                                seed=request.seed, verbose=request.verbose,
                                log_dir=request.log_dir, backup_dir=request.backup_dir)
        module = build_module(trained, k=int(options.get("top_k") or 100),
                              exclude_seen=not options.get("include_seen", False),
                              titles=item_titles(request.train, trained.vocabs))
        metadata = {"weights": config.weights, "heads": trained.tasks,
                    "top_k": module.recommend_k, "exclude_seen": module.exclude_seen,
                    "epochs_run": len(trained.history.get("loss", [])),
                    "epoch_seconds": [round(s, 3) for s in trained.epoch_seconds]}
        if trained.rating_range is not None:
            metadata["rating_range"] = list(trained.rating_range)
        return TrainResult(module, config=config.to_dict(), metadata=metadata)
    return train


# ---------------------------------------------------------------------- evaluation
def evaluate_recommend(signatures, table, ks=(10, 100), batch_size: int = 512
                       ) -> dict[str, float]:
    """Recall@K (pooled), NDCG@10 and MRR@k from the ``recommend`` signature's top-k.

    Measures what is served: seen items excluded as exported, unknown users get the
    popularity fallback. K larger than the exported k is skipped.
    """
    import numpy as np
    import tensorflow as tf

    users, inverse = np.unique(table.user_id, return_inverse=True)
    held = [set() for _ in users]
    for row, item in zip(inverse.reshape(-1), table.item_id.tolist(), strict=False):
        held[row].add(item)
    recommend = signatures("recommend")
    hits = {k: 0 for k in ks}
    ndcg, rr, n_targets = [], [], 0
    top_k = None
    for start in range(0, len(users), batch_size):
        out = recommend(user_id=tf.constant(users[start:start + batch_size].astype(object)))
        recs = _decode(out["item_ids"].numpy())
        top_k = recs.shape[1]
        for row, rec in enumerate(recs):
            targets = held[start + row]
            n_targets += len(targets)
            hit = np.array([r in targets for r in rec])
            for k in ks:
                hits[k] += int(hit[:k].sum())
            gains = hit[:10] / np.log2(np.arange(2, min(10, len(rec)) + 2))
            ideal = (1.0 / np.log2(np.arange(2, min(10, len(targets)) + 2))).sum()
            ndcg.append(gains.sum() / ideal)
            first = np.flatnonzero(hit)
            rr.append(1.0 / (first[0] + 1) if len(first) else 0.0)
    out = {f"recall@{k}": hits[k] / max(n_targets, 1) for k in ks if top_k and k <= top_k}
    out["ndcg@10"] = float(np.mean(ndcg)) if ndcg else 0.0
    out[f"mrr@{top_k}"] = float(np.mean(rr)) if rr else 0.0
    return out


def evaluate_rank(signatures, table, batch_size: int = 256) -> dict[str, float]:
    """NDCG@10 of each user's held-out items re-ordered by ``rank`` (gain = rating).

    Users with at least two held-out items. Graded gains over short lists make the number
    high even for a weak order, so compare models with it rather than reading it alone.
    """
    import numpy as np
    import tensorflow as tf

    if table.rating is None:
        return {}
    order = np.argsort(table.user_id, kind="stable")
    users, items, ratings = (table.user_id[order], table.item_id[order],
                             table.rating[order].astype(np.float64))
    starts = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1]
    ends = np.r_[starts[1:], len(users)]
    groups = [(s, e) for s, e in zip(starts, ends, strict=False) if e - s >= 2]
    rank = signatures("rank")
    scores = []
    for b in range(0, len(groups), batch_size):
        chunk = groups[b:b + batch_size]
        width = max(e - s for s, e in chunk)
        lists = np.full((len(chunk), width), "", dtype=object)
        for row, (s, e) in enumerate(chunk):
            lists[row, :e - s] = items[s:e]
        out = rank(user_id=tf.constant(np.array([users[s] for s, _ in chunk], dtype=object)),
                   item_ids=tf.constant(lists))
        ranked = _decode(out["item_ids"].numpy())
        for row, (s, e) in enumerate(chunk):
            gain = dict(zip(items[s:e].tolist(), ratings[s:e].tolist(), strict=False))
            g = np.array([gain.get(i, 0.0) for i in ranked[row] if i])[:10]
            ideal = np.sort(ratings[s:e])[::-1][:10]
            disc = 1.0 / np.log2(np.arange(2, len(g) + 2))
            scores.append(float((g * disc).sum() / (ideal * disc[:len(ideal)]).sum()))
    return {"ndcg@10": float(np.mean(scores)) if scores else 0.0}


def _evaluate(task: str):
    def evaluate(signatures, table) -> dict[str, float]:
        from tfrec_p5.export.scoring import evaluate_signature

        out: dict[str, float] = {}
        if task in ("retrieval", "all"):
            out.update(evaluate_recommend(signatures, table))
        if task == "all" and table.rating is not None:
            try:
                rating = evaluate_signature(signatures("predict_rating"), table)
                out.update({f"rating_{k}": v for k, v in rating.items()})
            except Exception as err:  # noqa: BLE001  implicit-feedback 'all': no rating head
                if "predict_rating" not in str(err):
                    raise
        if task == "ranking":
            out.update(evaluate_rank(signatures, table))
        return out
    return evaluate


# ---------------------------------------------------------------------- recommend command
def add_recommend_parser(sub) -> None:
    """The ``tfrec-p5 recommend`` subcommand (added to ``cli.build_parser``)."""
    p = sub.add_parser("recommend", help="top-k items for a user from an export",
                       description="Call the export's recommend signature; prints item IDs, "
                       "scores and titles when the export stores them. Unknown users get "
                       "the most popular items; a user who has seen almost every item gets "
                       "fewer than -k (seen items are never recommended).")
    p.add_argument("--model", required=True, metavar="DIR",
                   help="saved_models/NAME (latest version) or saved_models/NAME/<version>")
    p.add_argument("--user", required=True, action="append",
                   help="user ID as in the data (repeatable)")
    p.add_argument("-k", "--top-k", type=int, default=10, help="how many items (default 10; "
                   "at most the export's top-k)")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=cmd_recommend)


def cmd_recommend(args: argparse.Namespace) -> int:
    import tensorflow as tf

    from tfrec_p5.cli import CliError
    from tfrec_p5.export.boundary import drop_padding
    from tfrec_p5.export.saved_model import load_export

    loaded, version_dir, meta = load_export(args.model)
    if "recommend" not in loaded.signatures:
        raise CliError(f"export {version_dir} has no 'recommend' signature (it has "
                       f"{sorted(loaded.signatures)})")
    if args.top_k < 1:
        raise CliError("-k must be at least 1")
    out = loaded.signatures["recommend"](user_id=tf.constant(args.user))
    # Padding ("" IDs: fewer unseen items than k) is not an item: it is left out.
    lists = drop_padding(_decode(out["item_ids"].numpy()), out["scores"].numpy(), args.top_k)
    titles = None
    index = getattr(loaded, "retrieval_index", None)
    if index is not None and hasattr(index, "item_titles"):
        tokens = _decode(index.item_tokens.numpy())
        names = _decode(index.item_titles.numpy())
        titles = dict(zip(tokens.tolist(), names.tolist(), strict=False))
    if args.json:
        print(json.dumps({u: [{"item_id": i, "score": s,
                               **({"title": titles.get(i, "")} if titles is not None else {})}
                              for i, s in lists[r]]
                          for r, u in enumerate(args.user)}, allow_nan=False))
        return 0
    for r, user in enumerate(args.user):
        print(f"user {user}:")
        for c, (item, score) in enumerate(lists[r]):
            title = f"  {titles[item]}" if titles is not None and titles.get(item) else ""
            print(f"{c + 1:>4}. {item:<12} {score:>9.4f}{title}")
    sys.stdout.flush()
    return 0


def register(cli) -> None:
    """Register ``retrieval``, ``ranking`` and ``all`` in ``cli``'s task registry."""
    specs: Mapping[str, tuple[str, str]] = {
        "retrieval": ("two-tower top-k retrieval (implicit feedback is enough); signatures "
                      "recommend (default) and rank", "recommend"),
        "ranking": ("ranking head (pointwise MSE or listwise softmax / ListMLE); "
                    "signature rank", "rank"),
        "all": ("unified multi-task model (--weights rating=1,retrieval=1,ranking=0); "
                "recommend, rank, predict_rating", "recommend"),
    }
    for name, (summary, signature) in specs.items():
        cli.register_task(cli.Task(name, summary, train=_train(name),
                                   evaluate=_evaluate(name), signature=signature,
                                   fold_validation=True))
