"""RatingModel: functional two-input model, learns the planted signal, config, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from tfrec_p5 import data
from tfrec_p5.models import (
    RatingConfig,
    build_rating_model,
    evaluate_rating,
    train_rating,
)

FAST = {"epochs": 12, "batch_size": 256, "patience": 3, "embedding_dim": 16,
        "hidden_units": (32,), "steps_per_execution": 4, "history_len": 16,
        "refit": False}
# For tests of the training machinery (resume, logs): the features' graph only costs time.
IDS_ONLY = {"history_len": 0, "use_side_features": False}


@pytest.fixture(scope="module")
def split():
    table = data.load("synthetic", num_users=600, num_items=300, num_interactions=30_000)
    return data.random_split(table, 0.8, seed=1)


def test_functional_with_two_id_inputs(split):
    vocabs = data.Vocabularies.build(split.train)
    model = build_rating_model(vocabs, None, RatingConfig(**FAST))
    assert isinstance(model, tf.keras.Model) and model._is_graph_network
    assert sorted(model.input) == ["item_id", "user_id"]
    ds = data.pointwise_dataset(split.train.take(np.arange(64)), vocabs, batch_size=32)
    features, _ = next(iter(ds))
    assert model(features).shape[0] == 32


def test_trains_and_beats_global_mean(split):
    trained = train_rating(split.train, None, RatingConfig(**FAST), verbose=0)
    metrics = evaluate_rating(trained.model, split.test, trained.vocabs)
    baseline = float(np.sqrt(np.mean((split.test.rating - split.train.rating.mean()) ** 2)))
    assert metrics["rmse"] < baseline - 0.08, (metrics, baseline)
    assert metrics["mae"] < metrics["rmse"]
    assert "val_rmse" in trained.history and trained.side_features is not None
    # compile_rating_model made the optimizer's slots: Keras traced the step once, not twice
    assert trained.model.train_tf_function.experimental_get_tracing_count() == 1
    # IDs-only also learns.
    ids_only = train_rating(split.train, None, RatingConfig(**FAST, use_side_features=False),
                            verbose=0)
    assert set(ids_only.side_features.user) == {"rated_items"}  # ID-derived only
    assert evaluate_rating(ids_only.model, split.test, ids_only.vocabs)["rmse"] < baseline


def test_fit_on_pointwise_dataset_directly(split):
    vocabs = data.Vocabularies.build(split.train)
    from tfrec_p5.models import compile_rating_model
    model = compile_rating_model(build_rating_model(vocabs, None, RatingConfig(**FAST)),
                                 RatingConfig(**{**FAST, "steps_per_execution": 1}))
    hist = model.fit(data.pointwise_dataset(split.train, vocabs, 1024), epochs=1, verbose=0)
    assert {"rmse", "mae"} <= set(hist.history)


def test_config_round_trip_and_unknown_key(tmp_path):
    cfg = RatingConfig(hidden_units=(8, 4), item_features=("item_genres",), l2=3e-4)
    path = tmp_path / "c.json"
    path.write_text(cfg.to_json())
    assert RatingConfig.from_json(path) == cfg
    assert RatingConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="hiden_units"):
        RatingConfig.from_dict({"hiden_units": [8]})
    with pytest.raises(ValueError, match="optimizer"):
        RatingConfig(optimizer="nope")


class _Interrupt(tf.keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("simulated crash after epoch 2")


def test_backup_and_restore_resumes(split, tmp_path):
    small = split.train.take(np.arange(4000))
    cfg = RatingConfig(**{**FAST, **IDS_ONLY, "epochs": 4, "patience": 0})
    with pytest.raises(KeyboardInterrupt):
        train_rating(small, None, cfg, verbose=0, backup_dir=tmp_path / "bk",
                     callbacks=[_Interrupt()])
    resumed = train_rating(small, None, cfg, verbose=0, backup_dir=tmp_path / "bk")
    assert len(resumed.history["loss"]) == 2  # only epochs 3 and 4 ran


def test_tensorboard_logs(split, tmp_path):
    pytest.importorskip("tensorboard", reason="TensorBoard callback needs tensorboard")
    small = split.train.take(np.arange(2000))
    train_rating(small, None, RatingConfig(**{**FAST, **IDS_ONLY, "epochs": 1}), verbose=0,
                 log_dir=tmp_path / "tb")
    assert any((tmp_path / "tb").rglob("events.out.tfevents.*"))


def test_users_without_training_rows_get_the_item_bias_answer():
    """The unknown-user row is never trained: the model answers those users with
    ``mean + b_item`` of the ridge bias fit (``UnknownUserRating``), and users it knows
    with its own prediction. ``unknown_users="model"`` (the tutorial) keeps the row."""
    from tfrec_p5.models.bias import select_bias_fit
    from tfrec_p5.models.rating import unknown_user_gate

    table = data.load("synthetic?num_users=120&num_items=60&num_interactions=3000&seed=5")
    config = RatingConfig(**{**FAST, "epochs": 2, "refit": True})  # the gate fits all rows
    trained = train_rating(table, None, config, seed=3, verbose=0)
    fit, _ = select_bias_fit(table, trained.vocabs, seed=3, user_biases=False)
    items = np.arange(1, 11)
    unknown = trained.model({"user_id": tf.zeros(10, tf.int64),
                             "item_id": tf.constant(items)}, training=False)
    np.testing.assert_allclose(np.reshape(unknown, -1),
                               np.clip(fit.mean + fit.item_bias[items], 1.0, 5.0), rtol=1e-5)
    known = trained.model({"user_id": tf.ones(10, tf.int64), "item_id": tf.constant(items)},
                          training=False)
    assert not np.allclose(np.reshape(known, -1), np.reshape(unknown, -1))
    assert "unknown_users" in [layer.name for layer in trained.model.layers]
    assert unknown_user_gate(config.replace(unknown_users="model"), table,
                             trained.vocabs) is None
    with pytest.raises(ValueError, match="unknown_users must be 'bias' or 'model'"):
        RatingConfig(unknown_users="mean")


def test_the_seed_model_round_trips_through_the_keras_format(split, tmp_path):
    """``model.save("m.keras")`` and ``tf.keras.models.load_model`` work on the seed model
    with every part it can have (side features, history features, the unknown-user gate):
    a Keras user's first way to keep a model. Unknown users (row 0) answer as before."""
    from tfrec_p5.models.rating import unknown_user_gate
    from tfrec_p5.towers.side_features import side_features_for

    config = RatingConfig(**FAST)
    vocabs = data.Vocabularies.build(split.train)
    side = side_features_for(config, split.train, vocabs, split.train)
    model = build_rating_model(vocabs, side, config, global_mean=3.5, rating_range=(1, 5),
                               unknown_users=unknown_user_gate(config, split.train, vocabs))
    assert side is not None and "unknown_users" in [layer.name for layer in model.layers]
    model.save(tmp_path / "m.keras")
    loaded = tf.keras.models.load_model(tmp_path / "m.keras")
    batch = {"user_id": tf.constant([0, 1, 2, 3], tf.int64),
             "item_id": tf.constant([5, 0, 7, 9], tf.int64)}
    np.testing.assert_allclose(loaded(batch), model(batch), rtol=1e-6)
