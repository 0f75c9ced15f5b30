"""Does pretraining pay? Rating with few labels, from scratch vs pretrained + fine-tuned.

MovieLens-100K, the exact TFRS 80/20 split (``tfrs_split_seed42.tsv``). Of the 80k
training interactions, every one is visible as an *interaction* (who rated what), but only
a fraction of their *rating values* is visible to the rating task (10 %, 25 %, 100 %;
drawn per seed).

* (a) ``train_rating(visible, None, RatingConfig())``: the rating model from scratch on
  the visible labels, default config (IDs + side features + ``rated_items``/``rated_by``
  implicit features built from the rows it trains on, i.e. the visible ones).
* (b) ``pretrain`` on all training interactions (retrieval on every row + rating on the
  visible labels; implicit ``rated_items`` / ``rated_by`` features from every row), then
  ``finetune`` a fresh rating head on the visible labels (library defaults: ``freeze=
  "auto"``, bias prior of 3 labels, no dot term).
* (a0, ``--control``) the architecture of (b) with untrained towers (``fresh_backbone``),
  fine-tuned the same way: isolates the effect of the pretrained weights.

Reported: test RMSE on all test rows and on label-cold users (<= 3 visible training
labels), mean ± std over seeds. Retrieval: Recall@10 (``full_ranking_metrics``, all
training items excluded) of a retrieval head fine-tuned from the 25 %-labels backbone vs
the same towers trained from scratch, both on a random 25 % of the training interactions.

``--next-item``: sequential transfer on ML-100K leave-one-out — a next-item model
fine-tuned from a retrieval + rating + next_item backbone vs from scratch vs from a
backbone without next_item (``next_item_run``).

Hyper-parameters of (b) (pretraining loss weights, implicit features, freeze mode, bias
prior) were chosen with ``--select`` on a validation slice (10 % of train,
``random_split(train, 0.9, seed=42)``), never on test.

    .venv/bin/python benchmarks/pretrain_transfer.py --select --select-fractions 0.1 \
        --select-pretrains '{"r1_hist": {"history_len": 128}}' \
        --select-finetunes '{"towers_p3": {"bias_prior": 3}}'      # selection only
    .venv/bin/python benchmarks/pretrain_transfer.py --seeds 42 43 44 \
        --fractions 0.1 0.25 1.0 --control 0.1 0.25
    .venv/bin/python benchmarks/pretrain_transfer.py --next-item --seeds 42 43 44
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
    return (tuned.predict_ratings(test), t_pre, time.perf_counter() - t - t_pre, pre,
            tuned.finetune_config.freeze, tuned)


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
def select(train: Interactions, fractions: list[float], log,
           pretrains: dict[str, dict] | None = None,
           finetunes: dict[str, dict] | None = None, baseline: bool = True) -> dict:
    """Try pretraining configs x fine-tuning configs on a validation slice of train (never
    on test): ``pretrains`` / ``finetunes`` map a name to ``PretrainConfig`` /
    ``FinetuneConfig`` changes (``"rating"``: ``RatingConfig`` fields of the head)."""
    sl = data.random_split(train, 0.9, seed=42)
    fit, val = sl.train, sl.test
    results = []
    pretrains = pretrains or {"r1": {}}
    finetunes = finetunes or {"towers": {}}
    for fraction in fractions:
        mask = visible_mask(fit, fraction, 42)
        visible = fit.take(np.flatnonzero(mask))
        cold = cold_rows(visible, val)
        if baseline:
            pred, secs = run_a(visible, val, 42)
            row = {"fraction": fraction, "arm": "a", "val_rmse": rmse(pred, val),
                   "val_cold_rmse": rmse(pred, val, cold), "val_cold_rows": int(cold.sum()),
                   "seconds": secs}
            results.append(row)
            log(row)
        for pname, pchanges in pretrains.items():
            pcfg = PretrainConfig.from_dict({**PRETRAIN_DEFAULTS, **pchanges})
            pre = pretrain(fit, config=pcfg, rating_mask=mask, seed=42, verbose=0)
            for fname, fchanges in finetunes.items():
                t = time.perf_counter()
                if fname == "pretraining_head":  # no fine-tuning: pretrain's own head
                    pred, freeze_used = pre.trained.predict_ratings(val), "-"
                else:
                    fcfg = FinetuneConfig.from_dict({**FINETUNE_DEFAULTS, **fchanges})
                    tuned = finetune(pre.backbone, visible, config=fcfg, seed=42, verbose=0)
                    pred, freeze_used = tuned.predict_ratings(val), tuned.finetune_config.freeze
                row = {"fraction": fraction, "arm": "b", "pretrain": pname,
                       "finetune": fname, "freeze_used": freeze_used,
                       "val_rmse": rmse(pred, val), "val_cold_rmse": rmse(pred, val, cold),
                       "seconds": time.perf_counter() - t}
                results.append(row)
                log(row)
    return {"slice": "random_split(train, 0.9, seed=42): 72k fit / 8k validation",
            "pretrains": pretrains, "finetunes": finetunes, "runs": results}


# ---------------------------------------------------------------------- next item
def next_item_run(table: Interactions, seeds: list[int], weights: list[float], log,
                  arms: tuple[str, ...] = ("scratch", "pretrained", "pretrained_no_seq"),
                  finetune_changes: dict | None = None) -> dict:
    """Sequential transfer on ML-100K leave-one-out (each user's last item = test, second
    last = validation): a next-item model fine-tuned from a backbone pretrained with
    retrieval + rating + next_item vs the same architecture from scratch (``scratch``) vs a
    backbone pretrained without next_item (``pretrained_no_seq``: fresh encoder).
    Selection (early stopping) uses the validation item only; test = full-ranking
    HR@10 / NDCG@10 with every history item excluded."""
    from tfrec_p5.models.sequential import ranking_metrics, ranking_queries

    split = data.leave_one_out(table)
    history = Interactions.concat(split.train, split.validation)
    fcfg = FinetuneConfig.from_dict({**NEXT_ITEM_FINETUNE, **(finetune_changes or {})})
    runs = []
    for seed in seeds:
        for weight in weights:
            row: dict = {"seed": seed, "next_item_weight": weight}
            t = time.perf_counter()
            pcfg = PretrainConfig.from_dict(PRETRAIN_DEFAULTS)
            pre = pretrain(split.train, tasks=["retrieval", "rating", "next_item"],
                           weights={"next_item": weight}, config=pcfg,
                           validation=split.validation, seed=seed, verbose=0)
            row["pretrain_seconds"] = time.perf_counter() - t
            row["pretrain_next_item_loss"] = pre.trained.history["next_item_loss"]
            row["pretrain_val"] = {k: v for k, v in pre.metrics.items() if "next_item" in k}
            q = ranking_queries(history, split.test, pre.trained.vocabs,
                                pre.backbone.next_item_head.max_len)
            row["pretraining_head_test"] = ranking_metrics(pre.backbone.next_item_head, q,
                                                           ks=(10,))
            backbones = {"pretrained": pre.backbone}
            if "pretrained_no_seq" in arms and weight == weights[0]:
                backbones["pretrained_no_seq"] = pretrain(
                    split.train, tasks=["retrieval", "rating"], config=pcfg, seed=seed,
                    verbose=0).backbone
            if "scratch" in arms and weight == weights[0]:
                import tensorflow as tf

                tf.keras.utils.set_random_seed(seed)
                backbones["scratch"] = fresh_backbone(split.train, pcfg)
            for arm, bb in backbones.items():
                t = time.perf_counter()
                cfg = fcfg.replace(freeze="none") if arm == "scratch" else fcfg
                tuned = finetune(bb, split.train, task="next_item", config=cfg,
                                 validation=split.validation, seed=seed, verbose=0)
                q = ranking_queries(history, split.test, tuned.vocabs, tuned.head.max_len)
                row[arm] = {"val": tuned.best_metrics, "best_epoch": tuned.best_epoch,
                            "test": ranking_metrics(tuned.head, q, ks=(10,)),
                            "seconds": time.perf_counter() - t}
            runs.append(row)
            log(row)
    return {"split": "leave_one_out(ML-100K): train / validation item / test item",
            "finetune": fcfg.to_dict(), "runs": runs}


#: Next-item fine-tuning (every arm): the Beauty SASRec learning rate and a patience that
#: lets a from-scratch model converge; early stopping on the validation item's NDCG@10.
NEXT_ITEM_FINETUNE: dict = {"task": "next_item", "freeze": "lower_lr", "learning_rate": 2e-3,
                            "epochs": 200, "patience": 10,
                            "sequential": {"batch_size": 128}}

#: Base of every ``--select`` grid entry (the defaults before the issue-#5 follow-up, so
#: recorded selection rounds rerun unchanged); each entry adds its own changes.
PRETRAIN_DEFAULTS: dict = {"weights": {"retrieval": 1.0, "rating": 1.0}, "history_len": 0}
FINETUNE_DEFAULTS: dict = {"freeze": "towers", "bias_prior": 0.0,
                           "rating": {"use_dot": False}}


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 1.0])
    p.add_argument("--select", action="store_true", help="only the validation selection")
    p.add_argument("--select-fractions", type=float, nargs="+", default=[0.1])
    p.add_argument("--select-round", default="selection", help="key of this selection round")
    p.add_argument("--select-pretrains", metavar="JSON",
                   help='{"name": {PretrainConfig changes}} to try')
    p.add_argument("--select-finetunes", metavar="JSON",
                   help='{"name": {FinetuneConfig changes}} to try')
    p.add_argument("--select-no-baseline", action="store_true")
    p.add_argument("--next-item", action="store_true", help="only the next-item transfer "
                   "run (ML-100K leave-one-out)")
    p.add_argument("--next-item-weights", type=float, nargs="+", default=[100.0])
    p.add_argument("--next-item-arms", nargs="+",
                   default=["scratch", "pretrained", "pretrained_no_seq"])
    p.add_argument("--next-item-finetune", metavar="JSON", help="FinetuneConfig changes")
    p.add_argument("--next-item-round", default="next_item")
    p.add_argument("--control", type=float, nargs="*", metavar="FRACTION",
                   help="also run arm a0 (at these label fractions; no value: all)")
    p.add_argument("--no-retrieval", action="store_true")
    p.add_argument("--no-baseline", action="store_true", help="skip arm (a)")
    p.add_argument("--rating-weight", type=float, default=1.0)
    p.add_argument("--freeze", default="auto")
    p.add_argument("--bias-prior", type=float, default=3.0)
    p.add_argument("--history-len", type=int, default=128, help="pretraining implicit "
                   "rated_items / rated_by width (0: none)")
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
    if args.next_item:
        result[args.next_item_round] = next_item_run(
            table, args.seeds, args.next_item_weights, log, tuple(args.next_item_arms),
            json.loads(args.next_item_finetune) if args.next_item_finetune else None)
        result[args.next_item_round]["seconds"] = time.perf_counter() - started
        _write(args.out, result)
        return 0
    if args.select:
        result[args.select_round] = select(
            train, args.select_fractions, log,
            json.loads(args.select_pretrains) if args.select_pretrains else None,
            json.loads(args.select_finetunes) if args.select_finetunes else None,
            baseline=not args.select_no_baseline)
        result[args.select_round]["seconds"] = time.perf_counter() - started
        _write(args.out, result)
        return 0

    pcfg = PretrainConfig(weights={"retrieval": 1.0, "rating": args.rating_weight},
                          history_len=args.history_len)
    fcfg = FinetuneConfig(freeze=args.freeze, backbone_lr_scale=args.backbone_lr_scale,
                          bias_prior=args.bias_prior,
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
            pred_b, sec_pre, sec_ft, pre, freeze_used, _ = run_b(train, mask, visible, test,
                                                                 seed, pcfg, fcfg)
            row = {"seed": seed, "fraction": fraction, "visible_labels": int(mask.sum()),
                   "cold_test_rows": int(cold.sum()),
                   "cold_users": int(len(np.unique(test.user_id[cold]))),
                   "a_rmse": rmse(pred_a, test), "a_cold_rmse": rmse(pred_a, test, cold),
                   "b_rmse": rmse(pred_b, test), "b_cold_rmse": rmse(pred_b, test, cold),
                   "b_freeze": freeze_used,
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
    # Same towers, features (implicit histories included) built from the 25 % it sees.
    scratch = finetune(fresh_backbone(sub, pre.config, vocabs=pre.backbone.vocabs), sub,
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
