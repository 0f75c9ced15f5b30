"""Serving never answers with something other than what was asked (issue "no silent wrong
answers", serving items).

* ``recommend`` never returns an item the user trained on while exclusion is on: when
  ``k`` exceeds the user's unseen items, the fixed-size signature output is padded with
  ``""`` (score: the lowest float32), and ``tfrec-p5 recommend`` drops the padding and
  prints strict JSON.
* Every signature of an export is backed by the model: a rating-only or ranking-only
  model's ``recommend`` / ``rank`` rank by its own head (not by item popularity), and
  ``evaluate`` reports only the heads the model was trained with.
* A request with wrongly shaped inputs fails at the signature boundary with a message
  naming the signature and its inputs, not deep inside a TensorFlow op.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from _sequences import cyclic_interactions  # tests/ is on sys.path

from tfrec_p5 import cli
from tfrec_p5.data import leave_one_out, load, random_split
from tfrec_p5.export import build_module, export, load_export, load_metadata
from tfrec_p5.export.sequential import sequential_module
from tfrec_p5.models.sequential import SequentialConfig, train_sequential
from tfrec_p5.models.unified import UnifiedConfig, train_unified

# Few items, many interactions per user: most users have seen most of the catalog.
DENSE = {"num_users": 40, "num_items": 30, "num_interactions": 700}
SPEC = "synthetic?num_users=80&num_items=40&num_interactions=1500"
PAD_SCORE = float(np.finfo(np.float32).min)  # the documented padding score


def _unified(train, weights: dict[str, float]):
    return train_unified(train, None, UnifiedConfig(
        weights=weights, epochs=1, batch_size=256, embedding_dim=8,
        validation_fraction=0.0, refit=False, steps_per_execution=4), verbose=0)


def _strict_json(text: str):
    """``json.loads`` that refuses ``NaN`` / ``Infinity`` (not JSON)."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def _decode(values) -> list:
    return np.vectorize(lambda b: b.decode() if isinstance(b, bytes) else str(b),
                        otypes=[object])(np.asarray(values)).tolist()


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """A rating + retrieval export with k larger than the catalog."""
    table = load("synthetic", **DENSE)
    trained = _unified(table, {"rating": 1.0, "retrieval": 1.0})
    path = export(build_module(trained, k=1000), tmp_path_factory.mktemp("dense") / "m")
    seen = {u: set(table.item_id[table.user_id == u].tolist())
            for u in np.unique(table.user_id).tolist()}
    return {"path": str(path), "seen": seen, "items": set(table.item_id.tolist())}


# ---------------------------------------------------------------------- seen items
def test_recommend_pads_instead_of_returning_seen_items(dense):
    loaded, _, _ = load_export(dense["path"])
    users = sorted(dense["seen"])
    out = loaded.signatures["recommend"](user_id=tf.constant(users))
    ids, scores = _decode(out["item_ids"]), out["scores"].numpy()
    assert len(ids[0]) == len(dense["items"])                  # k capped at the catalog
    for user, row, row_scores in zip(users, ids, scores, strict=True):
        seen, unseen = dense["seen"][user], dense["items"] - dense["seen"][user]
        real = [i for i in row if i != ""]
        assert not set(real) & seen, f"{user} got seen items"
        assert set(real) == unseen                              # every unseen item, once
        assert row[len(real):] == [""] * (len(row) - len(real))  # padding at the tail
        assert np.all(np.isfinite(row_scores))
        assert np.all(row_scores[len(real):] == PAD_SCORE)
        assert list(row_scores) == sorted(row_scores, reverse=True)


def test_cli_recommend_drops_padding_and_prints_strict_json(dense, capsys):
    user = max(dense["seen"], key=lambda u: len(dense["seen"][u]))
    assert cli.main(["recommend", "--model", dense["path"], "--user", user, "-k", "1000",
                     "--json"]) == 0
    recs = _strict_json(capsys.readouterr().out.strip().splitlines()[-1])[user]
    got = [r["item_id"] for r in recs]
    assert set(got) == dense["items"] - dense["seen"][user] and len(got) == len(set(got))
    assert "" not in got
    assert cli.main(["recommend", "--model", dense["path"], "--user", user, "-k", "1000"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 + len(got) and "inf" not in "".join(lines)


# ---------------------------------------------------------------------- backed by the model
@pytest.fixture(scope="module")
def rating_only(tmp_path_factory):
    split = random_split(load("synthetic", **DENSE), 0.8, seed=3)
    trained = _unified(split.train, {"rating": 1.0})
    return export(build_module(trained, k=10), tmp_path_factory.mktemp("rating") / "m"), \
        split.train


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """``tfrec-p5 pretrain`` then ``finetune --task rating``: the issue's flow."""
    base = tmp_path_factory.mktemp("ft")
    bb, out = str(base / "bb"), str(base / "ft")
    config = base / "finetune.json"
    config.write_text(json.dumps({"validation_fraction": 0.0, "steps_per_execution": 4}))
    assert cli.main(["pretrain", "--data", SPEC, "--tasks", "retrieval,rating", "--epochs",
                     "1", "--batch-size", "512", "--quiet", "--out", bb]) == 0
    assert cli.main(["finetune", "--backbone", bb, "--task", "rating", "--data", SPEC,
                     "--epochs", "1", "--batch-size", "512", "--config", str(config),
                     "--quiet", "--out", out]) == 0
    split = random_split(load(SPEC), 0.8, seed=42)
    return os.path.join(out, "1"), split.train


@pytest.mark.parametrize("which", ["rating_only", "finetuned"])
def test_rating_model_recommends_and_ranks_by_predicted_rating(which, request):
    path, train = request.getfixturevalue(which)
    loaded, _, meta = load_export(path)
    sig = loaded.signatures
    user = str(train.user_id[0])
    seen = set(train.item_id[train.user_id == user].tolist())
    rec = sig["recommend"](user_id=tf.constant([user]))
    items = [i for i in _decode(rec["item_ids"])[0] if i]
    scores = rec["scores"].numpy()[0][:len(items)]
    assert items and not set(items) & seen
    # recommend's scores are the user's predicted ratings, best first ...
    rated = sig["predict_rating"](user_id=tf.constant([user] * len(items)),
                                  item_id=tf.constant(items))["rating"].numpy()
    np.testing.assert_allclose(scores, rated, atol=1e-4)
    # ... and no unseen item is predicted higher than the ones recommended.
    unseen = sorted(set(train.item_id.tolist()) - seen)
    every = sig["predict_rating"](user_id=tf.constant([user] * len(unseen)),
                                  item_id=tf.constant(unseen))["rating"].numpy()
    assert every.max() <= scores[0] + 1e-4
    assert np.sort(every)[::-1][len(items) - 1] <= scores[-1] + 1e-4
    # rank orders any list by predicted rating too.
    some = unseen[:8]
    ranked = sig["rank"](user_id=tf.constant([user]), item_ids=tf.constant([some]))
    order = _decode(ranked["item_ids"])[0]
    by_rating = sig["predict_rating"](user_id=tf.constant([user] * len(order)),
                                      item_id=tf.constant(order))["rating"].numpy()
    assert list(by_rating) == sorted(by_rating, reverse=True)
    np.testing.assert_allclose(ranked["scores"].numpy()[0], by_rating, atol=1e-4)
    # The export's tasks are the heads behind its signatures: rating only.
    assert meta["tasks"] == ["rating"]


def test_ranking_only_model_recommends_with_its_ranking_head(tmp_path):
    split = random_split(load("synthetic", **DENSE), 0.8, seed=5)
    trained = _unified(split.train, {"ranking": 1.0})
    loaded, _, meta = load_export(export(build_module(trained, k=10), tmp_path / "m"))
    user = str(split.train.user_id[0])
    rec = loaded.signatures["recommend"](user_id=tf.constant([user]))
    items = [i for i in _decode(rec["item_ids"])[0] if i]
    ranked = loaded.signatures["rank"](user_id=tf.constant([user]),
                                       item_ids=tf.constant([items]))
    # rank is the ranking head; recommend must agree with it (same items, same scores).
    assert _decode(ranked["item_ids"])[0] == items
    np.testing.assert_allclose(rec["scores"].numpy()[0][:len(items)],
                               ranked["scores"].numpy()[0], atol=1e-5)
    assert meta["tasks"] == ["ranking"]


def test_evaluate_reports_only_the_heads_the_model_has(finetuned, dense, capsys):
    path, _ = finetuned
    assert cli.main(["evaluate", "--model", path, "--data", SPEC, "--split", "random:0.8",
                     "--seed", "42", "--json"]) == 0
    metrics = _strict_json(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"test_rmse", "test_mae"} <= set(metrics)
    assert not [k for k in metrics if "ndcg" in k or "recall" in k], metrics
    # A rating + retrieval model: recommend is retrieval, rank its dot product; no
    # separate "ranking" evaluation whose NDCG would overwrite recommend's.
    assert load_metadata(dense["path"])["tasks"] == ["retrieval", "rating"]


# ---------------------------------------------------------------------- input shapes
@pytest.fixture(scope="module")
def sequential_export(tmp_path_factory):
    split = leave_one_out(cyclic_interactions(num_users=30, num_items=20, length=6))
    seq = train_sequential(split.train, None, SequentialConfig(
        epochs=1, embedding_dim=8, max_len=4, num_blocks=1, batch_size=32,
        steps_per_execution=1, refit=False), seed=1)
    return str(export(sequential_module(seq.vocabs, seq.head, top_k=5),
                      tmp_path_factory.mktemp("seq") / "m"))


def _s(values) -> tf.Tensor:
    return tf.constant(values, tf.string)


BAD_REQUESTS = [
    ("predict_rating", {"user_id": _s(["u1", "u2"]), "item_id": _s(["i1", "i2", "i3"])},
     "predict_rating: user_id and item_id must be 1-D of the same length, got [2] and [3]"),
    ("predict_rating", {"user_id": _s("u1"), "item_id": _s("i1")},
     "predict_rating: user_id and item_id must be 1-D of the same length, got [] and []"),
    ("predict_rating", {"user_id": _s([["u1"]]), "item_id": _s([["i1"]])},
     "got [1, 1] and [1, 1]"),
    ("serving_default", {"user_id": _s([["u1", "u2"]])},
     "recommend: user_id must be 1-D, got [1, 2]"),
    ("recommend", {"user_id": _s("u1")}, "recommend: user_id must be 1-D, got []"),
    ("rank", {"user_id": _s(["u1", "u2"]), "item_ids": _s([["i1", "i2"]])},
     "rank: user_id must be 1-D, item_ids 2-D, with the same first (batch) dimension, "
     "got [2] and [1, 2]"),
    ("rank", {"user_id": _s(["u1"]), "item_ids": _s(["i1", "i2"])}, "got [1] and [2]"),
]
BAD_SEQUENTIAL = [
    ("next_items", {"history": _s(["i1", "i2"])}, "next_items: history must be 2-D, got [2]"),
    ("score_items", {"history": _s([["i1"], ["i2"]]), "item_id": _s([["i3", "i4"]])},
     "score_items: history and item_id must be 2-D with the same first (batch) dimension, "
     "got [2, 1] and [1, 2]"),
]


@pytest.mark.parametrize("name, inputs, message", BAD_REQUESTS,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BAD_REQUESTS)])
def test_wrong_shapes_fail_at_the_signature_boundary(dense, name, inputs, message):
    loaded, _, _ = load_export(dense["path"])
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        loaded.signatures[name](**inputs)
    assert message in str(err.value)


@pytest.mark.parametrize("name, inputs, message", BAD_SEQUENTIAL,
                         ids=[n for n, _, _ in BAD_SEQUENTIAL])
def test_wrong_shapes_fail_at_sequential_signatures(sequential_export, name, inputs, message):
    loaded, _, _ = load_export(sequential_export)
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        loaded.signatures[name](**inputs)
    assert message in str(err.value)


def test_right_shapes_still_work_including_empty_batches(dense):
    loaded, _, _ = load_export(dense["path"])
    sig = loaded.signatures
    assert sig["predict_rating"](user_id=_s([]), item_id=_s([]))["rating"].shape == [0]
    assert sig["recommend"](user_id=_s([]))["item_ids"].shape[0] == 0
    out = sig["rank"](user_id=_s(["u1", "u2"]), item_ids=tf.zeros([2, 0], tf.string))
    assert out["item_ids"].shape == [2, 0]


def test_a_finetuned_export_keeps_the_item_titles(finetuned):
    """``recommend`` shows titles for a fine-tuned model as for a trained one."""
    path, train = finetuned
    loaded, _, _ = load_export(path)
    titles = _decode(loaded.retrieval_index.item_titles.numpy())
    assert len(titles) and all(titles)
    assert set(titles) <= set(train.columns["item_title"].astype(str).tolist())
