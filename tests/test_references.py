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
from _cli import SMALL, run, two_world_log

from tfrec_p5 import data
from tfrec_p5.cli.registry import get_task
from tfrec_p5.cli.train import _beaten, _winner
from tfrec_p5.evaluation import served
from tfrec_p5.evaluation.signatures import decode_strings

# The rating model without its history and side features: these tests are about the
# references beside it (fitted rows, the race, the export), and the full model's graph only
# made each `train` slower to trace.
IDS_ONLY = {"history_len": 0, "use_side_features": False}


def _ids_only_config(tmp_path, **changes) -> str:
    path = tmp_path / "ids_only.json"
    path.write_text(json.dumps({**IDS_ONLY, **changes}))
    return str(path)


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
                                  "--config", _ids_only_config(tmp_path),
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
                                  "--config", _ids_only_config(tmp_path, refit=False),
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
    config = _ids_only_config(tmp_path, learning_rate=1e-9)
    args = ["train", "--data", SMALL, "--epochs", "2", "--json", "--config", config]
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


# ---------------------------------------------------------------------- retrieval race
def _recommend_and_rank(signatures, users, items) -> dict:
    rec = signatures("recommend")(user_id=tf.constant(users))
    rank = signatures("rank")(user_id=tf.constant(users),
                              item_ids=tf.constant([list(items)] * len(users)))
    return {"ids": decode_strings(rec["item_ids"]), "scores": np.asarray(rec["scores"]),
            "rank_ids": decode_strings(rank["item_ids"]),
            "rank_scores": np.asarray(rank["scores"])}


def _assert_same_answers(got: dict, want: dict) -> None:
    """The served item-item module answers like the numpy reference (padding: the
    reference's "" scores -inf, the export's PAD_SCORE)."""
    np.testing.assert_array_equal(got["ids"], want["ids"])
    real = want["ids"] != ""
    np.testing.assert_allclose(got["scores"][real], want["scores"][real], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_array_equal(got["rank_ids"], want["rank_ids"])
    finite = np.isfinite(want["rank_scores"])
    np.testing.assert_allclose(got["rank_scores"][finite], want["rank_scores"][finite],
                               rtol=1e-5, atol=1e-6)
    assert not np.isfinite(got["rank_scores"][~finite]).any()


@pytest.mark.parametrize("name", ["most popular", "EASE", "item-KNN"])
def test_item_item_references_are_served_exactly(table, monkeypatch, name):
    """EASE, item-KNN (above EASE_MAX_ITEMS items) and most popular exported through
    item_item_module answer recommend and rank as the references do: seen items excluded,
    an unknown user gets the most popular items, an unknown item scores -inf."""
    from tfrec_p5.export.retrieval import item_item_module

    if name == "item-KNN":
        monkeypatch.setattr(served, "EASE_MAX_ITEMS", 10)
    ref = next(r for r in served.retrieval_references(table, k=15, seed=1) if r.name == name)
    module = item_item_module(ref.model, ref.vocabs, ref.popularity, k=15)
    users = [*np.unique(table.user_id)[:25].tolist(), "nobody"]
    items = [*np.unique(table.item_id)[:6].tolist(), "nothing"]
    got = _recommend_and_rank(module.signature, users, items)
    _assert_same_answers(got, _recommend_and_rank(ref.signature, users, items))
    assert module.signature_names() == ["rank", "recommend", "serving_default"]
    assert module.tasks == ["retrieval"] and module.recommend_k == 15


RETRIEVAL = ["train", "--task", "retrieval", "--data", SMALL, "--epochs", "2", "--json"]

CHILD = """
import json, sys
import tensorflow as tf
path, users, items = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
m = tf.saved_model.load(path)
rec = m.signatures["recommend"](user_id=tf.constant(users))
rank = m.signatures["rank"](user_id=tf.constant(users),
                            item_ids=tf.constant([items] * len(users)))
print(json.dumps({"ids": rec["item_ids"].numpy().astype(str).tolist(),
                  "scores": rec["scores"].numpy().tolist(),
                  "rank_ids": rank["item_ids"].numpy().astype(str).tolist(),
                  "rank_scores": [[x if x > -1e30 else None for x in row]
                                  for row in rank["scores"].numpy().tolist()],
                  "dtypes": [rec["item_ids"].dtype.name, rec["scores"].dtype.name],
                  "modules": sorted(n for n in sys.modules if n.startswith("tfrec_p5"))}))
"""


def test_ease_is_served_when_it_wins_the_retrieval_race(tmp_path):
    """A retrieval model that learns nothing (a learning rate of 1e-9) loses to EASE on
    its validation carve: train exports EASE behind recommend / rank, says so, and keeps
    the model's test row; the export answers like the numpy EASE in bare TensorFlow."""
    from _cli import run_tf_only

    from tfrec_p5.cli.common import split_parts

    config = tmp_path / "frozen.json"
    config.write_text(json.dumps({"learning_rate": 1e-9}))
    args = [*RETRIEVAL, "--config", str(config), "--top-k", "20"]
    status, stdout, stderr = run([*args, "--out", str(tmp_path / "best")])
    assert status == 0, stderr
    metrics = json.loads(stdout.strip().splitlines()[-1])
    assert "note: serving the EASE reference: it beats the model on validation " \
        "(recall@10 " in stderr
    assert "validation: EASE" in stderr and "test: model (not served)" in stderr
    assert metrics["reference_EASE_validation_recall@10"] > metrics["validation_recall@10"]
    assert metrics["test_recall@10"] == pytest.approx(metrics["reference_EASE_test_recall@10"])
    assert metrics["model_test_recall@10"] < metrics["test_recall@10"]
    meta = json.loads((tmp_path / "best" / "1" / "assets.extra" / "metadata.json").read_text())
    assert meta["served"] == "EASE" and meta["tasks"] == ["retrieval"]
    assert meta["recommend"] == {"k": 20, "exclude_seen": True}
    # EASE fitted on every training row, as train fits it; its numpy answers.
    train, validation, _, _ = split_parts(data.load(SMALL), "random:0.8", 42)
    fitted = data.Interactions.concat(train, validation)
    ease = served.retrieval_references(fitted, k=20, seed=42)[1]
    users = [*np.unique(fitted.user_id)[:40].tolist(), "nobody"]
    items = [*np.unique(fitted.item_id)[:5].tolist(), "nothing"]
    want = _recommend_and_rank(ease.signature, users, items)
    got = run_tf_only(CHILD, tmp_path / "best" / "1", json.dumps(users), json.dumps(items))
    assert got["modules"] == [] and got["dtypes"] == ["string", "float32"]
    got = {"ids": np.array(got["ids"]), "scores": np.array(got["scores"]),
           "rank_ids": np.array(got["rank_ids"]),
           "rank_scores": np.array([[-np.inf if x is None else x for x in row]
                                    for row in got["rank_scores"]])}
    _assert_same_answers(got, want)

    status, stdout, stderr = run([*args, "--serve", "model", "--out", str(tmp_path / "m")])
    assert status == 0, stderr
    metrics = json.loads(stdout.strip().splitlines()[-1])
    assert "beats the model on validation" in stderr and "serving the model (--serve model)" \
        in stderr
    assert metrics["test_recall@10"] < metrics["reference_EASE_test_recall@10"]
    assert "model_test_recall@10" not in metrics
    meta = json.loads((tmp_path / "m" / "1" / "assets.extra" / "metadata.json").read_text())
    assert meta["served"] == "model"


def test_the_model_is_kept_when_it_wins_the_retrieval_race(tmp_path, monkeypatch):
    """Against most popular alone (EASE left out) on data where popularity says nothing,
    the model wins on validation and is what gets exported."""
    real = served.retrieval_references
    monkeypatch.setattr(served, "retrieval_references",
                        lambda fitted, **kwargs: real(fitted, **kwargs)[:1])
    log, _ = two_world_log(tmp_path)
    status, stdout, stderr = run(["train", "--task", "retrieval", "--data", f"csv:{log}",
                                  "--epochs", "8", "--json", "--out", str(tmp_path / "m")])
    assert status == 0, stderr
    metrics = json.loads(stdout.strip().splitlines()[-1])
    assert metrics["validation_recall@10"] > \
        metrics["reference_most_popular_validation_recall@10"] + 0.2
    assert "serving the" not in stderr and "beats the model on validation" not in stderr
    assert "model_test_recall@10" not in metrics and "test: model (not served)" not in stderr
    meta = json.loads((tmp_path / "m" / "1" / "assets.extra" / "metadata.json").read_text())
    assert meta["served"] == "model" and meta["search_epochs_run"] >= meta["epochs_run"]


def test_a_winner_is_served_and_the_note_names_what_only_the_model_could_serve(tmp_path):
    """A reference that wins on validation is served even where the model scores catalog
    items by their features: the note names the lost score_new_items and catalog items,
    the export lacks them (add-items refuses it), and --serve model keeps them."""
    config = tmp_path / "features.json"
    config.write_text(json.dumps({"use_side_features": True, "learning_rate": 1e-9}))
    log, items = two_world_log(tmp_path)
    args = ["train", "--task", "retrieval", "--data", f"csv:{log}", "--items",
            f"{items}?multi=genre", "--epochs", "2", "--config", str(config), "--json"]
    status, stdout, stderr = run([*args, "--out", str(tmp_path / "m")])
    assert status == 0, stderr
    assert "reference: it beats the model on validation (recall@10 " in stderr
    assert "; this export lacks the model's score_new_items signature, which the " \
        "reference cannot serve; --serve model exports the model instead" in stderr
    meta = json.loads((tmp_path / "m" / "1" / "assets.extra" / "metadata.json").read_text())
    assert meta["served"] != "model" and "catalog" not in meta
    assert "score_new_items" not in tf.saved_model.load(str(tmp_path / "m" / "1")).signatures
    new_items = tmp_path / "new.csv"
    new_items.write_text("item_id,genre\nnew_z,x\n")
    status, _, stderr = run(["add-items", "--model", str(tmp_path / "m"), "--items",
                             str(new_items)])
    assert status == 2 and "score_new_items" in stderr, stderr

    status, _, stderr = run([*args, "--serve", "model", "--out", str(tmp_path / "kept")])
    assert status == 0, stderr
    meta = json.loads((tmp_path / "kept" / "1" / "assets.extra" / "metadata.json")
                      .read_text())
    assert meta["served"] == "model" and meta["catalog"]["new_items"] == 2


def test_lacks_names_what_only_the_model_serves():
    from tfrec_p5.cli.train import _lacks

    class Module:
        def __init__(self, names, users=5, items=7, custom_ops=None):
            self.names, self.custom_ops = names, custom_ops
            self.vocab_sizes = {"user_id": users, "item_id": items}

        def signature_names(self):
            return self.names

    ref = Module(["rank", "recommend", "serving_default"])
    assert _lacks(Module(["rank", "recommend", "serving_default"]), ref) == ""
    assert _lacks(Module(["rank", "recommend", "score_new_items"]), ref) == \
        "the model's score_new_items signature"
    assert _lacks(Module(["rank", "recommend"], users=8, items=9), ref) == \
        "the 3 users and 2 items without training rows the model serves"
    assert _lacks(Module(["rank", "recommend"], items=3), ref) == ""  # min_count: fewer
    assert _lacks(Module(["recommend"], custom_ops=["scann"]), ref) == \
        "the ScaNN index (--index scann)"


def test_the_race_reads_the_best_epoch_of_the_search():
    """The model's validation metrics are the selected epoch's (the search's, before the
    refit), measured on the rows carve_validation carves with the same seed."""
    from tfrec_p5.cli.builtin import _carved_validation
    from tfrec_p5.cli.registry import TrainRequest

    table = data.load(SMALL)
    request = TrainRequest(train=table, validation=None, seed=7, epochs=None,
                           batch_size=None, config={})
    history = {"search_val_recall@10": [0.1, 0.3, 0.3, 0.2],
               "search_val_recall@100": [0.5, 0.6, 0.9, 0.7],
               "search_val_ndcg@10": [0.1, 0.2, 0.25, 0.2], "loss": [1.0, 0.5]}
    out = _carved_validation(request, 0.1, history, "recall@10",
                             ("recall@10", "recall@100", "ndcg@10"), higher=True)
    assert out["validation_metrics"] == {"recall@10": 0.3, "recall@100": 0.6, "ndcg@10": 0.2}
    fit_rows, carved = out["validation_split"]
    want = data.random_split(table, 0.9, seed=7)
    assert len(carved) == len(want.test) and len(fit_rows) == len(want.train)
    # --top-k 5: no recall@10 to race on, the epoch is still the selected one
    assert _carved_validation(request, 0.1, history, "recall@10", ("ndcg@10",),
                              higher=True)["validation_metrics"] == {"ndcg@10": 0.2}
    assert _carved_validation(request, 0.1, {"loss": [1.0]}, "recall@10", ("recall@10",),
                              higher=True) == {}
    given = TrainRequest(train=table, validation=table, seed=7, epochs=None,
                         batch_size=None, config={})
    assert _carved_validation(given, 0.1, history, "recall@10", ("recall@10",),
                              higher=True) == {}


def test_edge_search_extends_the_grid_past_a_winning_edge():
    from tfrec_p5.evaluation.served import edge_search

    tried = []

    def peak_at(best):
        def score(l2):
            tried.append(l2)
            return -(np.log(l2) - np.log(best)) ** 2
        return score

    grid = (10.0, 100.0, 1000.0)
    scores = edge_search(peak_at(5000.0), grid)
    assert sorted(scores) == [10.0, 100.0, 1000.0, 4000.0, 16000.0]  # 16000 lost: stop
    assert max(scores, key=scores.get) == 4000.0
    assert sorted(edge_search(peak_at(200.0), grid)) == list(grid)  # inside: as given
    low = edge_search(peak_at(1.0), grid)
    assert min(low) == 10.0 / 4 ** 3 and max(low, key=low.get) == 10.0 / 4 ** 2


def _next_and_scores(signatures, history, candidates) -> dict:
    out = signatures("next_items")(history=tf.constant(history))
    scores = signatures("score_items")(history=tf.constant(history),
                                       item_id=tf.constant(candidates))["scores"]
    return {"ids": decode_strings(out["item_ids"]), "scores": np.asarray(out["scores"]),
            "candidate_scores": np.asarray(scores)}


@pytest.mark.parametrize("name", ["most popular", "item-KNN"])
def test_next_item_references_are_served_exactly(table, name):
    """item-KNN and most popular exported through item_item_next_module answer next_items
    and score_items as the references do: the history's items (repeats counted) and
    unknown IDs never listed, an empty or unknown history gets the most popular items."""
    from tfrec_p5.export.sequential import item_item_next_module

    ref = next(r for r in served.next_item_references(table, k=12) if r.name == name)
    module = item_item_next_module(ref.model, ref.vocabs, top_k=12)
    items = np.unique(table.item_id)
    history = np.array([[*items[:4], items[2], ""], [items[9], "nothing", "", "", "", ""],
                        ["", "", "", "", "", ""], ["nothing", *items[30:35]]], dtype=object)
    candidates = np.array([[*items[40:45], "nothing"]] * len(history), dtype=object)
    got = _next_and_scores(module.signature, history, candidates)
    want = _next_and_scores(ref.signature, history, candidates)
    np.testing.assert_array_equal(got["ids"], want["ids"])
    np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-5, atol=1e-6)
    known = candidates != "nothing"
    np.testing.assert_allclose(got["candidate_scores"][known], want["candidate_scores"][known],
                               rtol=1e-5, atol=1e-6)
    for row, listed in zip(history, got["ids"], strict=True):
        assert not set(listed) & set(row)
    counts = dict(zip(*np.unique(table.item_id, return_counts=True), strict=True))
    if name == "most popular":  # one ranking: the counts, the history's items left out
        assert [counts[i] for i in got["ids"][2]] == sorted(counts.values(), reverse=True)[:12]
    assert module.signature_names() == ["next_items", "score_items"]
    assert module.tasks == ["sequential"]


def test_a_next_item_reference_is_served_when_it_wins_the_race(tmp_path):
    """A sequential model that learns nothing (a learning rate of 1e-9) loses to a
    reference on its validation items: train exports the winner behind next_items /
    score_items, says so, keeps the model's test row, and the export answers in bare
    TensorFlow as the reference does; --serve model keeps the model."""
    from _cli import run_tf_only

    config = tmp_path / "frozen.json"
    config.write_text(json.dumps({"learning_rate": 1e-9, "max_len": 8, "num_blocks": 1,
                                      "use_item_features": False}))
    args = ["train", "--task", "sequential", "--data",
            "synthetic?num_users=200&num_items=400&num_interactions=4000&seed=5",
            "--split", "leave-one-out", "--epochs", "2", "--top-k", "15", "--json",
            "--config", str(config)]
    status, stdout, stderr = run([*args, "--out", str(tmp_path / "best")])
    assert status == 0, stderr
    metrics = json.loads(stdout.strip().splitlines()[-1])
    meta = json.loads((tmp_path / "best" / "1" / "assets.extra" / "metadata.json").read_text())
    winner = meta["served"]
    assert winner in ("most popular", "item-KNN"), stderr
    key = winner.replace(" ", "_")
    assert f"note: serving the {winner} reference: it beats the model on validation " \
        "(ndcg@10 " in stderr
    assert metrics[f"reference_{key}_validation_ndcg@10"] > metrics["validation_ndcg@10"]
    assert "note: the model's validation row is cross-fitted" in stderr
    assert metrics["test_ndcg@10"] == pytest.approx(metrics[f"reference_{key}_test_ndcg@10"])
    assert metrics["test_hr@10"] == pytest.approx(metrics[f"reference_{key}_test_hr@10"])
    assert "model_test_ndcg@10" in metrics and meta["tasks"] == ["sequential"]
    child = """
import json, sys
import tensorflow as tf
m = tf.saved_model.load(sys.argv[1])
out = m.signatures["next_items"](history=tf.constant([["", ""], ["nothing", ""]]))
print(json.dumps({"ids": out["item_ids"].numpy().astype(str).tolist(),
                  "modules": sorted(n for n in sys.modules if n.startswith("tfrec_p5"))}))
"""
    got = run_tf_only(child, tmp_path / "best" / "1")
    assert got["modules"] == [] and got["ids"][0] == got["ids"][1] and len(got["ids"][0]) == 15

    status, stdout, stderr = run([*args, "--serve", "model", "--out", str(tmp_path / "m")])
    assert status == 0, stderr
    assert "serving the model (--serve model)" in stderr
    meta = json.loads((tmp_path / "m" / "1" / "assets.extra" / "metadata.json").read_text())
    assert meta["served"] == "model"
