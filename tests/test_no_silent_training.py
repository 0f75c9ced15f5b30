"""Training never resumes, clips or orders silently; two runs never share one ``--out``.

Each test stands for one behaviour that used to give a quiet wrong answer:

* a rerun with other settings or other data resumed (or crashed on) the interrupted
  run's backup; now it is refused with one line naming the differences (exit 2), and
  ``--restart`` discards the backup (``train`` and ``pretrain``);
* a second training into a busy ``--out`` shared the first one's backup; now
  ``OUT/.lock`` makes it refuse, naming the running process (exit 2); a dead holder's
  lock is taken over with a note; the lock goes away however a run ends;
* a CSV without a declared rating range trained and clipped on ``[-50, 1000]`` without a
  word; now the inferred range is printed and ratings far outside the bulk are named;
* ``--split leave-one-out`` on data without timestamps used the file order silently.

Speed: commands run in-process through ``cli.main`` (TensorFlow is imported once) on
small synthetic data with a tiny model; where only the messages matter, the training
function is replaced by one that stops at once (``KeyboardInterrupt``, exit 130). One
test runs a real second process, the way two shells would.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import _forked as forked
import numpy as np
import pytest
import tensorflow as tf
from _cli import run

import tfrec_p5  # noqa: F401  (conftest.py imported it before TensorFlow)
from tfrec_p5.cli import builtin as cli_builtin
from tfrec_p5.export import load_metadata

SMALL = "synthetic?num_users=200&num_items=100&num_interactions=5000"
OTHER = "synthetic?num_users=150&num_items=80&num_interactions=3000&seed=7"
TINY = {"embedding_dim": 8, "hidden_units": [8], "use_side_features": False,
        "history_len": 0, "refit": False, "steps_per_execution": 4}


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tfrec-p5: error: "), stderr
    return lines[0]


@pytest.fixture()
def tiny_config(tmp_path) -> str:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return str(path)


def patch_rating(monkeypatch, *, stop_before: bool = False, interrupt_after: int | None = None,
                 seen: dict | None = None):
    """Replace the CLI's rating trainer: record what it was given; ``stop_before`` stops at
    once (KeyboardInterrupt), ``interrupt_after=N`` after epoch N finished and was backed
    up (what a Ctrl-C in the middle of epoch N + 1 leaves)."""
    from tfrec_p5.models import rating as real  # not cli._rating_api(): it may be patched

    class Stop(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if interrupt_after is not None and epoch + 1 == interrupt_after:
                raise KeyboardInterrupt

    class Api:
        RatingConfig = real.RatingConfig

        @staticmethod
        def train_rating(train, validation, config, **kwargs):
            if seen is not None:
                seen.update(train=train, config=config, calls=seen.get("calls", 0) + 1)
            if stop_before:
                raise KeyboardInterrupt
            return real.train_rating(train, validation, config, callbacks=[Stop()], **kwargs)

    monkeypatch.setattr(cli_builtin, "_rating_api", lambda: Api)


# ---------------------------------------------------------------------- resume settings
def test_rerun_with_other_settings_or_data_is_refused_and_restart_discards(
        tmp_path, monkeypatch, tiny_config):
    out = tmp_path / "m"
    base = ["train", "--data", SMALL, "--batch-size", "256", "--quiet", "--config",
            tiny_config, "--out", str(out)]
    patch_rating(monkeypatch, interrupt_after=1)
    status, _, stderr = run([*base, "--epochs", "3"])
    assert status == 130 and (out / ".backup-rating").is_dir(), stderr

    # Fewer epochs: once this "resumed from epoch 1" and exported a half-trained model.
    patch_rating(monkeypatch)
    status, stdout, stderr = run([*base, "--epochs", "2"])
    line = one_error_line(stderr)
    assert status == 2 and "--epochs was 3, now 2" in line and "--restart" in line
    assert str(out / ".backup-rating") in line and "resuming" not in stdout
    record = json.loads((out / ".backup-rating" / "settings.json").read_text())
    assert record["settings"]["epochs"] == 3 and record["data"]["rows"] > 0
    # Other data: once a shape error in every later run until the folder was deleted.
    status, _, stderr = run([*base, "--epochs", "3", "--data", OTHER])
    line = one_error_line(stderr)
    assert status == 2 and "training data differ" in line and OTHER in line
    assert "--epochs" not in line  # only what differs is named
    # Another seed (another split, another initialisation) and another config.
    (tmp_path / "other.json").write_text(json.dumps({**TINY, "embedding_dim": 16}))
    status, _, stderr = run([*base[:-4], "--config", str(tmp_path / "other.json"),
                             "--out", str(out), "--epochs", "3", "--seed", "1"])
    line = one_error_line(stderr)
    assert status == 2 and "--seed was 42, now 1" in line
    assert "--config (embedding_dim was 8, now 16)" in line
    assert sorted(os.listdir(out)) == [".backup-rating"]  # nothing exported, no lock left

    # --restart: the backup is discarded (said in one line), training starts over.
    status, stdout, stderr = run([*base, "--epochs", "2", "--restart"])
    assert status == 0, stderr
    assert [ln for ln in stdout.splitlines() if "--restart" in ln] == [
        f"--restart: discarded the backup of an interrupted run ({out / '.backup-rating'})"]
    assert "resuming" not in stdout
    assert sorted(os.listdir(out)) == ["1"]
    meta = load_metadata(out / "1")
    assert meta["config"]["rating"]["epochs"] == 2 and meta["epochs_run"] == 2


def test_same_settings_still_resume(tmp_path, monkeypatch, tiny_config):
    out = tmp_path / "m"
    argv = ["train", "--data", SMALL, "--batch-size", "256", "--quiet", "--config",
            tiny_config, "--epochs", "2", "--out", str(out)]
    patch_rating(monkeypatch, interrupt_after=1)
    assert run(argv)[0] == 130
    patch_rating(monkeypatch)
    # --json only shapes the output: the backup still fits
    status, stdout, stderr = run([*argv[:-2], "--json", "--out", str(out)])
    assert status == 0, stderr
    assert "resuming from epoch 1 " in stderr
    assert sorted(os.listdir(out)) == ["1"]


def test_a_backup_without_a_record_is_not_resumed_blindly(tmp_path, monkeypatch):
    out = tmp_path / "m"
    (out / ".backup-rating" / "chief").mkdir(parents=True)
    (out / ".backup-rating" / "chief" / "ckpt-1.index").write_bytes(b"old")
    seen: dict = {}
    patch_rating(monkeypatch, stop_before=True, seen=seen)
    status, _, stderr = run(["train", "--data", SMALL, "--out", str(out)])
    assert status == 2 and "no record of its settings" in one_error_line(stderr)
    assert "calls" not in seen


def test_pretrain_refuses_other_settings_and_restart_discards(tmp_path, monkeypatch):
    """``pretrain`` keeps its backup in OUT/.backup-pretrain: the same rules apply. The
    pretraining itself is replaced: it leaves a checkpoint file and is interrupted."""
    from tfrec_p5.pretraining import pretrainer

    calls = []

    def fake_pretrain(train, **kwargs):
        calls.append(kwargs["config"].epochs)
        chief = Path(kwargs["backup_dir"]) / "chief"
        chief.mkdir(parents=True, exist_ok=True)
        (chief / "ckpt-1.data-00000-of-00001").write_bytes(b"weights")
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrainer, "pretrain", fake_pretrain)
    out = tmp_path / "bb"
    base = ["pretrain", "--data", SMALL, "--quiet", "--out", str(out)]
    assert run([*base, "--epochs", "3"])[0] == 130 and calls == [3]
    status, _, stderr = run([*base, "--epochs", "2"])
    line = one_error_line(stderr)
    assert status == 2 and "--epochs was 3, now 2" in line and calls == [3]
    status, _, stderr = run([*base, "--epochs", "3", "--data", OTHER])
    assert status == 2 and "training data differ" in one_error_line(stderr)
    status, _, stderr = run([*base, "--epochs", "3", "--tasks", "retrieval"])
    assert status == 2 and "--tasks was" in one_error_line(stderr)
    status, stdout, _ = run([*base, "--epochs", "2", "--restart"])
    assert status == 130 and calls == [3, 2]
    assert "--restart: discarded the backup of an interrupted run" in stdout
    assert not (out / ".lock").exists()


# ---------------------------------------------------------------------- the --out lock
def _write_lock(out: Path, pid: int, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / ".lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(),
                                           "command": command,
                                           "since": "2030-01-01T00:00:00+00:00"}))


def test_a_busy_out_is_refused_naming_the_running_process(tmp_path, monkeypatch):
    holder = subprocess.Popen(["sleep", "60"])
    try:
        out = tmp_path / "busy"
        _write_lock(out, holder.pid, "tfrec-p5 train --epochs 50 --out busy")
        seen: dict = {}
        patch_rating(monkeypatch, stop_before=True, seen=seen)
        status, _, stderr = run(["train", "--data", SMALL, "--out", str(out)])
        line = one_error_line(stderr)
        assert status == 2 and f"PID {holder.pid} on {socket.gethostname()}" in line
        assert "in use by another training run" in line and "--epochs 50" in line
        assert "calls" not in seen  # refused before loading or training anything
        assert json.loads((out / ".lock").read_text())["pid"] == holder.pid  # untouched
    finally:
        holder.kill()
        holder.wait()


def test_a_dead_holders_lock_is_taken_over_with_a_note(tmp_path, monkeypatch):
    gone = subprocess.Popen(["true"])
    gone.wait()
    out = tmp_path / "stale"
    _write_lock(out, gone.pid, "tfrec-p5 train --out stale (killed)")
    seen: dict = {}
    patch_rating(monkeypatch, stop_before=True, seen=seen)
    status, stdout, _ = run(["train", "--data", SMALL, "--out", str(out)])
    assert status == 130 and seen["calls"] == 1
    assert f"note: took over the lock of PID {gone.pid} (tfrec-p5 train --out stale " \
           "(killed)) in" in stdout
    assert not (out / ".lock").exists()


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_the_lock_is_released_however_the_run_ends(tmp_path, monkeypatch, error):
    from tfrec_p5.models import rating as real

    held = []

    class Api:
        RatingConfig = real.RatingConfig

        @staticmethod
        def train_rating(*args, **kwargs):
            held.append(json.loads((tmp_path / "new" / "m" / ".lock").read_text())["pid"])
            raise error("stop")

    monkeypatch.setattr(cli_builtin, "_rating_api", lambda: Api)
    status, _, _ = run(["train", "--data", SMALL, "--out", str(tmp_path / "new" / "m")])
    assert status == (130 if error is KeyboardInterrupt else 1)
    assert held == [os.getpid()]  # held while training ran
    # the lock, the settings-only backup and the folders this run created are gone
    assert not (tmp_path / "new").exists()


def test_out_lock_takes_over_a_reused_pid_and_refuses_a_live_one(tmp_path):
    from tfrec_p5.training import OutLock, RunRefused

    out = tmp_path / "o"
    # Our own PID but another start time: the process that wrote it is gone and the PID
    # was reused (by us); the lock is stale.
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"pid": os.getpid(), "start": 1,
                                           "host": socket.gethostname(), "command": "x"}))
    note = io.StringIO()
    with OutLock(out, "tfrec-p5 train", info=note):
        assert json.loads((out / ".lock").read_text())["command"] == "tfrec-p5 train"
        assert "took over the lock of PID" in note.getvalue()
        with pytest.raises(RunRefused, match=f"PID {os.getpid()} "):
            OutLock(out, "second").acquire()  # a live holder (this process)
    assert sorted(os.listdir(out)) == []


def test_two_processes_into_one_out(tmp_path, tiny_config):
    """A real second process: the first `tfrec-p5 train` holds OUT; the second, started
    while it trains, is refused naming its PID; the first finishes normally."""
    out = tmp_path / "shared"
    argv = ["train", "--data", SMALL, "--batch-size", "128", "--quiet", "--config",
            tiny_config, "--epochs", "4", "--json", "--out", str(out)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = tmp_path / "first.log"
    first = forked.popen(["-m", "tfrec_p5", *argv], env=env, stderr=log)
    try:
        deadline = time.monotonic() + 300
        # the lock (or, without one, the first epoch's backup) shows it is training
        while not ((out / ".lock").exists() or (out / ".backup-rating" / "chief").exists()):
            assert first.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        status, _, stderr = run(argv)
        running = first.poll() is None
        assert status == 2, stderr
        line = one_error_line(stderr)
        assert f"PID {first.pid} " in line and "in use by another training run" in line
        assert running, "the first run ended before the second was refused"
        stdout, _ = first.communicate(timeout=600)
        assert first.returncode == 0, log.read_text()[-2000:]
        assert "test_rmse" in json.loads(stdout.strip().splitlines()[-1])
        assert sorted(os.listdir(out)) == ["1"]  # one export; lock and backup gone
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGKILL)
            first.wait()


# ---------------------------------------------------------------------- rating range
def _csv(path: Path, ratings, timestamps: bool = False) -> Path:
    rows = ["user_id,item_id,rating" + (",timestamp" if timestamps else "")]
    for n, r in enumerate(ratings):
        rows.append(f"u{n % 40},i{(n * 7) % 30},{r}" + (f",{1000 + n}" if timestamps else ""))
    path.write_text("\n".join(rows) + "\n")
    return path


CLEAN = np.random.default_rng(0).integers(1, 6, 600).tolist()


def test_inferred_rating_range_is_printed_and_outliers_named(tmp_path, monkeypatch,
                                                             tiny_config):
    dirty = _csv(tmp_path / "dirty.csv", [*CLEAN[:300], 1000, *CLEAN[300:], -50])
    out = tmp_path / "dirty"
    status, stdout, stderr = run(["train", "--data", f"csv:{dirty}", "--epochs", "1",
                                  "--quiet", "--config", tiny_config, "--out", str(out)])
    assert status == 0, stderr
    lines = stdout.splitlines()
    assert "rating range [-50, 1000] inferred from the data; set rating_range= to " \
           "override (e.g. csv:PATH?rating_range=1,5)" in lines
    warning = next(ln for ln in lines if ln.startswith("warning:"))
    assert "2 rating(s) lie far outside the bulk [1, 5] of the data" in warning
    assert "1000 (user u20, item i0)" in warning and "-50 (user u1, item i7)" in warning
    assert "rating_range=LOW,HIGH" in warning
    # the printed range is the one the export clips to
    meta = load_metadata(out / "1")
    assert meta["rating_range"] == [-50, 1000]


def test_clean_data_print_the_range_and_a_declared_range_overrides(tmp_path, monkeypatch):
    clean = _csv(tmp_path / "clean.csv", CLEAN)
    seen: dict = {}
    patch_rating(monkeypatch, stop_before=True, seen=seen)
    status, stdout, _ = run(["train", "--data", f"csv:{clean}", "--out", str(tmp_path / "a")])
    assert status == 130 and seen["train"].rating_range == (1.0, 5.0)
    assert "rating range [1, 5] inferred from the data" in stdout
    assert "warning" not in stdout
    dirty = _csv(tmp_path / "dirty.csv", [*CLEAN, 1000])
    status, stdout, stderr = run(["train", "--data", f"csv:{dirty}?rating_range=1,5&"
                                  "on_bad_lines=skip", "--out", str(tmp_path / "b")])
    assert status == 130 and seen["train"].rating_range == (1.0, 5.0)
    assert "inferred" not in stdout and "warning" not in stdout


def test_outlier_rule():
    from tfrec_p5.data.rating_range import infer_rating_range

    check = infer_rating_range(np.array([*CLEAN, 1000.0, -50.0]))
    assert check.range == (-50.0, 1000.0) and check.bulk == (1.0, 5.0)
    assert check.outliers.tolist() == [600, 601]
    near = infer_rating_range(np.array([*CLEAN, 9.0, -3.0]))  # within one bulk width
    assert near.bulk == (1.0, 5.0) and near.outliers.size == 0
    skewed = np.r_[np.full(990, 5.0), np.full(10, 1.0)]  # IQR 0: the 1s are not outliers
    assert infer_rating_range(skewed).outliers.size == 0
    assert infer_rating_range(np.array([3.0])).range == (3.0, 3.0)


# ---------------------------------------------------------------------- leave-one-out
def test_leave_one_out_without_timestamps_says_it_uses_file_order(tmp_path, monkeypatch):
    note = "note: leave-one-out: the data have no timestamps; using file order as time"
    patch_rating(monkeypatch, stop_before=True)
    plain = _csv(tmp_path / "plain.csv", CLEAN)
    status, stdout, _ = run(["train", "--data", f"csv:{plain}", "--split", "leave-one-out",
                             "--out", str(tmp_path / "a")])
    assert status == 130 and stdout.splitlines().count(note) == 1
    timed = _csv(tmp_path / "timed.csv", CLEAN, timestamps=True)
    status, stdout, _ = run(["train", "--data", f"csv:{timed}", "--split", "leave-one-out",
                             "--out", str(tmp_path / "b")])
    assert status == 130 and note not in stdout
    status, stdout, _ = run(["train", "--data", f"csv:{plain}", "--split", "random:0.8",
                             "--out", str(tmp_path / "c")])
    assert note not in stdout
