"""The peers' side of ``benchmarks/peers.py``: fit one peer library on the split that
``peers.py`` wrote, write what it predicts, nothing else (no metric is computed here).

Runs in a throwaway virtual environment holding the peers, never in the project's (the
peers are no dependency of tfrec_p5):

    python3.11 -m venv /tmp/peers && /tmp/peers/bin/pip install scikit-surprise implicit numpy
    /tmp/peers/bin/python benchmarks/_peers_worker.py JOB.json

``JOB.json``: ``{"method": "svd" | "svdpp" | "als" | "bpr", "split": NPZ, "out": NPZ,
"points": [n_epochs or iterations, ...], "seed": S, "threads": T, "k": K,
"rating_range": [low, high]}``. ``NPZ`` holds ``train_u``, ``train_i`` (``train_r``) and
``test_u``, ``test_i`` as tfrec_p5 vocabulary indices (0 = unknown) and ``num_users``,
``num_items`` (the vocabulary sizes, index 0 included). Every other setting is the
library's default. One fit per point, each timed around ``fit`` alone.

Output ``NPZ``: ``points``, ``fit_seconds``, ``predict_seconds``, ``prepare_seconds`` (the
library's own data structure: Surprise's trainset, implicit's CSR matrix) and either
``predictions`` ``[P, test rows]`` (Surprise: ``algo.predict(...).est``, clipped to the
rating scale as by default) or ``lists`` ``[P, users, K]`` (implicit: ``recommend(N=K,
filter_already_liked_items=True)`` for every user index, -1 padding) and the last fit's
``user_factors`` / ``item_factors`` (a cross-check of the lists in ``peers.py``).

Imports only numpy, scipy (implicit's own dependency) and the peer library.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np


def surprise_fits(job: dict, split) -> dict:
    """Surprise SVD / SVD++ with their defaults (``n_epochs`` set per point)."""
    from surprise import SVD, Dataset, Reader, SVDpp

    algo = {"svd": SVD, "svdpp": SVDpp}[job["method"]]
    path = os.path.join(os.path.dirname(job["out"]), f"{job['method']}_train.csv")
    np.savetxt(path, np.c_[split["train_u"], split["train_i"], split["train_r"]],
               fmt=["%d", "%d", "%g"], delimiter=",")
    start = time.perf_counter()
    reader = Reader(line_format="user item rating", sep=",",
                    rating_scale=tuple(job["rating_range"]))
    trainset = Dataset.load_from_file(path, reader).build_full_trainset()
    out = {"prepare_seconds": time.perf_counter() - start, "fit_seconds": [],
           "predict_seconds": [], "predictions": []}
    pairs = list(zip(split["test_u"].astype(str), split["test_i"].astype(str), strict=True))
    for n in job["points"]:
        model = algo(n_epochs=n, random_state=job["seed"])
        start = time.perf_counter()
        model.fit(trainset)
        out["fit_seconds"].append(time.perf_counter() - start)
        start = time.perf_counter()
        out["predictions"].append([model.predict(u, i).est for u, i in pairs])
        out["predict_seconds"].append(time.perf_counter() - start)
        print(f"{job['method']} n_epochs={n}: fit {out['fit_seconds'][-1]:.1f} s",
              flush=True)
    return out


def implicit_fits(job: dict, split) -> dict:
    """implicit ALS / BPR with their defaults (``iterations`` set per point,
    ``num_threads`` fixed). The vocabularies' unknown row and column (index 0) are left
    out of the matrix, so the peer never sees a dummy user or item."""
    from implicit.als import AlternatingLeastSquares
    from implicit.bpr import BayesianPersonalizedRanking
    from scipy.sparse import csr_matrix

    algo = {"als": AlternatingLeastSquares, "bpr": BayesianPersonalizedRanking}[job["method"]]
    start = time.perf_counter()
    users, items = int(split["num_users"]) - 1, int(split["num_items"]) - 1
    x = csr_matrix((np.ones(len(split["train_u"]), np.float32),
                    (split["train_u"] - 1, split["train_i"] - 1)), shape=(users, items))
    x.sum_duplicates()
    x.data[:] = 1.0  # binary implicit feedback
    out = {"prepare_seconds": time.perf_counter() - start, "fit_seconds": [],
           "predict_seconds": [], "lists": []}
    query = np.arange(users)
    for n in job["points"]:
        model = algo(iterations=n, num_threads=job["threads"], random_state=job["seed"])
        start = time.perf_counter()
        model.fit(x, show_progress=False)
        out["fit_seconds"].append(time.perf_counter() - start)
        start = time.perf_counter()
        ids, _ = model.recommend(query, x[query], N=job["k"], filter_already_liked_items=True)
        out["predict_seconds"].append(time.perf_counter() - start)
        out["lists"].append(np.where(ids >= 0, ids + 1, -1).astype(np.int32))
        print(f"{job['method']} iterations={n}: fit {out['fit_seconds'][-1]:.2f} s",
              flush=True)
    out["user_factors"] = np.asarray(model.user_factors)
    out["item_factors"] = np.asarray(model.item_factors)
    return out


def main(argv: list[str]) -> int:
    with open(argv[0], encoding="utf-8") as f:
        job = json.load(f)
    split = np.load(job["split"])
    run = surprise_fits if job["method"] in ("svd", "svdpp") else implicit_fits
    out = run(job, split)
    np.savez(job["out"], points=np.asarray(job["points"]),
             **{k: np.asarray(v) for k, v in out.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
