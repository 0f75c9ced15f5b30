"""Issue #5: backbone checkpoints, vocabulary growth, freeze modes, pretrain/finetune CLI."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

import tfrec_p5  # noqa: F401  (conftest.py imported it before TensorFlow)
from tfrec_p5 import data
from tfrec_p5.data.vocabulary import Vocabulary
from tfrec_p5.pretraining import (
    BackboneError,
    FinetuneConfig,
    PretrainConfig,
    finetune,
    grow_backbone,
    grow_vocabulary,
    load_backbone,
    pretrain,
)

SPEC = "synthetic?num_users=200&num_items=100&num_interactions=3000"
FAST = dict(steps_per_execution=4, batch_size=512)


@pytest.fixture(scope="module")
def table() -> data.Interactions:
    return data.load("synthetic", num_users=300, num_items=150, num_interactions=6000)


@pytest.fixture(scope="module")
def split(table):
    return data.random_split(table, 0.8, seed=3)


@pytest.fixture(scope="module")
def saved(split, tmp_path_factory):
    out = tmp_path_factory.mktemp("bb") / "backbone"
    pre = pretrain(split.train, tasks=["retrieval", "rating"],
                   weights={"retrieval": 1.0, "rating": 100.0},
                   config=PretrainConfig(epochs=1, embedding_dim=8, history_len=16, **FAST),
                   label_fraction=0.5, out=out, verbose=0)
    return pre, str(out)


def _outputs(backbone) -> tuple[np.ndarray, np.ndarray]:
    u = backbone.user_tower(tf.range(len(backbone.vocabs.user), dtype=tf.int64)).numpy()
    i = backbone.item_tower(tf.range(len(backbone.vocabs.item), dtype=tf.int64)).numpy()
    return u, i


def _copy(path: str, tmp_path) -> str:
    dst = tmp_path / "copy"
    shutil.copytree(path, dst)
    return str(dst)


def _edit_manifest(path: str, fn) -> None:
    mpath = os.path.join(path, "manifest.json")
    with open(mpath, encoding="utf-8") as f:
        meta = json.load(f)
    fn(meta)
    with open(mpath, "w", encoding="utf-8") as f:
        json.dump(meta, f)


# ---------------------------------------------------------------------- save / load
def test_round_trip_identical_outputs_and_manifest(saved):
    pre, path = saved
    loaded = load_backbone(path)
    for a, b in zip(_outputs(pre.backbone), _outputs(loaded), strict=True):
        np.testing.assert_array_equal(a, b)
    assert loaded.vocabs == pre.backbone.vocabs
    m = loaded.manifest
    assert m["format"] == "tfrec_p5.backbone" and m["format_version"] == 1
    assert m["tasks"] == ["retrieval", "rating"] and m["epochs"] == 1
    assert m["weights"]["rating"] == 100.0 and "package_version" in m
    assert m["feature_spec"] == loaded.feature_spec()
    assert "train_loss" in m["metrics"]
    assert m["history"]["rating_loss"] == [m["metrics"]["train_rating_loss"]]
    # no pickle anywhere: only JSON, npz (loaded with allow_pickle=False) and checkpoints
    names = {n for _, _, files in os.walk(path) for n in files}
    assert not any(n.endswith((".pkl", ".pickle")) for n in names)


@pytest.mark.parametrize("damage, needle", [
    (lambda p: os.remove(os.path.join(p, "user_tower", "weights.index")), "weights.index"),
    (lambda p: os.remove(os.path.join(p, "vocab", "item_vocab.json")), "item_vocab.json"),
    (lambda p: os.remove(os.path.join(p, "manifest.json")), "manifest.json"),
    (lambda p: _edit_manifest(p, lambda m: m.update(format_version=99)), "format_version"),
    (lambda p: _edit_manifest(p, lambda m: m.update(format="other")), "format"),
    (lambda p: _edit_manifest(p, lambda m: m["feature_spec"]["user"].update(
        embedding_dim=64)), "feature_spec.user.embedding_dim"),
    (lambda p: _edit_manifest(p, lambda m: m["feature_spec"]["item"]["features"].pop()),
     "feature_spec.item.features"),
    (lambda p: _edit_manifest(p, lambda m: m.pop("feature_spec")), "feature_spec"),
])
def test_bad_backbone_fails_with_clear_message(saved, tmp_path, damage, needle):
    path = _copy(saved[1], tmp_path)
    damage(path)
    with pytest.raises(BackboneError, match=needle.replace(".", r"\.")):
        load_backbone(path)


def test_expected_feature_spec_mismatch(saved):
    spec = json.loads(json.dumps(saved[0].backbone.feature_spec()))
    spec["item"]["features"] = []
    with pytest.raises(BackboneError, match=r"feature_spec\.item\.features"):
        load_backbone(saved[1], expect_feature_spec=spec)
    with pytest.raises(BackboneError, match="does not exist"):
        load_backbone(os.path.join(saved[1], "nope"))


# ---------------------------------------------------------------------- growth
def test_grow_vocabulary_appends_and_keeps_indices():
    old = Vocabulary(["b", "a", "c"], name="user_id")
    grown = grow_vocabulary(old, np.array(["x", "a", "y", "y", "z", "y", "z"]))
    assert grown.tokens.tolist() == ["b", "a", "c", "y", "z", "x"]
    np.testing.assert_array_equal(grown.lookup(old.tokens), old.lookup(old.tokens))
    assert grow_vocabulary(old, np.array(["a", "c"])) is old


def test_grown_backbone_keeps_known_rows_exactly(saved, split):
    backbone = load_backbone(saved[1])
    new = split.test.take(np.arange(400))
    cols = dict(new.columns)
    cols["user_id"] = np.char.add("new_", cols["user_id"][:200]).tolist() + \
        cols["user_id"][200:].tolist()
    cols["item_id"] = np.char.add("new_", cols["item_id"]).astype(str)
    new = data.Interactions(cols, new.source, new.user_features, new.item_features,
                            new.rating_range, new.tfds_names, new.feature_kinds)
    grown = grow_backbone(backbone, new)
    n_u, n_i = len(backbone.vocabs.user), len(backbone.vocabs.item)
    assert len(grown.vocabs.user) > n_u and len(grown.vocabs.item) > n_i
    np.testing.assert_array_equal(grown.vocabs.user.tokens[:n_u - 1],
                                  backbone.vocabs.user.tokens)
    for old_t, new_t, n in ((backbone.user_tower, grown.user_tower, n_u),
                            (backbone.item_tower, grown.item_tower, n_i)):
        np.testing.assert_array_equal(new_t.id_embedding.embeddings.numpy()[:n],
                                      old_t.id_embedding.embeddings.numpy())
        for name, var in old_t.tables.items():
            np.testing.assert_array_equal(new_t.tables[name].numpy()[:n], var.numpy())
        ids = tf.range(n, dtype=tf.int64)
        np.testing.assert_array_equal(new_t(ids).numpy(), old_t(ids).numpy())
    # new items got their side features encoded with the pretrained feature vocabularies
    genres = grown.item_tower.tables["item_genres"].numpy()
    assert (genres[n_i:] > 0).any()
    assert grown.manifest["grown"]["item"] == [n_i, len(grown.vocabs.item)]
    # and the grown backbone fine-tunes
    tuned = finetune(grown, new, task="rating", config=FinetuneConfig(
        epochs=1, validation_fraction=0.0, **FAST), verbose=0)
    assert np.isfinite(tuned.predict_ratings(new)).all()


# ---------------------------------------------------------------------- freeze modes
def _change(backbone, tuned) -> dict[str, float]:
    out = {}
    for side in ("user", "item"):
        before = getattr(backbone, f"{side}_tower")
        after = getattr(tuned.model, f"{side}_tower")
        out[f"{side}_id"] = float(np.abs(after.id_embedding.embeddings.numpy()
                                         - before.id_embedding.embeddings.numpy()).max())
        out[f"{side}_projection"] = float(np.abs(after.projection.kernel.numpy()
                                                 - before.projection.kernel.numpy()).max())
    return out


def test_freeze_modes(saved, split):
    backbone = load_backbone(saved[1])
    before = backbone.tower_weights()
    cfg = FinetuneConfig(epochs=1, validation_fraction=0.0, **FAST)
    rows = split.train.take(np.arange(1500))
    changes = {}
    for mode in ("towers", "embeddings", "lower_lr"):
        tuned = finetune(backbone, rows, task="rating", freeze=mode, config=cfg, verbose=0)
        changes[mode] = _change(backbone, tuned)
        # both optimizers' slots (lower_lr) existed before fit: one trace of the step
        assert tuned.model.train_tf_function.experimental_get_tracing_count() == 1, mode
    # fine-tuning never mutates the backbone it was given
    for side, weights in backbone.tower_weights().items():
        for a, b in zip(before[side], weights, strict=True):
            np.testing.assert_array_equal(a, b)
    assert all(v == 0.0 for v in changes["towers"].values())
    assert changes["embeddings"]["user_id"] == 0.0 == changes["embeddings"]["item_id"]
    assert changes["embeddings"]["user_projection"] > 0
    assert all(v > 0 for v in changes["lower_lr"].values())


def test_finetune_retrieval_and_config_errors(saved, split):
    tuned = finetune(saved[1], split.train, task="retrieval", config=FinetuneConfig(
        epochs=1, validation_fraction=0.0, **FAST), verbose=0)
    metrics = tuned.evaluate(split.test, ks=(10,), factorized_ks=())
    assert 0.0 <= metrics["retrieval_recall@10"] <= 1.0
    with pytest.raises(ValueError, match="unknown pretraining task"):
        PretrainConfig(tasks=("retrieval", "clicks"))
    with pytest.raises(ValueError, match="freeze"):
        FinetuneConfig(freeze="half")


def test_implicit_histories_use_every_interaction(saved, split):
    """``history_len``: the backbone's rated_items come from all pretraining rows, also
    those whose rating was masked (label_fraction=0.5 in the fixture)."""
    backbone = load_backbone(saved[1])
    table = backbone.side_features.user["rated_items"].values
    train = split.train
    users = backbone.vocabs.user.lookup(train.user_id)
    items = backbone.vocabs.item.lookup(train.item_id)
    for u in np.unique(users)[:20]:
        mine = set(items[users == u].tolist())
        if len(mine) <= table.shape[1]:
            assert set(table[u][table[u] > 0].tolist()) == mine
    assert saved[0].backbone.manifest["labels_visible"] < len(train)


def test_auto_freeze_and_bias_prior(split):
    from tfrec_p5.pretraining.finetuner import _add_bias_prior, resolve_freeze
    from tfrec_p5.tasks.rating import RatingHead

    rows = split.train.take(np.arange(1500))           # ~5 labels per user
    per_user = len(rows) / len(np.unique(rows.user_id))
    auto = FinetuneConfig(freeze="auto")
    assert resolve_freeze(auto, rows) == "towers"
    assert resolve_freeze(auto.replace(auto_labels_per_user=per_user), rows) == "lower_lr"
    assert resolve_freeze(FinetuneConfig(freeze="none"), rows) == "none"
    # next_item's labels are the events themselves: auto trains everything at any count
    assert resolve_freeze(auto.replace(task="next_item"), rows) == "none"
    head = RatingHead(10, 5)
    _add_bias_prior(head, 3.0, 1500)                   # lambda = prior / rows
    head.user_bias(tf.constant([1, 2], tf.int64))
    head.user_bias.embeddings.assign(tf.fill((10, 1), 2.0))
    assert float(tf.add_n(head.user_bias.losses)) == pytest.approx(3.0 / 1500 * 10 * 4.0)


# ---------------------------------------------------------------------- CLI
def test_cli_pretrain_finetune_predict(tmp_path, capsys):
    from tfrec_p5.cli import main

    bb, out = str(tmp_path / "backbones" / "demo"), str(tmp_path / "saved_models" / "demo")
    config = tmp_path / "finetune.json"
    config.write_text(json.dumps({"validation_fraction": 0.0, "steps_per_execution": 4}))
    assert main(["pretrain", "--data", SPEC, "--tasks", "retrieval,rating", "--epochs", "1",
                 "--batch-size", "512", "--quiet", "--out", bb]) == 0
    assert os.path.isfile(os.path.join(bb, "manifest.json"))
    assert main(["finetune", "--backbone", bb, "--task", "rating", "--data", SPEC,
                 "--epochs", "1", "--batch-size", "512", "--config", str(config), "--quiet",
                 "--json", "--out", out]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 < metrics["test_rmse"] < 3.0
    assert main(["predict", "--model", out, "--user", "u1", "--item", "i1", "--json"]) == 0
    pred = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 1.0 <= pred["rating"] <= 5.0

    os.remove(os.path.join(bb, "item_tower", "tower.json"))
    assert main(["finetune", "--backbone", bb, "--data", SPEC, "--out", out]) == 1
    err = capsys.readouterr().err
    assert "item_tower/tower.json" in err and err.count("\n") == 1
