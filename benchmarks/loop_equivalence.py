"""Does moving every ``model.fit`` into one training loop move any number? (No.)

Why: the trainers (``train_rating``, ``train_unified``, ``train_sequential``, ``pretrain``,
``finetune``) used to assemble their own callbacks around ``model.fit``; now they all call
``tfrec_p5.training.loop``. A refactor like that must not change what is learned, so this
script trains every trainer on tiny data with bit-reproducible settings (oneDNN off before
TensorFlow is imported, TF op determinism, fixed seeds) and records the metrics under a
*phase* name. Run it once on the code before the change and once after:

    PYTHONPATH=. .venv/bin/python benchmarks/loop_equivalence.py --phase before
    PYTHONPATH=. .venv/bin/python benchmarks/loop_equivalence.py --phase after
    # -> benchmarks/results/loop_equivalence.json {"before": {...}, "after": {...}}

Each phase prints the table of its metrics against ``before`` (``|diff|``). A trainer that
accepts ``backup_dir`` runs with one (as the command line does), so the comparison also
covers the resume machinery of an uninterrupted run; ``rating_refit`` and
``unified_all`` also run without one.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import tempfile
import time

os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"  # must precede the TensorFlow import
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

# isort: off
import tfrec_p5  # noqa: E402, F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf  # noqa: E402
# isort: on

from tfrec_p5 import data  # noqa: E402
from tfrec_p5.data import Interactions  # noqa: E402
from tfrec_p5.models.rating import RatingConfig, train_rating  # noqa: E402
from tfrec_p5.models.sequential import (  # noqa: E402
    SequentialConfig,
    ranking_metrics,
    ranking_queries,
    train_sequential,
)
from tfrec_p5.models.unified import UnifiedConfig, train_unified  # noqa: E402
from tfrec_p5.pretraining import (  # noqa: E402
    FinetuneConfig,
    PretrainConfig,
    finetune,
    pretrain,
)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                   "loop_equivalence.json")
RATINGS = "synthetic?num_users=200&num_items=120&num_interactions=6000"
SEQ_SMALL = dict(embedding_dim=16, max_len=8, num_blocks=1, dropout=0.1,
                 learning_rate=5e-3, batch_size=32, steps_per_execution=4,
                 max_minutes=None)


def ring(num_users: int = 120, num_items: int = 40, length: int = 8, seed: int = 0,
         ratings: bool = False, noise: float = 0.0) -> Interactions:
    """Users walking an item ring (next item = current + 1): learnable in seconds;
    ``noise``: the share of steps that jump to a random item instead."""
    rng = np.random.default_rng(seed)
    users, items, ts = [], [], []
    for u in range(num_users):
        item = rng.integers(num_items)
        for t in range(length):
            users.append(f"u{u}")
            items.append(f"i{item}")
            ts.append(t)
            item = rng.integers(num_items) if rng.random() < noise else (item + 1) % num_items
    columns = {"user_id": users, "item_id": items, "timestamp": ts}
    if ratings:
        columns["rating"] = rng.integers(1, 6, len(users)).astype(np.float32)
    return Interactions.from_columns(columns)


def _accepts_backup(fn) -> bool:
    return "backup_dir" in inspect.signature(fn).parameters


def _backup(fn, use: bool) -> dict:
    """``{"backup_dir": fresh folder}`` when ``fn`` takes one and ``use``, else ``{}``."""
    return {"backup_dir": tempfile.mkdtemp(prefix="loop-eq-")} \
        if use and _accepts_backup(fn) else {}


def _history(history, keys) -> dict[str, float]:
    """Selected per-epoch history values as ``{key[i]: value}``."""
    out = {}
    if isinstance(history, list):  # sequential: a record per epoch
        for i, record in enumerate(history):
            for key in keys:
                if key in record:
                    out[f"{key}[{i}]"] = float(record[key])
        return out
    for key in keys:
        for i, value in enumerate(history.get(key, [])):
            out[f"{key}[{i}]"] = float(value)
    return out


def _split():
    table = data.load(RATINGS)
    return data.random_split(table, 0.8, seed=42)


def case_rating(backup: bool, **changes) -> dict[str, float]:
    split = _split()
    config = RatingConfig(epochs=5, patience=2, refit=True, embedding_dim=8,
                          hidden_units=(16,), history_len=16, batch_size=256,
                          steps_per_execution=4).replace(**changes)
    trained = train_rating(split.train, None, config, seed=7, verbose=0,
                           **_backup(train_rating, backup))
    return {**{f"test_{k}": v for k, v in trained.evaluate(split.test).items()},
            "stopped_epoch": trained.stopped_epoch,
            **_history(trained.history, ("search_val_rmse", "loss"))}


def case_unified(weights: dict[str, float], backup: bool, **changes) -> dict[str, float]:
    split = _split()
    config = UnifiedConfig(**{**dict(weights=weights, epochs=3, embedding_dim=16,
                                     batch_size=256, steps_per_execution=4), **changes})
    trained = train_unified(split.train, None, config, seed=7, verbose=0,
                            **_backup(train_unified, backup))
    metrics = trained.evaluate(split.test, ks=(10,), factorized_ks=(10,))
    keys = [k for k in trained.history if k.endswith(("loss", "rmse", "recall@10"))]
    return {**{f"test_{k}": v for k, v in metrics.items()}, **_history(trained.history, keys)}


def case_sequential(backup: bool, noise: float = 0.0, **changes) -> dict[str, float]:
    split = data.leave_one_out(ring(noise=noise))
    config = SequentialConfig(**{**dict(epochs=6, patience=2, refit=True, **SEQ_SMALL),
                                 **changes})
    trained = train_sequential(split.train, split.validation, config, seed=3,
                               **_backup(train_sequential, backup))
    history = Interactions.concat(split.train, split.validation)
    queries = ranking_queries(history, split.test, trained.vocabs, config.max_len)
    test = ranking_metrics(trained.head, queries, ks=(10,))
    return {**{f"test_{k}": v for k, v in test.items()},
            **{f"best_val_{k}": v for k, v in trained.best_metrics.items()},
            "best_epoch": trained.best_epoch, "epochs_run": trained.epochs_run,
            **_history(trained.history, ("loss", "val_ndcg@10"))}


_BACKBONES: dict[str, object] = {}


def case_pretrain(backup: bool) -> dict[str, float]:
    split = _split()
    config = PretrainConfig(epochs=3, embedding_dim=8, batch_size=256,
                            steps_per_execution=4, history_len=16)
    pre = pretrain(split.train, config=config, validation=split.test, seed=7, verbose=0,
                   held_out_name="test", **_backup(pretrain, backup))
    _BACKBONES["pairs"] = pre.backbone
    return {**pre.metrics, **_history(pre.trained.history, ("loss", "val_loss"))}


def case_finetune_rating(backup: bool) -> dict[str, float]:
    split = _split()
    config = FinetuneConfig(epochs=5, patience=2, batch_size=256, steps_per_execution=4)
    tuned = finetune(_BACKBONES["pairs"], split.train, task="rating", config=config,
                     seed=7, verbose=0, **_backup(finetune, backup))
    metrics = tuned.evaluate(split.test, ks=(10,), factorized_ks=())
    return {**{f"test_{k}": v for k, v in metrics.items()},
            **_history(tuned.history, ("search_val_rmse", "loss"))}


def case_finetune_retrieval(backup: bool) -> dict[str, float]:
    split = _split()
    config = FinetuneConfig(epochs=4, patience=1, batch_size=256, steps_per_execution=4)
    tuned = finetune(_BACKBONES["pairs"], split.train, task="retrieval", config=config,
                     seed=7, verbose=0, **_backup(finetune, backup))
    metrics = tuned.evaluate(split.test, ks=(10,), factorized_ks=())
    return {**{f"test_{k}": v for k, v in metrics.items()},
            **_history(tuned.history, ("search_val_recall@10", "loss"))}


def case_pretrain_next_item(backup: bool) -> dict[str, float]:
    split = data.leave_one_out(ring(ratings=True))
    config = PretrainConfig(tasks=("retrieval", "rating", "next_item"), epochs=3,
                            embedding_dim=16, batch_size=128, steps_per_execution=4,
                            history_len=0, use_side_features=False,
                            sequential=SequentialConfig(**SEQ_SMALL))
    pre = pretrain(split.train, config=config, validation=split.validation, seed=7,
                   verbose=0, **_backup(pretrain, backup))
    _BACKBONES["next_item"] = pre.backbone
    return {**pre.metrics, **_history(pre.trained.history, ("loss", "next_item_loss"))}


def case_finetune_next_item(backup: bool) -> dict[str, float]:
    table = ring(ratings=True)
    split = data.leave_one_out(table)
    train = Interactions.concat(split.train, split.validation)
    config = FinetuneConfig(task="next_item", epochs=6, patience=2, steps_per_execution=4,
                            sequential=SequentialConfig(**SEQ_SMALL))
    tuned = finetune(_BACKBONES["next_item"], train, config=config, seed=7, verbose=0,
                     **_backup(finetune, backup))
    queries = ranking_queries(train, split.test, tuned.vocabs, tuned.head.max_len)
    test = ranking_metrics(tuned.head, queries, ks=(10,))
    return {**{f"test_{k}": v for k, v in test.items()},
            **{f"best_val_{k}": v for k, v in tuned.best_metrics.items()},
            "best_epoch": tuned.best_epoch, "epochs_run": tuned.epochs_run,
            **_history(tuned.history, ("loss", "val_ndcg@10"))}


CASES = {
    "rating_refit": lambda: case_rating(False),
    "rating_refit_backup": lambda: case_rating(True),
    "rating_stop": lambda: case_rating(True, refit=False, patience=1, epochs=12,
                                       learning_rate=0.01),
    "unified_retrieval": lambda: case_unified({"retrieval": 1.0}, True),
    "unified_all": lambda: case_unified({"rating": 1.0, "retrieval": 1.0}, False,
                                        validation_fraction=0.1, patience=2,
                                        refit=True),
    "unified_all_backup": lambda: case_unified({"rating": 1.0, "retrieval": 1.0}, True,
                                               validation_fraction=0.1, patience=2,
                                               refit=True),
    "unified_retrieval_stop": lambda: case_unified(
        {"retrieval": 1.0}, True, validation_fraction=0.1, patience=1, refit=True,
        epochs=5),
    "sequential_refit": lambda: case_sequential(True),
    "sequential_stop": lambda: case_sequential(True, noise=0.5, refit=False, epochs=15,
                                               patience=1, min_epochs=3),
    "pretrain": lambda: case_pretrain(True),
    "finetune_rating": lambda: case_finetune_rating(True),
    "finetune_retrieval": lambda: case_finetune_retrieval(True),
    "pretrain_next_item": lambda: case_pretrain_next_item(True),
    "finetune_next_item": lambda: case_finetune_next_item(True),
}


def run(phase: str) -> dict:
    results = {}
    for name, case in CASES.items():
        started = time.perf_counter()
        metrics = {k: float(v) for k, v in case().items()}
        results[name] = {"metrics": metrics,
                         "seconds": round(time.perf_counter() - started, 1)}
        print(f"{phase}: {name} done in {results[name]['seconds']} s", file=sys.stderr,
              flush=True)
    return results


def table(before: dict, now: dict, phase: str) -> str:
    """One row per case: metric count, the largest |diff| against ``before``, headline."""
    lines = [f"{'case':<22}{'metrics':>8}{'max |diff|':>12}  headline ({phase} vs before)"]
    worst = 0.0
    for name, result in now.items():
        ours = result["metrics"]
        ref = before.get(name, {}).get("metrics")
        if ref is None:
            lines.append(f"{name:<22}{len(ours):>8}{'-':>12}  (no 'before' record)")
            continue
        keys = sorted(set(ref) | set(ours))
        diffs = [abs(ours[k] - ref[k]) if k in ours and k in ref else float("inf")
                 for k in keys]
        diff = max(diffs) if diffs else 0.0
        worst = max(worst, diff)
        head = next((k for k in keys if k.startswith("test_") and k in ours and k in ref),
                    keys[0])
        lines.append(f"{name:<22}{len(keys):>8}{diff:>12.2e}  {head} "
                     f"{ref.get(head, float('nan')):.6f} -> {ours.get(head, float('nan')):.6f}")
    lines.append(f"largest |diff| over every metric: {worst:.2e}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase", default="after", help="record name (before, after, ...)")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    tf.config.experimental.enable_op_determinism()
    record = {}
    if os.path.exists(args.out):
        with open(args.out, encoding="utf-8") as fh:
            record = json.load(fh)
    record[args.phase] = run(args.phase)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(record, fh, indent=1, sort_keys=True)
    print(table(record.get("before", record[args.phase]), record[args.phase], args.phase))
    return 0


if __name__ == "__main__":
    sys.exit(main())
