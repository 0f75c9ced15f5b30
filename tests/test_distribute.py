"""tf.distribute for real: two MultiWorkerMirrored workers and a parameter-server cluster.

Both clusters run on 127.0.0.1 in child processes (``tests/_distribute_worker.py``, forked
from a server that imported TensorFlow but ran no op, ``_forked``), started
together by one module fixture while this process trains the single-process reference
with the same data, configs and global batch:

* ``multi_worker``: 2 workers (``TF_CONFIG``) train the rating model (with early
  stopping) and the retrieval model, then export as ``tfrec-p5 train`` does.
* ``parameter_server``: 1 coordinator + 2 workers + 2 parameter servers; the workers and
  servers run the real ``tfrec-p5 train --strategy parameter_server`` command, which
  serves when ``TF_CONFIG`` names a worker / ps task. Embedding tables are split across
  both servers (``MinSizePartitioner`` with 1 KiB shards).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import _distribute_worker as W  # tests/ is on sys.path (pytest rootdir conftest)
import _forked as forked
import numpy as np
import pytest
import tensorflow as tf

from tests._cli import run
from tfrec_p5 import distribute
from tfrec_p5.cli import main as cli_main
from tfrec_p5.data import load
from tfrec_p5.data.pipeline import Vocabularies, batched_dataset
from tfrec_p5.export import load_export
from tfrec_p5.models.unified import UnifiedConfig, build_unified

WORKER = Path(__file__).with_name("_distribute_worker.py")
REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 900  # seconds; a hung collective must fail the test, not the suite


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _env(cluster: dict, kind: str, index: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env.update(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": kind,
                                                                  "index": index}}),
               TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    return env


def _start(args: list[str], env: dict, log: Path) -> forked.Forked:
    return forked.popen(args, env=env, cwd=REPO, stdout=log, stderr=log)


def _wait(proc: forked.Forked, log: Path, deadline: float) -> None:
    try:
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{log.name} timed out:\n{log.read_text()[-3000:]}")
    assert code == 0, f"{log.name} exited {code}:\n{log.read_text()[-3000:]}"


@pytest.fixture(scope="module")
def clusters(tmp_path_factory):
    mw_dir = tmp_path_factory.mktemp("multi_worker")
    ps_dir = tmp_path_factory.mktemp("parameter_server")
    ports = _free_ports(7)
    mw_cluster = {"worker": [f"127.0.0.1:{p}" for p in ports[:2]]}
    ps_cluster = {"chief": [f"127.0.0.1:{ports[2]}"],
                  "worker": [f"127.0.0.1:{p}" for p in ports[3:5]],
                  "ps": [f"127.0.0.1:{p}" for p in ports[5:7]]}
    workers = [_start([str(WORKER), "multi_worker", str(mw_dir)], _env(mw_cluster, "worker", i),
                      mw_dir / f"log{i}.txt") for i in range(2)]
    servers = [_start(["-m", "tfrec_p5", "train", "--strategy", "parameter_server",
                       "--out", str(ps_dir / "never-written")], _env(ps_cluster, kind, i),
                      ps_dir / f"{kind}{i}.txt") for kind in ("worker", "ps") for i in range(2)]
    coordinator = _start([str(WORKER), "ps_coordinator", str(ps_dir)],
                         _env(ps_cluster, "chief", 0), ps_dir / "chief.txt")
    try:
        # Meanwhile, the single-process reference: same data, configs, seed, global batch.
        rating, retrieval, parts = W.train_both()
        reference = {"metrics": W.metrics_of(rating, retrieval, parts),
                     "rating_weights": W.weights_of(rating.model),
                     "export": W.export_both(rating, retrieval,
                                             str(tmp_path_factory.mktemp("single") / "m")),
                     "test": parts.test}
        deadline = time.monotonic() + TIMEOUT
        for i, proc in enumerate(workers):
            _wait(proc, mw_dir / f"log{i}.txt", deadline)
        _wait(coordinator, ps_dir / "chief.txt", deadline)
        for proc in servers:  # they serve forever: the coordinator is done with them
            assert proc.poll() is None, "a parameter-server task exited early"
    finally:
        for proc in [*workers, *servers, coordinator]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    reports = [json.loads((mw_dir / f"worker{i}.json").read_text()) for i in range(2)]
    weights = [dict(np.load(mw_dir / f"worker{i}.npz")) for i in range(2)]
    coordinator_report = json.loads((ps_dir / "coordinator.json").read_text())
    return {"mw_dir": mw_dir, "ps_dir": ps_dir, "reports": reports, "weights": weights,
            "coordinator": coordinator_report, "reference": reference}


# ---------------------------------------------------------------------- multi_worker
def test_multi_worker_workers_end_with_identical_weights(clusters):
    reports, (w0, w1) = clusters["reports"], clusters["weights"]
    assert [r["replicas"] for r in reports] == [2, 2]
    assert [r["chief"] for r in reports] == [True, False]
    assert sorted(w0) == sorted(w1) and len(w0) > 10
    for name in w0:
        np.testing.assert_array_equal(w0[name], w1[name], err_msg=name)
    assert reports[0]["rating"] == reports[1]["rating"]
    assert reports[0]["retrieval"] == reports[1]["retrieval"]


def test_multi_worker_matches_single_process(clusters):
    """Same global batch: each worker trains on half of the batch one process sees, the
    gradients are all-reduced, so the rating model follows the single-process run to
    float round-off (early stopping included). Retrieval's in-batch negatives are per
    replica (as in TFRS), so its metrics agree only closely."""
    ref, got = clusters["reference"], clusters["reports"][0]
    assert got["rating_epochs"] == ref["metrics"]["rating_epochs"]
    for key in ("rmse", "mae"):
        assert got["rating"][key] == pytest.approx(ref["metrics"]["rating"][key], abs=1e-4)
    w0 = clusters["weights"][0]
    for i, want in enumerate(ref["rating_weights"]):
        np.testing.assert_allclose(w0[f"rating_{i}"], want, atol=1e-4)
    for key, want in ref["metrics"]["retrieval"].items():
        tolerance = 0 if key.endswith("users") or key.endswith("targets") else 0.03
        assert got["retrieval"][key] == pytest.approx(want, abs=tolerance), key


def test_multi_worker_cli_streams_a_parquet_log_and_the_chief_exports(clusters):
    """``tfrec-p5 train --stream`` under ``multi_worker``: it runs on every worker, each
    reads the files (no table in memory), the chief exports once, and the export's test
    RMSE is reproduced by evaluate."""
    assert [r["stream_status"] for r in clusters["reports"]] == [0, 0]
    out = clusters["mw_dir"] / "stream"
    assert sorted(os.listdir(out)) == ["1"]  # no backup folder left, no second version
    loaded, _, meta = load_export(out)
    assert sorted(loaded.signatures) == ["predict_rating", "serving_default"]
    assert meta["strategy"] == "multi_worker" and meta["tasks"] == ["rating"]
    assert meta["stream"]["test"] == 0.2
    status, stdout, _ = run(["evaluate", "--model", str(out), "--json"])
    assert status == 0
    assert json.loads(stdout)["test_rmse"] == pytest.approx(meta["metrics"]["test_rmse"],
                                                             abs=1e-5)


def test_multi_worker_chief_exports_like_a_single_process(clusters):
    out = clusters["mw_dir"] / "export"
    assert sorted(os.listdir(out)) == ["1"]  # the other worker wrote to a temporary folder
    loaded, _, meta = load_export(out)
    single, _, single_meta = load_export(clusters["reference"]["export"])
    assert sorted(loaded.signatures) == sorted(single.signatures) == [
        "predict_rating", "rank", "recommend", "serving_default"]
    assert meta["tasks"] == single_meta["tasks"]
    test = clusters["reference"]["test"]
    ids = {"user_id": tf.constant(test.user_id.astype(object)),
           "item_id": tf.constant(test.item_id.astype(object))}
    np.testing.assert_allclose(loaded.signatures["predict_rating"](**ids)["rating"].numpy(),
                               single.signatures["predict_rating"](**ids)["rating"].numpy(),
                               atol=1e-4)
    rec = loaded.signatures["recommend"](user_id=ids["user_id"][:5])
    assert rec["item_ids"].shape == (5, 10) and rec["scores"].dtype == tf.float32


# ---------------------------------------------------------------------- parameter_server
def test_parameter_server_shards_tables_and_exports(clusters):
    report = clusters["coordinator"]
    assert len(report["tables"]) == 2  # the user and item ID tables
    for name, devices in report["tables"].items():
        tasks = {d.split("/device:")[0] for d in devices}
        assert tasks == {"/job:ps/replica:0/task:0", "/job:ps/replica:0/task:1"}, name
    # Asynchronous updates make the epoch losses noisy (seen: 791 then 1121 while the
    # test metrics below still showed learning), so only finiteness is checked here.
    assert len(report["loss"]) == 2 and np.all(np.isfinite(report["loss"]))
    assert report["signatures"] == ["predict_rating", "rank", "recommend", "serving_default"]
    assert report["served_vs_direct"] < 1e-5  # the export serves the trained weights
    assert report["recommend_shape"] == [3, 10]
    # It learned: retrieval well above chance (10 of ~120 items), rating near the scale.
    assert report["metrics"]["retrieval_recall@10"] > 0.15
    assert report["metrics"]["rating_rmse"] < 1.2


# ---------------------------------------------------------------------- in-process units
def test_resolve_strategy_names_and_errors(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.is_default(distribute.resolve_strategy("default"))
    assert distribute.is_default(distribute.resolve_strategy(None))
    with pytest.raises(ValueError, match="unknown strategy"):
        distribute.resolve_strategy("horovod")
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.resolve_strategy("parameter_server")
    cluster = {"worker": ["127.0.0.1:1"], "ps": ["127.0.0.1:2"], "chief": ["127.0.0.1:3"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster,
                                                "task": {"type": "ps", "index": 0}}))
    assert distribute.is_server_task("parameter_server")
    assert not distribute.is_server_task("multi_worker")
    with pytest.raises(ValueError, match="serve_forever"):
        distribute.resolve_strategy("parameter_server")


def test_cli_strategy_errors_are_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    code = cli_main(["train", "--strategy", "parameter_server", "--out", str(tmp_path)])
    assert code == 2
    assert "TF_CONFIG" in capsys.readouterr().err
    code = cli_main(["train", "--task", "sequential", "--strategy", "multi_worker",
                     "--out", str(tmp_path)])
    assert code == 2
    assert "--strategy multi_worker supports" in capsys.readouterr().err
    assert cli_main(["train", "--strategy", "horovod", "--out", str(tmp_path)]) == 2


def test_distributed_pipeline_yields_the_default_batches():
    tensors = ({"user_id": tf.range(103, dtype=tf.int64)}, tf.range(103, dtype=tf.float32))
    default = batched_dataset(tensors, 16, shuffle=True, seed=3)
    dist = batched_dataset(tensors, 16, shuffle=True, seed=3, distributed=True)
    assert dist.cardinality() == default.cardinality() == 7
    assert dist.options().experimental_distribute.auto_shard_policy == \
        tf.data.experimental.AutoShardPolicy.DATA
    for _ in range(2):  # a fresh, identical permutation every epoch
        for a, b in zip(default, dist, strict=True):
            np.testing.assert_array_equal(a[0]["user_id"], b[0]["user_id"])
            np.testing.assert_array_equal(a[1], b[1])
    # ParameterServer input: this worker's rows, per-replica batches, repeated forever.
    ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1,
                                     num_replicas_in_sync=1)
    shard = batched_dataset(tensors, 16, shuffle=True, seed=3, input_context=ctx)
    assert shard.cardinality() == tf.data.INFINITE_CARDINALITY
    rows = np.concatenate([b[1].numpy() for b in shard.take(4)])  # 52 rows: one pass
    assert len(np.unique(rows[:51])) == 51


def test_fit_input_default_is_the_plain_dataset():
    built = []

    def build(**kw):
        built.append(kw)
        return tf.data.Dataset.range(3)
    x, steps = distribute.fit_input(tf.distribute.get_strategy(), build)
    assert isinstance(x, tf.data.Dataset) and steps is None and built == [{}]


def test_global_batch_mean_and_loss_swap():
    mse = tf.keras.losses.MeanSquaredError()
    y, p = tf.constant([[1.0], [2.0], [4.0]]), tf.constant([[1.5], [2.0], [3.0]])
    assert float(distribute.GlobalBatchMean(mse)(y, p)) == pytest.approx(float(mse(y, p)))
    table = load("synthetic", num_users=60, num_items=40, num_interactions=600)
    vocabs = Vocabularies.build(table)
    model, _ = build_unified(table, vocabs, UnifiedConfig(weights={"rating": 1.0,
                                                                   "retrieval": 1.0}))
    assert distribute.make_losses_distributable(model) == 1  # rating only; retrieval sums
    assert distribute.make_losses_distributable(model) == 0
