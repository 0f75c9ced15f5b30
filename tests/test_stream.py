"""Streamed Parquet logs: the split, the counting pass, the batches, training and the CLI.

The in-memory pipeline is the reference: the same rows in a table must give the same
vocabularies, the same parts and the same bias fit as the streamed log.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests._cli import run
from tfrec_p5 import data
from tfrec_p5.data import DataError
from tfrec_p5.data.stream import PARTS, LogSplit, open_log, row_uniform
from tfrec_p5.evaluation.streamed import _sweep, streamed_bias_baseline
from tfrec_p5.models.bias import BiasFit
from tfrec_p5.models.rating import (
    RatingConfig,
    evaluate_rating,
    evaluate_rating_stream,
    train_rating,
    train_rating_stream,
)

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

STREAMABLE = {"history_len": 0, "unknown_users": "model"}


@pytest.fixture(scope="module")
def table():
    return data.load("synthetic", num_users=300, num_items=150, num_interactions=12_000,
                     seed=3)


def write_shards(table, directory, shards=3, row_group=1000, int_ids=False):
    """``table`` as ``shards`` Parquet files in row order; returns the folder."""
    directory.mkdir(exist_ok=True)
    n = len(table)
    for k in range(shards):
        rows = slice(k * n // shards, (k + 1) * n // shards)
        users, items = table.user_id[rows], table.item_id[rows]
        if int_ids:
            users = np.char.lstrip(users.astype(str), "u").astype(np.int64)
            items = np.char.lstrip(items.astype(str), "i").astype(np.int64)
        pq.write_table(pa.table({"user_id": users, "item_id": items,
                                 "rating": table.rating[rows]}),
                       directory / f"part-{k}.parquet", row_group_size=row_group)
    return directory


@pytest.fixture(scope="module")
def log_dir(table, tmp_path_factory):
    return write_shards(table, tmp_path_factory.mktemp("log"))


def in_memory_parts(table, split):
    parts = split.parts(np.arange(len(table)))
    return {name: table.take(np.flatnonzero(parts == i)) for i, name in enumerate(PARTS)}


def test_row_uniform_is_a_seeded_function_of_the_position():
    rows = np.arange(100_000)
    u = row_uniform(rows, 42)
    assert np.array_equal(u, row_uniform(rows, 42))
    assert np.array_equal(u[500:600], row_uniform(rows[500:600], 42))  # order-free
    assert not np.array_equal(u, row_uniform(rows, 43))
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01


def test_split_shares():
    parts = LogSplit(test=0.2, validation=0.1, seed=1).parts(np.arange(200_000))
    shares = np.bincount(parts, minlength=3) / len(parts)
    assert shares[2] == pytest.approx(0.2, abs=0.005)
    assert shares[1] == pytest.approx(0.08, abs=0.005)  # 10 % of the training rows
    assert not LogSplit(test=0.0, validation=0.0).parts(np.arange(1000)).any()
    with pytest.raises(DataError, match="LogSplit.test"):
        LogSplit(test=1.0)


def test_open_log_reads_a_glob_a_folder_or_a_file(log_dir, table):
    by_glob = open_log(f"parquet:{log_dir}/*.parquet")
    assert by_glob.rows == len(table) and len(by_glob.files) == 3
    assert open_log(f"parquet:{log_dir}").files == by_glob.files
    one = open_log(f"parquet:{by_glob.files[0]}")
    assert one.files == by_glob.files[:1] and one.rows < len(table)
    assert [g[2] for g in by_glob.groups][:2] == [0, 1000]


def test_open_log_refusals(log_dir, tmp_path):
    with pytest.raises(DataError, match="no Parquet file matches"):
        open_log(f"parquet:{tmp_path}/*.parquet")
    with pytest.raises(DataError, match="missing column 'visitor'"):
        open_log(f"parquet:{log_dir}?user=visitor")
    with pytest.raises(DataError, match=r"unknown option\(s\) \['sep'\]"):
        open_log(f"parquet:{log_dir}?sep=tab")
    with pytest.raises(DataError, match="a streamed log is 'parquet:PATH'"):
        open_log("csv:x.csv")
    implicit = open_log(f"parquet:{log_dir}?rating=none")
    assert implicit.rating is None


def test_a_glob_loads_in_memory_too(log_dir, table):
    loaded = data.load(f"parquet:{log_dir}/*.parquet")
    assert len(loaded) == len(table)
    assert np.array_equal(loaded.user_id, table.user_id)
    with pytest.raises(DataError, match="no Parquet file matches"):
        data.load(f"parquet:{log_dir}/*.nothing")


def test_scan_equals_the_in_memory_pipeline(log_dir, table):
    split = LogSplit(test=0.2, validation=0.1, seed=7)
    scan = open_log(f"parquet:{log_dir}").scan(split)
    parts = in_memory_parts(table, split)
    assert scan.rows == {name: len(part) for name, part in parts.items()}
    train = data.Interactions.concat(parts["fit"], parts["validation"])
    expected = data.Vocabularies.build(train)
    assert scan.vocabs.user == expected.user and scan.vocabs.item == expected.item
    assert scan.rating_mean == pytest.approx(float(np.mean(parts["fit"].rating, dtype=np.float64)),
                                              rel=1e-12)
    assert scan.rating_range == (float(train.rating.min()), float(train.rating.max()))
    rare = open_log(f"parquet:{log_dir}").scan(split, min_count=30)
    assert rare.vocabs.item == data.Vocabularies.build(train, min_count=30).item


def test_integer_ids_give_the_same_vocabulary(table, tmp_path):
    split = LogSplit(seed=2)
    strings = open_log(f"parquet:{write_shards(table, tmp_path / 's')}").scan(split)
    ints = open_log(f"parquet:{write_shards(table, tmp_path / 'i', int_ids=True)}")
    scan = ints.scan(split)
    assert [t.lstrip("u") for t in strings.vocabs.user.tokens] == list(scan.vocabs.user.tokens)
    users = np.concatenate([b[0] for b in ints.batches(scan, ("fit",), 4096)])
    assert users.min() >= 1  # every training user found by its integer ID


def test_one_pass_yields_every_row_of_the_parts_once(log_dir, table):
    split = LogSplit(seed=5)
    log = open_log(f"parquet:{log_dir}")
    scan = log.scan(split)
    parts = in_memory_parts(table, split)
    ds = log.dataset(scan, ("fit",), batch_size=512, shuffle=True, seed=1,
                     shuffle_rows=3000)
    assert ds.cardinality().numpy() == scan.batches(("fit",), 512)

    def pairs(dataset):
        batches = [(x["user_id"].numpy(), x["item_id"].numpy(), y.numpy())
                   for x, y in dataset]
        return [np.concatenate([b[i] for b in batches]) for i in range(3)]

    first, second = pairs(ds), pairs(ds)
    fit = parts["fit"]
    expected = sorted(zip(scan.vocabs.user.lookup(fit.user_id),
                          scan.vocabs.item.lookup(fit.item_id), fit.rating, strict=True))
    assert sorted(zip(*first, strict=True)) == expected
    assert not np.array_equal(first[0], second[0])  # reshuffled each epoch
    test_users = np.concatenate([x["user_id"].numpy() for x, _ in
                                 log.dataset(scan, ("test",), 4096)])
    assert len(test_users) == len(parts["test"])
    with pytest.raises(DataError, match="unknown part"):
        log.dataset(scan, ("train",), 512)


def test_bad_rows_name_file_and_line(tmp_path):
    for name, column, bad in (("nulls", "user_id", pa.array(["u1", None, "u3"])),
                              ("nan", "rating", pa.array([4.0, 3.0, float("nan")]))):
        folder = tmp_path / name
        folder.mkdir()
        columns = {"user_id": pa.array(["u1", "u2", "u3"]),
                   "item_id": pa.array(["i1", "i2", "i3"]),
                   "rating": pa.array([4.0, 3.0, 5.0])}
        columns[column] = bad
        pq.write_table(pa.table(columns), folder / "a.parquet")
        with pytest.raises(DataError, match=column) as err:
            open_log(f"parquet:{folder}").scan(LogSplit(test=0.0))
        assert "a.parquet" in str(err.value)
        assert ("row 2:" if name == "nulls" else "row 3:") in str(err.value)


def test_one_sweep_equals_bias_fit_with_one_sweep(log_dir, table):
    split = LogSplit(seed=4)
    log = open_log(f"parquet:{log_dir}")
    scan = log.scan(split)
    fit_rows = in_memory_parts(table, split)["fit"]
    got = _sweep(log, scan, ("fit",), (5.0,))[5.0]
    want = BiasFit.fit(scan.vocabs.user.lookup(fit_rows.user_id),
                       scan.vocabs.item.lookup(fit_rows.item_id), fit_rows.rating,
                       len(scan.vocabs.user), len(scan.vocabs.item), 5.0, sweeps=1)
    np.testing.assert_allclose(got.item_bias, want.item_bias, atol=1e-9)
    np.testing.assert_allclose(got.user_bias, want.user_bias, atol=1e-9)
    ref = streamed_bias_baseline(log, scan)
    assert ref.fit.l2 == min(ref.validation, key=lambda k: ref.validation[k]["rmse"])


def test_streamed_training_matches_in_memory_training(log_dir, table):
    split = LogSplit(test=0.2, validation=0.1, seed=42)
    log = open_log(f"parquet:{log_dir}")
    scan = log.scan(split)
    config = RatingConfig(epochs=6, **STREAMABLE)
    streamed = train_rating_stream(log, scan, config, verbose=0)
    got = evaluate_rating_stream(streamed.model, log, scan)
    parts = in_memory_parts(table, split)
    assert set(streamed.history) >= {"search_val_rmse", "loss"}  # searched, then refit
    # The streamed model answers the test rows as the same model called in memory.
    assert got == pytest.approx(evaluate_rating(streamed.model, parts["test"],
                                                streamed.vocabs), rel=1e-6)
    train = data.Interactions.concat(parts["fit"], parts["validation"])
    in_memory = train_rating(train, parts["validation"], config.replace(refit=False),
                             verbose=0)
    mean_only = float(np.sqrt(np.mean((parts["test"].rating - scan.rating_mean) ** 2)))
    assert got["rmse"] < 0.9 * mean_only  # it learned
    assert got["rmse"] == pytest.approx(
        evaluate_rating(in_memory.model, parts["test"], in_memory.vocabs)["rmse"], abs=0.03)


def test_streamed_training_refuses_what_needs_memory(log_dir):
    log = open_log(f"parquet:{log_dir}")
    scan = log.scan(LogSplit())
    with pytest.raises(ValueError, match="history_len 128.*unknown_users 'bias'"):
        train_rating_stream(log, scan, RatingConfig(), verbose=0)
    with pytest.raises(ValueError, match="validation_fraction 0.2 differs"):
        train_rating_stream(log, scan, RatingConfig(validation_fraction=0.2, **STREAMABLE),
                            verbose=0)


def test_cli_train_stream_then_evaluate(log_dir, tmp_path):
    out = tmp_path / "model"
    status, stdout, _ = run(["train", "--task", "rating", "--data",
                             f"parquet:{log_dir}/*.parquet", "--stream", "--epochs", "3",
                             "--quiet", "--out", str(out), "--json"])
    assert status == 0
    trained = json.loads(stdout.strip().splitlines()[-1])
    assert {"test_rmse", "validation_rmse", "bias_baseline_validation_rmse"} <= set(trained)
    # Whichever validation preferred is served; the other's test row is shown beside it.
    baseline_served = trained["bias_baseline_validation_rmse"] < trained["validation_rmse"]
    assert ("model_test_rmse" in trained) == baseline_served
    assert ("bias_baseline_test_rmse" in trained) == (not baseline_served)
    status, stdout, _ = run(["evaluate", "--model", str(out), "--json"])
    assert status == 0
    again = json.loads(stdout.strip().splitlines()[-1])
    assert again["test_rmse"] == pytest.approx(trained["test_rmse"], abs=1e-5)
    assert again["test_examples"] == trained["test_examples"]
    meta = json.loads((out / "1" / "assets.extra" / "metadata.json").read_text())
    assert meta["stream"] == {"test": 0.2, "validation": 0.1, "seed": 42}


@pytest.mark.parametrize("extra, message", [
    (["--task", "retrieval"], "--task retrieval"),
    (["--data", "synthetic"], "--data synthetic"),
    (["--test-data", "synthetic"], "--test-data"),
    (["--split", "leave-one-out"], "--split random:F or none"),
])
def test_cli_stream_refusals(log_dir, tmp_path, extra, message):
    argv = ["train", "--task", "rating", "--data", f"parquet:{log_dir}", "--stream",
            "--out", str(tmp_path / "m")]
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    status, _, stderr = run(argv)
    assert status == 2 and message in stderr


def test_cli_stream_refuses_a_config_that_needs_memory(log_dir, tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"history_len": 64}))
    status, _, stderr = run(["train", "--data", f"parquet:{log_dir}", "--stream",
                             "--config", str(config), "--out", str(tmp_path / "m")])
    assert status == 2 and "history_len 64" in stderr


def test_a_killed_streamed_run_resumes(log_dir, tmp_path):
    """SIGKILL after the first epoch's backup; the same command says "resuming from
    epoch 1", finishes and exports (the backup records the files' fingerprint)."""
    from tests.test_reliability_resume import RATING, _cmd, _finish, _kill_after_first_epoch
    from tests.test_reliability_resume import _start as start

    config = tmp_path / "c.json"
    config.write_text(json.dumps({**RATING, "unknown_users": "model"}))
    out = tmp_path / "m"
    argv = _cmd("train", "--data", f"parquet:{log_dir}", "--stream", "--epochs", "3",
                "--json", "--quiet", "--config", str(config), "--out", str(out))
    saved = _kill_after_first_epoch(start(argv, tmp_path / "1.log"), out / ".backup-rating")
    metrics = _finish(start(argv, tmp_path / "2.log"), tmp_path / "2.log")
    assert f"resuming from epoch {saved} " in (tmp_path / "2.log").read_text()
    assert metrics["test_rmse"] < 1.0 and sorted(os.listdir(out)) == ["1"]
