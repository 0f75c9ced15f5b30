"""One task of a loopback ``tf.distribute`` cluster, for ``tests/test_distribute.py``.

Run as ``python tests/_distribute_worker.py MODE OUT_DIR`` with ``TF_CONFIG`` set:

* ``multi_worker``: a MultiWorkerMirroredStrategy worker. Runs ``tfrec-p5 train --task
  rating --strategy multi_worker --stream`` first, on a Parquet copy of the data (the
  chief exports to ``OUT_DIR/stream``), then, on the same strategy, trains the rating model
  (``train_rating``) and the retrieval model (``train_unified``) on the shared synthetic
  data, writes its weights and metrics to ``OUT_DIR/worker<i>.npz`` / ``.json`` and exports
  both as ``tfrec-p5 train`` does (``write_dir``: the chief into ``OUT_DIR/export``, the
  other worker into a temporary folder).
* ``ps_coordinator``: the chief of a ParameterServerStrategy cluster. Trains one model with
  both heads (rating + retrieval, ``--task all``) with tiny embedding shards, reports where
  each embedding table lived during training, exports, and checks the export against the
  returned model.
* worker / ps tasks of that cluster run the CLI itself (``tfrec-p5 train --strategy
  parameter_server``), which serves when ``TF_CONFIG`` names a worker or ps task.

The data and configs live here (``DATA``, ``rating_config``, ``retrieval_config``) so the
single-process reference in the test uses exactly the same ones.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

# TensorFlow is imported inside the functions: in a worker, the CLI must be the first to
# import it (``--strategy multi_worker`` configures collective ops before any op runs).
import tfrec_p5  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)

DATA = {"num_users": 200, "num_items": 120, "num_interactions": 3200, "seed": 5}
BATCH = 128  # global batch; 2 workers train on 64 rows each of the same batch
SEED = 7


def split():
    from tfrec_p5 import data

    return data.random_split(data.load("synthetic", **DATA), 0.8, seed=SEED)


def rating_config():
    from tfrec_p5.models.rating import RatingConfig

    # Dropout off: its random masks are drawn per replica, which is legitimate but would
    # make the comparison with one process noisy.
    return RatingConfig(embedding_dim=8, hidden_units=(16,), dropout=0.0, history_len=0,
                        use_side_features=False, batch_size=BATCH, epochs=2, patience=1,
                        refit=False, steps_per_execution=4, learning_rate=3e-3)


def retrieval_config(**changes):
    from tfrec_p5.models.unified import UnifiedConfig

    base = dict(weights={"retrieval": 1.0}, embedding_dim=16, batch_size=BATCH, epochs=1,
                steps_per_execution=4, learning_rate=1e-2)
    if changes.get("history", True):  # history_dropout exists only with a history query
        base["history_dropout"] = 0.0
    return UnifiedConfig(**{**base, **changes})


def weights_of(model) -> list[np.ndarray]:
    return [np.asarray(v.numpy()) for v in model.weights]


def _multi_worker(out_dir: str) -> None:
    from tfrec_p5 import cli

    started = time.perf_counter()
    # First, in this fresh process, the command line: `tfrec-p5 train --strategy
    # multi_worker --stream` (the chief exports to OUT_DIR/stream).
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    stream_status = cli.main(["train", "--task", "rating", "--strategy", "multi_worker",
                              "--data", f"parquet:{_parquet_log(out_dir, index)}", "--stream",
                              "--config", _stream_config(out_dir, index), "--quiet",
                              "--out", os.path.join(out_dir, "stream")])
    from tfrec_p5 import distribute

    strategy = distribute.resolve_strategy("multi_worker")  # the CLI's, cached
    rating, retrieval, parts = train_both(strategy)
    arrays = {f"rating_{i}": w for i, w in enumerate(weights_of(rating.model))}
    arrays.update({f"retrieval_{i}": w for i, w in enumerate(weights_of(retrieval.model))})
    np.savez(os.path.join(out_dir, f"worker{index}.npz"), **arrays)
    report = {"replicas": strategy.num_replicas_in_sync, "chief": distribute.is_chief(strategy),
              "stream_status": stream_status,
              **metrics_of(rating, retrieval, parts)}
    # As `tfrec-p5 train` does: every worker saves, only the chief into the real folder.
    with distribute.write_dir(os.path.join(out_dir, "export"), strategy) as target:
        report["export"] = export_both(rating, retrieval, target)
    report["seconds"] = time.perf_counter() - started
    with open(os.path.join(out_dir, f"worker{index}.json"), "w", encoding="utf-8") as f:
        json.dump(report, f)


def _parquet_log(out_dir: str, index: int) -> str:
    """The shared synthetic data as a Parquet log in 4 row groups (this worker's copy)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tfrec_p5 import data

    table = data.load("synthetic", **DATA)
    folder = os.path.join(out_dir, f"log{index}")
    os.makedirs(folder, exist_ok=True)
    pq.write_table(pa.table({"user_id": table.user_id, "item_id": table.item_id,
                             "rating": table.rating}), os.path.join(folder, "part.parquet"),
                   row_group_size=len(table) // 4 + 1)
    return folder


def _stream_config(out_dir: str, index: int) -> str:
    """``rating_config`` for ``--stream`` (unknown users answered by the model)."""
    path = os.path.join(out_dir, f"stream_config{index}.json")
    with open(path, "w", encoding="utf-8") as f:
        f.write(rating_config().replace(epochs=2, unknown_users="model").to_json())
    return path


def train_both(strategy=None):
    """The rating model (with early stopping) and the retrieval model, as the test's
    single-process reference trains them."""
    from tfrec_p5.models.rating import train_rating
    from tfrec_p5.models.unified import train_unified

    parts = split()
    # The test part doubles as the early-stopping validation (the point is that the
    # distributed run follows the single-process one, EarlyStopping included).
    rating = train_rating(parts.train, parts.test, rating_config(), seed=SEED, verbose=0,
                          strategy=strategy)
    retrieval = train_unified(parts.train, None, retrieval_config(), vocabs=rating.vocabs,
                              seed=SEED, verbose=0, strategy=strategy)
    return rating, retrieval, parts


def metrics_of(rating, retrieval, parts) -> dict:
    from tfrec_p5.models.rating import evaluate_rating

    return {"rating": evaluate_rating(rating.model, parts.test, rating.vocabs),
            "rating_epochs": len(rating.history["loss"]),
            "retrieval": retrieval.evaluate(parts.test, ks=(10,), factorized_ks=())}


def export_both(rating, retrieval, directory: str) -> str:
    """One export with ``recommend`` / ``rank`` (retrieval) and ``predict_rating``, built
    the way ``tfrec-p5 train`` builds them."""
    from tfrec_p5.export import add_rating_signatures, build_module, export

    module = build_module(retrieval, k=10)
    add_rating_signatures(module, rating.model, (1.0, 5.0))
    return export(module, directory)


def record_devices(tables: dict[str, list[str]], prefix: str):
    """A callback noting, at the end of ``fit``, where each ID-embedding table of the
    *training* model lives (``train_*`` returns a one-machine copy under
    ParameterServerStrategy)."""
    import tensorflow as tf

    class RecordDevices(tf.keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            for v in self.model.variables:
                if "id_embedding" in v.name:
                    key = f"{prefix}:{v.name.split('/part_')[0].split(':')[0]}"
                    tables.setdefault(key, []).append(v.device)
    return RecordDevices()


def _ps_coordinator(out_dir: str) -> None:
    import tensorflow as tf

    from tfrec_p5 import distribute
    from tfrec_p5.export import build_module, export
    from tfrec_p5.models.unified import train_unified

    # Shards of at least 1 KiB: the 16-wide ID tables split across both servers.
    strategy = distribute.resolve_strategy("parameter_server", min_shard_bytes=1 << 10)
    parts = split()
    tables: dict[str, list[str]] = {}  # "model:variable" -> devices of its shards
    # One model with both heads (rating + retrieval, as `--task all`), 2 epochs.
    # The catalog softmax here (the multi-worker runs cover the default squared loss): it
    # learns an ID-tower model in these 40 steps (squared: recall 0.11), and keeps the
    # tfrs.tasks.Retrieval path tested on sharded tables.
    config = retrieval_config(weights={"rating": 1.0, "retrieval": 1.0}, history=False,
                              use_user_tower=True, epochs=2, retrieval_loss="softmax",
                              rating=rating_config().replace(hidden_units=(8,)))
    trained = train_unified(parts.train, None, config, seed=SEED, verbose=0,
                            strategy=strategy, callbacks=[record_devices(tables, "all")])
    path = export(build_module(trained, k=10), os.path.join(out_dir, "export"))
    loaded = tf.saved_model.load(path)
    rows = parts.test.take(np.arange(50))
    users, items = rows.user_id.astype(object), rows.item_id.astype(object)
    served = loaded.signatures["predict_rating"](user_id=tf.constant(users),
                                                 item_id=tf.constant(items))["rating"].numpy()
    recommend = loaded.signatures["recommend"](user_id=tf.constant(users[:3]))
    report = {"tables": tables, "signatures": sorted(loaded.signatures),
              "loss": trained.history["loss"],
              "served_vs_direct": float(np.max(np.abs(served - trained.predict_ratings(rows)))),
              "recommend_shape": list(recommend["item_ids"].shape),
              "metrics": trained.evaluate(parts.test, ks=(10,), factorized_ks=())}
    with open(os.path.join(out_dir, "coordinator.json"), "w", encoding="utf-8") as f:
        json.dump(report, f)


def main(argv: list[str]) -> None:
    mode, out_dir = argv[0], argv[1]
    if mode == "multi_worker":
        _multi_worker(out_dir)
    elif mode == "ps_coordinator":
        _ps_coordinator(out_dir)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
