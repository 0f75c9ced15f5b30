"""Export: versioned, atomic SavedModels whose signatures serve raw string IDs.

One small rating model is trained and exported once per module; the tests check the
layout TF Serving relies on, that predictions survive a round trip into a TensorFlow-only
process, that ``saved_model_cli`` can show and run the signatures, and the extension point.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import textwrap
from pathlib import Path

import _forked as forked
import numpy as np
import pytest
import tensorflow as tf

import tfrec_p5  # noqa: F401  (conftest.py imported it before TensorFlow)
from tfrec_p5.data import Interactions, Vocabularies, Vocabulary, load, random_split
from tfrec_p5.evaluation import predict_ratings
from tfrec_p5.export import (
    DEFAULT_SIGNATURE,
    ITEM_ID_SPEC,
    ExportError,
    IdLookup,
    ServingModule,
    add_rating_signatures,
    export,
    list_versions,
    load_export,
    load_metadata,
    resolve_export,
)
from tfrec_p5.export import saved_model as saved_model_lib

SMALL = {"num_users": 200, "num_items": 100, "num_interactions": 5000}
# Unknown IDs on purpose: they must hit the OOV rows and still give a number.
QUERY_USERS = ["u1", "u2", "u3", "nobody", "u7", "u0"]
QUERY_ITEMS = ["i2", "i5", "never-seen", "i1", "i9", "i3"]


def _tiny_model(vocabs: Vocabularies, bias: float = 3.5) -> tf.keras.Model:
    """A stand-in rating model on vocabulary indices: dot of embeddings + bias, [B, 1]."""
    user = tf.keras.Input((), dtype=tf.int64, name="user_id")
    item = tf.keras.Input((), dtype=tf.int64, name="item_id")
    u = tf.keras.layers.Embedding(len(vocabs.user), 4)(user)
    i = tf.keras.layers.Embedding(len(vocabs.item), 4)(item)
    dot = tf.keras.layers.Dot(axes=1)([u, i])
    out = tf.keras.layers.Dense(1, bias_initializer=tf.keras.initializers.Constant(bias))(dot)
    return tf.keras.Model({"user_id": user, "item_id": item}, out)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A real rating model (1 epoch on tiny synthetic data), exported once."""
    from tfrec_p5.models.rating import RatingConfig, train_rating

    table = load("synthetic", **SMALL)
    split = random_split(table, 0.8, seed=42)
    config = RatingConfig(epochs=1, embedding_dim=8, hidden_units=(8,), batch_size=256,
                          validation_fraction=0.0)
    trained = train_rating(split.train, None, config, seed=42, verbose=0)
    module = ServingModule(trained.vocabs)
    add_rating_signatures(module, trained.model, table.rating_range)
    base = tmp_path_factory.mktemp("saved_models") / "rating"
    path = export(module, base, metadata={"data": "synthetic", "split": "random:0.8",
                                          "seed": 42, "config": config.to_dict()},
                  metrics={"test_rmse": 1.25})
    return {"base": base, "path": Path(path), "module": module, "trained": trained,
            "test": split.test}


def _expected(exported, users, items) -> np.ndarray:
    """What the in-memory Keras model says for these IDs, clipped like the signature."""
    trained = exported["trained"]
    ids = trained.vocabs.encode(Interactions.from_columns({"user_id": users,
                                                           "item_id": items}))
    raw = trained.model(ids, training=False).numpy().reshape(-1)
    return np.clip(raw, 1.0, 5.0)


# ---------------------------------------------------------------------- layout
def test_export_writes_version_1_with_metadata_and_no_leftovers(exported):
    base, path = exported["base"], exported["path"]
    assert path == base / "1"
    assert (path / "saved_model.pb").is_file() and (path / "variables").is_dir()
    assert os.listdir(base) == ["1"]  # the temporary build folder is gone
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o777 & ~umask  # not mkdtemp's 0700
    meta = load_metadata(path)
    vocabs = exported["trained"].vocabs
    assert meta["version"] == 1
    assert meta["tasks"] == ["rating"]
    assert meta["signatures"] == ["predict_rating", DEFAULT_SIGNATURE]
    assert meta["vocab_sizes"] == {"user_id": len(vocabs.user), "item_id": len(vocabs.item)}
    assert meta["rating_range"] == [1.0, 5.0]
    assert meta["package_version"] == tfrec_p5.__version__
    assert (meta["data"], meta["split"], meta["seed"]) == ("synthetic", "random:0.8", 42)
    assert meta["config"]["epochs"] == 1
    assert meta["metrics"] == {"test_rmse": 1.25}
    metrics = json.loads((path / "assets.extra" / "metrics.json").read_text())
    assert metrics == {"test_rmse": 1.25}


def test_export_holds_the_signatures_not_keras_layer_traces(exported):
    """The SavedModel carries our signatures' graphs only: Keras's per-layer call traces
    (``call_and_return_conditional_losses``, its ``_default_save_signature``) are left
    out, as ``model.save(..., save_traces=False)`` does."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((exported["path"] / "saved_model.pb").read_bytes())
    names = [f.signature.name for f in proto.meta_graphs[0].graph_def.library.function]
    assert names and not [n for n in names if "conditional_losses" in n
                          or "default_save_signature" in n]
    assert "predict_rating" in proto.meta_graphs[0].signature_def


def test_next_export_gets_next_version_and_never_touches_existing(exported, tmp_path):
    base = tmp_path / "m"
    model = _tiny_model(exported["trained"].vocabs)
    vocabs = exported["trained"].vocabs
    first = export(model, base, vocabs=vocabs, rating_range=(1, 5))
    before = (Path(first) / "saved_model.pb").read_bytes()
    second = export(model, base, vocabs=vocabs, rating_range=(1, 5))
    assert [Path(first).name, Path(second).name] == ["1", "2"]
    assert (Path(first) / "saved_model.pb").read_bytes() == before
    assert list_versions(base) == [1, 2]
    assert resolve_export(base) == str(base / "2")


def test_version_taken_concurrently_is_skipped_not_overwritten(exported, tmp_path,
                                                               monkeypatch):
    """Another exporter claims the number we computed, just after we computed it."""
    base = tmp_path / "m"
    base.mkdir()
    real_next = saved_model_lib.next_version

    def racing_next_version(directory):
        version = real_next(directory)
        if version == 1:  # the competitor writes version 1 right now
            (base / "1").mkdir()
            (base / "1" / "theirs.txt").write_text("keep me")
        return version

    monkeypatch.setattr(saved_model_lib, "next_version", racing_next_version)
    vocabs = exported["trained"].vocabs
    path = export(_tiny_model(vocabs), base, vocabs=vocabs, rating_range=(1, 5))
    assert path == str(base / "2")
    assert (base / "1" / "theirs.txt").read_text() == "keep me"
    assert not (base / "1" / "saved_model.pb").exists()
    assert sorted(os.listdir(base)) == ["1", "2"]


def test_resolve_export_errors(exported, tmp_path):
    assert resolve_export(exported["path"]) == str(exported["path"])
    with pytest.raises(ExportError, match="does not exist"):
        resolve_export(tmp_path / "missing")
    (tmp_path / "empty" / "1").mkdir(parents=True)  # digit folder without a SavedModel
    with pytest.raises(ExportError, match="not a SavedModel export"):
        resolve_export(tmp_path / "empty")
    (tmp_path / "corrupt" / "1").mkdir(parents=True)
    (tmp_path / "corrupt" / "1" / "saved_model.pb").write_bytes(b"not a proto")
    with pytest.raises(ExportError, match="cannot load SavedModel"):
        load_export(tmp_path / "corrupt")


def test_bare_keras_model_needs_vocabs_and_range(exported, tmp_path):
    with pytest.raises(ExportError, match="vocabs"):
        export(_tiny_model(exported["trained"].vocabs), tmp_path / "m")
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------------- signatures
def test_id_lookup_numbering_matches_vocabulary():
    vocab = Vocabulary.build(np.array(["b", "a", "b", "c", "c", "c"]))
    ids = np.array(["c", "b", "a", "zzz", ""])
    in_graph = IdLookup(vocab)(tf.constant(ids)).numpy()
    np.testing.assert_array_equal(in_graph, vocab.lookup(ids))
    np.testing.assert_array_equal(in_graph, vocab.string_lookup()(tf.constant(ids)).numpy())
    empty = IdLookup(Vocabulary([]))(tf.constant(["x", "y"])).numpy()
    np.testing.assert_array_equal(empty, [0, 0])


def test_in_memory_signature_matches_keras_model_incl_unknown_ids(exported):
    out = exported["module"].signature("predict_rating")(
        user_id=tf.constant(QUERY_USERS), item_id=tf.constant(QUERY_ITEMS))["rating"].numpy()
    assert out.shape == (len(QUERY_USERS),) and out.dtype == np.float32
    np.testing.assert_allclose(out, _expected(exported, QUERY_USERS, QUERY_ITEMS), atol=1e-5)
    assert np.all(np.isfinite(out)) and np.all((out >= 1.0) & (out <= 5.0))


def test_rating_is_clipped_to_the_data_range(exported):
    vocabs = exported["trained"].vocabs
    for bias, expected in ((40.0, 5.0), (-40.0, 1.0)):
        module = ServingModule(vocabs)
        add_rating_signatures(module, _tiny_model(vocabs, bias=bias), (1.0, 5.0))
        out = module.signature(DEFAULT_SIGNATURE)(
            user_id=tf.constant(["u1", "nobody"]), item_id=tf.constant(["i1", "i2"]))
        np.testing.assert_array_equal(out["rating"].numpy(), [expected, expected])


def test_fresh_tensorflow_only_process_gives_same_predictions(exported, tmp_path):
    """TF Serving's view: bare TensorFlow, no tfrec_p5, no TFRS, no legacy-Keras switch."""
    test = exported["test"]
    users = QUERY_USERS + test.user_id[:200].tolist()
    items = QUERY_ITEMS + test.item_id[:200].tolist()
    query = tmp_path / "query.json"
    query.write_text(json.dumps({"user_id": users, "item_id": items}))
    script = textwrap.dedent("""
        import json, sys
        import tensorflow as tf
        loaded = tf.saved_model.load(sys.argv[1])
        q = json.load(open(sys.argv[2]))
        out = {}
        for name in ("predict_rating", "serving_default"):
            res = loaded.signatures[name](user_id=tf.constant(q["user_id"]),
                                          item_id=tf.constant(q["item_id"]))
            out[name] = res["rating"].numpy().tolist()
        leaked = sorted({m.split(".")[0] for m in sys.modules}
                        & {"tfrec_p5", "tensorflow_recommenders", "tf_keras"})
        print(json.dumps({"out": out, "leaked": leaked,
                          "legacy": __import__("os").environ.get("TF_USE_LEGACY_KERAS")}))
    """)
    proc = forked.run(["-c", script, str(exported["path"]), str(query)], kind="tensorflow",
                      env=forked.tf_only_env(), timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["leaked"] == [] and result["legacy"] is None
    in_memory = exported["module"].signature("predict_rating")(
        user_id=tf.constant(users), item_id=tf.constant(items))["rating"].numpy()
    for name in ("predict_rating", "serving_default"):
        assert np.max(np.abs(np.array(result["out"][name]) - in_memory)) < 1e-5
    # ... and the same as the Keras model itself (the lookup numbering is the pipeline's).
    np.testing.assert_allclose(in_memory, _expected(exported, users, items), atol=1e-5)


# TensorFlow's ``saved_model_cli`` console script, verbatim, in a TensorFlow-only child.
SAVED_MODEL_CLI = """
import sys
from tensorflow.python.tools.saved_model_cli import main
sys.argv[0] = "saved_model_cli"
sys.exit(main())
"""


def _saved_model_cli(*args: str) -> subprocess.CompletedProcess:
    return forked.run(["-c", SAVED_MODEL_CLI, *args], kind="tensorflow", env=forked.tf_only_env(),
                      timeout=120)


def test_saved_model_cli_shows_and_runs_signatures(exported):
    path = str(exported["path"])
    show = _saved_model_cli("show", "--dir", path, "--all")
    assert show.returncode == 0, show.stderr[-2000:]
    for name in ("predict_rating", "serving_default"):
        block = show.stdout.split(f"signature_def['{name}']:")[1].split("signature_def[")[0]
        assert "inputs['user_id'] tensor_info:" in block
        assert "inputs['item_id'] tensor_info:" in block
        assert "outputs['rating'] tensor_info:" in block
        assert block.count("dtype: DT_STRING") == 2 and "dtype: DT_FLOAT" in block
        # Inputs declare no shape (the signature checks the rank itself, see
        # export/boundary.py); the output is [batch].
        assert block.count("shape: unknown_rank") == 2 and block.count("shape: (-1)") == 1

    run = _saved_model_cli("run", "--dir", path, "--tag_set", "serve", "--signature_def",
                           "predict_rating", "--input_exprs",
                           'user_id=["u1","nobody"];item_id=["i2","i3"]')
    assert run.returncode == 0, run.stderr[-2000:]
    tail = run.stdout.split("Result for output key rating:")[1]
    values = np.array([float(v) for v in re.findall(r"[-+]?\d+\.\d*(?:e[-+]?\d+)?", tail)])
    np.testing.assert_allclose(values, _expected(exported, ["u1", "nobody"], ["i2", "i3"]),
                               atol=1e-4)


def test_predict_ratings_from_loaded_export_matches_in_memory(exported):
    loaded, version_dir, meta = load_export(exported["base"])
    assert version_dir == str(exported["path"]) and meta["version"] == 1
    test = exported["test"]
    from_export = predict_ratings(loaded.signatures["predict_rating"], test, batch_size=100)
    in_memory = predict_ratings(exported["module"].signature("predict_rating"), test)
    assert from_export.shape == (len(test),)
    assert np.max(np.abs(from_export - in_memory)) < 1e-5


def test_later_tasks_add_signatures_to_the_same_export(exported, tmp_path):
    """The extension point: track state, add a signature; both tasks serve from one export."""
    vocabs = exported["trained"].vocabs
    module = ServingModule(vocabs)
    add_rating_signatures(module, exported["trained"].model, (1.0, 5.0))
    module.track("popularity", tf.Variable(tf.range(len(vocabs.item), dtype=tf.float32)))

    def item_popularity(item_id):
        return {"score": tf.gather(module.popularity, module.item_index(item_id))}

    module.add_signature("item_popularity", item_popularity, [ITEM_ID_SPEC], task="popularity")
    with pytest.raises(ValueError, match="already exists"):
        module.add_signature("predict_rating", item_popularity, [ITEM_ID_SPEC])
    path = export(module, tmp_path / "multi")
    loaded, _, meta = load_export(path)
    assert meta["tasks"] == ["rating", "popularity"]
    assert set(loaded.signatures) == {"predict_rating", "item_popularity", DEFAULT_SIGNATURE}
    item = vocabs.item.tokens[3]
    score = loaded.signatures["item_popularity"](item_id=tf.constant([item, "nope"]))["score"]
    np.testing.assert_array_equal(score.numpy(), [4.0, 0.0])  # token 3 -> index 4; OOV -> 0
