"""No silent wrong answers from ``tfrec-p5 evaluate`` / ``predict`` / ``recommend`` /
``train``: every case here used to print a plausible number or quietly change an input;
now it refuses with one line (exit 2 for usage errors) or says exactly what changed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _cli import run

import tfrec_p5  # noqa: F401  (conftest.py imported it before TensorFlow)
from tfrec_p5.data.sources import parse_spec, resolve_spec
from tfrec_p5.export import export, load_metadata
from tfrec_p5.export.saved_model import TrainingRecord

SMALL = "synthetic?num_users=200&num_items=100&num_interactions=5000"
TRAIN_ARGS = ["--data", SMALL, "--epochs", "1", "--batch-size", "256", "--quiet"]


@pytest.fixture(scope="module")
def rating_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("silent") / "rating"
    status, _, stderr = run(["train", *TRAIN_ARGS, "--out", str(out)])
    assert status == 0, stderr
    return out


def _one_line_error(stderr: str, *needles: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tfrec-p5: error:"), stderr
    for needle in needles:
        assert needle in lines[0], stderr


# ---------------------------------------------------------------------- 3: training rows
def test_evaluate_on_the_training_split_passes_and_records_the_training_rows(rating_export):
    meta = load_metadata(rating_export / "1")
    assert meta["test_overlap"] == 0.0 and meta["training_data"]["rows"] > 0
    assert TrainingRecord.load(rating_export / "1") is not None
    status, stdout, stderr = run(["evaluate", "--model", str(rating_export), "--json"])
    assert status == 0, stderr
    assert json.loads(stdout)["test_rmse"] == pytest.approx(meta["metrics"]["test_rmse"])


@pytest.mark.parametrize("change", [["--seed", "7"], ["--split", "random:0.5"]])
def test_evaluate_refuses_test_rows_the_model_trained_on(rating_export, change):
    status, stdout, stderr = run(["evaluate", "--model", str(rating_export), *change])
    assert status == 2 and stdout == ""
    _one_line_error(stderr, "pairs the model trained on", "--allow-overlap")


def test_allow_overlap_scores_them_and_says_so(rating_export):
    status, stdout, stderr = run(["evaluate", "--model", str(rating_export), "--seed", "7",
                                  "--allow-overlap", "--json"])
    assert status == 0, stderr
    assert "warning:" in stderr and "trained on" in stderr
    assert json.loads(stdout)["test_rmse"] > 0


def test_evaluate_refuses_data_that_shares_no_ids_and_counts_unknown_ids(rating_export,
                                                                         tmp_path):
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("user_id,item_id,rating\n"
                       + "".join(f"x{i},y{i % 7},{1 + i % 5}\n" for i in range(60)))
    status, _, stderr = run(["evaluate", "--model", str(rating_export), "--data",
                             f"csv:{foreign}", "--split", "none"])
    assert status == 2 and "share no IDs with the model" in stderr
    # Half the users unknown: scored, and the share is printed.
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("user_id,item_id,rating\n"
                     + "".join(f"{'u' if i % 2 else 'x'}{i},i{1 + i % 50},4\n"
                               for i in range(1, 41)))
    status, stdout, stderr = run(["evaluate", "--model", str(rating_export), "--data",
                                  f"csv:{mixed}", "--split", "none", "--allow-overlap"])
    assert status == 0, stderr
    assert "unknown to the model: the user of 20 and the item of 0 of the 40 test rows " \
        "(50.0% / 0.0%" in stdout


# ---------------------------------------------------------------------- 4: no data recorded
def test_export_from_python_without_data_needs_data(tmp_path):
    from tfrec_p5 import data
    from tfrec_p5.models.rating import RatingConfig, build_rating_model

    # An untrained model exports the same way; only the missing data record matters here.
    vocabs = data.Vocabularies.build(
        data.load("synthetic?num_users=30&num_items=20&num_interactions=400"))
    model = build_rating_model(vocabs, None, RatingConfig(embedding_dim=4, hidden_units=(4,)))
    path = export(model, tmp_path / "py", vocabs=vocabs, rating_range=(1.0, 5.0))
    status, stdout, stderr = run(["evaluate", "--model", path])
    assert status == 2 and stdout == ""
    _one_line_error(stderr, "does not record the data it was trained on", "--data")


# ---------------------------------------------------------------------- 5: nonsense protocol
@pytest.mark.parametrize("protocol", ["sampled:0", "sampled:abc", "sampled:-3", "full:5",
                                      "bogus"])
def test_nonsense_protocols_are_refused(rating_export, protocol):
    status, _, stderr = run(["evaluate", "--model", str(rating_export), "--protocol",
                             protocol])
    assert status == 2
    _one_line_error(stderr)


def test_protocol_for_a_task_without_histories_is_refused(rating_export):
    status, _, stderr = run(["evaluate", "--model", str(rating_export), "--protocol", "full"])
    assert status == 2
    _one_line_error(stderr, "--protocol applies to --task sequential")


# ---------------------------------------------------------------------- 10: bad options
@pytest.mark.parametrize("argv, needle", [
    (["--batch-size", "0"], "--batch-size"), (["--batch-size", "-5"], "--batch-size"),
    (["--epochs", "0"], "--epochs"), (["--task", "retrieval", "--top-k", "-3"], "--top-k"),
    (["--task", "retrieval", "--top-k", "0"], "--top-k"),
])
def test_bad_numeric_options_are_usage_errors_before_loading(tmp_path, argv, needle):
    status, _, stderr = run(["train", "--data", "csv:/does/not/exist.csv", *argv,
                             "--out", str(tmp_path / "x")])
    assert status == 2
    _one_line_error(stderr, needle)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("task, config, needle", [
    ("rating", {"embedding_dim": -4}, "embedding_dim must be >= 1"),
    ("rating", {"learning_rate": "fast"}, "learning_rate must be a number"),
    ("retrieval", {"dropout": 2}, "unknown config key"),
    ("retrieval", {"batch_size": 0}, "batch_size must be >= 1"),
    ("sequential", {"max_len": 0}, "max_len must be >= 1"),
    ("retrieval", {"temperature": 0.1}, "does nothing with retrieval_loss='squared'"),
])
def test_bad_config_fields_are_refused_before_loading(tmp_path, task, config, needle):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    # A data spec that would fail to load: the config error must come first.
    status, _, stderr = run(["train", "--task", task, "--data", "csv:/does/not/exist.csv",
                             "--config", str(path), "--out", str(tmp_path / "x")])
    assert status == 2
    _one_line_error(stderr, needle)


# ---------------------------------------------------------------------- 11: changed inputs
@pytest.mark.parametrize("task, flag", [("rating", ["--weights", "rating=1"]),
                                        ("retrieval", ["--weights", "retrieval=1"]),
                                        ("rating", ["--top-k", "5"]),
                                        ("rating", ["--include-seen"]),
                                        ("sequential", ["--include-seen"])])
def test_options_that_do_nothing_for_the_task_are_refused(tmp_path, task, flag):
    status, _, stderr = run(["train", "--task", task, *flag, "--out", str(tmp_path / "x")])
    assert status == 2
    _one_line_error(stderr, "does nothing for --task " + task)


def test_predict_says_when_an_id_is_unknown(rating_export):
    status, stdout, stderr = run(["predict", "--model", str(rating_export), "--user",
                                  "nobody", "--item", "i1"])
    assert status == 0 and float(stdout) > 0
    assert "note: user 'nobody' is not in the model's training data" in stderr
    status, _, stderr = run(["predict", "--model", str(rating_export), "--user", "u1",
                             "--item", "i1"])
    assert status == 0 and "note:" not in stderr


@pytest.fixture(scope="module")
def retrieval_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("silent") / "ret"
    status, _, stderr = run(["train", "--task", "retrieval", *TRAIN_ARGS, "--top-k", "8",
                             "--out", str(out)])
    assert status == 0, stderr
    return out


def test_recommend_says_when_k_exceeds_the_export(retrieval_export):
    out = retrieval_export
    status, stdout, stderr = run(["recommend", "--model", str(out), "--user", "u1",
                                  "-k", "50", "--json"])
    assert status == 0, stderr
    assert "at most 8 items" in stderr and len(json.loads(stdout)["u1"]) <= 8
    status, _, stderr = run(["recommend", "--model", str(out), "--user", "u1", "-k", "0"])
    assert status == 2


# ---------------------------------------------------------------------- 12: paths
def test_evaluate_from_another_folder_uses_the_resolved_data_path(tmp_path, monkeypatch):
    data_dir = tmp_path / "work"
    data_dir.mkdir()
    rng = np.random.default_rng(0)
    rows = "".join(f"u{u},i{i},{r}\n" for u, i, r in zip(
        rng.integers(0, 40, 800), rng.integers(0, 30, 800), rng.integers(1, 6, 800),
        strict=True))
    (data_dir / "r.csv").write_text("user_id,item_id,rating\n" + rows)
    monkeypatch.chdir(data_dir)
    status, _, stderr = run(["train", "--data", "csv:r.csv", "--epochs", "1", "--quiet",
                             "--out", "../models/sib"])  # a sibling folder, as typed
    assert status == 0, stderr
    meta = load_metadata(tmp_path / "models" / "sib" / "1")
    assert meta["data"] == "csv:r.csv"
    assert meta["data_resolved"] == f"csv:{data_dir / 'r.csv'}"
    monkeypatch.chdir(tmp_path)
    status, stdout, stderr = run(["evaluate", "--model", "models/sib"])
    assert status == 0, stderr
    assert "does not exist from here" in stdout and "rmse" in stdout


def test_a_question_mark_in_a_file_name_is_part_of_the_path(tmp_path, monkeypatch):
    odd = tmp_path / "what?.csv"
    odd.write_text("user_id,item_id,rating\nu1,i1,4\nu2,i1,3\n")
    assert parse_spec(f"csv:{odd}") == ("csv", str(odd), {})
    assert parse_spec(f"csv:{odd}?rating=rating") == ("csv", str(odd), {"rating": "rating"})
    assert parse_spec("csv:a??b=1.csv") == ("csv", "a?b=1.csv", {})
    from tfrec_p5.data import load

    assert len(load(f"csv:{odd}")) == 2
    monkeypatch.chdir(tmp_path)
    assert parse_spec(resolve_spec("csv:what?.csv"))[1] == str(odd)


# ---------------------------------------------------------------------- what users reach for
def test_recommend_all_users_streams_a_file_and_inspect_describes_the_export(
        retrieval_export, tmp_path):
    out = retrieval_export
    target = tmp_path / "all.csv"
    status, _, stderr = run(["recommend", "--model", str(out), "--all-users", "-k", "4",
                             "--out", str(target)])
    assert status == 0, stderr
    lines = target.read_text().splitlines()
    assert lines[0].startswith("user_id,rank,item_id,score")
    users = {line.split(",")[0] for line in lines[1:]}
    assert len(users) == 200 and len(lines) - 1 <= 4 * 200
    status, _, stderr = run(["recommend", "--model", str(out), "--all-users"])
    assert status == 2 and "--out" in stderr
    status, stdout, stderr = run(["inspect", str(out), "--json"])
    assert status == 0, stderr
    report = json.loads(stdout)
    assert report["kind"] == "export" and report["data"] == SMALL
    assert report["signatures"]["recommend"]["outputs"]["item_ids"] == "string[None, 8]"
    assert report["metrics"]["test_ndcg@10"] > 0
