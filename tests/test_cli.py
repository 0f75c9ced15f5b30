"""``tfrec-p5`` train / evaluate / predict, and its one-line errors.

Commands run in-process through ``tfrec_p5.cli.main`` (fast, output captured); one
subprocess checks the installed console script's error output end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf
from _cli import run

import tfrec_p5  # noqa: F401  (conftest.py imported it before TensorFlow)
from tfrec_p5.cli import builtin as cli_tasks
from tfrec_p5.export import load_export, load_metadata

SMALL = "synthetic?num_users=200&num_items=100&num_interactions=5000"
OTHER = "synthetic?num_users=200&num_items=100&num_interactions=1500&seed=7"
TRAIN_ARGS = ["--data", SMALL, "--epochs", "1", "--batch-size", "256", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("saved_models") / "cli"
    status, stdout, stderr = run(["train", *TRAIN_ARGS, "--json", "--out", str(out)])
    assert status == 0, stderr
    return {"out": out, "metrics": json.loads(stdout), "stderr": stderr}


def test_train_exports_and_reports_metrics(trained):
    out, metrics = trained["out"], trained["metrics"]
    assert sorted(os.listdir(out)) == ["1"]  # no backup or temporary folder left
    assert {"test_rmse", "test_mae"} <= set(metrics)
    assert 0.3 < metrics["test_rmse"] < 2.0 and metrics["test_mae"] <= metrics["test_rmse"]
    saved = json.loads((out / "1" / "assets.extra" / "metrics.json").read_text())
    assert saved == metrics
    meta = load_metadata(out / "1")
    assert (meta["data"], meta["split"], meta["seed"]) == (SMALL, "random:0.8", 42)
    assert meta["config"]["rating"]["epochs"] == 1
    assert meta["config"]["rating"]["batch_size"] == 256
    assert meta["tasks"] == ["rating"] and meta["metrics"] == metrics
    # sizes: train + test = all rows. The rating task gets the whole training part: it
    # carves its own early-stopping slice, then refits on all of it (RatingConfig.refit).
    sizes = meta["sizes"]
    assert sizes["train"] + sizes["test"] == sizes["data"] and sizes["validation"] == 0
    assert sizes["test"] == metrics["test_examples"]
    # with --json, the human-readable table goes to stderr
    assert "test" in trained["stderr"] and "rmse" in trained["stderr"]


def test_evaluate_reproduces_train_test_metrics(trained):
    status, stdout, _ = run(["evaluate", "--model", str(trained["out"]), "--data", SMALL,
                             "--split", "random:0.8", "--seed", "42", "--json"])
    assert status == 0
    metrics = json.loads(stdout)
    assert set(metrics) == {"test_rmse", "test_mae", "test_examples"}
    for key in metrics:
        assert metrics[key] == pytest.approx(trained["metrics"][key], abs=1e-6)
    # defaults come from the export's metadata; another seed is another test part
    status, stdout, _ = run(["evaluate", "--model", str(trained["out"] / "1"), "--json"])
    assert json.loads(stdout)["test_rmse"] == pytest.approx(metrics["test_rmse"], abs=1e-6)
    status, stdout, _ = run(["evaluate", "--model", str(trained["out"]), "--seed", "3",
                             "--json"])
    assert status == 2 and stdout == ""  # that test part holds training rows: refused
    status, stdout, _ = run(["evaluate", "--model", str(trained["out"]), "--seed", "3",
                             "--allow-overlap", "--json"])
    assert json.loads(stdout)["test_rmse"] != pytest.approx(metrics["test_rmse"], abs=1e-6)


def test_evaluate_prints_table_without_json(trained):
    status, stdout, _ = run(["evaluate", "--model", str(trained["out"])])
    assert status == 0
    header, row = stdout.strip().splitlines()[-2:]
    assert header.split() == ["part", "examples", "rmse", "mae"]
    assert row.split()[0] == "test"
    assert float(row.split()[2]) == pytest.approx(trained["metrics"]["test_rmse"], abs=1e-4)


def test_predict_prints_the_exported_rating(trained):
    loaded, _, _ = load_export(trained["out"])
    for user, item in (("u1", "i1"), ("nobody", "i1")):
        status, stdout, _ = run(["predict", "--model", str(trained["out"]), "--user", user,
                                 "--item", item])
        assert status == 0
        expected = loaded.signatures["predict_rating"](
            user_id=tf.constant([user]), item_id=tf.constant([item]))["rating"].numpy()[0]
        assert float(stdout.strip()) == pytest.approx(float(expected), abs=1e-4)
        assert 1.0 <= float(stdout) <= 5.0


def test_split_none_trains_on_all_and_tests_on_test_data(tmp_path):
    out = tmp_path / "none"
    status, stdout, stderr = run(["train", *TRAIN_ARGS, "--split", "none", "--test-data",
                                  OTHER, "--json", "--out", str(out)])
    assert status == 0, stderr
    metrics = json.loads(stdout)
    assert "test_rmse" not in metrics and "test_data_rmse" in metrics
    meta = load_metadata(out / "1")
    assert meta["sizes"]["train"] + meta["sizes"]["validation"] == meta["sizes"]["data"]
    assert meta["sizes"]["test_data"] == metrics["test_data_examples"]
    # evaluate defaults to the recorded test data, scored whole (--split none)
    status, stdout, _ = run(["evaluate", "--model", str(out), "--json"])
    again = json.loads(stdout)
    assert again["test_rmse"] == pytest.approx(metrics["test_data_rmse"], abs=1e-6)
    assert again["test_examples"] == metrics["test_data_examples"]


def test_interrupted_train_resumes_from_backup(tmp_path, monkeypatch):
    """Interrupt after epoch 1 of 2; the rerun starts at epoch 2 and cleans its backup."""
    real_api = cli_tasks._rating_api()
    epochs_run: list[int] = []

    class Interrupt(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            epochs_run.append(epoch)

        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0 and interrupt:
                raise KeyboardInterrupt

    class Api:
        RatingConfig = real_api.RatingConfig

        @staticmethod
        def train_rating(*args, **kwargs):
            return real_api.train_rating(*args, callbacks=[Interrupt()], **kwargs)

    monkeypatch.setattr(cli_tasks, "_rating_api", lambda: Api)
    out = tmp_path / "resume"
    argv = ["train", *TRAIN_ARGS, "--epochs", "2", "--out", str(out)]
    interrupt = True
    status, _, stderr = run(argv)
    assert status == 130 and "interrupted" in stderr
    assert (out / ".backup-rating").is_dir() and not (out / "1").exists()
    interrupt = False
    epochs_run.clear()
    status, stdout, stderr = run(argv)
    assert status == 0, stderr
    assert "resuming from" in stdout
    # The early-stopping run resumes at epoch 1 (0-based); then the refit on the whole
    # training part runs its epochs from 0.
    assert epochs_run[0] == 1 and epochs_run[1:] == list(range(len(epochs_run) - 1))
    assert sorted(os.listdir(out)) == ["1"]


def test_config_file_and_flags(tmp_path, monkeypatch):
    """--config sets hyper-parameters, --epochs/--batch-size override it; bad keys fail."""
    seen = {}
    real_api = cli_tasks._rating_api()

    class Api:
        RatingConfig = real_api.RatingConfig

        @staticmethod
        def train_rating(train, validation, config, **kwargs):
            seen["config"] = config
            raise KeyboardInterrupt  # stop before training: only the config matters here

    monkeypatch.setattr(cli_tasks, "_rating_api", lambda: Api)
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"embedding_dim": 4, "epochs": 9, "batch_size": 64}))
    status, _, _ = run(["train", "--data", SMALL, "--config", str(config), "--epochs", "3",
                        "--out", str(tmp_path / "o")])
    assert status == 130
    assert (seen["config"].embedding_dim, seen["config"].epochs,
            seen["config"].batch_size) == (4, 3, 64)
    config.write_text(json.dumps({"embeding_dim": 4}))
    status, _, stderr = run(["train", "--data", SMALL, "--config", str(config),
                             "--out", str(tmp_path / "o")])
    assert status == 2 and "embeding_dim" in stderr


def test_planned_task_exits_2_with_a_clear_message(tmp_path, monkeypatch):
    from tfrec_p5.cli import registry

    monkeypatch.setitem(registry._TASKS, "retrieval",
                        registry.Task("retrieval", "planned", planned="coming in a later release"))
    status, stdout, stderr = run(["train", "--task", "retrieval", "--out", str(tmp_path / "x")])
    assert status == 2
    assert stderr.strip() == stderr.strip().splitlines()[0]  # one line
    assert stderr.startswith("tfrec-p5: error: task 'retrieval' is not available yet")
    assert not (tmp_path / "x").exists()


def _error_cases(model: str, tmp: Path) -> list[tuple[list[str], int, str]]:
    (tmp / "not_export" / "1").mkdir(parents=True, exist_ok=True)
    (tmp / "bad.json").write_text("{nope")
    return [
        (["train", "--task", "nonsense", "--out", str(tmp / "o")], 2, "invalid choice"),
        (["train"], 2, "--out"),
        (["predict", "--model", str(tmp / "missing"), "--user", "u", "--item", "i"], 1,
         "does not exist"),
        (["predict", "--model", str(tmp / "not_export"), "--user", "u", "--item", "i"], 1,
         "not a SavedModel export"),
        (["evaluate", "--model", model, "--data", "nosuchscheme:x"], 1, "unknown data spec"),
        (["evaluate", "--model", model, "--split", "random:1.5"], 1, "split fraction"),
        (["evaluate", "--model", model, "--split", "sideways"], 1, "unknown split"),
        (["train", "--data", SMALL, "--split", "temporal:0", "--out", str(tmp / "o")], 1,
         "split fraction"),
        (["train", "--config", str(tmp / "bad.json"), "--out", str(tmp / "o")], 2,
         "cannot read config file"),
        (["train", "--config", str(tmp / "missing.json"), "--out", str(tmp / "o")], 2,
         "does not exist"),
    ]


def test_errors_are_one_line_and_nonzero(trained, tmp_path):
    for argv, status, fragment in _error_cases(str(trained["out"]), tmp_path):
        got, stdout, stderr = run(argv)
        assert got == status, (argv, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tfrec-p5: error: "), (argv, stderr)
        assert fragment in lines[0], (argv, stderr)
        assert "Traceback" not in stderr + stdout
    assert not (tmp_path / "o").exists()


def test_console_script_error_is_one_line_without_tf_noise(tmp_path):
    exe = Path(sys.executable).parent / "tfrec-p5"
    proc = subprocess.run([str(exe), "predict", "--model", str(tmp_path / "missing"),
                           "--user", "u1", "--item", "i1"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"tfrec-p5: error: model path '{tmp_path / 'missing'}' does not exist"]
    assert proc.stdout == ""
