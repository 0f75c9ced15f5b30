"""The one model (``tfrec_p5.models.joint``): every head on one item tower, one export.

* ``JointConfig`` refuses what it would not read (a pair head's training schedule, an
  unknown head, two tower widths);
* ``train_joint`` trains rating + retrieval + next-item together, selects on each user's
  last training event, and its export carries ``predict_rating``, ``recommend``,
  ``rank``, ``next_items`` and ``score_items``, answering in a TensorFlow-only process
  exactly as in memory;
* ``tfrec-p5 train --task all --split leave-one-out`` is that model, scored on the same
  test events for every task, and ``evaluate`` recomputes its numbers from the export.
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from _cli import run, run_tf_only
from _loop_spy import FitCalled, fit_calls

import tfrec_p5  # noqa: F401  (conftest.py imported it before TensorFlow)
from tfrec_p5 import data
from tfrec_p5.export import export
from tfrec_p5.export.unified import build_module
from tfrec_p5.models.joint import JointConfig, train_joint
from tfrec_p5.models.sequential import SequentialConfig
from tfrec_p5.models.unified import UnifiedConfig

SPEC = "synthetic?num_users=150&num_items=400&num_interactions=4000"
FAST = {"embedding_dim": 16, "max_len": 10, "num_blocks": 1, "epochs": 3, "patience": 2,
        "steps_per_execution": 1}
SIGNATURES = {"predict_rating", "recommend", "rank", "next_items", "score_items"}


def _config(**weights) -> JointConfig:
    return JointConfig(weights=weights or {"rating": 1.0, "retrieval": 1.0, "next_item": 1.0},
                       pairs=UnifiedConfig(embedding_dim=16, batch_size=256),
                       sequential=SequentialConfig(**FAST))


def test_config_refuses_what_the_joint_model_does_not_read():
    with pytest.raises(ValueError, match="pairs.learning_rate.*'sequential' schedule"):
        JointConfig(pairs=UnifiedConfig(learning_rate=0.1))
    with pytest.raises(ValueError, match="unknown task"):
        JointConfig(weights={"clicks": 1.0})
    with pytest.raises(ValueError, match="width of the one item tower"):
        JointConfig(pairs=UnifiedConfig(embedding_dim=32))
    with pytest.raises(ValueError, match="unknown"):
        JointConfig.from_dict({"pairs": {"no_such_field": 1}})


def test_the_joint_schedule_ends_on_the_weights_moving_average(monkeypatch):
    # The joint default averages the weights (JOINT_SEQUENTIAL); a --config's "sequential"
    # merges over it, and the loop is asked for exactly that average.
    from tfrec_p5.models import joint as joint_module
    from tfrec_p5.pretraining.finetuner import FinetuneConfig
    from tfrec_p5.pretraining.pretrainer import PretrainConfig

    assert (JointConfig().sequential.ema_momentum, JointConfig().sequential.dropout) \
        == (0.999, 0.3)
    assert JointConfig(sequential={"max_len": 20}).sequential.ema_momentum == 0.999
    assert JointConfig(sequential={"ema_momentum": None}).sequential.ema_momentum is None
    assert SequentialConfig().ema_momentum is None  # the next-item specialist's default
    for momentum in (0.0, 1.0):  # a share strictly between 0 and 1
        with pytest.raises(ValueError, match="SequentialConfig.ema_momentum"):
            SequentialConfig(ema_momentum=momentum)
    with pytest.raises(ValueError, match="sequential.ema_momentum does nothing"):
        PretrainConfig(sequential={"ema_momentum": 0.99})  # its own schedule trains the head
    # a next-item fine-tune trains through fit_next_item, as train_sequential does
    assert FinetuneConfig(task="next_item",
                          sequential={"ema_momentum": 0.99}).sequential.ema_momentum == 0.99

    asked = fit_calls(monkeypatch, joint_module)
    table = data.load(SPEC)
    for momentum in (0.99, None):
        config = JointConfig(weights={"retrieval": 1.0, "next_item": 1.0},
                             pairs=UnifiedConfig(embedding_dim=16, batch_size=256),
                             sequential={**FAST, "ema_momentum": momentum})
        with pytest.raises(FitCalled):
            train_joint(table, config, seed=0)
    assert [a["ema_momentum"] for a in asked] == [0.99, None]


def test_validation_is_each_users_last_training_event():
    table = data.load(SPEC)
    fit_rows, validation = data.hold_out_last(table)
    assert len(fit_rows) + len(validation) == len(table)
    assert len(np.unique(validation.user_id)) == len(validation)
    last = {}
    for u, t in zip(fit_rows.user_id.tolist(), fit_rows.timestamp.tolist(), strict=True):
        last[u] = max(last.get(u, t), t)
    assert all(t >= last[u] for u, t in zip(validation.user_id.tolist(),
                                            validation.timestamp.tolist(), strict=True))
    # on a leave-one-out split's training + validation parts: that split's validation
    # events, for every user it held one out for (those with three or more events)
    split = data.leave_one_out(table)
    _, validation = data.hold_out_last(data.Interactions.concat(split.train,
                                                                split.validation))
    ours = dict(zip(validation.user_id.tolist(), validation.item_id.tolist(), strict=True))
    theirs = dict(zip(split.validation.user_id.tolist(), split.validation.item_id.tolist(),
                      strict=True))
    assert theirs and all(ours[u] == i for u, i in theirs.items())


def test_an_epoch_is_one_pass_over_the_histories_and_the_pairs():
    from tfrec_p5.data.pipeline import Vocabularies
    from tfrec_p5.models.joint import joint_batches

    table = data.load(SPEC)
    vocabs = Vocabularies.build(table)
    batches, pair_batch, _ = joint_batches(table, vocabs, UnifiedConfig(batch_size=256),
                                           SequentialConfig(max_len=10, batch_size=64),
                                           ["retrieval", "rating"], True, seed=0)
    epoch = list(batches)
    assert pair_batch == max(int(b["user_id"].shape[0]) for b in epoch)
    users = len(np.unique(table.user_id))
    assert len(epoch) == -(-len(table) // 256)  # the pairs have more batches: they set it
    seen_users = sum(int(b["history"].shape[0]) for b in epoch)
    seen_pairs = sum(int(b["user_id"].shape[0]) for b in epoch)
    assert users - len(epoch) < seen_users <= users  # every history once (± one batch)
    assert len(table) - 256 < seen_pairs <= len(table)
    assert {"rating", "history", "next_item", "item_id"} <= set(epoch[0])


def test_the_refit_replays_the_selections_steps_per_epoch(monkeypatch):
    # The refit has one more event per user: left to the rule, its extra pair batches
    # would add steps to every epoch and train past the epoch count validation chose.
    from tfrec_p5.models import joint as joint_module

    calls, original = [], joint_module.joint_batches

    def spy(*args, **kwargs):
        dataset, pair_batch, history_batch = original(*args, **kwargs)
        calls.append((int(dataset.cardinality().numpy()), history_batch))
        return dataset, pair_batch, history_batch
    monkeypatch.setattr(joint_module, "joint_batches", spy)
    table = data.load("synthetic?num_users=400&num_items=300&num_interactions=8000")
    counts = dict(zip(*np.unique(table.user_id, return_counts=True), strict=True))
    table = table.take(np.flatnonzero([counts[u] >= 3 for u in table.user_id]))
    config = JointConfig(weights={"retrieval": 1.0, "next_item": 1.0},
                         pairs=UnifiedConfig(embedding_dim=16, batch_size=100),
                         sequential=SequentialConfig(**{**FAST, "epochs": 1}))
    train_joint(table, config, seed=0)
    # selection, then the refit; each fit also builds its variables on a fresh copy
    assert len(calls) == 4 and len(set(calls)) == 1, calls


@pytest.fixture(scope="module")
def joint():
    split = data.leave_one_out(data.load(SPEC))
    train = data.Interactions.concat(split.train, split.validation)
    return split, train_joint(train, _config(), seed=3, verbose=0)


def test_one_model_every_head_one_export(joint, tmp_path):
    split, trained = joint
    assert trained.tasks == ["rating", "retrieval", "next_item"]
    assert trained.best_epoch >= 1
    # selection saw every head's validation number, the refit then trained on all rows
    assert {"ndcg@10", "retrieval_recall@10", "rating_rmse"} <= set(trained.best_metrics)
    assert any(r.get("refit") for r in trained.records)
    module = build_module(trained, k=20)
    assert SIGNATURES <= set(module.signature_names())
    # the next-item head reads items through the one item tower the others use
    head = trained.model.heads["next_item"]
    assert head.item_tower is trained.model.item_tower
    history = [split.train.item_id[split.train.user_id == u][-5:].tolist()
               for u in np.unique(split.test.user_id)[:4]]
    width = max(map(len, history))
    history = [h + [""] * (width - len(h)) for h in history]
    users = np.unique(split.test.user_id)[:4].tolist()
    expected = {
        "next_items": module.signature("next_items")(
            history=tf.constant(history))["item_ids"].numpy().astype(str).tolist(),
        "recommend": module.signature("recommend")(
            user_id=tf.constant(users))["item_ids"].numpy().astype(str).tolist(),
        "predict_rating": module.signature("predict_rating")(
            user_id=tf.constant(users), item_id=tf.constant(history[0][:1] * 4)
        )["rating"].numpy().round(4).tolist(),
    }
    path = export(module, tmp_path / "joint")
    child = textwrap.dedent("""
        import json, sys
        import tensorflow as tf
        m = tf.saved_model.load(sys.argv[1])
        history, users = json.loads(sys.argv[2]), json.loads(sys.argv[3])
        s = m.signatures
        print(json.dumps({
            "signatures": sorted(s.keys()),
            "next_items": s["next_items"](history=tf.constant(history))["item_ids"]
                .numpy().astype(str).tolist(),
            "recommend": s["recommend"](user_id=tf.constant(users))["item_ids"]
                .numpy().astype(str).tolist(),
            "predict_rating": s["predict_rating"](user_id=tf.constant(users),
                item_id=tf.constant(history[0][:1] * 4))["rating"].numpy().round(4).tolist(),
        }))
    """)
    got = run_tf_only(child, path, json.dumps(history), json.dumps(users))
    assert SIGNATURES <= set(got.pop("signatures"))
    assert got == expected


def test_recommend_from_the_next_item_head_is_next_items_after_the_users_history(joint):
    """When the next-item head answers ``recommend`` (it ranked the validation events
    better), a user's list is exactly ``next_items`` of their training history."""
    split, trained = joint
    chosen = trained.recommend_head
    try:
        trained.recommend_head = "next_item"
        module = build_module(trained, k=10)
    finally:
        trained.recommend_head = chosen
    fitted = data.Interactions.concat(split.train, split.validation)
    users = [u for u in np.unique(fitted.user_id)[:20]
             if (fitted.user_id == u).sum() <= FAST["max_len"]][:5]
    assert users
    for user in users:
        mine = fitted.take(np.flatnonzero(fitted.user_id == user))
        history = mine.item_id[np.argsort(mine.timestamp, kind="stable")].tolist()
        served = module.signature("recommend")(user_id=tf.constant([user]))
        nxt = module.signature("next_items")(history=tf.constant([history]))
        assert served["item_ids"].numpy().tolist() == nxt["item_ids"].numpy().tolist()
        np.testing.assert_allclose(served["scores"].numpy(), nxt["scores"].numpy(),
                                   rtol=1e-5, atol=1e-5)


def test_recommend_choice_follows_validation():
    from tfrec_p5.models.joint import recommend_choice

    both = ["retrieval", "next_item"]
    assert recommend_choice(both, {"hr@10": 0.2, "retrieval_recall@10": 0.1})[0] == \
        "next_item"
    assert recommend_choice(both, {"hr@10": 0.1, "retrieval_recall@10": 0.1})[0] == \
        "retrieval"
    assert recommend_choice(["next_item"], {})[0] == "next_item"
    assert recommend_choice(["retrieval", "rating"], {"hr@10": 1.0})[0] is None


def test_data_without_ratings_leave_the_rating_head_out_with_a_note():
    table = data.load(SPEC)
    implicit = data.Interactions.from_columns({"user_id": table.user_id,
                                               "item_id": table.item_id,
                                               "timestamp": table.timestamp})
    assert _config().active(implicit) == (["retrieval", "next_item"],
                                          ["no rating head: the data have no ratings"])
    assert _config().active(table) == (["rating", "retrieval", "next_item"], [])


def test_cli_all_on_leave_one_out_is_the_joint_model(tmp_path):
    config = tmp_path / "joint.json"
    config.write_text(json.dumps({"pairs": {"embedding_dim": 16},
                                  "sequential": {**FAST, "epochs": 2}}))
    out = tmp_path / "all"
    status, stdout, stderr = run(["train", "--task", "all", "--data", SPEC, "--split",
                                  "leave-one-out", "--config", str(config), "--seed", "5",
                                  "--quiet", "--json", "--out", str(out)])
    assert status == 0, stderr
    metrics = json.loads(stdout.strip().splitlines()[-1])
    # every task scored on the same test events: one per user
    for key in ("test_recall@10", "test_rating_rmse", "test_next_item_hr@10",
                "test_next_item_sampled_hr@10", "validation_next_item_ndcg@10"):
        assert key in metrics, sorted(metrics)
    assert "next_items" in stderr and "predict_rating" in stderr
    status, stdout, stderr = run(["evaluate", "--model", str(out), "--json"])
    assert status == 0, stderr
    again = json.loads(stdout.strip().splitlines()[-1])
    # one row per task; a metric two tasks name carries the later task's name
    assert again["test_recall@10"] == pytest.approx(metrics["test_recall@10"])
    assert again["test_ndcg@10"] == pytest.approx(metrics["test_ndcg@10"])
    assert again["test_rmse"] == pytest.approx(metrics["test_rating_rmse"])
    assert again["test_hr@10"] == pytest.approx(metrics["test_next_item_hr@10"])
    assert again["test_sequential_ndcg@10"] == pytest.approx(metrics["test_next_item_ndcg@10"])


def test_cli_all_says_where_the_next_item_head_trains(tmp_path):
    status, _, stderr = run(["train", "--task", "all", "--data", SPEC, "--weights",
                             "retrieval=1,next_item=1", "--out", str(tmp_path / "x")])
    assert status == 2
    assert "next-item head trains with --split leave-one-out or none" in stderr
