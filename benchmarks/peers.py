"""Peers side by side (issue #21): time to quality of ours vs implicit and Surprise.

Same cores, same data, same split, one script. Each peer runs with its documented
defaults; only the training length varies, to draw a time-to-quality curve (test metric
against wall seconds), one separate fit per point:

* rating, ML-100K TFRS 80/20 split (``tfrs_split_seed42.tsv``): Surprise SVD and SVD++
  (``n_epochs`` 1, 2, 5, 10, 20; 20 is the default) → test RMSE. Ours: what
  ``tfrec-p5 train --task rating`` trains, ``train_rating(train, None, RatingConfig())``
  (carve 10 %, early stopping, refit on every row).
* retrieval, ML-1M implicit (LightGCN split: train + valid fitted, test held out, as
  ``benchmarks/generalization.py`` reads it) and ML-100K (the TFRS split, every rating a
  positive): implicit ALS (``iterations`` 1, 2, 5, 10, 15; 15 is the default) and BPR
  (10, 25, 50, 100; 100 is the default), ``num_threads=2`` (the machine's cores),
  ``recommend(N=100, filter_already_liked_items=True)`` → Recall@10 / @100, NDCG@10.
  Ours: what ``tfrec-p5 train --task retrieval`` trains, ``train_unified(train, None,
  UnifiedConfig() + RETRIEVAL_SELECTION)`` (carve 10 %, early stopping on validation
  Recall@10, refit). EASE (λ chosen on a 10 % carve) and most popular are the references
  ``train`` prints beside the model (``tfrec_p5.evaluation.retrieval_references``).

Protocol: the split comes from tfrec_p5's loaders and splitters; the peers get it as
vocabulary indices (``.npz`` in a temporary folder) and return only predictions (rating
predictions, or top-100 lists); every metric is computed here with tfrec_p5's evaluation
code (``rating_metrics``; ``retrieval_metrics`` = ``full_ranking_metrics`` with the users'
training items excluded), for ours, the peers and the references alike. A top-100 list is
scored as 100, 99, ... 1 for its items and -inf elsewhere, so Recall@K and NDCG@10 for
K <= 100 are the list's; the peers' last fit is also scored from its factors (every item)
as a cross-check.

Wall seconds: a peer's are its ``fit`` alone (building its matrix or trainset and
predicting are timed apart). Ours are the whole ``train_rating`` / ``train_unified``
call (vocabularies, input pipeline, graph tracing included), the evaluation excluded.
Ours' curve is a *benchmark-only* callback (``TestCurve``): after each epoch of the
refit alone -- the default's final fit, ``refit=False, validation_fraction=0`` for the
epoch count the default's search chose, on every training row -- it records the wall
seconds (minus its own evaluation time) and the test metrics. It is reporting, never
selection: nothing reads it during training. Ours' end-to-end wall time (search + refit)
is reported beside the curve.

Peers live in a throwaway virtual environment, never in tfrec_p5's dependencies; a small
worker (``benchmarks/_peers_worker.py``: numpy + the peer library) runs there:

    python3.11 -m venv /tmp/peers && /tmp/peers/bin/pip install scikit-surprise implicit numpy
    PYTHONPATH=. .venv/bin/python benchmarks/peers.py            # ~1 h on 2 shared cores
    PYTHONPATH=. .venv/bin/python benchmarks/peers.py --quick    # ML-100K, 2 epochs: smoke

No extra of tfrec_p5 names them: the peers' environment is the benchmark's own. implicit
runs with ``OPENBLAS_NUM_THREADS=1``, as implicit itself advises (its own threads do the
work). Without the peers' interpreter the peers are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

# isort: off
import tfrec_p5  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
# isort: on

from tfrec_p5 import data
from tfrec_p5.evaluation import (
    bias_baseline,
    evaluate_signature,
    rating_metrics,
    retrieval_references,
)
from tfrec_p5.models.rating import RatingConfig, evaluate_rating, train_rating
from tfrec_p5.models.unified import (
    RETRIEVAL_SELECTION,
    RetrievalValidation,
    UnifiedConfig,
    retrieval_metrics,
    train_unified,
)
from tfrec_p5.tasks.retrieval import history_csr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _ml100k import load_tfrs_split  # noqa: E402
from generalization import read_lines  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
WORKER = Path(__file__).resolve().with_name("_peers_worker.py")
PEERS_PYTHON = "/tmp/peers/bin/python"
INSTALL = ("python3.11 -m venv /tmp/peers && "
           "/tmp/peers/bin/pip install scikit-surprise implicit numpy")
SEED = 42
THREADS = 2
TOP_K = 100
#: Training lengths of the peers' curves (the last one is the library's default).
POINTS = {"svd": (1, 2, 5, 10, 20), "svdpp": (1, 2, 5, 10, 20), "als": (1, 2, 5, 10, 15),
          "bpr": (10, 25, 50, 100)}
QUICK_POINTS = {"svd": (1, 2), "svdpp": (1,), "als": (1, 2), "bpr": (10,)}
QUICK_EPOCHS = 2
NAMES = {"svd": "Surprise SVD", "svdpp": "Surprise SVD++", "als": "implicit ALS",
         "bpr": "implicit BPR"}
RETRIEVAL_KEYS = ("recall@10", "recall@100", "ndcg@10")


# ---------------------------------------------------------------------- data
def load_ml1m(root: Path) -> tuple[data.Interactions, data.Interactions]:
    """ML-1M implicit, its published split: (train + valid, test)."""
    fit = read_lines(root / "train.txt")
    for user, items in read_lines(root / "valid.txt").items():
        fit.setdefault(user, []).extend(items)

    def table(lines: dict[str, list[str]], part: str) -> data.Interactions:
        users = [u for u, items in lines.items() for _ in items]
        items = [i for s in lines.values() for i in s]
        return data.Interactions.from_columns({"user_id": users, "item_id": items},
                                              source=f"{root}/{part}")
    return table(fit, "train.txt+valid.txt"), table(read_lines(root / "test.txt"), "test.txt")


def write_split(path: Path, train: data.Interactions, test: data.Interactions,
                vocabs: data.Vocabularies) -> None:
    """The split as vocabulary indices, what the peers' worker reads."""
    arrays = {"train_u": vocabs.user.lookup(train.user_id),
              "train_i": vocabs.item.lookup(train.item_id),
              "test_u": vocabs.user.lookup(test.user_id),
              "test_i": vocabs.item.lookup(test.item_id),
              "num_users": len(vocabs.user), "num_items": len(vocabs.item)}
    if train.rating is not None:
        arrays["train_r"] = train.rating
    np.savez(path, **arrays)


# ---------------------------------------------------------------------- curves
class TestCurve(tf.keras.callbacks.Callback):
    """Benchmark-only reporting: after each epoch, ``measure(model)`` on the test rows and
    the wall seconds since ``start`` minus the time spent here. Nothing reads it during
    training (no selection); with ``ema_momentum`` it sees the moving average, as every
    epoch-end callback does (``tfrec_p5.training.fit``)."""

    def __init__(self, measure: Callable[[tf.keras.Model], dict]) -> None:
        super().__init__()
        self.measure, self.start, self.spent, self.points = measure, time.perf_counter(), \
            0.0, []

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        seconds = now - self.start - self.spent
        self.points.append({"n": epoch + 1, "seconds": round(seconds, 3),
                            **{k: round(v, 5) for k, v in self.measure(self.model).items()}})
        self.spent += time.perf_counter() - now


def reach(curve: list[dict], metric: str, target: float, higher: bool) -> float | None:
    """Wall seconds of the first curve point at or beyond ``target`` (``None``: never)."""
    for point in curve:
        if (point[metric] >= target) if higher else (point[metric] <= target):
            return point["seconds"]
    return None


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ---------------------------------------------------------------------- ours
def run_ours(train_fn: Callable, config, train: data.Interactions, evaluate: Callable,
             measure: Callable[[data.Vocabularies], Callable]) -> dict:
    """The default run (timed end to end, evaluated once on test), then the curve: its
    final fit alone (the refit's epoch count, every training row) with ``TestCurve``."""
    row = {"load_start": load()}
    start = time.perf_counter()
    trained = train_fn(train, None, config, seed=SEED, verbose=0)
    row["wall_seconds"] = round(time.perf_counter() - start, 1)
    row.update(evaluate(trained))
    epochs = len(trained.history["loss"])
    row["selection"] = {"search_epochs": len(trained.history.get("search_loss", [])),
                        "refit_epochs": epochs}
    curve = TestCurve(None)
    vocabs = data.Vocabularies.build(train)  # counted: the curve's clock started above
    curve.measure = measure(vocabs)
    train_fn(train, None, config.replace(refit=False, validation_fraction=0.0, epochs=epochs),
             vocabs=vocabs, seed=SEED, verbose=0, callbacks=[curve])
    row["curve"] = curve.points
    row["load_end"] = load()
    return row


def ours_rating(train, test, quick: bool) -> dict:
    config = RatingConfig(epochs=QUICK_EPOCHS) if quick else RatingConfig()
    return {"config": "RatingConfig()" + (f" epochs={QUICK_EPOCHS}" if quick else ""),
            **run_ours(train_rating, config, train,
                       lambda t: evaluate_rating(t.model, test, t.vocabs),
                       lambda vocabs: lambda model: evaluate_rating(model, test, vocabs))}


def ours_retrieval(train, test, quick: bool) -> dict:
    config = UnifiedConfig().replace(**RETRIEVAL_SELECTION)
    if quick:
        config = config.replace(epochs=QUICK_EPOCHS)

    def evaluate(trained) -> dict:
        out = trained.evaluate(test, factorized_ks=())
        return {k: out[f"retrieval_{k}"] for k in RETRIEVAL_KEYS}

    def measure(vocabs):
        validation = RetrievalValidation(test, vocabs, *history_csr(train, vocabs))

        def on(model) -> dict:
            logs: dict = {}
            validation.set_model(model)
            validation.on_epoch_end(0, logs)
            return {k: logs[f"val_{k}"] for k in RETRIEVAL_KEYS}
        return on
    return {"config": f"UnifiedConfig() + RETRIEVAL_SELECTION {RETRIEVAL_SELECTION}"
                      + (f" epochs={QUICK_EPOCHS}" if quick else ""),
            **run_ours(train_unified, config, train, evaluate, measure)}


# ---------------------------------------------------------------------- peers
def run_peer(method: str, split: Path, tmp: Path, python: str, points, rating_range) -> dict:
    """One peer's fits in the peers' environment: the worker's output arrays."""
    out = tmp / f"{method}_out.npz"
    job = {"method": method, "split": str(split), "out": str(out), "points": list(points),
           "seed": SEED, "threads": THREADS, "k": TOP_K, "rating_range": rating_range}
    (tmp / f"{method}.json").write_text(json.dumps(job))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OPENBLAS_NUM_THREADS"] = "1"
    proc = subprocess.run([python, str(WORKER), str(tmp / f"{method}.json")], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} worker failed:\n{proc.stderr[-2000:]}")
    with np.load(out) as arrays:
        return {k: arrays[k] for k in arrays.files}


def peer_row(method: str, result: dict, score: Callable[[dict, int], dict]) -> dict:
    """Curve points (one fit each) with their metrics; the last point is the peer's."""
    curve = [{"n": int(n), "seconds": round(float(s), 3), "predict_seconds":
              round(float(p), 3), **{k: round(v, 5) for k, v in score(result, j).items()}}
             for j, (n, s, p) in enumerate(zip(result["points"], result["fit_seconds"],
                                               result["predict_seconds"], strict=True))]
    final = curve[-1]
    return {"method": NAMES[method], "points": [int(n) for n in result["points"]],
            "wall_seconds": final["seconds"],
            "prepare_seconds": round(float(result["prepare_seconds"]), 2),
            **{k: v for k, v in final.items() if k not in ("n", "seconds")}, "curve": curve}


def list_scorer(lists: np.ndarray, num_items: int) -> Callable[[np.ndarray], np.ndarray]:
    """``[U, K]`` top-K item indices per user index (-1 padding) → a ``score_fn``: K for
    the first item down to 1 for the last, -inf for every unlisted item."""
    k = lists.shape[1]

    def score(queries: np.ndarray) -> np.ndarray:
        rows = lists[np.asarray(queries)]
        out = np.full((len(rows), num_items), -np.inf)
        r, c = np.nonzero(rows > 0)
        out[r, rows[r, c]] = k - c
        return out
    return score


def factor_scorer(users: np.ndarray, items: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A peer's factors (no unknown row / column) → a ``score_fn`` over vocabulary indices."""
    def score(queries: np.ndarray) -> np.ndarray:
        out = np.full((len(queries), len(items) + 1), -np.inf)
        out[:, 1:] = users[np.asarray(queries) - 1] @ items.T
        return out
    return score


# ---------------------------------------------------------------------- tasks
def compare(ours: dict, rows: list[dict], metrics: tuple[str, ...], higher: bool) -> None:
    """Per row: when ours' curve first reaches the row's final metric, the ratio to the
    row's wall seconds, and whether the issue's bar holds (at most half the time, equal
    or better final quality), on the curve and end to end (search + refit)."""
    for row in rows:
        row["ours_vs"] = {}
        for m in metrics:
            t = reach(ours["curve"], m, row[m], higher)
            wall = row["wall_seconds"]
            better = ours[m] >= row[m] if higher else ours[m] <= row[m]
            row["ours_vs"][m] = {
                "ours_reaches_s": t, "ratio": None if t is None else round(t / wall, 2),
                "ours_final_at_least_as_good": bool(better),
                "bar_on_curve": bool(better and t is not None and t <= 0.5 * wall),
                "end_to_end_ratio": round(ours["wall_seconds"] / wall, 2),
                "bar_end_to_end": bool(better and ours["wall_seconds"] <= 0.5 * wall)}


def rating_task(data_root: Path, tmp: Path, python: str | None, quick: bool) -> dict:
    table, how, split = load_tfrs_split(str(data_root / "ml-100k"))
    train, test = split.train, split.test
    vocabs = data.Vocabularies.build(train)
    write_split(tmp / "rating.npz", train, test, vocabs)
    out = {"data": f"ML-100K TFRS split ({how})", "sizes": {"train": len(train),
                                                            "test": len(test)},
           "machine_load": {"start": load()}, "rows": []}
    start = time.perf_counter()
    ref = bias_baseline(train, seed=SEED)
    out["rows"].append({"method": "bias baseline (reference)",
                        "wall_seconds": round(time.perf_counter() - start, 2),
                        **evaluate_signature(ref.signature("predict_rating"), test),
                        "choice": ref.choice})
    if python:
        for method in ("svd", "svdpp"):
            result = run_peer(method, tmp / "rating.npz", tmp, python,
                              (QUICK_POINTS if quick else POINTS)[method],
                              list(train.rating_range or (train.rating.min(),
                                                          train.rating.max())))
            out["rows"].append(peer_row(method, result, lambda r, j: rating_metrics(
                r["predictions"][j], test.rating)))
            print(f"  {NAMES[method]}: {out['rows'][-1]['rmse']:.4f} in "
                  f"{out['rows'][-1]['wall_seconds']} s", flush=True)
    out["ours"] = ours_rating(train, test, quick)
    compare(out["ours"], out["rows"], ("rmse",), higher=False)
    out["machine_load"]["end"] = load()
    return out


def retrieval_task(name: str, data_root: Path, tmp: Path, python: str | None,
                   quick: bool) -> dict:
    if name == "ml1m":
        train, test = load_ml1m(data_root / "ml-1m")
        about = "ML-1M implicit, LightGCN split (train + valid fitted, test held out)"
    else:
        _, how, split = load_tfrs_split(str(data_root / "ml-100k"))
        train, test = split.train, split.test
        about = f"ML-100K TFRS split, every rating a positive ({how})"
    vocabs = data.Vocabularies.build(train)
    seen = history_csr(train, vocabs)
    path = tmp / f"{name}.npz"
    write_split(path, train, test, vocabs)

    def evaluate(score_fn) -> dict:
        m = retrieval_metrics(score_fn, test, vocabs, *seen, (10, TOP_K), ())
        return {k: m[k] for k in RETRIEVAL_KEYS}

    out = {"data": about, "sizes": {"train": len(train), "test": len(test),
                                    "users": len(vocabs.user) - 1,
                                    "items": len(vocabs.item) - 1},
           "machine_load": {"start": load()}, "rows": []}
    start = time.perf_counter()
    refs = retrieval_references(train, k=TOP_K, seed=SEED)
    fit_seconds = round(time.perf_counter() - start, 2)
    for ref in refs:
        assert np.array_equal(ref.vocabs.item.tokens, vocabs.item.tokens)
        assert np.array_equal(ref.vocabs.user.tokens, vocabs.user.tokens)

        def score(q, model=ref.model):
            s = np.asarray(model.score(q), np.float64)
            s[:, 0] = -np.inf
            return s
        out["rows"].append({"method": f"{ref.name} (reference)", "wall_seconds": fit_seconds,
                            **evaluate(score), "choice": ref.choice,
                            "note": "wall: all references together, EASE's λ search included"})
    unknown = np.full((1, TOP_K), -1, np.int32)  # the peers' lists start at user index 1
    if python:
        for method in ("als", "bpr"):
            result = run_peer(method, path, tmp, python,
                              (QUICK_POINTS if quick else POINTS)[method], [0.0, 1.0])
            def score(r, j):
                return evaluate(list_scorer(np.concatenate([unknown, r["lists"][j]]),
                                            len(vocabs.item)))
            row = peer_row(method, result, score)
            row["cross_check_full_scores"] = {k: round(v, 5) for k, v in evaluate(
                factor_scorer(result["user_factors"], result["item_factors"])).items()}
            out["rows"].append(row)
            print(f"  {NAMES[method]}: R@10 {row['recall@10']:.4f} in {row['wall_seconds']} s",
                  flush=True)
    out["ours"] = ours_retrieval(train, test, quick)
    compare(out["ours"], out["rows"], ("recall@10", "recall@100"), higher=True)
    out["machine_load"]["end"] = load()
    return out


# ---------------------------------------------------------------------- report
def _s(x) -> str:
    return "never" if x is None else f"{x:g}"


def table(name: str, task: dict, metrics: tuple[str, ...], compared: tuple[str, ...]) -> str:
    """Markdown: final metrics, wall seconds and when ours' curve reaches each row's
    ``compared`` metrics (seconds and ratio to the row's wall seconds); then the curves."""
    ours = task["ours"]
    head = " | ".join(metrics)
    vs = " | ".join(f"ours reaches its {m}: s (ratio)" for m in compared)
    lines = [f"### {name}: {task['data']}", "",
             f"| method | {head} | wall s | {vs} |",
             "|" + "---|" * (2 + len(metrics) + len(compared))]
    for row in task["rows"]:
        cells = " | ".join(f"{row[m]:.4f}" for m in metrics)
        cmp = " | ".join(f"{_s(row['ours_vs'][m]['ours_reaches_s'])} "
                         f"({_s(row['ours_vs'][m]['ratio'])})" for m in compared)
        lines.append(f"| {row['method']} | {cells} | {row['wall_seconds']} | {cmp} |")
    sel = ours["selection"]
    lines.append(f"| **ours** (default; search {sel['search_epochs']} + refit "
                 f"{sel['refit_epochs']} epochs) | "
                 + " | ".join(f"**{ours[m]:.4f}**" for m in metrics)
                 + f" | {ours['wall_seconds']} end to end, {ours['curve'][-1]['seconds']} the "
                   f"refit alone |" + " |" * len(compared))
    lines += ["", "Curves (training length n: wall s → " + metrics[0] + "):", ""]
    for row in task["rows"]:
        if "curve" in row:
            lines.append(f"* {row['method']}: " + ", ".join(
                f"{p['n']}: {p['seconds']} → {p[metrics[0]]:.4f}" for p in row["curve"]))
    lines.append("* ours (refit alone, epoch n): " + ", ".join(
        f"{p['n']}: {p['seconds']} → {p[metrics[0]]:.4f}" for p in ours["curve"]))
    return "\n".join(lines)


def versions(python: str, modules: tuple[str, ...]) -> str:
    """``"name version, ..."`` of ``modules`` as the peers' interpreter ``python`` imports
    them (recorded beside the results)."""
    code = ("import importlib; print(', '.join(f'{m} ' + importlib.import_module(m)"
            f".__version__ for m in {list(modules)!r}))")
    return subprocess.run([python, "-c", code], capture_output=True,
                          text=True).stdout.strip()


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                .splitlines() if ln.startswith("model name")), "unknown")
    return {"nproc": os.cpu_count(), "cpu": cpu,
            "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help=f"ML-100K only, ours {QUICK_EPOCHS} epochs, short peer curves: smoke")
    p.add_argument("--tasks", nargs="+", default=["rating", "ml100k", "ml1m"],
                   choices=["rating", "ml100k", "ml1m"],
                   help="rating (ML-100K), retrieval on ml100k / ml1m")
    p.add_argument("--data-root", type=Path, default=DATA)
    p.add_argument("--peers-python", default=PEERS_PYTHON)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    tasks = [t for t in args.tasks if not (args.quick and t == "ml1m")]
    out_path = args.out or ROOT / "benchmarks/results" / (
        "peers_quick.json" if args.quick else "peers.json")
    python = args.peers_python if os.path.exists(args.peers_python) else None
    result = {"command": " ".join(["benchmarks/peers.py", *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "quick": args.quick,
              "seed": SEED, "peers_install": INSTALL, "peers": None,
              "machine": {**machine(), "note": "2 cores shared with another engineer's "
                                               "TensorFlow job"}, "tasks": {}}
    if python is None:
        print(f"peers skipped: no {args.peers_python} (install: {INSTALL})", flush=True)
    else:
        result["peers"] = versions(python, ("implicit", "surprise", "numpy"))
    print(result["machine"], result["peers"], flush=True)

    def save():
        result["machine"]["uptime_end"] = machine()["uptime"]
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=1) + "\n")

    reports = []
    with tempfile.TemporaryDirectory(prefix="tfrec_peers_") as tmp:
        for task in tasks:
            print(f"{task} ...", flush=True)
            if task == "rating":
                result["tasks"][task] = rating_task(args.data_root, Path(tmp), python,
                                                    args.quick)
                reports.append(table("Rating, ML-100K", result["tasks"][task],
                                     ("rmse", "mae"), ("rmse",)))
            else:
                result["tasks"][task] = retrieval_task(task, args.data_root, Path(tmp),
                                                       python, args.quick)
                reports.append(table(f"Retrieval, {task}", result["tasks"][task],
                                     RETRIEVAL_KEYS, RETRIEVAL_KEYS[:2]))
            save()
            print(reports[-1], flush=True)
    bars = {"implicit ALS, ML-1M, recall@10": ("ml1m", "implicit ALS", "recall@10"),
            "Surprise SVD++, ML-100K, rmse": ("rating", "Surprise SVD++", "rmse")}
    result["done_when"] = {}
    for label, (task, method, metric) in bars.items():
        row = next((r for r in result["tasks"].get(task, {}).get("rows", [])
                    if r["method"] == method), None)
        if row is not None:
            result["done_when"][label] = row["ours_vs"][metric]
            print(label, row["ours_vs"][metric], flush=True)
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
