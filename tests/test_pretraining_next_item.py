"""Issue #5 + #6: next-item pretraining in ``pretrain`` / ``tfrec-p5 pretrain``, the
backbone's next-item encoder, ``finetune(task="next_item")`` and ``tfrec-p5 finetune``.

Data: ``_ring`` users walk a ring of items (next item = previous + 1) with random
ratings, so retrieval, rating and next-item all have something to train on and a causal
next-item model learns the ring in a few epochs. It is written to a CSV so the CLI reads
it like any user's log.
"""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from _sequences import cyclic_interactions  # tests/ is on sys.path

import tfrec_p5  # noqa: F401  (conftest.py imported it before TensorFlow)
from tfrec_p5 import data
from tfrec_p5.data.interactions import Interactions
from tfrec_p5.pretraining import (
    BackboneError,
    FinetuneConfig,
    PretrainConfig,
    finetune,
    fresh_backbone,
    grow_backbone,
    load_backbone,
    pretrain,
)

SEQ = {"max_len": 8, "num_blocks": 1, "dropout": 0.1}
CONFIG = PretrainConfig(embedding_dim=16, batch_size=256, steps_per_execution=4,
                        learning_rate=5e-3, history_len=0, sequential=SEQ)
NUM_ITEMS = 120  # > 99 + history: P5's sampled protocol draws 99 unseen negatives


def _ring(num_users: int = 200, length: int = 10, seed: int = 0) -> Interactions:
    return cyclic_interactions(num_users, NUM_ITEMS, length, seed=seed, ratings=True)


@pytest.fixture(scope="module")
def ring_csv(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ring") / "ring.csv"
    table = _ring()
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["user_id", "item_id", "rating", "timestamp"])
        writer.writerows(zip(table.user_id, table.item_id, table.rating.astype(int),
                             table.timestamp, strict=True))
    return f"csv:{path}"


@pytest.fixture(scope="module")
def split(ring_csv):
    return data.leave_one_out(data.load(ring_csv))


@pytest.fixture(scope="module")
def saved(ring_csv, tmp_path_factory) -> str:
    """``tfrec-p5 pretrain --tasks retrieval,rating,next_item`` on the ring."""
    from tfrec_p5.cli import main

    tmp = tmp_path_factory.mktemp("bb_seq")
    config = tmp / "pretrain.json"
    config.write_text(json.dumps({"embedding_dim": 16, "steps_per_execution": 4,
                                  "learning_rate": 1e-2, "history_len": 0,
                                  "sequential": SEQ}))
    out = str(tmp / "backbone")
    assert main(["pretrain", "--data", ring_csv, "--split", "leave-one-out", "--tasks",
                 "retrieval,rating,next_item", "--weights", "next_item=100", "--epochs", "4",
                 "--batch-size", "256", "--config", str(config), "--quiet",
                 "--out", out]) == 0
    return out


def test_cli_next_item_pretraining_learns(saved):
    manifest = load_backbone(saved).manifest
    assert manifest["tasks"] == ["retrieval", "rating", "next_item"]
    assert manifest["weights"]["next_item"] == 100.0
    assert manifest["next_item"]["config"]["max_len"] == 8
    loss = manifest["history"]["next_item_loss"]
    assert len(loss) == 4 and bool(np.all(np.diff(loss) < 0))
    assert loss[-1] < 0.8 * loss[0]                              # log(120) ~ 4.8 at start
    # the pretrained head (no fine-tuning) ranks each user's held-out next item well above
    # chance (~10 / 110 items)
    assert manifest["metrics"]["validation_next_item_hr@10"] > 0.5


def test_backbone_round_trip_growth_and_damage(split, tmp_path):
    cfg = CONFIG.replace(epochs=1)
    out = tmp_path / "bb"
    pre = pretrain(split.train, tasks=["next_item"], config=cfg, seed=3, out=out, verbose=0)
    loaded = load_backbone(out)
    assert loaded.manifest["tasks"] == ["next_item"]
    history = tf.constant([[0, 0, 0, 3, 4, 5], [1, 2, 3, 4, 5, 6]], tf.int64)
    np.testing.assert_array_equal(pre.backbone.next_item_head.score_history(history).numpy(),
                                  loaded.next_item_head.score_history(history).numpy())
    # next-item gradients reach the shared item tower: its ID rows moved from the
    # initialisation pretrain starts from (same seed, same architecture)
    tf.keras.utils.set_random_seed(3)
    start = fresh_backbone(split.train, cfg).item_tower.id_embedding.embeddings.numpy()
    trained = loaded.item_tower.id_embedding.embeddings.numpy()
    assert start.shape == trained.shape and np.abs(trained - start).max() > 1e-3
    # growing the catalog keeps the encoder (its weights do not depend on the item count)
    new = Interactions.from_columns({"user_id": ["u1", "new_u"], "item_id": ["new_i", "i1"],
                                     "timestamp": [99, 99], "rating": [3.0, 4.0]})
    grown = grow_backbone(loaded, new)
    assert len(grown.vocabs.item) == len(loaded.vocabs.item) + 1
    for a, b in zip(loaded.next_item_head.encoder_weights(),
                    grown.next_item_head.encoder_weights(), strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # a backbone whose encoder file is gone fails with a message naming it
    broken = str(tmp_path / "broken")
    shutil.copytree(out, broken)
    os.remove(os.path.join(broken, "next_item", "weights.npz"))
    with pytest.raises(BackboneError, match="next_item"):
        load_backbone(broken)


def test_finetune_next_item_starts_from_the_pretrained_encoder(saved, split):
    """One fine-tuning epoch from the backbone ranks far better than one from untrained
    towers of the same shape: the encoder and item tower carry what pretraining learned."""
    # refit off: the comparison reads the selection runs' validation metrics
    cfg = FinetuneConfig(epochs=1, patience=1, freeze="towers", validation_fraction=0.0,
                         refit=False, sequential={"batch_size": 64, **SEQ})
    tuned = finetune(saved, split.train, task="next_item", config=cfg,
                     validation=split.validation, seed=1, verbose=0)
    scratch = finetune(fresh_backbone(split.train, CONFIG), split.train, task="next_item",
                       config=cfg.replace(freeze="none"), validation=split.validation,
                       seed=1, verbose=0)
    assert tuned.best_metrics["hr@10"] > 0.5
    assert tuned.best_metrics["hr@10"] > scratch.best_metrics["hr@10"] + 0.2


def test_cli_finetune_next_item_exports(saved, ring_csv, tmp_path, capsys):
    from tfrec_p5.cli import main

    out = str(tmp_path / "model")
    config = tmp_path / "finetune.json"
    config.write_text(json.dumps({"steps_per_execution": 4, "sequential": {"batch_size": 64}}))
    assert main(["finetune", "--backbone", saved, "--task", "next_item", "--data", ring_csv,
                 "--split", "leave-one-out", "--freeze", "lower_lr", "--epochs", "1",
                 "--config", str(config), "--quiet", "--json", "--out", out]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.5 < metrics["test_hr@10"] <= 1.0 and metrics["test_ndcg@10"] > 0.2
    assert os.path.isdir(os.path.join(out, "1"))


def test_pretrain_trains_the_joint_model_with_the_chosen_tasks(split, monkeypatch):
    """``pretrain`` is ``train --task all``'s model with a chosen task set: the same
    builder, the same ``UnifiedModel`` and the same merged batches; the backbone is that
    model's item tower and next-item head."""
    from tfrec_p5.models.unified import UnifiedModel
    from tfrec_p5.pretraining import pretrainer

    calls: dict[str, list] = {"build_unified": [], "joint_batches": []}
    for name in calls:
        original = getattr(pretrainer, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            calls[_name].append(args)
            return _original(*args, **kwargs)
        monkeypatch.setattr(pretrainer, name, spy)
    pre = pretrain(split.train, tasks=["retrieval", "next_item"],
                   config=CONFIG.replace(epochs=1), seed=0, verbose=0)
    model = pre.trained.model
    assert type(model) is UnifiedModel and list(model.heads) == ["retrieval", "next_item"]
    # one dataset to train on, one fresh copy to build the variables on
    assert len(calls["build_unified"]) == 1 and len(calls["joint_batches"]) == 2
    assert calls["joint_batches"][0][5] is True  # the pair batches merged with histories
    assert pre.backbone.item_tower is model.item_tower
    assert pre.backbone.next_item_head is model.heads["next_item"]
    # Both heads trained in every step: each loss is averaged over the epoch.
    history = pre.trained.history
    assert history["retrieval_loss"][0] > 0 and history["next_item_loss"][0] > 0


def test_pretrain_early_stops_on_the_next_item_heads_validation_ndcg(split):
    """With ``patience`` and one validation event per user, pretraining that trains the
    next-item head stops on that head's full-ranking ``val_ndcg@10`` (the pair loss can
    bottom out long before the head does) and keeps the best epoch's weights."""
    pre = pretrain(split.train, tasks=["retrieval", "next_item"],
                   config=CONFIG.replace(epochs=4, patience=1), validation=split.validation,
                   seed=0, verbose=0)
    ndcg = pre.trained.history["val_ndcg@10"]
    assert len(ndcg) == len(pre.trained.history["loss"]) >= 2
    # the weights that end in the backbone are the best epoch's, scored again afterwards
    assert pre.metrics["validation_next_item_ndcg@10"] == pytest.approx(max(ndcg), abs=1e-6)
    assert max(ndcg) > 0.1  # the ring is learnable


def test_finetune_next_item_refits_on_the_training_and_validation_events(saved, split,
                                                                          capsys):
    """With a split's own validation part, ``finetune`` selects the epochs on it and then
    refits on training + validation events, as ``train --task sequential`` does: the
    test events follow the validation events, so a model that never trained on them
    would predict one step behind."""
    cfg = FinetuneConfig(epochs=2, patience=1, sequential={"batch_size": 64, **SEQ})
    tuned = finetune(saved, split.train, task="next_item", config=cfg,
                     validation=split.validation, seed=1, verbose=1)
    rows = len(split.train) + len(split.validation)
    assert f"refit: retraining on all {rows:,} training rows" in capsys.readouterr().out
    assert any(r.get("refit") for r in tuned.history)
    assert tuned.best_metrics["hr@10"] > 0  # the selection's validation metrics are kept
