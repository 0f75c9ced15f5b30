"""The squared retrieval loss with a sampled catalog: does it keep the accuracy?

    PYTHONPATH=. .venv/bin/python benchmarks/catalog_sample.py                 # ML-100K, ML-1M
    PYTHONPATH=. .venv/bin/python benchmarks/catalog_sample.py --samples ml100k=128,512 ml1m=2048

``UnifiedConfig.catalog_sample`` (``RetrievalHead``, off by default): a catalog larger
than the sample is replaced in each training step by that many uniformly drawn items, the
unobserved term and the L2 scaled up (an unbiased estimate of the same loss). Its point is
speed on a large catalog (``cost_curves.py --set retrieval:catalog_sample=16384``); this
measures its accuracy cost on real data with samples much smaller than the catalog (the
estimate's noise shrinks with the sample size): the retrieval default of ``tfrec-p5 train
--task retrieval`` (``UnifiedConfig()`` + ``RETRIEVAL_SELECTION``: early stopping on a
10 % carve, refit on every row), once per catalog sample, test Recall@10 / @100 and
NDCG@10 (training items excluded) and wall seconds, beside most-popular and EASE
(``retrieval_references``).

Data: ML-100K on the TFRS 80/20 split (every rating a positive), ML-1M implicit on its
LightGCN split (train + valid fitted), the splits ``benchmarks/peers.py`` uses.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import tfrec_p5  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from tfrec_p5 import data
from tfrec_p5.evaluation import retrieval_references
from tfrec_p5.models.unified import (
    RETRIEVAL_SELECTION,
    UnifiedConfig,
    retrieval_metrics,
    train_unified,
)
from tfrec_p5.tasks.retrieval import history_csr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _ml100k import load_tfrs_split  # noqa: E402
from peers import load_ml1m  # noqa: E402

HERE = Path(__file__).resolve().parent
KEYS = ("recall@10", "recall@100", "ndcg@10")


def load(name: str, root: Path) -> tuple[data.Interactions, data.Interactions]:
    if name == "ml1m":
        return load_ml1m(root / "ml-1m")
    _, _, split = load_tfrs_split(str(root / "ml-100k"))
    return split.train, split.test


def run(name: str, root: Path, samples: list[int | None], seed: int) -> dict:
    train, test = load(name, root)
    vocabs = data.Vocabularies.build(train)
    seen = history_csr(train, vocabs)

    def evaluate(score_fn) -> dict:
        metrics = retrieval_metrics(score_fn, test, vocabs, *seen, (10, 100), ())
        return {k: metrics[k] for k in KEYS}

    out = {"data": name, "items": len(vocabs.item) - 1, "users": len(vocabs.user) - 1,
           "train_rows": len(train), "test_rows": len(test), "seed": seed, "rows": []}
    for ref in retrieval_references(train, k=100, seed=seed):
        def score(q, model=ref.model):
            s = np.asarray(model.score(q), np.float64)
            s[:, 0] = -np.inf
            return s
        out["rows"].append({"method": f"{ref.name} (reference)", **evaluate(score)})
    for sample in samples:
        config = UnifiedConfig(catalog_sample=sample).replace(**RETRIEVAL_SELECTION)
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        trained = train_unified(train, None, config, seed=seed, verbose=0)
        seconds = time.perf_counter() - start
        metrics = trained.evaluate(test, factorized_ks=())
        row = {"method": "ours, whole catalog" if sample is None else
               f"ours, catalog sample {sample}", "catalog_sample": sample,
               "sampled": sample is not None and sample < len(vocabs.item) - 1,
               **{k: metrics[f"retrieval_{k}"] for k in KEYS},
               "wall_seconds": round(seconds, 1),
               "load": [round(load_before, 2), round(os.getloadavg()[0], 2)],
               "history": {k: [round(float(v), 4) for v in vs]
                           for k, vs in trained.history.items() if k.startswith("val_")}}
        out["rows"].append(row)
        print(f"  {name} {row['method']}: R@10 {row['recall@10']:.4f} R@100 "
              f"{row['recall@100']:.4f} in {seconds:.0f} s", flush=True)
    return out


def table(results: list[dict]) -> str:
    lines = ["| data (items) | method | Recall@10 | Recall@100 | NDCG@10 | wall s |",
             "|---|---|---|---|---|---|"]
    for res in results:
        for row in res["rows"]:
            lines.append(f"| {res['data']} ({res['items']:,}) | {row['method']} | "
                         + " | ".join(f"{row[k]:.4f}" for k in KEYS)
                         + f" | {row.get('wall_seconds', '-')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", nargs="+", default=["ml100k=128,512", "ml1m=512,2048"],
                   metavar="DATA=S[,S...]", help="catalog samples to compare with the whole "
                   "catalog, per data set (ml100k, ml1m)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--data-root", default=str(HERE.parent.parent / "shared" / "data"))
    p.add_argument("--out", default=str(HERE / "results" / "catalog_sample.json"))
    args = p.parse_args(argv)
    root = Path(args.data_root)
    started = time.time()
    samples = {}
    for spec in args.samples:
        name, _, sizes = spec.partition("=")
        if name not in ("ml100k", "ml1m") or not sizes:
            p.error(f"--samples: expected DATA=S[,S...] with DATA ml100k or ml1m, got {spec!r}")
        samples[name] = [int(x) for x in sizes.split(",")]
    report = {"benchmark": "catalog_sample", "command": " ".join(sys.argv),
              "nproc": os.cpu_count(), "results": []}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for name, sizes in samples.items():  # written after each data set: a long run keeps it
        report["results"].append(run(name, root, [None, *sizes], args.seed))
        report["wall_seconds"] = round(time.time() - started, 1)
        Path(args.out).write_text(json.dumps(report, indent=2))
    results = report["results"]
    print(table(results))
    print(f"results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
