"""Which ``--freeze`` mode fine-tunes a next-item model best? Validation only.

For each mode, ``finetune(backbone, split.train, task="next_item", freeze=mode)`` runs its
selection (early stopping on the leave-one-out validation events, no refit) and the
best epoch's validation HR/NDCG@10 is reported; the test events are never read. The
backbone comes from ``tfrec-p5 pretrain --split leave-one-out`` on the same data and
seed, so it never saw the validation events either.

    tfrec-p5 pretrain --data amazon:../shared/data/amazon/Beauty.txt --split leave-one-out \\
        --seed 0 --tasks retrieval,next_item --weights next_item=100 --out /tmp/bb_beauty
    PYTHONPATH=. .venv/bin/python benchmarks/finetune_freeze.py \\
        --data amazon:../shared/data/amazon/Beauty.txt --backbone /tmp/bb_beauty \\
        --modes none lower_lr towers --out benchmarks/results/finetune_freeze_beauty.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import tfrec_p5  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from tfrec_p5.data import load, parse_split
from tfrec_p5.pretraining import FinetuneConfig, finetune, load_backbone

COLUMNS = ("freeze", "best_epoch", "epochs_run", "hr@10", "ndcg@10", "seconds")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, metavar="SPEC")
    parser.add_argument("--backbone", required=True, metavar="DIR")
    parser.add_argument("--modes", nargs="+", default=["none", "lower_lr", "towers"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, metavar="FILE.json")
    args = parser.parse_args(argv)
    split = parse_split("leave-one-out", load(args.data), seed=args.seed)
    rows = []
    for mode in args.modes:
        started = time.perf_counter()
        config = FinetuneConfig(task="next_item", freeze=mode)
        config = config.replace(sequential=config.sequential.replace(refit=False))
        tuned = finetune(load_backbone(args.backbone), split.train, config=config,
                         validation=split.validation, seed=args.seed, verbose=0)
        rows.append({"freeze": mode, "best_epoch": tuned.best_epoch,
                     "epochs_run": tuned.epochs_run,
                     **{k: float(v) for k, v in tuned.best_metrics.items()},
                     "seconds": round(time.perf_counter() - started, 1)})
        print(json.dumps(rows[-1]), flush=True)
    print("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS))
    for row in rows:
        print("| " + " | ".join(f"{row[c]:.4f}" if isinstance(row[c], float) and c != "seconds"
                                else str(row[c]) for c in COLUMNS) + " |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "command": "benchmarks/finetune_freeze.py " + " ".join(argv or sys.argv[1:]),
        "backbone_manifest": load_backbone(args.backbone).manifest.get("metrics"),
        "load": os.getloadavg(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
