"""Interrupted training resumes; the same seed gives the same numbers.

All runs are real ``tfrec-p5`` processes on small synthetic data (forked from a server
that imported TensorFlow once, ``_forked``), started together (they are independent) to
keep the wall time down:

* ``train --task rating`` and ``pretrain`` are SIGKILLed mid-epoch: as soon as the
  ``BackupAndRestore`` checkpoint of epoch 1 appears, plus 50 ms (the checkpoint still says
  epoch 1 afterwards, so epoch 2 never finished). The same command, rerun, must say
  "resuming from epoch 1", finish, and land within 1% of an uninterrupted run with the
  same seed (not exactly: the resumed epochs draw other shuffles and dropout masks).
* ``train --task sequential`` and ``finetune`` (rating, on a backbone pretrained in this
  process) are SIGKILLed the same way during their epoch search; the same command, rerun,
  must say "resuming from epoch N", finish the search and the refit, and export.
* ``train --task all --deterministic`` (rating + retrieval heads) twice: identical
  metrics, to the last digit. Without ``--deterministic`` oneDNN's kernels made two such
  runs differ in the 8th digit on this machine (see ``tfrec_p5.cli.deterministic_ops``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import _forked as forked
import numpy as np
import pytest
import tensorflow as tf

import tfrec_p5  # noqa: F401  (conftest.py imported it before TensorFlow)

SPEC = "synthetic?num_users=300&num_items=200&num_interactions=12000"
RATING = {"steps_per_execution": 1, "refit": False, "history_len": 0,
          "use_side_features": False, "embedding_dim": 8, "hidden_units": [8],
          "batch_size": 32, "patience": 0}
PRETRAIN = {"steps_per_execution": 1, "embedding_dim": 8, "batch_size": 64,
            "use_side_features": False}
ALL = {"steps_per_execution": 4, "embedding_dim": 8, "batch_size": 256}


def _env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _cmd(*args: str) -> list[str]:
    return ["-m", "tfrec_p5", *args]


def _start(cmd: list[str], log: Path) -> forked.Forked:
    return forked.popen(cmd, env=_env(), stdout=log.with_suffix(".out"), stderr=log)


def _finish(proc: forked.Forked, log: Path) -> dict:
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, log.read_text()[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _saved_epochs(backup: Path) -> int | None:
    state = backup / "chief" / "checkpoint"
    if not state.exists():
        return None
    m = re.search(r'model_checkpoint_path: "ckpt-(\d+)"', state.read_text())
    return int(m.group(1)) if m else None


def _kill_after_first_epoch(proc: forked.Forked, backup: Path) -> int:
    """SIGKILL ``proc`` 50 ms after its epoch-1 backup appears; return the saved epochs."""
    deadline = time.monotonic() + 600
    while _saved_epochs(backup) is None:
        assert proc.poll() is None, "finished before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return _saved_epochs(backup)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    (d / "rating.json").write_text(json.dumps(RATING))
    (d / "pretrain.json").write_text(json.dumps(PRETRAIN))
    (d / "all.json").write_text(json.dumps(ALL))
    train = ["train", "--data", SPEC, "--epochs", "3", "--seed", "7", "--json", "--quiet",
             "--deterministic", "--config", str(d / "rating.json")]
    pre = ["pretrain", "--data", SPEC, "--epochs", "3", "--seed", "7", "--json", "--quiet",
           "--deterministic", "--config", str(d / "pretrain.json")]
    every = ["train", "--task", "all", "--data", SPEC, "--epochs", "2", "--seed", "7",
             "--json", "--quiet", "--deterministic", "--config", str(d / "all.json")]
    procs = {
        "rating_killed": _start(_cmd(*train, "--out", str(d / "r_killed")), d / "rk.log"),
        "pretrain_killed": _start(_cmd(*pre, "--out", str(d / "p_killed")), d / "pk.log"),
        "rating_full": _start(_cmd(*train, "--out", str(d / "r_full")), d / "rf.log"),
        "pretrain_full": _start(_cmd(*pre, "--out", str(d / "p_full")), d / "pf.log"),
        "all_1": _start(_cmd(*every, "--out", str(d / "a1")), d / "a1.log"),
        "all_2": _start(_cmd(*every, "--out", str(d / "a2")), d / "a2.log"),
    }
    out = {"saved_at_kill": {
        "rating": _kill_after_first_epoch(procs.pop("rating_killed"),
                                          d / "r_killed" / ".backup-rating"),
        "pretrain": _kill_after_first_epoch(procs.pop("pretrain_killed"),
                                            d / "p_killed" / ".backup-pretrain")}}
    resumed = {
        "rating_resumed": _start(_cmd(*train, "--out", str(d / "r_killed")), d / "rr.log"),
        "pretrain_resumed": _start(_cmd(*pre, "--out", str(d / "p_killed")), d / "pr.log"),
    }
    logs = {"rating_full": "rf", "pretrain_full": "pf", "all_1": "a1", "all_2": "a2",
            "rating_resumed": "rr", "pretrain_resumed": "pr"}
    for name, proc in {**procs, **resumed}.items():
        out[name] = _finish(proc, d / f"{logs[name]}.log")
    out["log"] = {k: (d / f"{v}.log").read_text() for k, v in logs.items()}
    out["dir"] = d
    return out


SEQUENTIAL = {"embedding_dim": 16, "max_len": 10, "num_blocks": 1, "batch_size": 16,
              "steps_per_execution": 1, "patience": 50}
FINETUNE = {"steps_per_execution": 1, "batch_size": 32}


def _ring_file(path: Path, users: int = 1000, items: int = 300, length: int = 12) -> None:
    """An Amazon-format sequence file (``user item item ...``): each user walks a ring of
    items, so epochs take ~0.3 s here and a kill lands well inside the search."""
    rng = np.random.default_rng(0)
    starts = rng.integers(items, size=users)
    path.write_text("".join(f"u{u} " + " ".join(f"i{(s + t) % items}" for t in range(length))
                            + "\n" for u, s in enumerate(starts)))


@pytest.fixture(scope="module")
def sequential_finetune(tmp_path_factory):
    """``train --task sequential`` and ``finetune`` killed after one backed-up epoch of
    their search, then rerun: ``{"saved_at_kill", "log", "json", "dir"}``."""
    from tfrec_p5.cli import main

    d = tmp_path_factory.mktemp("resume_seq_ft")
    _ring_file(d / "seq.txt")
    (d / "seq.json").write_text(json.dumps(SEQUENTIAL))
    (d / "ft.json").write_text(json.dumps(FINETUNE))
    (d / "pre.json").write_text(json.dumps(PRETRAIN))
    seq = ["train", "--task", "sequential", "--data", f"amazon:{d / 'seq.txt'}", "--split",
           "leave-one-out", "--epochs", "3", "--config", str(d / "seq.json"), "--json",
           "--quiet", "--out", str(d / "seq")]
    killed = {"sequential": _start(_cmd(*seq), d / "sk.log")}
    assert main(["pretrain", "--data", SPEC, "--epochs", "1", "--batch-size", "512",
                 "--config", str(d / "pre.json"), "--quiet", "--out", str(d / "bb")]) == 0
    ft = ["finetune", "--backbone", str(d / "bb"), "--data", SPEC, "--epochs", "3",
          "--config", str(d / "ft.json"), "--json", "--quiet", "--out", str(d / "ft")]
    killed["finetune"] = _start(_cmd(*ft), d / "fk.log")
    out = {"saved_at_kill": {
        "sequential": _kill_after_first_epoch(killed["sequential"],
                                              d / "seq" / ".backup-sequential")}}
    resumed = {"sequential": _start(_cmd(*seq), d / "sr.log")}
    out["saved_at_kill"]["finetune"] = _kill_after_first_epoch(
        killed["finetune"], d / "ft" / ".backup-finetune")
    resumed["finetune"] = _start(_cmd(*ft), d / "fr.log")
    out["json"] = {name: _finish(proc, d / f"{name[0]}r.log")
                   for name, proc in resumed.items()}
    out["log"] = {name: (d / f"{name[0]}r.log").read_text() for name in resumed}
    out["dir"] = d
    return out


@pytest.mark.parametrize("name", ["sequential", "finetune"])
def test_sequential_and_finetune_resume_from_the_last_completed_epoch(sequential_finetune,
                                                                      name):
    saved = sequential_finetune["saved_at_kill"][name]
    assert saved is not None and saved >= 1
    assert f"resuming from epoch {saved} " in sequential_finetune["log"][name]
    metrics = sequential_finetune["json"][name]
    assert metrics["test_examples"] > 0
    key = "test_ndcg@10" if name == "sequential" else "test_rmse"
    assert 0.0 < metrics[key] < 5.0
    d = sequential_finetune["dir"] / ("seq" if name == "sequential" else "ft")
    assert sorted(os.listdir(d)) == ["1"]  # exported once; the backup and lock are gone
    if name == "sequential":  # the search went on after the saved epochs, then the refit
        meta = json.loads((d / "1" / "assets.extra" / "metadata.json").read_text())
        assert meta["refit_on_validation"]
        assert meta["epochs_run"] == (3 - saved) + meta["best_epoch"]


def test_killed_mid_epoch_after_one_finished_epoch(runs):
    # the backup of epoch 1 existed, epoch 2's never did: the kill landed in epoch 2
    assert runs["saved_at_kill"] == {"rating": 1, "pretrain": 1}


def test_train_resumes_from_the_last_completed_epoch(runs):
    log = runs["log"]["rating_resumed"]
    assert "resuming from epoch 1 " in log
    assert "resuming" not in runs["log"]["rating_full"]
    full, resumed = runs["rating_full"], runs["rating_resumed"]
    print("train resumed vs uninterrupted:", {k: (full[k], resumed[k]) for k in
                                             ("test_rmse", "test_mae")})
    for key in ("test_rmse", "test_mae"):
        assert resumed[key] == pytest.approx(full[key], rel=0.01), key
    assert resumed["test_examples"] == full["test_examples"]
    d = runs["dir"] / "r_killed"
    assert sorted(os.listdir(d)) == ["1"]  # exported once; the backup is gone


def test_pretrain_resumes_from_the_last_completed_epoch(runs):
    log = runs["log"]["pretrain_resumed"]
    assert "resuming from epoch 1 " in log
    full, resumed = runs["pretrain_full"]["metrics"], runs["pretrain_resumed"]["metrics"]
    print("pretrain resumed vs uninterrupted:", {k: (full[k], resumed[k]) for k in
                                                ("test_rating_rmse",
                                                 "test_rating_mae",
                                                 "test_retrieval_recall@10")})
    for key in ("test_rating_rmse", "test_rating_mae"):
        assert resumed[key] == pytest.approx(full[key], rel=0.01), key
    assert resumed["test_retrieval_users"] == full["test_retrieval_users"]
    d = runs["dir"] / "p_killed"
    assert not (d / ".backup-pretrain").exists() and (d / "manifest.json").is_file()
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["epochs"] == 2  # the resumed run's history: epochs 2 and 3


def test_same_seed_same_data_identical_metrics(runs):
    a, b = runs["all_1"], runs["all_2"]
    assert set(a) >= {"test_rating_rmse", "test_recall@10", "test_ndcg@10"}
    assert a == b  # every metric, bit for bit


class _StopInRefit(tf.keras.callbacks.Callback):
    """Raises at the end of the refit's first epoch (the refit's logs have no val_rmse),
    after ``BackupAndRestore`` (an earlier callback) saved that epoch."""

    def on_epoch_end(self, epoch, logs=None):
        if "val_rmse" not in (logs or {}):
            raise _Interrupted()


class _Interrupted(Exception):
    pass


class _EpochLog(tf.keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.search_epochs = self.refit_epochs = 0

    def on_epoch_end(self, epoch, logs=None):
        if "val_rmse" in (logs or {}):
            self.search_epochs += 1
        else:
            self.refit_epochs += 1


def test_interrupted_refit_resumes_without_searching_again(tmp_path):
    from tfrec_p5.data import load
    from tfrec_p5.models import RatingConfig, train_rating
    from tfrec_p5.training import load_search

    table = load("synthetic", num_users=200, num_items=100, num_interactions=4000)
    config = RatingConfig(**{**RATING, "refit": True, "epochs": 3, "patience": 5,
                             "batch_size": 256, "steps_per_execution": 4})
    full = train_rating(table, None, config, seed=3, verbose=0)
    backup = tmp_path / "backup"
    with pytest.raises(_Interrupted):
        train_rating(table, None, config, seed=3, verbose=0, backup_dir=backup,
                     callbacks=[_StopInRefit()])
    record = load_search(backup)
    assert record is not None and record["best_epochs"] == len(full.history["rmse"])
    assert record["history"]["val_rmse"] == pytest.approx(full.history["search_val_rmse"])
    seen = _EpochLog()
    resumed = train_rating(table, None, config, seed=3, verbose=0, backup_dir=backup,
                           callbacks=[seen])
    assert seen.search_epochs == 0  # the finished search was not run again
    assert seen.refit_epochs == record["best_epochs"] - 1  # refit epoch 1 was restored
    assert resumed.history["search_val_rmse"] == record["history"]["val_rmse"]
    ours, ref = resumed.evaluate(table), full.evaluate(table)
    assert ours["rmse"] == pytest.approx(ref["rmse"], rel=0.02)


def test_best_epochs_reads_the_monitor_direction():
    from tfrec_p5.training import best_epochs

    assert best_epochs({"val_rmse": [1.0, 0.8, 0.9]}, "val_rmse") == 2
    assert best_epochs({"val_recall@10": [0.1, 0.3, 0.2]}, "val_recall@10") == 2
    # after a resume the history starts later; the real epoch numbers count
    assert best_epochs({"val_rmse": [0.9, 0.7]}, "val_rmse", epochs=[3, 4]) == 5
