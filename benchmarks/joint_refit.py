"""The joint model's refit, alone: fixed epochs on Amazon Beauty, next-item HR/NDCG@10.

Why: on Beauty the joint model (``--task all``) and the next-item specialist are level
before the refit and apart after it (RESULTS.md, "The P5 table"). This script trains
what the refit trains -- one fit of ``models.joint`` for a fixed epoch count, no
selection -- under a variant, and scores it either on the test events (``--part test``:
fitted on training + validation) or, to choose between variants without reading test,
on the validation events (``--part validation``: fitted on the training part only, the
refit one event earlier).

    PYTHONPATH=. .venv/bin/python benchmarks/joint_refit.py --part validation --seeds 0 1 \
        --variants base leave_target_out
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

import tfrec_p5  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from tfrec_p5 import data
from tfrec_p5.data.catalog import load_catalog
from tfrec_p5.evaluation import single_target_metrics
from tfrec_p5.models import joint
from tfrec_p5.models.sequential import query_ranks, ranking_queries

BEAUTY = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "amazon",
                      "Beauty.txt")
#: The next-item schedule of the joint model before session 20 (``JOINT_SEQUENTIAL`` now
#: averages the weights and sets dropout 0.3): every variant starts from it.
SESSION_14 = {"ema_momentum": None, "dropout": 0.2}
#: variant -> ``JointConfig`` fields over the session-14 joint model (``pairs`` merged over
#: ``JOINT_PAIRS``, ``sequential`` over ``SESSION_14``): "leave_target_out" is that model,
#: "base" the one before it, "ema_0.999_dropout_0.3" today's default.
VARIANTS = {
    "base": {"pairs": {"leave_target_out": False}},
    "leave_target_out": {},
    "retrieval_x2": {"weights": {"retrieval": 2.0, "next_item": 1.0}},
    "retrieval_x0.5": {"weights": {"retrieval": 0.5, "next_item": 1.0}},
    "temperature_0.1": {"pairs": {"temperature": 0.1}},
    "temperature_1": {"pairs": {"temperature": 1.0}},
    "dim_128": {"pairs": {"embedding_dim": 128}, "sequential": {"embedding_dim": 128}},
    "heads_2": {"sequential": {"num_heads": 2}},
    "ffn_256": {"sequential": {"ffn_dim": 256}},
    "blocks_1": {"sequential": {"num_blocks": 1}},
    "blocks_3": {"sequential": {"num_blocks": 3}},
    "dropout_0.1": {"sequential": {"dropout": 0.1}},
    "dropout_0.3": {"sequential": {"dropout": 0.3}},
    "weight_decay_0.1": {"sequential": {"weight_decay": 0.1}},
    "ema_0.99": {"sequential": {"ema_momentum": 0.99}},
    "ema_0.999": {"sequential": {"ema_momentum": 0.999}},
    "ema_0.999_blocks_1": {"sequential": {"ema_momentum": 0.999, "num_blocks": 1}},
    "ema_0.999_dropout_0.3": {"sequential": {"ema_momentum": 0.999, "dropout": 0.3}},
    "ema_0.999_blocks_1_dropout_0.3": {"sequential": {"ema_momentum": 0.999,
                                                      "num_blocks": 1, "dropout": 0.3}},
    "ema_0.999_dropout_0.3_ffn_256": {"sequential": {"ema_momentum": 0.999, "dropout": 0.3,
                                                     "ffn_dim": 256}},
}


def run(part: str, variant: str, seed: int, epochs: int, history_batch: int) -> dict:
    spec = f"amazon:{os.path.abspath(BEAUTY)}"
    split = data.leave_one_out(data.load(spec))
    if part == "test":
        fit_rows, target = data.Interactions.concat(split.train, split.validation), split.test
    else:
        fit_rows, target = split.train, split.validation
    items = load_catalog(spec).items
    change = VARIANTS[variant]
    config = joint.JointConfig(pairs={**joint.JOINT_PAIRS, **change.get("pairs", {})},
                               sequential={**SESSION_14, **change.get("sequential", {})},
                               **({"weights": change["weights"]} if "weights" in change
                                  else {}))
    sequential, _ = config.sequential.for_data(
        fit_rows, len(np.unique(np.concatenate([fit_rows.item_id, items.item_id]))))
    config = config.replace(sequential=sequential.replace(epochs=epochs))
    heads, _ = config.active(fit_rows)
    started = time.perf_counter()
    trained, _ = joint._fit_joint(fit_rows, None, config, heads=heads, seed=seed, verbose=0,
                                  log_dir=None, backup_dir=None, callbacks=(),
                                  catalog=items, history_batch=history_batch)
    queries = ranking_queries(fit_rows, target, trained.vocabs, sequential.max_len)
    metrics = single_target_metrics(query_ranks(trained.head, queries), ks=(5, 10))
    return {"part": part, "variant": variant, "seed": seed, "epochs": epochs,
            "seconds": round(time.perf_counter() - started, 1), **metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("validation", "test"), default="validation")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        default=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=12, help="the selection's best count")
    parser.add_argument("--history-batch", type=int, default=174,
                        help="histories per step (the selection's on Beauty)")
    parser.add_argument("--out", default="benchmarks/results/joint_refit.json")
    args = parser.parse_args()
    rows = [run(args.part, v, s, args.epochs, args.history_batch)
            for v in args.variants for s in args.seeds]
    print("| part | variant | seed | HR@10 | NDCG@10 | seconds |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['part']} | {r['variant']} | {r['seed']} | {r['hr@10']:.4f} | "
              f"{r['ndcg@10']:.4f} | {r['seconds']} |")
    with open(args.out, "w") as f:
        json.dump({"command": " ".join(["benchmarks/joint_refit.py", *sys.argv[1:]]),
                   "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
