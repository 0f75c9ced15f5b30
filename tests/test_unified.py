"""UnifiedModel: rating-only equals RatingModel, zero weights switch heads off, listwise."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import tfrec_p5  # noqa: F401  (conftest.py imported it before TensorFlow)
from tfrec_p5.data import Vocabularies, load, random_split, retrieval_dataset
from tfrec_p5.models.rating import RatingConfig, evaluate_rating, train_rating
from tfrec_p5.models.unified import UnifiedConfig, UnifiedModel, build_unified, train_unified
from tfrec_p5.tasks import Head, RankingHead, RetrievalHead, listwise_examples

SMALL = {"num_users": 300, "num_items": 150, "num_interactions": 6000}


@pytest.fixture(scope="module")
def split():
    return random_split(load("synthetic", **SMALL), 0.8, seed=42)


def test_rating_only_unified_matches_rating_model(split):
    # The unified rating head has no unknown-user gate: compare with the seed model's own
    # answer for unknown test users too.
    config = RatingConfig(epochs=2, patience=1, unknown_users="model")
    reference = train_rating(split.train, None, config, seed=7, verbose=0)
    ref = evaluate_rating(reference.model, split.test, reference.vocabs)
    unified = train_unified(split.train, None, UnifiedConfig.rating_only(config), seed=7,
                            verbose=0)
    got = unified.evaluate(split.test)
    assert list(unified.model.heads) == ["rating"]
    assert got["rating_rmse"] == pytest.approx(ref["rmse"], abs=1e-4)
    assert got["rating_mae"] == pytest.approx(ref["mae"], abs=1e-4)


def _one_step_gradients(model: UnifiedModel, batch) -> dict[str, bool]:
    with tf.GradientTape() as tape:
        loss = model.compute_loss(batch, training=True)
    grads = tape.gradient(loss, model.trainable_variables)
    return {v.name: g is not None for v, g in zip(model.trainable_variables, grads, strict=False)}


def test_zero_weight_heads_are_not_built_and_get_no_gradient(split):
    vocabs = Vocabularies.build(split.train)
    batch = next(iter(retrieval_dataset(split.train, vocabs, 256, with_rating=True)))
    cfg = UnifiedConfig(weights={"rating": 0.0, "retrieval": 1.0, "ranking": 0.0})
    model, _ = build_unified(split.train, vocabs, cfg)
    assert list(model.heads) == ["retrieval"]
    grads = _one_step_gradients(model, batch)
    assert grads and all(grads.values())
    assert not any(k in n for n in grads for k in ("mlp_out", "rank_out", "user_bias"))

    both, _ = build_unified(split.train, vocabs, cfg.replace(
        weights={"rating": 1.0, "retrieval": 0.5}, use_user_tower=True))
    grads = _one_step_gradients(both, batch)
    assert any("mlp_out" in n for n in grads) and all(grads.values())
    with pytest.raises(ValueError, match="switched off"):
        UnifiedModel(both.user_tower, both.item_tower, dict(both.heads),
                     {"rating": 0, "retrieval": 0})


def test_joint_training_reports_each_task(split):
    out = train_unified(split.train, None, UnifiedConfig(
        weights={"rating": 1.0, "retrieval": 1.0}, epochs=1, batch_size=512), verbose=0)
    metrics = out.evaluate(split.test)
    assert {"rating_rmse", "retrieval_recall@10", "retrieval_factorized_top_100"} <= set(
        metrics)
    assert metrics["rating_rmse"] < 1.5
    # fit(build_on=...) made the variables and the slots: one trace of the step, not two
    assert out.model.train_tf_function.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("loss", ["softmax", "listmle"])
def test_listwise_ranking_head_trains_and_reorders(split, loss):
    cfg = UnifiedConfig(weights={"ranking": 1.0}, listwise=loss, epochs=1, batch_size=256,
                        lists_per_user=5, use_user_tower=True)
    out = train_unified(split.train, None, cfg, verbose=0)
    assert np.isfinite(out.history["loss"]).all()
    ex = listwise_examples(split.test, out.vocabs, list_size=3, lists_per_user=1)
    feats = {"user_id": tf.constant(ex["user_id"]),
             "item_id": tf.constant(ex["candidates"][:, 0])}
    assert out.model.score(feats).shape == (len(ex["user_id"]),)


def test_pointwise_ranking_head(split):
    out = train_unified(split.train, None, UnifiedConfig(weights={"ranking": 1.0}, epochs=1,
                                                         batch_size=512), verbose=0)
    assert isinstance(out.model.heads["ranking"], RankingHead)
    assert "ranking_rmse" in out.history


def test_new_head_plugs_in_without_touching_the_others(split):
    class PopularityHead(Head):
        """A toy head: item vectors' norm should track the log of the item's count."""
        task = "toy"
        uses_user_tower = False

        def compute_loss(self, features, user_vec, item_vec, training=False):
            return tf.reduce_mean(tf.square(tf.norm(item_vec, axis=1) - 1.0))

    vocabs = Vocabularies.build(split.train)
    model, _ = build_unified(split.train, vocabs, UnifiedConfig())
    heads = {"retrieval": model.heads["retrieval"], "toy": PopularityHead()}
    joint = UnifiedModel(model.user_tower, model.item_tower, heads, {"toy": 0.1})
    joint.compile(tf.keras.optimizers.Adam(1e-3))
    ds = retrieval_dataset(split.train, vocabs, 512)
    hist = joint.fit(ds, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"]).all()
    assert isinstance(joint.heads["retrieval"], RetrievalHead)


def test_config_round_trip_and_unknown_keys():
    cfg = UnifiedConfig(weights={"rating": 1.0, "retrieval": 0.5}, listwise="listmle")
    again = UnifiedConfig.from_dict(cfg.to_dict())
    assert again == cfg
    with pytest.raises(ValueError, match="embeding_dim"):
        UnifiedConfig.from_dict({"embeding_dim": 3})
    with pytest.raises(ValueError, match="unknown task"):
        UnifiedConfig(weights={"click": 1.0})


def test_a_head_missing_from_a_training_batch_is_an_error_and_skipped_when_held_out(split):
    """A held-out batch may feed some heads only (pretraining's pair batches beside the
    next-item head); a training batch that lacks a head's inputs must not train the other
    heads alone without a word."""
    vocabs = Vocabularies.build(split.train)
    model, _ = build_unified(split.train, vocabs, UnifiedConfig(
        weights={"retrieval": 1.0, "rating": 1.0}, embedding_dim=8))
    pairs = next(iter(retrieval_dataset(split.train, vocabs, 64)))  # no "rating"
    with pytest.raises(ValueError, match=r"lacks \['rating'\] for the rating head"):
        model.compute_loss(pairs, training=True)
    held_out = float(model.compute_loss(pairs, training=False))
    retrieval_only = float(model.heads["retrieval"].compute_loss(
        pairs, *model.tower_outputs(pairs)))
    assert held_out == pytest.approx(retrieval_only, rel=1e-5)
