"""Progress output and help that say what really happens.

What a user reads while training must match what the run does: the split line names the
validation slice a task carves for itself (not "validation 0"), a refit pass is announced
before its second ``Epoch 1/N``, per-epoch lines report per-epoch seconds, counts print as
integers, pretraining names its held-out metrics by the part they come from and its
``train_loss`` is the loss its last progress line showed, harmless TensorFlow warnings
are not shown, and ``--help`` documents every option with its default.

Commands run in-process through ``tfrec_p5.cli.main`` on small synthetic data; one runs
as a subprocess, because TensorFlow's log handler writes to the process's real stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from pathlib import Path

import _forked as forked
import pytest
from _cli import run

import tfrec_p5  # noqa: F401  (conftest.py imported it before TensorFlow)
from tfrec_p5.cli import app, common, registry
from tfrec_p5.cli import pretrain as cli_pretrain
from tfrec_p5.data import load
from tfrec_p5.pretraining.finetuner import FinetuneConfig
from tfrec_p5.pretraining.pretrainer import PretrainConfig

REPO = Path(__file__).resolve().parents[1]
SMALL = "synthetic?num_users=200&num_items=100&num_interactions=5000"
# sequential evaluation samples 99 unseen negatives per user: needs a larger catalog
SEQ = "synthetic?num_users=200&num_items=300&num_interactions=5000"


def line_starting(text: str, prefix: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    assert lines, f"no line starting with {prefix!r} in:\n{text}"
    return lines[0]


# ---------------------------------------------------------------------- train: split + refit
@pytest.fixture(scope="module")
def rating_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("progress")
    config = tmp / "ids_only.json"  # the lines do not depend on the model's features
    config.write_text(json.dumps({"history_len": 0, "use_side_features": False}))
    status, stdout, stderr = run(["train", "--data", SMALL, "--epochs", "1", "--batch-size",
                                  "256", "--config", str(config), "--out", str(tmp / "rating")])
    assert status == 0, stderr
    return stdout


def test_train_split_line_names_the_carved_validation_slice(rating_run):
    split = line_starting(rating_run, "split ")
    assert "validation 0" not in split  # the rating task validates on a carved slice
    validation = line_starting(rating_run, "validation: ")
    assert "10 % of train" in validation and "early stopping on val_rmse" in validation
    assert "then a refit on all 2,470 training rows" in validation


@pytest.fixture(scope="module")
def small_table():
    from tfrec_p5.data.splits import random_split

    return random_split(load(SMALL), 0.8, seed=42).train


@pytest.mark.parametrize("task, config, expected, absent", [
    ("rating", {}, "10 % of train (247 rows) carved for early stopping on val_rmse "
     "(patience 3, up to 2 epochs), then a refit on all 2,470 training rows", None),
    ("rating", {"validation_fraction": 0.2}, "20 % of train", None),
    ("rating", {"refit": False}, "carved for early stopping", "refit"),
    ("rating", {"validation_fraction": 0.0}, "none (fixed 2 epochs)", None),
    ("retrieval", {}, "10 % of train (247 rows) carved for early stopping on val_recall@10 "
     "(patience 3, up to 2 epochs), then a refit on all 2,470 training rows", None),
    ("retrieval", {"validation_fraction": 0.0}, "none (fixed 2 epochs)", None),
    ("ranking", {}, "none (fixed 2 epochs)", None),
    ("all", {"validation_fraction": 0.1, "refit": True, "patience": 1},
     "early stopping on val_rmse (patience 1, up to 2 epochs), then a refit", None),
    ("retrieval", {"patience": 2, "refit": False},
     "early stopping on val_recall@10 (patience 2", "refit"),
])
def test_validation_plan_follows_the_config(small_table, task, config, expected, absent):
    request = registry.TrainRequest(train=small_table, validation=None, epochs=2,
                                    config=config)
    plan = registry.get_task(task).plan(request)
    assert expected in plan
    if absent:
        assert absent not in plan


def test_refit_is_announced_before_its_epochs(rating_run):
    refit = [line for line in rating_run.splitlines() if line.startswith("refit: ")]
    assert refit == ["refit: retraining on all 2,470 training rows for 1 epoch (the best "
                     "epoch count of the search)"]
    before, after = rating_run.split(refit[0])
    assert "val_rmse:" in before  # the search's progress, validated on the carved slice
    refit_progress = after[:after.index("\npart ")]
    assert "/step - loss:" in refit_progress and "val_" not in refit_progress


@pytest.fixture(scope="module")
def all_run(tmp_path_factory):
    """``--task all`` with a refit, in a child process (TensorFlow's warnings go to the
    process's real stderr)."""
    tmp = tmp_path_factory.mktemp("all")
    config = tmp / "c.json"
    config.write_text(json.dumps({"validation_fraction": 0.1, "refit": True,
                                  "patience": 1}))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TFREC_P5_DEBUG", None)
    proc = forked.run(
        ["-m", "tfrec_p5", "train", "--task", "all", "--data", SMALL, "--epochs", "1",
         "--batch-size", "256", "--config", str(config), "--out", str(tmp / "all")],
        env=env, cwd=tmp, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_unified_refit_is_announced(all_run):
    assert "then a refit on all 2,470 training rows" in \
        line_starting(all_run.stdout, "validation: ")
    assert "refit: retraining on all 2,470 training rows for 1 epoch" in all_run.stdout


def test_harmless_tensorflow_warnings_are_hidden(all_run):
    # BackupAndRestore on a subclassed model, SavedModel export of subclassed layers
    for text in ("model must be built", "Skipping full serialization",
                 "non-serializable objects", "retracing", "WARNING:tensorflow"):
        assert text not in all_run.stderr, all_run.stderr


def test_harmless_filter_keeps_other_warnings_and_errors():
    quiet = app.HarmlessTensorFlowWarnings()

    def record(level: int, message: str) -> logging.LogRecord:
        return logging.LogRecord("tensorflow", level, __file__, 1, message, None, None)

    assert not quiet.filter(record(logging.WARNING, "Skipping full serialization of X"))
    assert quiet.filter(record(logging.WARNING, "Value in checkpoint could not be found"))
    assert quiet.filter(record(logging.ERROR, "Skipping full serialization of X"))
    # main installs it only while a command runs
    assert not any(isinstance(f, app.HarmlessTensorFlowWarnings)
                   for f in logging.getLogger("tensorflow").filters)


# ---------------------------------------------------------------------- sequential
def test_sequential_epoch_lines_report_per_epoch_seconds_and_the_refit(tmp_path):
    # A small encoder (one block, short histories, IDs only): the lines are the point,
    # and tracing the default two-block model with item features doubled the test's time.
    config = tmp_path / "small.json"
    config.write_text(json.dumps({"num_blocks": 1, "max_len": 10, "embedding_dim": 16,
                                  "use_item_features": False}))
    status, stdout, stderr = run(["train", "--task", "sequential", "--data", SEQ, "--split",
                                  "leave-one-out", "--epochs", "2", "--batch-size", "256",
                                  "--config", str(config), "--out", str(tmp_path / "seq")])
    assert status == 0, stderr
    epoch_lines = [line for line in stdout.splitlines() if line.startswith("epoch=")]
    assert len(epoch_lines) == 4  # 2 search epochs, 2 refit epochs
    for line in epoch_lines:
        assert not re.search(r"(?<![a-z_])seconds=", line), line  # no unlabelled total
        values = dict(item.split("=") for item in line.split())
        assert float(values["epoch_seconds"]) <= float(values["total_seconds"])
    second = dict(item.split("=") for item in epoch_lines[1].split())
    assert float(second["epoch_seconds"]) < float(second["total_seconds"])
    assert "refit: retraining on all" in stdout and "training + validation rows" in stdout
    assert stdout.index("refit: ") < stdout.index(epoch_lines[2])
    assert "early stopping on val_ndcg@10" in line_starting(stdout, "validation: ")


# ---------------------------------------------------------------------- metric tables
def test_counts_print_as_integers():
    table = common.format_table([("test", 618, {"users": 2000.0, "recall@10": 1.0,
                                                "rmse": 0.87314})])
    row = table.splitlines()[1].split()
    assert row == ["test", "618", "2000", "1.0000", "0.8731"]
    assert common.format_value("test_retrieval_targets", 618.0) == "618"
    assert common.format_value("test_retrieval_recall@10", 1.0) == "1.0000"


# ---------------------------------------------------------------------- pretrain / finetune
@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pretrain")
    config = tmp / "c.json"
    # A high learning rate overfits the tiny data; 4 executions per epoch make the
    # progress bar show intermediate values (the last batch is not the epoch's loss).
    config.write_text(json.dumps({"learning_rate": 0.05, "history_len": 0,
                                  "steps_per_execution": 4}))
    out = tmp / "backbone"
    status, stdout, stderr = run(["pretrain", "--data", SMALL, "--epochs", "4",
                                  "--batch-size", "256", "--config", str(config),
                                  "--out", str(out)])
    assert status == 0, stderr
    return {"stdout": stdout, "out": out,
            "manifest": json.loads((out / "manifest.json").read_text())}


def _summary(stdout: str) -> dict[str, str]:
    return dict(line.split() for line in stdout.splitlines() if line.startswith("  "))


def test_pretrain_names_held_out_metrics_by_their_part(pretrain_run):
    summary = _summary(pretrain_run["stdout"])
    assert "test_rating_rmse" in summary and "test_retrieval_recall@10" in summary
    assert not [k for k in summary if k.startswith("validation_")]  # random:0.8: the test part
    assert not [k for k in pretrain_run["manifest"]["metrics"] if k.startswith("validation_")]
    assert "held-out metrics on the test part (618 rows)" in pretrain_run["stdout"]


def test_pretrain_summary_prints_counts_as_integers(pretrain_run):
    summary = _summary(pretrain_run["stdout"])
    assert summary["test_retrieval_targets"] == "618"
    assert re.fullmatch(r"\d+", summary["test_retrieval_users"])


def test_pretrain_train_loss_is_the_last_epoch_loss(pretrain_run):
    stdout = pretrain_run["stdout"]
    progress = stdout[:stdout.index("backbone ")]
    shown = re.findall(r" - loss: ([0-9.]+)", progress)[-1]  # the last epoch's final value
    assert _summary(stdout)["train_loss"] == shown
    history = pretrain_run["manifest"]["history"]
    # the loss is the epoch mean of the weighted task losses (weights 1), not a last batch
    assert history["loss"][-1] == pytest.approx(
        history["retrieval_loss"][-1] + history["rating_loss"][-1], rel=1e-4)


def test_pretrain_explains_a_rising_held_out_loss(pretrain_run):
    losses = pretrain_run["manifest"]["history"]["val_loss"]
    rose = len(losses) - 1 - losses.index(min(losses))
    notes = [line for line in pretrain_run["stdout"].splitlines() if line.startswith("note: ")]
    if rose:
        assert notes == [f"note: test loss rose for the last {rose} epoch"
                         f"{'s' if rose > 1 else ''} (lowest after epoch "
                         f"{losses.index(min(losses)) + 1} of 4); pretraining runs its "
                         "fixed 4 epochs (early stopping needs a validation part that is not "
                         'the test part: --split leave-one-out and "patience" > 0 in '
                         "--config FILE.json)"]
    else:
        assert notes == []


def test_rising_loss_note_wording():
    note = cli_pretrain.rising_loss_note({"val_loss": [5.0, 4.0, 4.5, 4.7]}, "validation",
                                         20, 0)
    assert note == ("note: validation loss rose for the last 2 epochs (lowest after epoch 2 "
                    "of 4); pretraining runs its fixed 20 epochs (set \"patience\" > 0 in "
                    "--config FILE.json to stop early at the best epoch)")
    assert cli_pretrain.rising_loss_note({"val_loss": [5.0, 4.0]}, "validation", 20, 0) is None
    assert cli_pretrain.rising_loss_note({"val_loss": [5.0, 6.0]}, "validation", 20, 3) is None
    assert cli_pretrain.rising_loss_note({}, "test", 20, 0) is None


def test_pretrain_refuses_early_stopping_on_the_test_part(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"patience": 2}))
    status, _, stderr = run(["pretrain", "--data", SMALL, "--epochs", "1", "--config",
                             str(config), "--quiet", "--out", str(tmp_path / "b")])
    assert status == 2 and "test part" in stderr and "leave-one-out" in stderr


def test_finetune_announces_its_refit(pretrain_run, tmp_path):
    status, stdout, stderr = run(["finetune", "--backbone", str(pretrain_run["out"]),
                                  "--data", SMALL, "--epochs", "1", "--batch-size", "256",
                                  "--out", str(tmp_path / "ft")])
    assert status == 0, stderr
    assert "refit: retraining on all 2,470 training rows for 1 epoch" in stdout
    after = stdout[stdout.index("refit: "):]
    assert "/step - " in after[:after.index("\npart ")]  # the refit's progress follows


# ---------------------------------------------------------------------- --help
def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = app.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_option_has_help_and_shows_its_default_once():
    for name, command in _commands().items():
        formatter = command.formatter_class(prog=command.prog)
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            text = formatter._expand_help(action) if action.help else ""
            option = f"{name} {action.option_strings}"
            assert text.strip(), f"{option} has no help"
            assert text.lower().count("default") <= 1, f"{option}: {text}"
            if action.default not in (None, False) and not action.required:
                assert "default" in text.lower(), f"{option} does not show its default"


def test_help_lists_every_task_and_the_config_defaults():
    commands = _commands()
    train_help = commands["train"].format_help()
    for task in registry.tasks():
        assert task in train_help
    assert "(default: rating)" in train_help
    pretrain_help = " ".join(commands["pretrain"].format_help().split())
    assert f"{PretrainConfig().epochs} for PretrainConfig" in pretrain_help
    assert f"{PretrainConfig().batch_size} for PretrainConfig" in pretrain_help
    finetune_help = " ".join(commands["finetune"].format_help().split())
    config = FinetuneConfig()
    assert f"{config.epochs} for FinetuneConfig" in finetune_help
    assert f"{config.batch_size} for FinetuneConfig" in finetune_help
    assert f"the config's, {config.backbone_lr_scale}" in finetune_help
    assert f"the config's, {config.freeze}" in finetune_help
