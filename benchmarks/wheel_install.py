"""A plain ``pip install`` of the built wheel in an empty venv, then the quick start.

Why a benchmark and not a test: the install downloads TensorFlow and its dependencies
(hundreds of MB), which does not belong in ``make test``; ``tests/test_wheel.py`` checks
the wheel itself on every run. This script is what a new user does:

    python benchmarks/wheel_install.py --out benchmarks/results/wheel_install.json

It builds the wheel, creates a venv with pip, runs ``pip install WHEEL`` (dependencies
resolved by pip from ``install_requires``), then ``tfrec-p5 train`` + ``predict`` +
``evaluate`` from a folder outside the repository, and records each step's seconds and
the versions pip chose.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def step(name: str, args: list[str], cwd: Path, record: dict) -> str:
    started = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    record[name] = {"seconds": round(time.perf_counter() - started, 1),
                    "status": proc.returncode}
    print(f"{name:<10} {record[name]['seconds']:>7.1f} s  exit {proc.returncode}", flush=True)
    if proc.returncode:
        sys.exit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter for the new venv (default: this one)")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/wheel_install.json"))
    args = parser.parse_args(argv)
    record: dict = {"python": args.python, "machine": platform.platform()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        step("wheel", [args.python, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                       str(root / "dist"), str(REPO)], root, record)
        wheel = next((root / "dist").glob("tfrec_p5-*.whl"))
        step("venv", [args.python, "-m", "venv", str(root / "venv")], root, record)
        bin_dir = root / "venv" / "bin"
        step("install", [str(bin_dir / "pip"), "install", "-q", str(wheel)], root, record)
        freeze = step("freeze", [str(bin_dir / "pip"), "freeze"], root, record)
        record["versions"] = {line.split("==")[0]: line.split("==")[1]
                              for line in freeze.splitlines() if "==" in line and
                              line.split("==")[0].lower().replace("_", "-") in {
                                  "tensorflow", "tf-keras", "tensorflow-recommenders",
                                  "tensorflow-datasets", "numpy", "tfrec-p5"}}
        cli = str(bin_dir / "tfrec-p5")
        step("train", [cli, "train", "--task", "rating", "--data", "synthetic",
                       "--epochs", "2", "--quiet", "--out", "model"], root, record)
        record["predict_output"] = step("predict", [cli, "predict", "--model", "model",
                                                    "--user", "u1", "--item", "i1",
                                                    "--json"], root, record).strip()
        step("evaluate", [cli, "evaluate", "--model", "model", "--data", "synthetic",
                          "--split", "random:0.8", "--json"], root, record)
    print(json.dumps(record["versions"], indent=1))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
