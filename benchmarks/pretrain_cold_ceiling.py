"""#5: how far can label-cold users' RMSE go down? Ceilings for arm (b).

For each seed and label fraction of ``pretrain_transfer.py`` (same visible-label masks,
same cold rows: test rows of users with <= 3 visible training labels):

* ``others_all``: every *other* user's labels are visible too (cold users keep only their
  <= 3), then (a) ``train_rating`` and (b) ``pretrain`` + ``finetune`` with the library
  defaults, as in ``pretrain_transfer.py``. What better knowledge of items and of other
  users can buy a cold user.
* ``all_labels``: (a) trained on every training label, the cold users' hidden ones
  included: what knowing the cold users' own ratings buys.

Three numpy bias-model arms (``bias_ceilings``: ``mu + b_user + b_item``, ridge-shrunk; a
few seconds together) separate *offset* from *taste*:

* ``bias_visible``: user / item biases from the visible labels (user prior of 3 labels,
  as ``FinetuneConfig.bias_prior``).
* ``bias_oracle_offset``: item biases as above, but every user's offset from *all* their
  training labels, the cold users' hidden ones included: a bias model that knows each
  cold user's own rating level exactly.
* ``bias_implicit_prior``: the visible-label fit, but each user's offset shrunk towards a
  ridge prediction from implicit data instead of 0 (log interaction count, mean item
  popularity and mean item bias of what they rated, demographics, the bag of rated
  items), fitted on users with >= 4 visible labels: how much of a cold user's offset the
  implicit signal reveals.

``--offset-oracle`` (``b_offset_oracle``): (b) in the real setting, then each cold user's
predictions shifted by the mean residual of (b) on *all* their training ratings (hidden
ones included): (b) with a perfect per-user offset, what no estimate from <= 3 labels can
beat on offset alone.

    .venv/bin/python benchmarks/pretrain_cold_ceiling.py \
        --out benchmarks/results/pretrain_cold_ceiling.json
    .venv/bin/python benchmarks/pretrain_cold_ceiling.py --bias-only   # numpy arms only
    .venv/bin/python benchmarks/pretrain_cold_ceiling.py --offset-oracle
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


def _codes(*columns: np.ndarray) -> list:
    """Integer codes of string IDs shared across ``columns``, then the number of IDs."""
    values, inverse = np.unique(np.concatenate(columns), return_inverse=True)
    return np.split(inverse, np.cumsum([len(c) for c in columns])[:-1]) + [len(values)]


def fit_biases(u: np.ndarray, i: np.ndarray, r: np.ndarray, n_users: int, n_items: int,
               prior: np.ndarray | None = None, lam_user: float = 3.0,
               lam_item: float = 10.0, sweeps: int = 8):
    """``mu + b_u + b_i`` by alternating ridge; ``b_u`` shrinks towards ``prior``."""
    mu = float(r.mean())
    pu = np.zeros(n_users) if prior is None else prior
    bu, nu, ni = np.zeros(n_users), np.bincount(u, minlength=n_users), \
        np.bincount(i, minlength=n_items)
    for _ in range(sweeps):
        bi = np.bincount(i, weights=r - mu - bu[u], minlength=n_items) / (ni + lam_item)
        bu = (np.bincount(u, weights=r - mu - bi[i], minlength=n_users) + lam_user * pu) \
            / (nu + lam_user)
    return mu, bu, bi


def implicit_offset_features(train, u: np.ndarray, i: np.ndarray, bi: np.ndarray,
                             n_users: int, n_items: int) -> np.ndarray:
    """Per-user features from who-rated-what (no rating values) + demographics."""
    n = np.bincount(u, minlength=n_users).astype(float)
    pop = np.bincount(i, minlength=n_items).astype(float)

    def mean(v):
        return np.bincount(u, weights=v, minlength=n_users) / np.maximum(n, 1)

    cols = [np.log1p(n), mean(np.log1p(pop[i])), mean(bi[i])]
    for name in ("raw_user_age", "user_gender", "user_occupation_label"):
        first = np.zeros(n_users)
        first[u] = np.asarray(train.columns[name], dtype=float)
        if name == "user_occupation_label":  # one-hot
            cols += [first == k for k in np.unique(first)]
        else:
            cols.append(first)
    x = np.stack([np.asarray(c, float) for c in cols], 1)
    x = (x - x.mean(0)) / (x.std(0) + 1e-9)
    bag = np.zeros((n_users, n_items))
    bag[u, i] = 1.0 / np.sqrt(np.maximum(n[u], 1))
    return np.concatenate([x, bag, np.ones((n_users, 1))], 1)


def bias_ceilings(train, test, mask: np.ndarray, cold: np.ndarray) -> dict[str, float]:
    """Test RMSE (all / cold rows) of the three numpy bias arms (module docstring)."""
    tu, su, n_users = _codes(train.user_id, test.user_id)
    ti, si, n_items = _codes(train.item_id, test.item_id)
    r = train.rating.astype(np.float64)
    y = test.rating.astype(np.float64)

    def score(mu, bu, bi):
        pred = np.clip(mu + bu[su] + bi[si], 1.0, 5.0)
        return {"rmse": float(np.sqrt(np.mean((pred - y) ** 2))),
                "cold_rmse": float(np.sqrt(np.mean((pred - y)[cold] ** 2)))}

    vu, vi, vr = tu[mask], ti[mask], r[mask]
    mu, bu, bi = fit_biases(vu, vi, vr, n_users, n_items)
    out = {"bias_visible": score(mu, bu, bi)}
    _, bu_all, _ = fit_biases(tu, ti, r, n_users, n_items)
    out["bias_oracle_offset"] = score(mu, bu_all, bi)
    x = implicit_offset_features(train, tu, ti, bi, n_users, n_items)
    nvis = np.bincount(vu, minlength=n_users)
    resid = np.bincount(vu, weights=vr - mu - bi[vi], minlength=n_users)
    fit_users = nvis >= 4
    target = resid[fit_users] / nvis[fit_users]
    weight = nvis[fit_users] / (nvis[fit_users] + 3.0)
    xm = x[fit_users]
    gram = xm.T @ (xm * weight[:, None]) + 10.0 * np.eye(x.shape[1])
    gram[-1, -1] -= 10.0  # the intercept is not shrunk
    prior = x @ np.linalg.solve(gram, xm.T @ (weight * target))
    out["bias_implicit_prior"] = score(*fit_biases(vu, vi, vr, n_users, n_items, prior))
    return out


def offset_oracle(train, mask: np.ndarray, test, cold: np.ndarray, seed: int,
                  pcfg: PretrainConfig, fcfg: FinetuneConfig) -> dict[str, float]:
    """(b) as in ``pretrain_transfer.py``, and (b) with each cold user's exact offset."""
    visible = train.take(np.flatnonzero(mask))
    pred, *_, tuned = run_b(train, mask, visible, test, seed, pcfg, fcfg)
    resid = train.rating.astype(np.float64) - tuned.predict_ratings(train)
    users, inverse = np.unique(train.user_id, return_inverse=True)
    shift = dict(zip(users.tolist(), (np.bincount(inverse, weights=resid)
                                      / np.bincount(inverse)).tolist(), strict=True))
    offsets = np.array([shift.get(u, 0.0) for u in test.user_id.tolist()])
    low, high = float(train.rating.min()), float(train.rating.max())
    shifted = np.clip(pred + np.where(cold, offsets, 0.0), low, high)
    return {"b_cold": rmse(pred, test, cold), "b_oracle_offset_cold": rmse(shifted, test, cold)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25])
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                 "pretrain_cold_ceiling.json"))
    p.add_argument("--bias-only", action="store_true",
                   help="only the numpy bias arms; keep the TF arms already in --out")
    p.add_argument("--offset-oracle", action="store_true",
                   help="only (b) with exact cold-user offsets; keep the rest of --out")
    args = p.parse_args(argv)
    table = data.load(f"movielens:{ML100K}")
    split = data.tfrs_split(table, os.path.join(ML100K, "tfrs_split_seed42.tsv"))
    train, test = split.train, split.test
    pcfg = PretrainConfig(weights={"retrieval": 1.0, "rating": 1.0}, history_len=128)
    fcfg = FinetuneConfig(freeze="auto", backbone_lr_scale=0.1, bias_prior=3.0,
                          rating=RatingConfig(use_dot=False))
    result: dict = {}
    if (args.bias_only or args.offset_oracle) and os.path.exists(args.out):
        with open(args.out, encoding="utf-8") as f:
            result = json.load(f)
    command = "python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:])
    if args.offset_oracle:
        oracle_rows = []
        for seed in args.seeds:
            for fraction in args.fractions:
                mask = visible_mask(train, fraction, seed)
                cold = cold_rows(train.take(np.flatnonzero(mask)), test)
                row = {"seed": seed, "fraction": fraction,
                       **offset_oracle(train, mask, test, cold, seed, pcfg, fcfg)}
                print(json.dumps(row), flush=True)
                oracle_rows.append(row)
        result["b_offset_oracle"] = {"command": command, "runs": oracle_rows, "mean": {
            str(f): {k: float(np.mean([r[k] for r in oracle_rows if r["fraction"] == f]))
                     for k in ("b_cold", "b_oracle_offset_cold")} for f in args.fractions}}
        _dump(args.out, result)
        return 0
    rows, bias_rows = [], []
    for seed in args.seeds:
        pred_all = None if args.bias_only else run_a(train, test, seed)[0]
        for fraction in args.fractions:
            mask = visible_mask(train, fraction, seed)
            visible = train.take(np.flatnonzero(mask))
            cold = cold_rows(visible, test)
            bias = {"seed": seed, "fraction": fraction,
                    **bias_ceilings(train, test, mask, cold)}
            print(json.dumps(bias), flush=True)
            bias_rows.append(bias)
            if args.bias_only:
                continue
            users, counts = np.unique(visible.user_id, return_counts=True)
            cold_users = (set(users[counts <= 3].tolist())
                          | (set(train.user_id.tolist()) - set(users.tolist())))
            others = mask | ~np.isin(train.user_id, list(cold_users))
            visible2 = train.take(np.flatnonzero(others))
            pred_a, _ = run_a(visible2, test, seed)
            pred_b = run_b(train, others, visible2, test, seed, pcfg, fcfg)[0]
            row = {"seed": seed, "fraction": fraction, "labels_others_all": int(others.sum()),
                   "cold_rows": int(cold.sum()),
                   "a_others_all_cold": rmse(pred_a, test, cold),
                   "b_others_all_cold": rmse(pred_b, test, cold),
                   "a_all_labels_cold": rmse(pred_all, test, cold)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    if not args.bias_only:
        result.update(command=command, runs=rows)
    summary = {}
    for fraction in args.fractions:
        sel = [b for b in bias_rows if b["fraction"] == fraction]
        summary[str(fraction)] = {
            arm: {key: float(np.mean([b[arm][key] for b in sel]))
                  for key in ("rmse", "cold_rmse")}
            for arm in ("bias_visible", "bias_oracle_offset", "bias_implicit_prior")}
    result["bias_ceilings"] = {"command": command, "runs": bias_rows, "mean": summary}
    print(json.dumps(summary, indent=1))
    _dump(args.out, result)
    return 0


def _dump(path: str, result: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
