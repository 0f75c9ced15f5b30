"""Peers side by side (issue #21), next item: ours vs RecBole's SASRec on Amazon Beauty.

Same cores, same data, same split, one script, as ``benchmarks/peers.py`` (whose helpers
it reuses) does for implicit and Surprise. The split is tfrec_p5's leave-one-out of
``Beauty.txt`` (per user: last item → test, second last → validation, the rest →
training; the test inputs are training + validation).

* Ours: what ``tfrec-p5 train --task sequential`` trains, ``train_sequential(train,
  validation, SequentialConfig())`` (early stopping on the validation item, then the refit
  on training + validation for the chosen epoch count), seed 42, timed end to end; its
  curve is ``peers.TestCurve`` on the refit alone (the same call with the chosen epoch
  count, every training + validation row), test metrics after each epoch.
* RecBole 1.2.0 SASRec (PyTorch, CPU, ``torch.set_num_threads(2)``) with its documented
  defaults (``overall.yaml`` + ``SASRec.yaml`` + the sequential quick-start config: 2
  layers, 2 heads, hidden 64, inner 256, dropout 0.5 / 0.5, max length 50, CE loss over
  every item, Adam lr 1e-3, batch 2048, up to 300 epochs, validation every epoch, early
  stopping after 10 epochs without a better valid MRR@10, seed 2020), in a worker
  (``benchmarks/_recbole_worker.py``) of its own environment. It gets every event as a
  RecBole atomic ``.inter`` file whose ``timestamp`` is the event's position in its user's
  sequence, so RecBole's own leave-one-out (``LS: valid_and_test``, order ``TO``) cuts the
  split; the worker returns RecBole's validation and test items and this script checks
  that they equal ours for every user. Its wall seconds are ``Trainer.fit`` alone (its
  per-epoch validation and checkpoint included, the curve's test ranking excluded;
  building RecBole's dataset and loaders is timed apart); its final quality is the test
  ranking of its best-validation epoch, the model ``run_recbole`` would test.
  RecBole 1.2.0 turns on ``torch.autograd.set_detect_anomaly`` when its sequential models
  are imported (``sine.py``); the worker turns it back off, which makes SASRec faster.

Metrics: HR@10 / NDCG@10 (and @5) of the test item ranked among every item, the user's
training + validation items removed, ties ranking the test item last: ours through
``evaluate_next_items(protocol="full")`` (the ``next_items`` signature, as
``benchmarks/sequential_beauty.py``) and ``ranking_metrics`` for the curve; SASRec's
top-10 lists (RecBole's scores, the same items removed) through ``full_ranking_metrics``
over raw item ids (``peers.list_scorer``). Test items that never occur in training +
validation (52 on Beauty) are a miss for ours (no vocabulary row); RecBole gives them an
embedding. RecBole's own test metrics of its best checkpoint (its protocol does not remove
history items for sequential models) are kept as a cross-check. Most popular and item-KNN
(``next_item_references``) are the references.

    python3.11 -m venv /tmp/recbole && /tmp/recbole/bin/pip install \\
        /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl \\
        recbole==1.2.0 'numpy<2' 'pandas<2.2'
    PYTHONPATH=. .venv/bin/python benchmarks/peers_sequential.py --max-minutes 85
    PYTHONPATH=. .venv/bin/python benchmarks/peers_sequential.py --quick   # 3,000 users

RecBole 1.2.0 needs numpy < 2 (it sets ``np.float = np.float_``) and pandas < 2.2, hence
its own environment (the CPU torch wheel from local disk, so pip never pulls a CUDA one).
``--max-minutes`` stops SASRec's fit after that many minutes (its state then is reported
as capped); without it SASRec runs RecBole's defaults to the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import tfrec_p5  # noqa: F401  (before TensorFlow)
from tfrec_p5 import data
from tfrec_p5.data import Interactions, Vocabularies
from tfrec_p5.evaluation import evaluate_next_items
from tfrec_p5.evaluation.ranking import full_ranking_metrics, group_by_row
from tfrec_p5.evaluation.served import next_item_references
from tfrec_p5.export.sequential import sequential_module
from tfrec_p5.models.sequential import (
    SequentialConfig,
    ranking_metrics,
    ranking_queries,
    train_sequential,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import (  # noqa: E402
    DATA,
    ROOT,
    SEED,
    THREADS,
    TestCurve,
    compare,
    list_scorer,
    load,
    machine,
    reach,
    table,
    versions,
)

WORKER = Path(__file__).resolve().with_name("_recbole_worker.py")
RECBOLE_PYTHON = "/tmp/recbole/bin/python"
INSTALL = ("python3.11 -m venv /tmp/recbole && /tmp/recbole/bin/pip install "
           "/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl "
           "recbole==1.2.0 'numpy<2' 'pandas<2.2'")
KEYS = ("hr@10", "ndcg@10", "hr@5", "ndcg@5")
TOP_K = 10
QUICK_USERS = 3000
QUICK_EPOCHS = 2


# ---------------------------------------------------------------------- data
def load_split(path: Path, users: int | None) -> tuple[data.Split, Interactions]:
    """Leave-one-out of ``Beauty.txt`` (its first ``users`` users) and the test inputs."""
    table_ = data.load(f"amazon:{path}")
    if users:
        keep = table_.user_id.astype(np.int64) <= users  # user ids are 1..N in line order
        table_ = table_.take(np.flatnonzero(keep))
    split = data.leave_one_out(table_)
    return split, Interactions.concat(split.train, split.validation)


def write_recbole(folder: Path, split: data.Split, history: Interactions) -> Path:
    """Every event as RecBole's ``beauty.inter`` (timestamp = position in the user's
    sequence) and the test inputs (``hist_u``, ``hist_i``) for the worker's masking."""
    (folder / "beauty").mkdir(parents=True, exist_ok=True)
    with open(folder / "beauty" / "beauty.inter", "w", encoding="utf-8") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for part in (split.train, split.validation, split.test):
            for u, i, t in zip(part.user_id, part.item_id, part.timestamp, strict=True):
                f.write(f"{u}\t{i}\t{t}\n")
    np.savez(folder / "split.npz", hist_u=history.user_id.astype(np.int64),
             hist_i=history.item_id.astype(np.int64))
    return folder / "split.npz"


# ---------------------------------------------------------------------- ours
def ours_sequential(split: data.Split, history: Interactions, quick: bool) -> dict:
    """The default run (timed end to end, evaluated once on test), then its refit alone
    with ``TestCurve`` (test HR / NDCG after each epoch)."""
    config = SequentialConfig(epochs=QUICK_EPOCHS) if quick else SequentialConfig()
    row = {"config": "SequentialConfig()" + (f" epochs={QUICK_EPOCHS}" if quick else ""),
           "load_start": load()}
    start = time.perf_counter()
    trained = train_sequential(split.train, split.validation, config, seed=SEED)
    row["wall_seconds"] = round(time.perf_counter() - start, 1)
    module = sequential_module(trained.vocabs, trained.head, top_k=trained.config.top_k)
    test = evaluate_next_items(module.signature, split.test, history, protocol="full")
    row.update({k: test[k] for k in KEYS})
    refit = sum(1 for r in trained.history if r.get("refit"))
    row["selection"] = {"search_epochs": trained.epochs_run - refit, "refit_epochs": refit,
                        "best_epoch": trained.best_epoch,
                        "validation": trained.best_metrics}
    resolved = trained.config  # "auto" values as the data decided them
    vocabs = Vocabularies.build(history)
    queries = ranking_queries(history, split.test, vocabs, resolved.max_len)
    curve = TestCurve(lambda model: ranking_metrics(
        model.heads["next_item"], queries, batch_size=resolved.eval_batch_size))
    again = train_sequential(history, None, resolved.replace(
        refit=False, epochs=trained.best_epoch, max_minutes=None), seed=SEED,
        callbacks=[curve])
    assert np.array_equal(again.vocabs.item.tokens, vocabs.item.tokens)
    row["curve"] = curve.points
    row["load_end"] = load()
    return row


# ---------------------------------------------------------------------- RecBole
def run_recbole(tmp: Path, split_path: Path, python: str, epochs: int | None,
                max_minutes: float | None) -> dict:
    """SASRec in RecBole's environment: the worker's output arrays."""
    out = tmp / "sasrec_out.npz"
    job = {"data_dir": str(tmp), "split": str(split_path), "out": str(out),
           "threads": THREADS, "k": TOP_K, "epochs": epochs, "max_minutes": max_minutes}
    (tmp / "sasrec.json").write_text(json.dumps(job))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = str(THREADS)
    proc = subprocess.run([python, str(WORKER), str(tmp / "sasrec.json")], env=env,
                          cwd=tmp)  # RecBole writes ./log/
    if proc.returncode != 0:
        raise RuntimeError(f"RecBole worker failed ({proc.returncode})")
    with np.load(out) as arrays:
        return {k: arrays[k] for k in arrays.files}


def same_items(users: np.ndarray, items: np.ndarray, part: Interactions) -> bool:
    """Whether RecBole's (user, item) rows are ``part``'s, user for user."""
    ours = dict(zip(part.user_id.astype(np.int64).tolist(),
                    part.item_id.astype(np.int64).tolist(), strict=True))
    return len(ours) == len(users) and all(
        ours.get(u) == i for u, i in zip(users.tolist(), items.tolist(), strict=True))


def sasrec_row(result: dict, split: data.Split, history: Interactions) -> dict:
    """Every epoch's test metrics from its top-10 lists (tfrec_p5's ranking code, raw item
    ids); the final ones are the best-validation epoch's."""
    assert same_items(result["valid_u"], result["valid_i"], split.validation), \
        "RecBole's validation items differ from ours"
    assert same_items(result["test_u"], result["test_i"], split.test), \
        "RecBole's test items differ from ours"
    users = split.test.user_id.astype(np.int64)
    targets = split.test.item_id.astype(np.int64)[:, None]
    n_users = int(max(users.max(), result["users"].max())) + 1
    n_items = int(max(history.item_id.astype(np.int64).max(), targets.max())) + 1
    exclude = group_by_row(history.user_id.astype(np.int64),
                           history.item_id.astype(np.int64), n_users)[users]

    def evaluate(lists: np.ndarray) -> dict:
        full = np.full((n_users, lists.shape[1]), -1, np.int64)
        full[result["users"]] = lists
        m = full_ranking_metrics(list_scorer(full, n_items), users, targets, exclude,
                                 ks=(5, 10))
        return {k: round(m[k], 5) for k in KEYS}

    curve = [{"n": int(n), "seconds": round(float(s), 1),
              "valid_mrr@10": round(float(v), 5), **evaluate(lists)}
             for n, s, v, lists in zip(result["epochs"], result["seconds"],
                                       result["valid_score"], result["lists"], strict=True)]
    best = int(np.flatnonzero(result["best"])[-1])
    own = dict(zip(result["recbole_test_keys"].tolist(),
                   result["recbole_test"].tolist(), strict=True))
    return {"method": "RecBole SASRec", "wall_seconds": round(float(result["fit_seconds"]), 1),
            "prepare_seconds": round(float(result["prepare_seconds"]), 1),
            **{k: curve[best][k] for k in KEYS}, "best_epoch": curve[best]["n"],
            "epochs_run": len(curve), "capped": bool(result["capped"]),
            "split_check": "RecBole's validation and test items equal ours for all "
                           f"{len(users)} users",
            "recbole_own_test_of_best_checkpoint": own,
            "settings": json.loads(str(result["settings"])), "curve": curve}


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help=f"first {QUICK_USERS} users, {QUICK_EPOCHS} epochs each: smoke")
    p.add_argument("--data", type=Path, default=DATA / "amazon" / "Beauty.txt")
    p.add_argument("--recbole-python", default=RECBOLE_PYTHON)
    p.add_argument("--max-minutes", type=float,
                   help="stop SASRec's fit after this many minutes (reported as capped)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    out_path = args.out or ROOT / "benchmarks/results" / (
        "peers_sasrec_quick.json" if args.quick else "peers_sasrec.json")
    python = args.recbole_python if os.path.exists(args.recbole_python) else None
    split, history = load_split(args.data, QUICK_USERS if args.quick else None)
    result = {"command": " ".join(["benchmarks/peers_sequential.py", *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "quick": args.quick,
              "seed": SEED, "recbole_install": INSTALL, "max_minutes": args.max_minutes,
              "machine": {**machine(), "note": "2 cores shared with another engineer's "
                                               "jobs"},
              "data": f"Amazon Beauty ({args.data.name}), leave-one-out",
              "sizes": {"train": len(split.train), "validation": len(split.validation),
                        "test": len(split.test)}, "rows": []}
    if python is None:
        print(f"RecBole skipped: no {args.recbole_python} (install: {INSTALL})", flush=True)
    else:
        result["peer"] = versions(python, ("recbole", "torch", "numpy", "pandas"))
    print(result["machine"], result.get("peer"), flush=True)

    def save():
        result["machine"]["uptime_end"] = machine()["uptime"]
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=1) + "\n")

    for ref in next_item_references(history, k=100):
        start = time.perf_counter()
        m = evaluate_next_items(ref.signature, split.test, history, protocol="full")
        result["rows"].append({"method": f"{ref.name} (reference)",
                               "wall_seconds": round(time.perf_counter() - start, 1),
                               **{k: round(m[k], 5) for k in KEYS},
                               "note": "wall: fit and evaluation together"})
    print("ours ...", flush=True)
    result["ours"] = ours_sequential(split, history, args.quick)
    save()
    print({k: result["ours"][k] for k in (*KEYS, "wall_seconds")}, flush=True)
    if python:
        with tempfile.TemporaryDirectory(prefix="tfrec_recbole_") as tmp:
            split_path = write_recbole(Path(tmp), split, history)
            raw = run_recbole(Path(tmp), split_path, python,
                              QUICK_EPOCHS if args.quick else None, args.max_minutes)
        row = sasrec_row(raw, split, history)
        row["sasrec_reaches_ours_s"] = {m: reach(row["curve"], m, result["ours"][m], True)
                                        for m in KEYS[:2]}
        result["rows"].append(row)
    compare(result["ours"], result["rows"], KEYS[:2], higher=True)
    sasrec = next((r for r in result["rows"] if r["method"] == "RecBole SASRec"), None)
    if sasrec is not None:
        result["done_when"] = {f"RecBole SASRec, Beauty, {m}": sasrec["ours_vs"][m]
                               for m in KEYS[:2]}
        print(result["done_when"], flush=True)
    result["machine_load_end"] = load()
    save()
    print(table("Next item, Amazon Beauty", result, KEYS, KEYS[:2]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
