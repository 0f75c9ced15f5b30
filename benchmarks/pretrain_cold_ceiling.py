"""#5: how far can label-cold users' RMSE go down? Two ceilings for arm (b).

For each seed and label fraction of ``pretrain_transfer.py`` (same visible-label masks,
same cold rows: test rows of users with <= 3 visible training labels):

* ``others_all``: every *other* user's labels are visible too (cold users keep only their
  <= 3), then (a) ``train_rating`` and (b) ``pretrain`` + ``finetune`` with the library
  defaults, as in ``pretrain_transfer.py``. What better knowledge of items and of other
  users can buy a cold user.
* ``all_labels``: (a) trained on every training label, the cold users' hidden ones
  included: what knowing the cold users' own ratings buys.

    .venv/bin/python benchmarks/pretrain_cold_ceiling.py \
        --out benchmarks/results/pretrain_cold_ceiling.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pretrain_transfer import ML100K, cold_rows, rmse, run_a, run_b, visible_mask  # noqa: E402

import tfrec_p5  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from tfrec_p5 import data  # noqa: E402
from tfrec_p5.models.rating import RatingConfig  # noqa: E402
from tfrec_p5.pretraining import FinetuneConfig, PretrainConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25])
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                 "pretrain_cold_ceiling.json"))
    args = p.parse_args(argv)
    table = data.load(f"movielens:{ML100K}")
    split = data.tfrs_split(table, os.path.join(ML100K, "tfrs_split_seed42.tsv"))
    train, test = split.train, split.test
    pcfg = PretrainConfig(weights={"retrieval": 1.0, "rating": 1.0}, history_len=128)
    fcfg = FinetuneConfig(freeze="auto", backbone_lr_scale=0.1, bias_prior=3.0,
                          rating=RatingConfig(use_dot=False))
    rows = []
    for seed in args.seeds:
        pred_all, _ = run_a(train, test, seed)
        for fraction in args.fractions:
            mask = visible_mask(train, fraction, seed)
            visible = train.take(np.flatnonzero(mask))
            users, counts = np.unique(visible.user_id, return_counts=True)
            cold_users = (set(users[counts <= 3].tolist())
                          | (set(train.user_id.tolist()) - set(users.tolist())))
            others = mask | ~np.isin(train.user_id, list(cold_users))
            visible2 = train.take(np.flatnonzero(others))
            cold = cold_rows(visible, test)
            pred_a, _ = run_a(visible2, test, seed)
            pred_b = run_b(train, others, visible2, test, seed, pcfg, fcfg)[0]
            row = {"seed": seed, "fraction": fraction, "labels_others_all": int(others.sum()),
                   "cold_rows": int(cold.sum()),
                   "a_others_all_cold": rmse(pred_a, test, cold),
                   "b_others_all_cold": rmse(pred_b, test, cold),
                   "a_all_labels_cold": rmse(pred_all, test, cold)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"command": "python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:]),
                   "runs": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
