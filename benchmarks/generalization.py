"""Generalization suite (issue #20): the CLI defaults vs simple references on data nobody
tuned them on.

Why: every default was chosen on ML-100K or Beauty. This suite asks whether a user who
runs ``tfrec-p5 train`` with no config on *other* data still beats the simple references
that ``train`` fits beside the model (bias baseline; most popular, EASE / item-KNN;
most popular, item-KNN). Each run is exactly a user's command,

    tfrec-p5 train --task T --data SPEC --split S --seed N --json --quiet --out TMP

and the row keeps its test metrics, each reference's, the ``note:`` / ``validation:``
lines (what validation chose) and the export's metadata. Derived data sets are written to
a temporary folder (never into the repository); a data set whose source files are absent
is skipped. The suite's test parts are for reporting, once per change: never tune on them.

Data sets (``--datasets``): ``ml1m`` (ML-1M implicit, its published split: train + valid
→ ``--data``, test → ``--test-data``; no order, so no sequential task), ``ml100k-sparse10``
(a seeded 25 % of ML-100K's ratings, then 5-core, ratings ``round(2.5 (r - 1))`` on 0–10),
``ml100k-temporal`` (``temporal:0.8``), ``beauty-short`` (Beauty users with ≤ 8 events),
``beauty-half`` (events on the first half of Beauty's item IDs), and synthetic
``synth-sparse`` (~3 events a user), ``synth-longtail`` (20,000 items for 100,000 events)
and ``synth-100k`` (100,000 items; above the item-KNN limit, so most popular is the only
retrieval reference).

Bars (the issue's done-when): rating test RMSE ≤ the bias baseline (aim: ≥ 1 % lower);
retrieval Recall@10 ≥ the best reference; next-item HR@10 ≥ 1.2 × item-KNN and ≥ the best
reference.

    PYTHONPATH=. .venv/bin/python benchmarks/generalization.py --quick   # 1 seed, 2 epochs
    PYTHONPATH=. .venv/bin/python benchmarks/generalization.py \\
        --out benchmarks/results/generalization.json                     # seeds 0 1 2

``--resume`` keeps the finished rows of ``--out`` and runs only the missing ones.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
HEADLINE = {"rating": ("rmse", False), "retrieval": ("recall@10", True),
            "sequential": ("hr@10", True)}
SPARSE_SEED = 20  # the ML-100K 25 % sample: fixed, so every seed sees the same data set
SYNTHETIC = {  # synthetic data seed 0 (the spec's default); the run seed varies the split
    "synth-sparse": "synthetic?num_users=30000&num_items=3000&num_interactions=90000",
    "synth-longtail": "synthetic?num_users=5000&num_items=20000&num_interactions=100000",
    "synth-100k": "synthetic?num_users=30000&num_items=100000&num_interactions=600000",
}
QUICK_EPOCHS = 2


# ---------------------------------------------------------------------- builders
def rescale_0_10(rating: np.ndarray) -> np.ndarray:
    """1–5 stars → 0–10: ``round(2.5 (r - 1))`` (numpy rounds halves to even: 2, 8)."""
    return np.round(2.5 * (np.asarray(rating, np.float64) - 1.0))


def k_core(users: np.ndarray, items: np.ndarray, k: int = 5) -> np.ndarray:
    """Boolean mask of the rows left once every user and item has ≥ ``k`` rows (iterated
    until nothing changes)."""
    keep = np.ones(len(users), bool)
    while True:
        u, uc = np.unique(users[keep], return_counts=True)
        i, ic = np.unique(items[keep], return_counts=True)
        new = keep & np.isin(users, u[uc >= k]) & np.isin(items, i[ic >= k])
        if new.sum() == keep.sum():
            return new
        keep = new


def short_users(seqs: dict[str, list[str]], max_events: int = 8) -> dict[str, list[str]]:
    """The users with at most ``max_events`` events."""
    return {u: s for u, s in seqs.items() if len(s) <= max_events}


def first_half_items(seqs: dict[str, list[str]]) -> dict[str, list[str]]:
    """Only the events on the first half of the item IDs (numeric order); users left
    with no event are dropped."""
    ids = sorted({i for s in seqs.values() for i in s}, key=int)
    keep = set(ids[:len(ids) // 2])
    out = {u: [i for i in s if i in keep] for u, s in seqs.items()}
    return {u: s for u, s in out.items() if s}


def read_lines(path: Path) -> dict[str, list[str]]:
    """``user item item ...`` per line (S3-Rec and LightGCN formats)."""
    with open(path, encoding="utf-8") as f:
        return {p[0]: p[1:] for p in (line.split() for line in f) if p}


def write_sequences(seqs: dict[str, list[str]], path: Path, attributes: Path | None) -> str:
    """An ``amazon:`` file, with the attribute file cut to its items as its sibling."""
    path.write_text("".join(f"{u} {' '.join(s)}\n" for u, s in seqs.items()))
    if attributes is not None and attributes.exists():
        items = {i for s in seqs.values() for i in s}
        attrs = json.loads(attributes.read_text())
        sibling = path.with_name(f"{path.stem}_item2attributes.json")
        sibling.write_text(json.dumps({i: a for i, a in attrs.items() if i in items}))
    return f"amazon:{path}"


def write_pairs(seqs: dict[str, list[str]], path: Path) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write("user_id,item_id\n")
        f.writelines(f"{u},{i}\n" for u, s in seqs.items() for i in s)
    return f"csv:{path}"


def build(name: str, root: Path, tmp: Path) -> tuple[dict[str, list[str]], str] | None:
    """``({task: extra train arguments}, description)``, or ``None`` if the source
    files are absent."""
    ml100k, beauty, ml1m = root / "ml-100k", root / "amazon" / "Beauty.txt", root / "ml-1m"
    attrs = root / "amazon" / "Beauty_item2attributes.json"
    if name in SYNTHETIC:
        args = ["--data", SYNTHETIC[name], "--split", "random:0.8"]
        return {"rating": args, "retrieval": args}, SYNTHETIC[name]
    if name == "ml1m":
        if not all((ml1m / f).exists() for f in ("train.txt", "valid.txt", "test.txt")):
            return None
        fit = read_lines(ml1m / "train.txt")
        for u, s in read_lines(ml1m / "valid.txt").items():
            fit.setdefault(u, []).extend(s)
        args = ["--data", write_pairs(fit, tmp / "ml1m_fit.csv"), "--split", "none",
                "--test-data", write_pairs(read_lines(ml1m / "test.txt"),
                                           tmp / "ml1m_test.csv")]
        return {"retrieval": args}, "ML-1M implicit, published split (train+valid / test)"
    if name.startswith("ml100k"):
        if not (ml100k / "u.data").exists():
            return None
        if name == "ml100k-temporal":
            args = ["--data", f"movielens:{ml100k}", "--split", "temporal:0.8"]
            return ({"rating": args, "retrieval": args, "sequential": args},
                    "ML-100K (features from u.item / u.user), global time cut at 80 %")
        raw = np.loadtxt(ml100k / "u.data", dtype=np.int64, delimiter="\t")
        raw = raw[np.sort(np.random.default_rng(SPARSE_SEED).choice(
            len(raw), len(raw) // 4, replace=False))]
        raw = raw[k_core(raw[:, 0], raw[:, 1], 5)]
        path = tmp / "ml100k_sparse10.csv"
        rating = rescale_0_10(raw[:, 2])
        with open(path, "w", encoding="utf-8") as f:
            f.write("user_id,item_id,rating,timestamp\n")
            f.writelines(f"{u},{i},{r:g},{t}\n" for (u, i, _, t), r in zip(raw, rating,
                                                                          strict=True))
        args = ["--data", f"csv:{path}", "--split", "random:0.8"]
        return ({"rating": args, "retrieval": args},
                f"ML-100K 25 % sample (seed {SPARSE_SEED}), 5-core: {len(raw):,} ratings "
                f"on 0-10 {sorted(Counter(rating.tolist()))}, IDs only")
    if name.startswith("beauty"):
        if not beauty.exists():
            return None
        seqs = read_lines(beauty)
        if name == "beauty-short":
            seqs = short_users(seqs, 8)
            spec = write_sequences(seqs, tmp / "beauty_short.txt", attrs)
            tasks = {"sequential": ["--data", spec, "--split", "leave-one-out"],
                     "retrieval": ["--data", spec, "--split", "random:0.8"]}
        else:
            seqs = first_half_items(seqs)
            spec = write_sequences(seqs, tmp / "beauty_half.txt", attrs)
            tasks = {"sequential": ["--data", spec, "--split", "leave-one-out"]}
        n = sum(len(s) for s in seqs.values())
        return tasks, f"{len(seqs):,} users, {n:,} events (attributes cut to its items)"
    raise ValueError(name)


#: Cheapest first (wall time of the --quick run), so a budget-limited run covers the most.
DATASETS = ("ml100k-sparse10", "synth-longtail", "synth-sparse", "ml100k-temporal",
            "beauty-half", "beauty-short", "ml1m", "synth-100k")


# ---------------------------------------------------------------------- one run
def parse_metrics(metrics: dict) -> tuple[dict, dict[str, dict]]:
    """(model's test metrics, {reference: its test metrics}) from ``train --json``; the
    test part is ``test`` or, with ``--split none``, ``test_data``."""
    part = "test" if any(k.startswith("test_") and not k.startswith("test_data_")
                         for k in metrics) else "test_data"
    model = {k[len(part) + 1:]: v for k, v in metrics.items() if k.startswith(part + "_")}
    refs: dict[str, dict] = {}
    for key, value in metrics.items():
        m = re.match(r"^reference_(.+?)_(test_data|test)_(.+)$", key)
        if m and m.group(2) == part:
            refs.setdefault(m.group(1).replace("_", " "), {})[m.group(3)] = value
    return model, refs


def parse_race(metrics: dict) -> dict[str, dict]:
    """``{"model" | reference: validation metrics}``: the validation race ``train`` ran
    (the model's row is cross-fitted for sequential)."""
    race: dict[str, dict] = {}
    for key, value in metrics.items():
        m = re.match(r"^(?:reference_(.+?)_)?validation_(.+)$", key)
        if m:
            name = m.group(1).replace("_", " ") if m.group(1) else "model"
            race.setdefault(name, {})[m.group(2)] = value
    return race


TIE = 1e-6


def judge(task: str, model: dict, refs: dict[str, dict]) -> dict:
    """Best reference on the headline, model / best, and the done-when bar."""
    if task not in HEADLINE:  # a run kind without a bar (p5_table's --task all)
        return {"pass": None}
    metric, higher = HEADLINE[task]
    scored = {n: r[metric] for n, r in refs.items() if metric in r}
    if metric not in model or not scored:
        return {"headline": metric, "pass": None}
    best = (max if higher else min)(scored, key=scored.get)
    value, ref = model[metric], scored[best]
    out = {"headline": metric, "model": value, "best_reference": best, "reference": ref,
           "ratio": value / ref if ref else None,
           # A served reference (train's validation race) equals its numpy twin only to
           # float32 precision: within TIE of the reference is a tie, not a loss.
           "pass": value >= ref * (1 - TIE) if higher else value <= ref * (1 + TIE)}
    if task == "rating":
        out["aim_1pct"] = value <= 0.99 * ref
    if task == "sequential":
        knn = scored.get("item-KNN")
        out["knn_1.2x"] = None if knn is None else value >= 1.2 * knn
        out["pass"] = out["pass"] and bool(out["knn_1.2x"])
    return out


def run(task: str, args: list[str], seed: int, quick: bool) -> dict:
    """One ``tfrec-p5 train`` in a child process; its row."""
    with tempfile.TemporaryDirectory(prefix="tfrec_gen_") as out:
        cmd = [sys.executable, "-m", "tfrec_p5", "train", "--task", task, *args,
               "--seed", str(seed), "--json", "--quiet", "--out", out]
        if quick:
            cmd += ["--epochs", str(QUICK_EPOCHS)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        load, start = os.getloadavg()[0], time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        row = {"task": task, "seed": seed, "command": " ".join(["tfrec-p5", *cmd[3:-1]]),
               "seconds": round(time.time() - start, 1),
               "load": [round(load, 2), round(os.getloadavg()[0], 2)]}
        lines = proc.stderr.splitlines()
        row["notes"] = [ln for ln in lines if ln.startswith(("note:", "validation:", "split ",
                                                             "data ", "warning:"))]
        if proc.returncode != 0:
            row["error"] = {"status": proc.returncode, "stderr": lines[-5:]}
            return row
        metrics = json.loads(proc.stdout.strip().splitlines()[-1])
        model, refs = parse_metrics(metrics)
        meta_files = sorted(Path(out).glob("*/assets.extra/metadata.json"))
        meta = json.loads(meta_files[-1].read_text()) if meta_files else {}
        row.update(model=model, references=refs, judge=judge(task, model, refs),
                   race=parse_race(metrics), served=meta.get("served", "model"),
                   selection={k: meta[k] for k in ("epochs_run", "stopped_epoch", "best_epoch",
                                                   "refit_on_validation", "rating_range",
                                                   "sizes", "config") if k in meta})
        return row


# ---------------------------------------------------------------------- report
def summary(rows: list[dict]) -> str:
    """Mean ± std over seeds per data set and task: model, best reference, ratio, bar."""
    def ms(xs):
        return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs) if len(xs) > 1 else 0:.4f}"
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["task"]), []).append(r)
    lines = ["| data set | task | metric | seeds | model | best reference | ratio | "
             "bar holds | other references |", "|" + "---|" * 9]
    for (name, task), rs in groups.items():
        ok = [r for r in rs if "judge" in r and r["judge"].get("pass") is not None]
        if not ok:
            err = next((r["error"]["stderr"][-1:] for r in rs if "error" in r), ["no metrics"])
            lines.append(f"| {name} | {task} | - | 0 | **failed**: {err[0][:120]} |||||")
            continue
        metric, best = ok[0]["judge"]["headline"], Counter(r["judge"]["best_reference"]
                                                            for r in ok).most_common(1)[0][0]
        passed = sum(bool(r["judge"]["pass"]) for r in ok)
        extra = ""
        if task == "rating":
            extra = f"; ≥1 % better: {sum(r['judge']['aim_1pct'] for r in ok)}/{len(ok)}"
        others = ", ".join(f"{n} {statistics.mean(r['references'][n][metric] for r in ok):.4f}"
                           for n in ok[0]["references"] if n != best
                           and all(metric in r["references"].get(n, {}) for r in ok))
        lines.append(
            f"| {name} | {task} | {metric} | {len(ok)} | {ms([r['judge']['model'] for r in ok])}"
            f" | {best} {ms([r['references'][best][metric] for r in ok])}"
            f" | {statistics.mean(r['judge']['ratio'] or float('nan') for r in ok):.3f}"
            f" | {passed}/{len(ok)}{extra} | {others or '-'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--tasks", nargs="+", default=list(HEADLINE), choices=list(HEADLINE))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--quick", action="store_true", help=f"one seed (the first), --epochs "
                   f"{QUICK_EPOCHS}: a smoke test, not the defaults' numbers")
    p.add_argument("--data-root", type=Path, default=DATA)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/generalization.json")
    p.add_argument("--resume", action="store_true", help="keep --out's finished rows")
    args = p.parse_args(argv)
    seeds = args.seeds[:1] if args.quick else args.seeds
    result = {"quick": args.quick, "epochs": QUICK_EPOCHS if args.quick else "defaults",
              "command": " ".join(["benchmarks/generalization.py", *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "machine": {"nproc": os.cpu_count(), "load_start": os.getloadavg()},
              "datasets": {}, "skipped": [], "rows": []}
    if args.resume and args.out.exists():
        old = json.loads(args.out.read_text())
        result["rows"] = [r for r in old["rows"] if "error" not in r]
    done = {(r["dataset"], r["task"], r["seed"]) for r in result["rows"]}

    def save():
        result["machine"]["load_end"] = os.getloadavg()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")

    print(f"{'QUICK (1 seed, --epochs 2): smoke test, not results. ' if args.quick else ''}"
          f"nproc {os.cpu_count()}, load {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="tfrec_gen_data_") as tmp:
        for name in args.datasets:
            built = build(name, args.data_root, Path(tmp))
            if built is None:
                result["skipped"].append(f"{name}: source files absent in {args.data_root}")
                print(f"skip {name}: source files absent", flush=True)
                continue
            tasks, about = built
            result["datasets"][name] = about
            for task in args.tasks:
                if task not in tasks:
                    continue
                for seed in seeds:
                    if (name, task, seed) in done:
                        continue
                    row = {"dataset": name, **run(task, tasks[task], seed, args.quick)}
                    result["rows"].append(row)
                    save()
                    j = row.get("judge", {})
                    print(f"{name} {task} seed {seed}: {row['seconds']} s, "
                          + (f"error {row['error']}" if "error" in row else
                             f"{j.get('headline')} {j.get('model', float('nan')):.4f} vs "
                             f"{j.get('best_reference')} {j.get('reference', float('nan')):.4f}"
                             f" pass={j.get('pass')}"), flush=True)
                    for note in row["notes"]:
                        if note.startswith(("note: reference", "validation:")):
                            print("   ", note, flush=True)
    if result["rows"]:
        result["summary"] = summary(result["rows"])
        print(result["summary"])
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
