"""Cold start, new users: a user catalog beyond the interactions.

Users a user catalog lists but training never saw get vocabulary rows and side features of
their own, are answered from those features (rating and retrieval, in-process and by the
export), and a config that would answer them all the same is refused; without new users
nothing changes.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import tfrec_p5  # noqa: F401  (conftest.py imported it before TensorFlow)
from tfrec_p5.data import DataError, Interactions, Vocabularies, catalog_users, load
from tfrec_p5.export import build_module
from tfrec_p5.models.unified import UnifiedConfig, UnifiedModel, train_unified
from tfrec_p5.tasks import KNOWN_USER
from tfrec_p5.towers import SideFeatures, UserTower

SMALL = {"num_users": 200, "num_items": 80, "num_interactions": 4000}
FAST = dict(epochs=2, embedding_dim=16, batch_size=512, steps_per_execution=4)
#: Rating + retrieval, the retrieval query reading the user tower: both serve new users.
BOTH = dict(use_side_features=True, use_user_tower=True,
            weights={"rating": 1.0, "retrieval": 1.0}, **FAST)


def _tiny() -> Interactions:
    return Interactions.from_columns(
        {"user_id": ["u1", "u1", "u2", "u3"], "item_id": ["a", "b", "a", "c"],
         "gender": ["F", "F", "M", "M"], "job": ["cook", "cook", "pilot", "clerk"],
         "age": np.array([20.0, 20.0, 40.0, 60.0], np.float32)},
        user_features=("gender", "job", "age"),
        feature_kinds={"gender": "categorical", "job": "categorical", "age": "numeric"})


def _people() -> Interactions:
    """Users u1..u3 (trained) plus u5 and u4, who have no interactions."""
    return Interactions.from_columns(
        {"user_id": ["u5", "u1", "u4", "u2", "u3"], "item_id": [""] * 5,
         "gender": ["F", "F", "M", "M", "M"], "job": ["astronaut", "cook", "pilot", "pilot",
                                                       "clerk"],
         "age": np.array([np.nan, 20.0, 30.0, 40.0, 60.0], np.float32)},
        user_features=("gender", "job", "age"),
        feature_kinds={"gender": "categorical", "job": "categorical", "age": "numeric"})


def test_catalog_users_get_rows_after_the_trained_ones():
    train = _tiny()
    plain = Vocabularies.build(train)
    vocabs = Vocabularies.build(train, users=_people())
    # Trained users keep their indices (frequency order); new users follow, sorted by ID.
    assert vocabs.user.tokens.tolist() == [*plain.user.tokens.tolist(), "u4", "u5"]
    assert vocabs.item == plain.item
    np.testing.assert_array_equal(catalog_users(train, vocabs), [4, 5])
    assert len(catalog_users(train, plain)) == 0
    # A training user below min_count stays on the OOV row.
    assert Vocabularies.build(train, min_count=2, users=_people()).user.tokens.tolist() \
        == ["u1", "u4", "u5"]
    # Plain ID lists work too; a hashed user side refuses a user catalog.
    assert Vocabularies.build(train, users=np.array(["u9", "u1"])).user.tokens[-1] == "u9"
    with pytest.raises(ValueError, match="hashed"):
        Vocabularies.build(train, hash_buckets={"user_id": 8}, users=_people())


def test_new_users_take_their_features_from_the_user_catalog():
    train = _tiny()
    vocabs = Vocabularies.build(train, users=_people())
    side = SideFeatures.build(train, vocabs, users=_people())
    plain = SideFeatures.build(train, Vocabularies.build(train))
    u4, u5 = vocabs.user.lookup(np.array(["u4", "u5"]))
    gender, job, age = (side.user[n] for n in ("gender", "job", "age"))
    # Encoded with what the training rows fitted: "astronaut" is unknown (0); the age is
    # standardized with the training mean / std, a missing age reads as the mean (0).
    assert job.vocab == plain.user["job"].vocab and gender.vocab == plain.user["gender"].vocab
    assert job.values[u4] == job.vocab.index("pilot") + 1 and job.values[u5] == 0
    assert gender.values[u5] == gender.vocab.index("F") + 1
    mean, std = age.stats
    assert age.values[u4] == pytest.approx((30.0 - mean) / std) and age.values[u5] == 0.0
    for name in ("gender", "job", "age"):   # the trained users' rows are untouched
        np.testing.assert_array_equal(side.user[name].values[:4], plain.user[name].values)
    with pytest.raises(DataError, match="user catalog has no column"):
        SideFeatures.build(train, vocabs, users=Interactions.from_columns(
            {"user_id": ["u4"], "item_id": [""]}))


def test_user_rows_is_the_user_catalog_of_a_table():
    rows = _tiny().user_rows()
    assert rows.user_id.tolist() == ["u1", "u2", "u3"] and set(rows.item_id) == {""}
    assert set(rows.columns) == {"user_id", "item_id", "gender", "job", "age"}
    assert rows.user_features == ("gender", "job", "age") and rows.item_features == ()


def test_known_mask_reads_a_row_as_a_new_user():
    train = _tiny()
    vocabs = Vocabularies.build(train, users=_people())
    side = SideFeatures.build(train, vocabs, users=_people()).with_histories(train, vocabs, 4)
    tower = UserTower.from_vocab(vocabs, side, embedding_dim=4, feature_only_from=4)
    ids = tf.constant([1, 2, 3], tf.int64)
    masked = tower(ids, known=tf.constant([False, True, False])).numpy()
    # A row marked unknown: no ID embedding and no rated_items, exactly as a new user.
    saved = {n: v.numpy().copy() for n, v in tower.tables.items()}
    emb = tower.id_embedding.embeddings
    ids_before = emb.numpy()
    emb.assign(np.zeros_like(ids_before))
    tower.set_tables({**saved, "rated_items": np.zeros_like(saved["rated_items"])})
    bare = tower(ids).numpy()
    emb.assign(ids_before)
    tower.set_tables(saved)
    np.testing.assert_allclose(masked[[0, 2]], bare[[0, 2]], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(masked[1], tower(ids).numpy()[1])
    with pytest.raises(ValueError, match="user_id_dropout"):
        UnifiedModel(tower, tower, {}, user_id_dropout=1.0)


@pytest.fixture(scope="module")
def cold_users():
    """Synthetic data (planted segments); 20 % of the users lose every interaction."""
    table = load("synthetic", **SMALL)
    users = np.unique(table.user_id)
    new = np.sort(np.random.default_rng(0).permutation(users)[:40])
    train = table.take(np.flatnonzero(~np.isin(table.user_id, new)))
    return table, train, new


@pytest.fixture(scope="module")
def users_trained(cold_users):
    table, train, _ = cold_users
    config = UnifiedConfig(**BOTH, user_id_dropout=0.25)
    return train_unified(train, None, config, seed=3, verbose=0, users=table.user_rows())


def _descriptions(trained, rows: np.ndarray) -> np.ndarray:
    tables = trained.side_features.user
    return np.stack([tables[n].values[rows] for n in sorted(tables)
                     if n != "rated_items"], axis=1)


def test_new_users_get_feature_driven_answers(cold_users, users_trained):
    table, train, new = cold_users
    trained = users_trained
    rows = trained.vocabs.user.lookup(new)
    assert (rows > 0).all() and len(np.unique(rows)) == len(new)
    np.testing.assert_array_equal(np.sort(rows), catalog_users(train, trained.vocabs))
    assert trained.model.user_tower.feature_only_from == rows.min()
    # Same features -> same answers, different features -> different answers.
    described = _descriptions(trained, rows)
    kinds, group = np.unique(described, axis=0, return_inverse=True)
    assert 1 < len(kinds) < len(new)           # some share their features, not all
    item = str(train.item_id[0])
    pairs = Interactions.from_columns({"user_id": new, "item_id": [item] * len(new)})
    ratings = trained.predict_ratings(pairs)
    vectors = trained.user_vectors()[rows]
    for g in range(len(kinds)):
        same = group.reshape(-1) == g
        assert np.ptp(ratings[same]) < 1e-5 and np.ptp(vectors[same], axis=0).max() < 1e-5
    assert len(np.unique(ratings.round(5))) == len(kinds)
    assert len(np.unique(vectors.round(5), axis=0)) == len(kinds)
    # Swapping two new users' feature rows swaps their vectors (no ID part is read).
    tower = trained.model.user_tower
    a, b = rows[np.argmax(group == 0)], rows[np.argmax(group == 1)]
    pair = tf.constant([a, b], tf.int64)
    before = tower(pair).numpy()
    saved = {n: v.numpy().copy() for n, v in tower.tables.items()}
    swapped = {n: v.copy() for n, v in saved.items()}
    for n, v in swapped.items():
        v[[a, b]] = saved[n][[b, a]]
    tower.set_tables(swapped)
    after = tower(pair).numpy()
    tower.set_tables(saved)
    np.testing.assert_allclose(after, before[::-1], rtol=1e-5, atol=1e-6)


def test_the_export_serves_new_users(cold_users, users_trained):
    table, train, new = cold_users
    trained = users_trained
    module = build_module(trained, k=10)
    rows = trained.vocabs.user.lookup(new)
    group = np.unique(_descriptions(trained, rows), axis=0, return_inverse=True)[1].reshape(-1)
    a, b = new[np.argmax(group == 0)], new[np.argmax(group == 1)]
    item = str(train.item_id[0])
    served = module.signature("predict_rating")(
        user_id=tf.constant([a, b]), item_id=tf.constant([item, item]))["rating"].numpy()
    want = trained.predict_ratings(Interactions.from_columns(
        {"user_id": [a, b], "item_id": [item, item]}))
    np.testing.assert_allclose(served, want, rtol=1e-5, atol=1e-5)
    # recommend: the model's own top 10 for each (not the unknown-user popularity list).
    rec = module.signature("recommend")(user_id=tf.constant([a, b, "nobody"]))
    lists = rec["item_ids"].numpy().astype(str)
    scores = trained.retrieval_scores(trained.vocabs.user.lookup(np.array([a, b])))
    top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    for i in range(2):
        assert set(lists[i]) == set(trained.vocabs.item.token(top[i]))
    assert not np.array_equal(lists[0], lists[1])
    assert not np.array_equal(lists[0], lists[2])


def test_a_user_catalog_without_new_users_changes_nothing(cold_users):
    _, train, _ = cold_users
    config = UnifiedConfig(**BOTH)
    plain = train_unified(train, None, config, seed=3, verbose=0)
    same = train_unified(train, None, config, seed=3, verbose=0, users=train.user_rows())
    assert plain.vocabs.user == same.vocabs.user
    assert same.model.user_tower.feature_only_from is None
    np.testing.assert_array_equal(plain.user_vectors(), same.user_vectors())
    np.testing.assert_array_equal(plain.item_vectors(), same.item_vectors())
    np.testing.assert_array_equal(plain.predict_ratings(train), same.predict_ratings(train))


def test_new_users_need_a_model_that_reads_their_features(cold_users):
    table, train, _ = cold_users
    people = table.user_rows()
    with pytest.raises(ValueError, match="use_user_tower=True"):   # history-only query
        train_unified(train, None, UnifiedConfig(use_side_features=True, **FAST),
                      verbose=0, users=people)
    with pytest.raises(ValueError, match="use_side_features=True"):
        train_unified(train, None, UnifiedConfig(use_user_tower=True, **FAST), verbose=0,
                      users=people)


def test_user_id_dropout_config_checks():
    config = UnifiedConfig(**BOTH, user_id_dropout=0.25)
    assert config.user_id_dropout == 0.25
    assert UnifiedConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="user_id_dropout does nothing"):
        UnifiedConfig(user_id_dropout=0.25)              # no side features
    with pytest.raises(ValueError, match="no active head reads the user tower"):
        UnifiedConfig(use_side_features=True, user_id_dropout=0.25)  # history-only query
    with pytest.raises(ValueError, match="user_features=()"):
        UnifiedConfig(**{**BOTH, "user_features": ()}, user_id_dropout=0.25)
    with pytest.raises(ValueError, match="user_id_dropout must be below 1"):
        UnifiedConfig(**BOTH, user_id_dropout=1.0)
    with pytest.raises(ValueError, match="user_id_dropout"):
        UnifiedConfig(**BOTH, user_id_dropout=-0.1)
    assert KNOWN_USER == "user_known"


def test_cold_user_tower_answers_new_users_and_leaves_known_ones_to_their_history(
        cold_users):
    table, train, new = cold_users
    config = UnifiedConfig(use_side_features=True, cold_user_tower=True,
                           user_id_dropout=0.25, **FAST)
    trained = train_unified(train, None, config, seed=3, verbose=0, users=table.user_rows())
    head, tower = trained.model.heads["retrieval"], trained.model.user_tower
    rows = trained.vocabs.user.lookup(new)
    assert head.new_users_from == rows.min() == tower.feature_only_from
    vectors = trained.user_vectors()
    known = tf.range(1, rows.min(), dtype=tf.int64)
    np.testing.assert_allclose(vectors[1:rows.min()], head.history(known).numpy(),
                               rtol=1e-6, atol=1e-6)          # known users: history only
    np.testing.assert_allclose(vectors[rows], tower(tf.constant(rows)).numpy(),
                               rtol=1e-6, atol=1e-6)          # new users: their features
    kinds = len(np.unique(_descriptions(trained, rows), axis=0))
    assert len(np.unique(vectors[rows].round(5), axis=0)) == kinds > 1
    with pytest.raises(ValueError, match="set one"):
        UnifiedConfig(use_side_features=True, cold_user_tower=True, use_user_tower=True,
                      user_id_dropout=0.25)
    with pytest.raises(ValueError, match="cold_user_tower needs user_id_dropout"):
        UnifiedConfig(use_side_features=True, cold_user_tower=True)
    with pytest.raises(ValueError, match="cold_user_tower does nothing"):
        UnifiedConfig(use_side_features=True, cold_user_tower=True, history=False,
                      user_id_dropout=0.25)
