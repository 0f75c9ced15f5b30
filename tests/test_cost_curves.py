"""The cost-curves benchmark (``benchmarks/cost_curves.py``, #21) runs end to end in its
``--quick`` mode: one child process per (task, size), every requested row in the JSON
with positive examples/s, wall seconds and peak RSS, and the growth column filled in."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "cost_curves.py"

_spec = importlib.util.spec_from_file_location("cost_curves", SCRIPT)
cc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cc)


def test_sizes_parse_per_task():
    assert cc.parse_rows("0.2M") == 200_000 and cc.parse_rows("50k") == 50_000
    assert cc.parse_rows("1_000") == 1000
    assert cc.parse_sizes(["rating=1M,10M", "next_item=0.2M"], quick=False) == {
        "rating": (1_000_000, 10_000_000), "next_item": (200_000,)}
    assert cc.parse_sizes(None, quick=True) == cc.QUICK_SIZES
    with pytest.raises(SystemExit):
        cc.parse_sizes(["ranking=1M"], quick=False)
    assert cc.parse_overrides(["rating:optimizer=adagrad", "rating:learning_rate=0.1"]) == {
        "rating": {"optimizer": "adagrad", "learning_rate": 0.1}}
    with pytest.raises(SystemExit):
        cc.parse_overrides(["rating=adagrad"])
    # next item: 20 events per user and per item, so 20M rows have a 1M-item catalog
    assert cc.shape("next_item", 20_000_000) == (1_000_000, 1_000_000)


def test_quick_run_reports_every_row(tmp_path):
    out = tmp_path / "cost_curves.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--sizes",
                           "rating=10k", "retrieval=10k,20k", "next_item=10k",
                           "--out", str(out)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [(r["task"], r["requested_rows"]) for r in result["runs"]] == [
        ("rating", 10_000), ("retrieval", 10_000), ("retrieval", 20_000),
        ("next_item", 10_000)]
    for r in result["runs"]:
        assert r["rows"] > 0 and r["examples_per_sec"] > 0 and r["epoch_seconds"] > 0
        assert r["peak_rss_mib"] > 0 and r["relative_row_cost"] > 0
        assert len(r["load_before"]) == 3 and len(r["load_after"]) == 3
    assert result["runs"][1]["relative_row_cost"] == 1.0  # retrieval's smallest size
    assert result["runs"][-1]["loss_variant"] in ("softmax", "sampled")
    assert result["machine"]["nproc"] >= 1 and result["machine"]["tensorflow"]
    assert "| next_item | " in proc.stdout
