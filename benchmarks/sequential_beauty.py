"""Issue #6 benchmark: P5's sequential and direct tasks on Amazon Beauty, leave-one-out.

Why: P5 (Geng et al., RecSys 2022) reports next-item full ranking and "direct" 1 + 99
sampled ranking on Beauty. This script trains the **default** ``--task sequential``
configuration (``SequentialConfig()``) for each seed, selects the epoch on the validation
item only, and scores the test item through the same ``next_items`` / ``score_items``
signatures that ``tfrec-p5 evaluate`` uses. Most-popular and item-KNN run in the same
process through the same evaluation code (signature adapters over numpy scores).

    .venv/bin/python benchmarks/sequential_beauty.py --seeds 0 1 2 \\
        --out benchmarks/results/sequential_beauty.json

Protocol (stated, since papers differ): per user, last item → test, second last →
validation, the rest → training; the test input history is training + validation; every
history item is removed from the candidates; ties rank the held-out item last; sampled
negatives are 99 items the user never interacted with, uniform over the dataset's items,
``numpy`` seed 2022. Items first seen in validation/test are unknown to the model (their
held-out rows count as misses in full ranking).
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
from tfrec_p5.data import Interactions
from tfrec_p5.evaluation import evaluate_next_items
from tfrec_p5.evaluation.served import next_item_references
from tfrec_p5.export.sequential import sequential_module
from tfrec_p5.models.sequential import SequentialConfig, train_sequential

DEFAULT_DATA = "/work/shared/data/amazon/Beauty.txt"
PAPER = {
    "P5-B (paper)": {"hr@5": 0.0508, "ndcg@5": 0.0379, "hr@10": 0.0664, "ndcg@10": 0.0429},
    "SASRec (P5 paper)": {"hr@5": 0.0387, "ndcg@5": 0.0249, "hr@10": 0.0605,
                          "ndcg@10": 0.0318},
    "P5 best direct (paper)": {"sampled_hr@1": 0.1020, "sampled_hr@5": 0.2688,
                               "sampled_ndcg@5": 0.1869, "sampled_hr@10": 0.3665,
                               "sampled_ndcg@10": 0.2184},
}
TARGETS = {"hr@10": 0.075, "ndcg@10": 0.045, "sampled_hr@10": 0.50,
           "sampled_ndcg@10": 0.32}
KEYS = ("hr@5", "ndcg@5", "hr@10", "ndcg@10", "sampled_hr@1", "sampled_hr@5",
        "sampled_ndcg@5", "sampled_hr@10", "sampled_ndcg@10")


# ---------------------------------------------------------------------- references
def references(split: data.Split, history: data.Interactions) -> dict[str, dict]:
    """Most-popular and item-KNN (``evaluation.served``, as ``tfrec-p5 train`` shows
    them), fitted on training + validation (the test inputs)."""
    out = {}
    for ref in next_item_references(history, k=100):
        t0 = time.perf_counter()
        name = ref.name.replace("most popular", "most-popular")
        out[name] = evaluate_next_items(ref.signature, split.test, history)
        out[name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(name, {k: round(out[name][k], 4) for k in KEYS}, flush=True)
    return out


# ---------------------------------------------------------------------- main
def _summary(runs: list[dict]) -> dict[str, dict[str, float]]:
    return {k: {"mean": float(np.mean([r["test"][k] for r in runs])),
                "std": float(np.std([r["test"][k] for r in runs]))} for k in KEYS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--config", default="{}", help="JSON overrides of SequentialConfig "
                        "(the recorded results use none: the defaults)")
    parser.add_argument("--no-references", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/sequential_beauty.json")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    table = data.load(f"amazon:{args.data}")
    split = data.leave_one_out(table)
    history = Interactions.concat(split.train, split.validation)
    config = SequentialConfig.from_dict({**SequentialConfig().to_dict(),
                                         **json.loads(args.config)})
    result: dict = {
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "data": args.data, "split": "leave-one-out",
        "sizes": {"train": len(split.train), "validation": len(split.validation),
                  "test": len(split.test)},
        "config": config.to_dict(), "seeds": args.seeds, "paper": PAPER,
        "targets": TARGETS, "runs": [],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
    }

    def save() -> None:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        result["wall_seconds"] = round(time.perf_counter() - started, 1)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")

    if not args.no_references:
        result["references"] = references(split, history)
        save()
    for seed in args.seeds:
        t0 = time.perf_counter()
        trained = train_sequential(split.train, split.validation, config, seed=seed,
                                   verbose=1)
        module = sequential_module(trained.vocabs, trained.head, top_k=config.top_k)
        test = evaluate_next_items(module.signature, split.test, history)
        # After a refit the validation item is training data: report the selection run's
        # validation numbers instead of re-scoring it.
        val = trained.best_metrics if config.refit else \
            evaluate_next_items(module.signature, split.validation, split.train)
        run = {"seed": seed, "best_epoch": trained.best_epoch,
               "epochs_run": trained.epochs_run,
               "train_seconds": round(trained.train_seconds, 1),
               "seconds": round(time.perf_counter() - t0, 1),
               "validation": val, "test": test, "epoch_log": trained.history}
        result["runs"].append(run)
        result["summary"] = _summary(result["runs"])
        print(f"seed {seed}: best epoch {trained.best_epoch}/{trained.epochs_run}, "
              f"{run['train_seconds']} s;", {k: round(test[k], 4) for k in KEYS}, flush=True)
        save()
    summary = result.get("summary", {})
    result["targets_met"] = {k: summary[k]["mean"] >= v for k, v in TARGETS.items()} \
        if summary else {}
    save()
    for k in KEYS:
        if k in summary:
            print(f"{k:>16} {summary[k]['mean']:.4f} ± {summary[k]['std']:.4f}")
    print("targets met:", result["targets_met"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
