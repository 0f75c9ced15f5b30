"""Does pretraining pay? Rating with few labels, from scratch vs pretrained + fine-tuned.

MovieLens-100K, the exact TFRS 80/20 split (``tfrs_split_seed42.tsv``). Of the 80k
training interactions, every one is visible as an *interaction* (who rated what), but only
a fraction of their *rating values* is visible to the rating task (10 %, 25 %, 100 %;
drawn per seed).

* (a) ``train_rating(visible, None, RatingConfig())``: the rating model from scratch on
  the visible labels, default config (IDs + side features + ``rated_items``/``rated_by``
  implicit features built from the rows it trains on, i.e. the visible ones).
* (b) ``pretrain`` on all training interactions (retrieval on every row + rating on the
  visible labels), then ``finetune`` a fresh rating head on the visible labels.
* (a0, ``--control``) the architecture of (b) with untrained towers (``fresh_backbone``),
  fine-tuned the same way: isolates the effect of the pretrained weights.

Reported: test RMSE on all test rows and on label-cold users (<= 3 visible training
labels), mean ± std over seeds. Retrieval: Recall@10 (``full_ranking_metrics``, all
training items excluded) of a retrieval head fine-tuned from the 25 %-labels backbone vs
the same towers trained from scratch, both on a random 25 % of the training interactions.

Hyper-parameters of (b) (pretraining loss weights, freeze mode, backbone learning rate)
were chosen with ``--select`` on a validation slice (10 % of train, ``random_split(train,
0.9, seed=42)``), never on test.

    .venv/bin/python benchmarks/pretrain_transfer.py --select        # selection only
    .venv/bin/python benchmarks/pretrain_transfer.py --seeds 42 43 44 \
        --fractions 0.1 0.25 1.0 --control
    # -> benchmarks/results/pretrain_transfer.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

import tfrec_p5  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from tfrec_p5 import data
from tfrec_p5.data.interactions import Interactions
from tfrec_p5.models.rating import RatingConfig, train_rating
from tfrec_p5.models.unified import retrieval_metrics
from tfrec_p5.pretraining import (
    FinetuneConfig,
    PretrainConfig,
    finetune,
    fresh_backbone,
    pretrain,
)
from tfrec_p5.tasks.retrieval import history_csr

ML100K = os.environ.get("ML100K", "/work/shared/data/ml-100k")
OUT = os.path.join(os.path.dirname(__file__), "results", "pretrain_transfer.json")
COLD_MAX = 3


def visible_mask(train: Interactions, fraction: float, seed: int) -> np.ndarray:
    if fraction >= 1.0:
        return np.ones(len(train), dtype=bool)
    return np.random.default_rng(1000 + seed).random(len(train)) < fraction


def rmse(pred: np.ndarray, table: Interactions, rows: np.ndarray | None = None) -> float:
    err = pred - table.rating.astype(np.float64)
    if rows is not None:
        if not rows.any():
            return float("nan")
        err = err[rows]
    return float(np.sqrt(np.mean(err ** 2)))


def cold_rows(visible: Interactions, test: Interactions) -> np.ndarray:
    users, counts = np.unique(visible.user_id, return_counts=True)
    n = dict(zip(users.tolist(), counts.tolist(), strict=True))
    return np.array([n.get(u, 0) <= COLD_MAX for u in test.user_id.tolist()])


def run_a(visible: Interactions, test: Interactions, seed: int) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    trained = train_rating(visible, None, RatingConfig(), seed=seed, verbose=0)
    from tfrec_p5.models.rating import predict_ratings

    return predict_ratings(trained.model, test, trained.vocabs), time.perf_counter() - t


def run_b(train: Interactions, mask: np.ndarray, visible: Interactions, test: Interactions,
          seed: int, pcfg: PretrainConfig, fcfg: FinetuneConfig):
    t = time.perf_counter()
    pre = pretrain(train, config=pcfg, rating_mask=mask, seed=seed, verbose=0)
    t_pre = time.perf_counter() - t
    tuned = finetune(pre.backbone, visible, config=fcfg, seed=seed, verbose=0)
    return tuned.predict_ratings(test), t_pre, time.perf_counter() - t - t_pre, pre


def run_control(train: Interactions, visible: Interactions, test: Interactions, seed: int,
                pcfg: PretrainConfig, fcfg: FinetuneConfig):
    t = time.perf_counter()
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    bb = fresh_backbone(train, pcfg)
    tuned = finetune(bb, visible, config=fcfg.replace(freeze="none"), seed=seed, verbose=0)
    return tuned.predict_ratings(test), time.perf_counter() - t


def summary(values: list[float]) -> dict[str, float]:
    arr = np.asarray([v for v in values if not np.isnan(v)], dtype=np.float64)
    if len(arr) == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=0)), "n": int(len(arr))}


# ---------------------------------------------------------------------- selection
def select(train: Interactions, fractions: list[float], log, heads: dict | None = None,
           weights: tuple[float, ...] | None = None,
           freeze: tuple[tuple[str, float], ...] | None = None) -> dict:
    """Pick pretraining weights / freeze mode / backbone LR / head regularization on a
    validation slice of train (never on test)."""
    sl = data.random_split(train, 0.9, seed=42)
    fit, val = sl.train, sl.test
    results = []
    heads = heads or {"default": {}, "no_dot": {"use_dot": False},
                      "bias_l2=1e-3": {"bias_l2": 1e-3},
                      "no_dot+bias_l2=1e-3": {"use_dot": False, "bias_l2": 1e-3}}
    for fraction in fractions:
        mask = visible_mask(fit, fraction, 42)
        visible = fit.take(np.flatnonzero(mask))
        cold = cold_rows(visible, val)
        pred, secs = run_a(visible, val, 42)
        row = {"fraction": fraction, "arm": "a", "val_rmse": rmse(pred, val),
               "val_cold_rmse": rmse(pred, val, cold), "seconds": secs}
        results.append(row)
        log(row)
        for rating_weight in weights or SELECT_RATING_WEIGHTS:
            pcfg = PretrainConfig(weights={"retrieval": 1.0, "rating": rating_weight})
            pre = pretrain(fit, config=pcfg, rating_mask=mask, seed=42, verbose=0)
            for freeze_mode, scale in freeze or SELECT_FREEZE:
                for head, changes in heads.items():
                    fcfg = FinetuneConfig(freeze=freeze_mode, backbone_lr_scale=scale,
                                          rating=RatingConfig(**changes))
                    t = time.perf_counter()
                    tuned = finetune(pre.backbone, visible, config=fcfg, seed=42, verbose=0)
                    pred = tuned.predict_ratings(val)
                    row = {"fraction": fraction, "arm": "b", "rating_weight": rating_weight,
                           "freeze": freeze_mode, "backbone_lr_scale": scale, "head": head,
                           "val_rmse": rmse(pred, val),
                           "val_cold_rmse": rmse(pred, val, cold),
                           "seconds": time.perf_counter() - t}
                    results.append(row)
                    log(row)
    return {"slice": "random_split(train, 0.9, seed=42): 72k fit / 8k validation",
            "runs": results}


SELECT_RATING_WEIGHTS = (0.0, 1.0)
SELECT_FREEZE = (("towers", 0.1), ("embeddings", 0.1))


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 1.0])
    p.add_argument("--select", action="store_true", help="only the validation selection")
    p.add_argument("--select-fractions", type=float, nargs="+", default=[0.1])
    p.add_argument("--select-round", default="selection", help="key of this selection round")
    p.add_argument("--select-weights", type=float, nargs="+", help="pretraining rating "
                   "loss weights to try (retrieval weight 1)")
    p.add_argument("--select-freeze", nargs="+", help="MODE:SCALE entries to try")
    p.add_argument("--select-heads", metavar="JSON", help='{"name": {RatingConfig fields}}')
    p.add_argument("--control", type=float, nargs="*", metavar="FRACTION",
                   help="also run arm a0 (at these label fractions; no value: all)")
    p.add_argument("--no-retrieval", action="store_true")
    p.add_argument("--no-baseline", action="store_true", help="skip arm (a)")
    p.add_argument("--rating-weight", type=float, default=1.0)
    p.add_argument("--freeze", default="towers")
    p.add_argument("--backbone-lr-scale", type=float, default=0.1)
    p.add_argument("--head", default='{"use_dot": false}', metavar="JSON",
                   help="RatingConfig fields of the fine-tuned rating head")
    p.add_argument("--out", default=OUT)
    args = p.parse_args(argv)
    started = time.perf_counter()
    table = data.load(f"movielens:{ML100K}")
    split = data.tfrs_split(table, os.path.join(ML100K, "tfrs_split_seed42.tsv"))
    train, test = split.train, split.test

    def log(obj) -> None:
        print(json.dumps(obj), flush=True)

    result: dict = {
        "command": "python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:]),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPU cores (shared), "
                   f"python {platform.python_version()}",
        "split": "tfrs_split_seed42.tsv (80,000 / 20,000)", "cold_max_labels": COLD_MAX,
    }
    if os.path.exists(args.out):
        with open(args.out, encoding="utf-8") as f:
            previous = json.load(f)
        result = {**previous, **result}
    if args.select:
        freeze = tuple((m, float(x)) for m, _, x in (f.partition(":") for f in
                                                      args.select_freeze or []))
        result[args.select_round] = select(
            train, args.select_fractions, log,
            json.loads(args.select_heads) if args.select_heads else None,
            tuple(args.select_weights) if args.select_weights else None, freeze or None)
        result[args.select_round]["seconds"] = time.perf_counter() - started
        _write(args.out, result)
        return 0

    pcfg = PretrainConfig(weights={"retrieval": 1.0, "rating": args.rating_weight})
    fcfg = FinetuneConfig(freeze=args.freeze, backbone_lr_scale=args.backbone_lr_scale,
                          rating=RatingConfig(**json.loads(args.head)))
    result["config"] = {"pretrain": pcfg.to_dict(), "finetune": fcfg.to_dict(),
                        "baseline": RatingConfig().to_dict()}
    runs = []
    retrieval = []
    for seed in args.seeds:
        for fraction in args.fractions:
            mask = visible_mask(train, fraction, seed)
            visible = train.take(np.flatnonzero(mask))
            cold = cold_rows(visible, test)
            if args.no_baseline:  # (a) measured by another run with the same seeds
                pred_a, sec_a = np.full(len(test), np.nan), 0.0
            else:
                pred_a, sec_a = run_a(visible, test, seed)
            pred_b, sec_pre, sec_ft, pre = run_b(train, mask, visible, test, seed, pcfg, fcfg)
            row = {"seed": seed, "fraction": fraction, "visible_labels": int(mask.sum()),
                   "cold_test_rows": int(cold.sum()),
                   "cold_users": int(len(np.unique(test.user_id[cold]))),
                   "a_rmse": rmse(pred_a, test), "a_cold_rmse": rmse(pred_a, test, cold),
                   "b_rmse": rmse(pred_b, test), "b_cold_rmse": rmse(pred_b, test, cold),
                   "a_seconds": sec_a, "b_pretrain_seconds": sec_pre,
                   "b_finetune_seconds": sec_ft}
            if args.control is not None and (not args.control or fraction in args.control):
                pred_c, sec_c = run_control(train, visible, test, seed, pcfg, fcfg)
                row.update(a0_rmse=rmse(pred_c, test), a0_cold_rmse=rmse(pred_c, test, cold),
                           a0_seconds=sec_c)
            runs.append(row)
            log(row)
            if fraction == 0.25 and not args.no_retrieval:
                retrieval.append(retrieval_run(train, test, pre, seed, log))
            summarize(result, runs, retrieval, args.fractions, started)
            _write(args.out, result)  # after every run: partial results survive a stop
    log({"summary": result["summary"], "wall_seconds": result["wall_seconds"]})
    return 0


def summarize(result: dict, runs: list[dict], retrieval: list[dict],
              fractions: list[float], started: float) -> None:
    result["runs"] = runs
    result["retrieval_25pct"] = retrieval
    table_rows = {}
    for fraction in fractions:
        rows = [r for r in runs if r["fraction"] == fraction]
        if not rows:
            continue
        entry = {k: summary([r[k] for r in rows]) for k in rows[0]
                 if k.endswith("rmse")}
        for key in ("", "_cold"):
            a, b = entry[f"a{key}_rmse"]["mean"], entry[f"b{key}_rmse"]["mean"]
            entry[f"b_vs_a{key}_pct"] = float(100.0 * (a - b) / a) if a == a else None
        table_rows[str(fraction)] = entry
    result["summary"] = table_rows
    if retrieval:
        result["retrieval_summary"] = {k: summary([r[k] for r in retrieval])
                                       for k in retrieval[0] if k.endswith("recall@10")}
    result["wall_seconds"] = time.perf_counter() - started


def retrieval_run(train: Interactions, test: Interactions, pre, seed: int, log) -> dict:
    """Recall@10 with 25 % of the interactions: fine-tuned from the backbone vs scratch."""
    import tensorflow as tf

    sub = train.take(np.flatnonzero(np.random.default_rng(2000 + seed).random(len(train))
                                    < 0.25))
    out = {"seed": seed, "interactions": len(sub)}

    def recall(tuned) -> float:
        seen = history_csr(train, tuned.vocabs)  # all training items excluded
        return retrieval_metrics(tuned.retrieval_scores, test, tuned.vocabs, *seen,
                                 ks=(10,), factorized_ks=())["recall@10"]

    out["backbone_no_finetune_recall@10"] = recall(pre.trained)
    cfg = FinetuneConfig(task="retrieval", epochs=20, patience=2)
    t = time.perf_counter()
    tuned = finetune(pre.backbone, sub, config=cfg, seed=seed, verbose=0)
    out["finetuned_recall@10"] = recall(tuned)
    out["finetuned_seconds"] = time.perf_counter() - t
    tf.keras.utils.set_random_seed(seed)
    t = time.perf_counter()
    scratch = finetune(fresh_backbone(train, pre.config), sub,
                       config=cfg.replace(freeze="none"), seed=seed, verbose=0)
    out["scratch_recall@10"] = recall(scratch)
    out["scratch_seconds"] = time.perf_counter() - t
    log(out)
    return out


def _write(path: str, obj: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    sys.exit(main())
