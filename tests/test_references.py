"""Simple references beside the model: served like an export, fitted on the fitted rows only.

``tfrec-p5 train`` prints the bias baseline (rating), most popular and EASE / item-KNN
(retrieval, next item) next to the model, scored by the task's own metric code on the same
held-out rows, and says when one beats the model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from _cli import SMALL, run

from tfrec_p5 import data
from tfrec_p5.cli.registry import get_task
from tfrec_p5.cli.train import _beaten, _winner
from tfrec_p5.evaluation import served
from tfrec_p5.evaluation.signatures import decode_strings


@pytest.fixture(scope="module")
def table() -> data.Interactions:
    return data.load("synthetic?num_users=150&num_items=80&num_interactions=4000&seed=3")


def test_bias_baseline_solves_the_ridge_problem(table):
    ref = served.bias_baseline(table, seed=1)
    l2 = float(ref.choice.split()[0].removeprefix("l2="))
    vocabs = ref.vocabs
    u, i = vocabs.user.lookup(table.user_id), vocabs.item.lookup(table.item_id)
    # The exact minimiser of sum (r - mean - bu - bi)^2 + l2 (|bu|^2 + |bi|^2).
    nu, ni = len(vocabs.user), len(vocabs.item)
    x = np.zeros((len(table), nu + ni))
    x[np.arange(len(table)), u] = 1.0
    x[np.arange(len(table)), nu + i] = 1.0
    y = table.rating - table.rating.mean()
    b = np.linalg.solve(x.T @ x + l2 * np.eye(nu + ni), x.T @ y)
    want = np.clip(table.rating.mean() + b[u] + b[nu + i], table.rating.min(),
                   table.rating.max())
    got = ref.signature("predict_rating")(user_id=tf.constant(table.user_id.astype(object)),
                                          item_id=tf.constant(table.item_id.astype(object)))
    np.testing.assert_allclose(got["rating"], want, atol=2e-3)
    unknown = ref.signature("predict_rating")(user_id=tf.constant(["nobody"]),
                                              item_id=tf.constant(["nothing"]))["rating"]
    assert unknown[0] == pytest.approx(table.rating.mean(), abs=1e-5)


def test_served_recommend_excludes_seen_items_and_falls_back_to_popularity(table):
    pop, ease = served.retrieval_references(table, k=20, seed=1)
    assert (pop.name, ease.name) == ("most popular", "EASE") and ease.choice.startswith("l2=")
    users = np.unique(table.user_id)[:30]
    for ref in (pop, ease):
        out = decode_strings(ref.signature("recommend")(
            user_id=tf.constant(users.astype(object)))["item_ids"])
        for user, items in zip(users, out, strict=True):
            seen = set(table.item_id[table.user_id == user])
            assert not seen & set(items) and len(set(items)) == len(items) == 20
    counts = {i: c for i, c in zip(*np.unique(table.item_id, return_counts=True), strict=True)}
    first = decode_strings(ease.signature("recommend")(user_id=tf.constant(["nobody"]))
                           ["item_ids"])[0]
    assert [counts[i] for i in first] == sorted(counts.values(), reverse=True)[:20]
    with pytest.raises(KeyError, match="no 'next_items' signature"):
        ease.signature("next_items")


def test_next_item_references_never_return_a_history_item(table):
    pop, knn = served.next_item_references(table, k=10)
    history = np.array([table.item_id[:5].astype(object), ["", "", "",
                                                           *table.item_id[5:7]]], dtype=object)
    for ref in (pop, knn):
        out = decode_strings(ref.signature("next_items")(history=tf.constant(history))
                             ["item_ids"])
        for row, items in zip(history, out, strict=True):
            assert not set(items) & {h for h in row if h}
    scores = knn.signature("score_items")(history=tf.constant(history),
                                          item_id=tf.constant(history))["scores"].numpy()
    assert scores.shape == (2, 5)


def test_train_prints_references_fitted_without_the_test_rows(monkeypatch, tmp_path):
    fitted_rows = []
    real = served.bias_baseline

    def spy(fitted, **kwargs):
        fitted_rows.append(fitted)
        return real(fitted, **kwargs)

    monkeypatch.setattr(served, "bias_baseline", spy)
    status, stdout, stderr = run(["train", "--data", SMALL, "--epochs", "2", "--json",
                                  "--out", str(tmp_path / "m")])
    assert status == 0, stderr
    metrics = json.loads(stdout.strip().splitlines()[-1])
    assert {"reference_bias_baseline_test_rmse", "reference_bias_baseline_test_mae"} <= \
        set(metrics)
    assert "test: bias baseline" in stderr and "note: reference bias baseline: l2=" in stderr
    split = data.random_split(data.load(SMALL), 0.8, seed=42)
    # First the validation race (fitted without the model's carved validation rows), then
    # the references scored on test (fitted on every training row).
    race_fit, fitted = fitted_rows
    carve = data.random_split(split.train, 0.9, seed=42)
    assert len(race_fit) == len(carve.train) and len(fitted) == len(split.train)
    test_pairs = set(zip(split.test.user_id, split.test.item_id, strict=True))
    carved_pairs = set(zip(carve.test.user_id, carve.test.item_id, strict=True))
    assert not test_pairs & set(zip(fitted.user_id, fitted.item_id, strict=True))
    assert not (test_pairs | carved_pairs) & set(zip(race_fit.user_id, race_fit.item_id,
                                                     strict=True))


def test_no_references_option(tmp_path):
    status, stdout, stderr = run(["train", "--data", SMALL, "--epochs", "1", "--json",
                                  "--no-references", "--out", str(tmp_path / "m")])
    assert status == 0, stderr
    assert not [k for k in json.loads(stdout.strip().splitlines()[-1]) if "reference" in k]
    assert "bias baseline" not in stderr


def test_a_reference_that_wins_on_a_headline_metric_is_named():
    rating, retrieval = get_task("rating"), get_task("retrieval")
    assert _beaten(rating, "bias baseline", "test", {"rmse": 0.90}, {"rmse": 0.95}) == [
        "the bias baseline reference beats the model on test rmse (0.9000 vs 0.9500)"]
    assert _beaten(rating, "bias baseline", "test", {"rmse": 0.96}, {"rmse": 0.95}) == []
    assert _beaten(retrieval, "EASE", "test", {"recall@10": 0.2}, {"recall@10": 0.1})
    assert not _beaten(retrieval, "EASE", "test", {"recall@10": 0.1}, {"recall@10": 0.2})



def test_the_bias_baseline_is_served_when_it_wins_on_validation(tmp_path):
    """A model that learns nothing (a learning rate of 1e-9) loses to the bias baseline on
    validation: train exports the baseline, says so, and reports the model's test row."""
    config = tmp_path / "frozen.json"
    config.write_text(json.dumps({"learning_rate": 1e-9}))
    args = ["train", "--data", SMALL, "--epochs", "2", "--json", "--config", str(config)]
    status, stdout, stderr = run([*args, "--out", str(tmp_path / "best")])
    assert status == 0, stderr
    metrics = json.loads(stdout.strip().splitlines()[-1])
    assert "note: serving the bias baseline reference: it beats the model on validation " \
        "(rmse " in stderr
    assert metrics["reference_bias_baseline_validation_rmse"] < metrics["validation_rmse"]
    assert metrics["test_rmse"] == pytest.approx(metrics["reference_bias_baseline_test_rmse"])
    assert metrics["model_test_rmse"] > metrics["test_rmse"]
    # The export is the baseline itself: its predict_rating equals the numpy reference's.
    split = data.random_split(data.load(SMALL), 0.8, seed=42)
    ref = served.bias_baseline(split.train, seed=42)
    loaded = tf.saved_model.load(str(tmp_path / "best" / "1"))
    users, items = split.test.user_id[:50], split.test.item_id[:50]
    got = loaded.signatures["predict_rating"](user_id=tf.constant(users.astype(str)),
                                              item_id=tf.constant(items.astype(str)))
    want = ref.signature("predict_rating")(users.astype(str), items.astype(str))
    np.testing.assert_allclose(got["rating"].numpy(), want["rating"], rtol=1e-5)
    meta = json.loads((tmp_path / "best" / "1" / "assets.extra" / "metadata.json").read_text())
    assert meta["served"] == "bias baseline"

    status, stdout, stderr = run([*args, "--serve", "model", "--out", str(tmp_path / "m")])
    assert status == 0, stderr
    metrics = json.loads(stdout.strip().splitlines()[-1])
    assert "beats the model on validation" in stderr and "serving the model (--serve model)" \
        in stderr
    assert metrics["test_rmse"] > metrics["reference_bias_baseline_test_rmse"]
    assert "model_test_rmse" not in metrics


def test_the_validation_race_needs_a_strict_win():
    rating, retrieval = get_task("rating"), get_task("retrieval")
    race = {"model": {"rmse": 0.90}, "bias baseline": {"rmse": 0.90}}
    assert _winner(rating, race) == "model"
    race["bias baseline"]["rmse"] = 0.89
    assert _winner(rating, race) == "bias baseline"
    assert _winner(retrieval, {"model": {"recall@10": 0.2}, "EASE": {"recall@10": 0.3},
                               "most popular": {"recall@10": 0.25}}) == "EASE"
    assert _winner(retrieval, {"model": {}, "EASE": {"recall@10": 0.3}}) == "model"
