"""The P5 table (issue #18): one joint model vs each single-task specialist, task by task.

Why: P5's claim is that *one* model serves rating, retrieval, next-item and direct
recommendation, and that learning the tasks together helps each. Every row here is a
user's command on the same leave-one-out split (per user: last event by time = test,
second last = validation, the rest = training; ties in file order):

    tfrec-p5 train --task all        --split leave-one-out ...   # the joint model
    tfrec-p5 train --task sequential --split leave-one-out ...   # next-item specialist
    tfrec-p5 train --task retrieval  --split leave-one-out ...   # retrieval specialist
    tfrec-p5 train --task rating     --split leave-one-out ...   # rating specialist

plus pretrain → finetune: the same joint model pretrained on the tasks the data support
(``tfrec-p5 pretrain --tasks ...``), its backbone then fine-tuned once per task
(``tfrec-p5 finetune --task ...``), each fine-tuned model scored on its own metric;
and every task is scored on the same test events: RMSE of their ratings, Recall/NDCG@10
of ``recommend`` (training items excluded), HR/NDCG@5/10 of ``next_items`` over the full
catalog, and P5's 1 + 99 direct protocol (``sampled_*``). The simple references are the
ones ``train`` fits beside each model (bias baseline, most popular, item-KNN, EASE), and
the published Beauty numbers are printed beside ours. Each specialist selects its epochs
on validation by its own default rule, as the joint model does (the issue's "same epoch
budget": every run may stop early within its default bound, printed per row).

    PYTHONPATH=. .venv/bin/python benchmarks/p5_table.py --datasets ml100k --seeds 0 1 2 \\
        --out benchmarks/results/p5_table_ml100k.json
    PYTHONPATH=. .venv/bin/python benchmarks/p5_table.py --datasets beauty --seeds 0 \\
        --out benchmarks/results/p5_table_beauty.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cold_start import write_json
from generalization import DATA, QUICK_EPOCHS, ROOT, run

DATASETS = {
    "ml100k": (f"movielens:{DATA / 'ml-100k'}", ("all", "sequential", "retrieval", "rating",
                                                 "pretrain")),
    "beauty": (f"amazon:{DATA / 'amazon' / 'Beauty.txt'}", ("all", "sequential",
                                                            "retrieval", "pretrain")),
}
#: pretrain → finetune: the pretraining tasks per data set (Beauty has no ratings), and
#: the prefix a fine-tuned task's test metrics take (the joint model's names).
PRETRAIN_TASKS = {"ml100k": ("retrieval", "rating", "next_item"),
                  "beauty": ("retrieval", "next_item")}
FINETUNE_PREFIX = {"rating": "rating_", "retrieval": "", "next_item": "next_item_"}
#: The next-item loss weight of #5's selection (ML-100K validation, fine-tuned NDCG@10:
#: 100 beat 1); the retrieval loss is a sum over a batch's 1,024 pairs.
PRETRAIN_WEIGHTS = "next_item=100"
#: Where each task's number is in ``train --json`` (test part), per run kind.
METRICS = {
    "rmse": {"all": "rating_rmse", "rating": "rmse"},
    "recall@10": {"all": "recall@10", "retrieval": "recall@10"},
    "ndcg@10 (recommend)": {"all": "ndcg@10", "retrieval": "ndcg@10"},
    "hr@10": {"all": "next_item_hr@10", "sequential": "hr@10"},
    "ndcg@10": {"all": "next_item_ndcg@10", "sequential": "ndcg@10"},
    "hr@5": {"all": "next_item_hr@5", "sequential": "hr@5"},
    "ndcg@5": {"all": "next_item_ndcg@5", "sequential": "ndcg@5"},
    "direct hr@10": {"all": "next_item_sampled_hr@10", "sequential": "sampled_hr@10"},
    "direct ndcg@10": {"all": "next_item_sampled_ndcg@10", "sequential": "sampled_ndcg@10"},
}
for keys in METRICS.values():  # a pretrain → finetune row uses the joint model's names
    keys["pretrain"] = keys["all"]
#: Published full-ranking Beauty numbers (HR@10, NDCG@10) and direct 1 + 99 (P5).
PUBLISHED_BEAUTY = {
    "P5 (paper; its split leaks, see RESULTS.md)": {"hr@10": 0.0664, "ndcg@10": 0.0429,
                                                    "direct hr@10": 0.3665},
    "BSARec (released log)": {"hr@10": 0.1008, "ndcg@10": 0.0611},
    "SASRec, sampled softmax (eSASRec paper)": {"hr@10": 0.0921, "ndcg@10": 0.0531},
}
TARGETS_BEAUTY = {"hr@10": 0.105, "ndcg@10": 0.063, "direct hr@10": 0.55}


def row_metrics(kind: str, row: dict) -> dict[str, float]:
    """The task metrics a run of ``kind`` reports, under this table's names."""
    model = row.get("model", {})
    return {name: model[keys[kind]] for name, keys in METRICS.items()
            if kind in keys and keys[kind] in model}


def reference_metrics(kind: str, row: dict) -> dict[str, dict[str, float]]:
    return {ref: {name: values[keys[kind]] for name, keys in METRICS.items()
                  if kind in keys and keys[kind] in values}
            for ref, values in row.get("references", {}).items()}


def _cli(args: list[str]) -> tuple[dict, list[str], float]:
    """One ``tfrec-p5`` command in a child process: its ``--json`` line, its notes and
    seconds (a failure raises with the command's last stderr lines)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "tfrec_p5", *args, "--json", "--quiet"],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    lines = proc.stderr.splitlines()
    if proc.returncode != 0:
        raise RuntimeError(f"tfrec-p5 {' '.join(args)}: status {proc.returncode}: "
                           + " | ".join(lines[-3:]))
    notes = [ln for ln in lines if ln.startswith(("note:", "warning:"))]
    return json.loads(proc.stdout.strip().splitlines()[-1]), notes, time.time() - start


def pretrain_finetune(name: str, spec: str, seed: int, quick: bool,
                      config: dict | None = None, backbone: str | None = None) -> dict:
    """The pretrain → finetune row: ``tfrec-p5 pretrain`` on the leave-one-out training
    part (``config``: its ``--config`` overrides), then ``tfrec-p5 finetune`` of that
    backbone once per task, each scored on the test events; the row's ``seconds`` add up
    every command. ``backbone``: a folder the same ``pretrain`` command wrote before
    (same data, seed, tasks, weights and config); it is fine-tuned instead, and its
    manifest's seconds count as the pretrain command's."""
    tasks = PRETRAIN_TASKS[name]
    split = ["--data", spec, "--split", "leave-one-out", "--seed", str(seed)]
    epochs = ["--epochs", str(QUICK_EPOCHS)] if quick else []
    load = os.getloadavg()[0]
    row: dict = {"task": "pretrain", "seed": seed, "model": {}, "notes": [],
                 "commands": [], "seconds_per_command": {}, "pretrain_config": config}
    reused = backbone
    with tempfile.TemporaryDirectory(prefix="tfrec_p5_pre_") as tmp:
        backbone = reused or os.path.join(tmp, "backbone")
        extra = []
        if config:
            extra = ["--config", os.path.join(tmp, "pretrain.json")]
            Path(extra[1]).write_text(json.dumps(config))
        command = ["pretrain", *split, "--tasks", ",".join(tasks), "--weights",
                   PRETRAIN_WEIGHTS, *epochs, *extra, "--out", backbone]
        try:
            if reused:
                manifest = json.loads((Path(reused) / "manifest.json").read_text())
                pre, notes, secs = manifest, [f"note: backbone reused from {reused}"], \
                    manifest["seconds"]
            else:
                pre, notes, secs = _cli(command)
            row["pretrain_metrics"] = pre["metrics"]
            row["commands"].append("tfrec-p5 " + " ".join(command))
            row["seconds_per_command"]["pretrain"] = round(secs, 1)
            row["notes"] += notes
            for task in tasks:
                command = ["finetune", "--backbone", backbone, "--task", task, *split,
                           *epochs, "--out", os.path.join(tmp, task)]
                metrics, notes, secs = _cli(command)
                row["commands"].append("tfrec-p5 " + " ".join(command))
                row["seconds_per_command"][task] = round(secs, 1)
                row["notes"] += notes
                row["model"].update({FINETUNE_PREFIX[task] + k[len("test_"):]: v
                                     for k, v in metrics.items() if k.startswith("test_")
                                     and k != "test_examples"})
        except RuntimeError as err:
            row["error"] = {"stderr": [str(err)]}
    row["seconds"] = round(sum(row["seconds_per_command"].values()), 1)
    row["load"] = [round(load, 2), round(os.getloadavg()[0], 2)]
    return row


def _row_name(task: str) -> str:
    return {"all": "joint (--task all)",
            "pretrain": "pretrain → finetune (each task)"}.get(task, f"{task} specialist")


def table(rows: list[dict]) -> str:
    """Mean ± std over seeds of each model and reference, one line per (dataset, row)."""
    groups: dict[tuple[str, str], list[dict[str, float]]] = {}
    seconds: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        if "error" in r:
            continue
        key = (r["dataset"], _row_name(r["task"]) + (
            f" {json.dumps(r['pretrain_config'])}" if r.get("pretrain_config") else ""))
        groups.setdefault(key, []).append(row_metrics(r["task"], r))
        seconds.setdefault(key, []).append(r["seconds"])
        for ref, values in reference_metrics(r["task"], r).items():
            groups.setdefault((r["dataset"], f"reference: {ref} ({r['task']} run)"),
                              []).append(values)
    names = list(METRICS)
    lines = ["| data | row | " + " | ".join(names) + " | seconds |",
             "|" + "---|" * (len(names) + 3)]

    def cell(values: list[float], digits: int = 4) -> str:
        if not values:
            return "-"
        std = statistics.pstdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.{digits}f} ± {std:.{digits}f}"

    for (dataset, name), runs in groups.items():
        secs = seconds.get((dataset, name))
        lines.append(f"| {dataset} | {name} | " + " | ".join(
            cell([r[m] for r in runs if m in r]) for m in names)
            + f" | {cell(secs, 0) if secs else '-'} |")
    if any(r["dataset"] == "beauty" for r in rows):
        for name, values in PUBLISHED_BEAUTY.items():
            lines.append(f"| beauty | published: {name} | " + " | ".join(
                f"{values[m]:.4f}" if m in values else "-" for m in names) + " | - |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS),
                        choices=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", help="only these runs (all, sequential, ...)")
    parser.add_argument("--quick", action="store_true", help="2 epochs (smoke run)")
    parser.add_argument("--pretrain-config", type=json.loads, metavar="JSON",
                        help="the pretrain row's PretrainConfig overrides")
    parser.add_argument("--backbone", metavar="DIR", help="the pretrain row fine-tunes this "
                        "backbone (written by the row's own pretrain command) instead of "
                        "pretraining again; one dataset and seed only")
    parser.add_argument("--out", default="benchmarks/results/p5_table.json")
    args = parser.parse_args(argv)
    out = Path(args.out)
    previous = json.loads(out.read_text())["rows"] if out.exists() else []
    rows = [r for r in previous if "error" not in r]
    done = {(r["dataset"], r["task"], r["seed"]) for r in rows}
    started = time.time()
    for name in args.datasets:
        spec, kinds = DATASETS[name]
        if not Path(spec.split(":", 1)[1]).exists():
            print(f"skip {name}: {spec} is absent", file=sys.stderr)
            continue
        for seed in args.seeds:
            for kind in kinds:
                if args.tasks and kind not in args.tasks or (name, kind, seed) in done:
                    continue
                row = pretrain_finetune(name, spec, seed, args.quick, args.pretrain_config,
                                        args.backbone) \
                    if kind == "pretrain" \
                    else run(kind, ["--data", spec, "--split", "leave-one-out"], seed,
                             args.quick)
                row["dataset"] = name
                rows.append(row)
                print(json.dumps({k: row.get(k) for k in ("dataset", "task", "seed",
                                                          "seconds")}
                                 | {"metrics": row_metrics(kind, row),
                                    "error": row.get("error")}), flush=True)
                write_json(out, {"command": " ".join(sys.argv), "rows": rows,
                                 "targets_beauty": TARGETS_BEAUTY,
                                 "published_beauty": PUBLISHED_BEAUTY,
                                 "wall_seconds": round(time.time() - started, 1)})
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
