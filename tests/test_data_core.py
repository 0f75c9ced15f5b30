"""Vocabularies, splits, tf.data pipelines and the synthetic source."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfrec_p5.data import (
    OOV_INDEX,
    DataError,
    Interactions,
    Vocabularies,
    Vocabulary,
    first_events,
    history_dataset,
    hold_out_last,
    leave_one_out,
    load,
    next_item_validation,
    parse_split,
    pointwise_dataset,
    random_split,
    retrieval_dataset,
    synthetic,
    temporal_split,
    user_histories,
)


@pytest.fixture(scope="module")
def table() -> Interactions:
    return synthetic(num_users=300, num_items=200, num_interactions=6000, seed=3)


def _pairs(t: Interactions) -> set[tuple[str, str]]:
    return set(zip(t.user_id.tolist(), t.item_id.tolist(), strict=True))


# ----------------------------------------------------------------------------- synthetic
def test_synthetic_is_seed_deterministic(table):
    again = synthetic(num_users=300, num_items=200, num_interactions=6000, seed=3)
    for name, col in table.columns.items():
        np.testing.assert_array_equal(again.columns[name], col, err_msg=name)
    other = synthetic(num_users=300, num_items=200, num_interactions=6000, seed=4)
    assert not np.array_equal(other.item_id[:100], table.item_id[:100])


def test_synthetic_properties(table):
    assert 0.7 * 6000 <= len(table) <= 6000
    assert len(_pairs(table)) == len(table)  # no repeated (user, item) pair
    assert set(np.unique(table.rating)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert table.rating_range == (1.0, 5.0)
    # timestamps increase within each user's session (rows are grouped by user)
    same_user = table.user_id[1:] == table.user_id[:-1]
    assert (np.diff(table.timestamp)[same_user] > 0).all()
    # popularity is skewed (power law), not uniform
    counts = np.sort(np.unique(table.item_id, return_counts=True)[1])[::-1]
    assert counts[:20].sum() > 3 * counts[-20:].sum()
    g = table.columns["item_genres"]
    assert g.ndim == 2 and (g[:, 0] >= 0).all() and table.feature_kinds["item_genres"] == \
        "multi_categorical"


# ----------------------------------------------------------------------------- vocabulary
def test_vocabulary_from_train_only_with_oov(table, tmp_path):
    split = random_split(table, 0.8, seed=1)
    vocabs = Vocabularies.build(split.train)
    assert set(vocabs.item.tokens) == set(split.train.item_id)
    unseen = sorted(set(split.test.item_id) - set(split.train.item_id))
    ids = vocabs.item.lookup(np.array([*unseen, "never-seen", ""]))
    assert (ids == OOV_INDEX).all()
    known = vocabs.item.lookup(split.train.item_id)
    assert (known > 0).all() and known.max() == len(vocabs.item) - 1
    np.testing.assert_array_equal(vocabs.item.token(known), split.train.item_id)
    # the in-graph StringLookup maps exactly the same, unknowns included
    probe = np.array([*split.train.item_id[:50], "never-seen"])
    layer = vocabs.item.string_lookup()
    np.testing.assert_array_equal(layer(tf.constant(probe)).numpy(), vocabs.item.lookup(probe))
    # most frequent first
    counts = {t: c for t, c in zip(*np.unique(split.train.item_id, return_counts=True),
                                   strict=True)}
    freq = [counts[t] for t in vocabs.item.tokens]
    assert freq == sorted(freq, reverse=True)

    vocabs.save(tmp_path / "v")
    loaded = Vocabularies.load(tmp_path / "v")
    assert loaded.user == vocabs.user and loaded.item == vocabs.item
    np.testing.assert_array_equal(loaded.item.lookup(probe), vocabs.item.lookup(probe))
    (tmp_path / "v" / "item_vocab.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read vocabulary"):
        Vocabularies.load(tmp_path / "v")


def test_vocabulary_min_count_and_empty():
    v = Vocabulary.build(np.array(["a", "a", "b", "c", "c", "c"]), min_count=2)
    assert list(v.tokens) == ["c", "a"] and list(v.lookup(np.array(["a", "b", "c"]))) == \
        [2, 0, 1]
    assert (Vocabulary([]).lookup(np.array(["x"])) == 0).all()


def test_oov_ids_flow_through_pipeline_without_crash(table):
    split = random_split(table, 0.8, seed=1)
    vocabs = Vocabularies.build(split.train)
    odd = Interactions.from_columns({"user_id": ["nobody"], "item_id": ["nothing"],
                                     "rating": [3.0]})
    (feats, label), = pointwise_dataset(odd, vocabs, batch_size=4).as_numpy_iterator()
    assert feats["user_id"].tolist() == [0] and feats["item_id"].tolist() == [0]


# ----------------------------------------------------------------------------- splits
def _assert_disjoint(split):
    parts = [p for p in (split.train, split.validation, split.test) if p is not None]
    seen: set = set()
    for p in parts:
        pairs = _pairs(p)
        assert not (pairs & seen)
        seen |= pairs


@pytest.fixture(scope="module")
def repeated() -> Interactions:
    """A table with repeated (user, item) events, to test that pairs never straddle."""
    rng = np.random.default_rng(0)
    n = 3000
    return Interactions.from_columns({
        "user_id": rng.integers(0, 40, n).astype(str),
        "item_id": rng.integers(0, 30, n).astype(str),
        "rating": rng.integers(1, 6, n), "timestamp": rng.integers(0, 10_000, n)})


def test_random_split_deterministic_and_disjoint(repeated):
    a = random_split(repeated, 0.8, seed=7)
    b = random_split(repeated, 0.8, seed=7)
    c = random_split(repeated, 0.8, seed=8)
    np.testing.assert_array_equal(a.test.user_id, b.test.user_id)
    np.testing.assert_array_equal(a.test.item_id, b.test.item_id)
    assert _pairs(a.test) != _pairs(c.test)
    assert len(a.train) + len(a.test) == len(repeated)
    _assert_disjoint(a)
    n_pairs = len(_pairs(repeated))
    assert abs(len(_pairs(a.train)) - 0.8 * n_pairs) <= 1
    v = random_split(repeated, 0.8, seed=7, validation_fraction=0.1)
    _assert_disjoint(v)
    assert len(v.train) + len(v.validation) + len(v.test) == len(repeated)


def test_temporal_split_is_a_global_time_cut(repeated):
    s = temporal_split(repeated, 0.8)
    _assert_disjoint(s)
    assert len(s.train) + len(s.test) == len(repeated)
    # every test pair's first event is later than every train pair's first event
    first = {}
    for u, i, t in zip(repeated.user_id, repeated.item_id, repeated.timestamp, strict=True):
        first[(u, i)] = min(first.get((u, i), t), t)
    assert max(first[p] for p in _pairs(s.train)) < min(first[p] for p in _pairs(s.test))
    assert 0.6 < len(s.train) / len(repeated) < 0.95
    np.testing.assert_array_equal(temporal_split(repeated, 0.8).test.user_id, s.test.user_id)
    with pytest.raises(DataError, match="timestamp"):
        temporal_split(Interactions.from_columns({"user_id": ["a"], "item_id": ["b"]}))


def test_leave_one_out_last_and_second_last(repeated):
    s = leave_one_out(repeated)
    _assert_disjoint(s)
    np.testing.assert_array_equal(leave_one_out(repeated).test.item_id, s.test.item_id)
    # Recompute by hand: per user, distinct items by first time; last -> test, 2nd -> val.
    for user in np.unique(repeated.user_id)[:10]:
        m = repeated.user_id == user
        rows = sorted(zip(repeated.timestamp[m], np.flatnonzero(m), repeated.item_id[m],
                          strict=True))
        order, seen = [], set()
        for _, _, item in rows:
            if item not in seen:
                seen.add(item)
                order.append(item)
        assert s.test.item_id[s.test.user_id == user].tolist() == [order[-1]]
        assert s.validation.item_id[s.validation.user_id == user].tolist() == [order[-2]]
        assert sorted(s.train.item_id[s.train.user_id == user]) == sorted(order[:-2])


def test_next_item_validation_follows_the_split(repeated):
    # temporal: the split's own time cut again, inside the training part; fit +
    # validation is every training row (what the refit trains on)
    train = temporal_split(repeated, 0.8).train
    fit, val = next_item_validation(train, "temporal:0.8")
    again = temporal_split(train, 0.8)
    assert _pairs(fit) == _pairs(again.train) and _pairs(val) == _pairs(again.test)
    assert len(fit) + len(val) == len(train)
    # any other split: each user's last event
    for spec in ("leave-one-out", "random:0.8", "none"):
        fit, val = next_item_validation(train, spec)
        last_fit, last_val = hold_out_last(train)
        assert _pairs(val) == _pairs(last_val) and len(fit) == len(last_fit)


def test_first_events_is_each_users_next_item_in_time():
    t = Interactions.from_columns({"user_id": ["b", "a", "a", "b", "a"],
                                   "item_id": ["x", "late", "tie1", "y", "tie2"],
                                   "timestamp": [5, 9, 3, 1, 3]})
    got = first_events(t)
    assert got.user_id.tolist() == ["a", "b"]
    assert got.item_id.tolist() == ["tie1", "y"]   # ties: file order


def test_parse_split_specs(repeated):
    assert parse_split("none", repeated) is None
    assert parse_split("random:0.7", repeated, seed=3).method == "random:0.7"
    assert parse_split("temporal:0.5", repeated).method == "temporal:0.5"
    assert parse_split("leave-one-out", repeated).validation is not None
    with pytest.raises(DataError, match="unknown split"):
        parse_split("bogus", repeated)
    with pytest.raises(DataError, match=r"\(0, 1\)"):
        parse_split("random:1.5", repeated)


# ----------------------------------------------------------------------------- pipelines
@pytest.fixture(scope="module")
def small():
    t = synthetic(num_users=60, num_items=50, num_interactions=1000, seed=1)
    return t, Vocabularies.build(t)


def _epoch(ds) -> tuple[np.ndarray, np.ndarray]:
    users, items, labels = [], [], []
    for feats, label in ds.as_numpy_iterator():
        users.append(feats["user_id"])
        items.append(feats["item_id"])
        labels.append(label)
    return np.concatenate(users) * 1000 + np.concatenate(items), np.concatenate(labels)


def test_pointwise_shapes_and_each_example_once(small):
    t, vocabs = small
    ds = pointwise_dataset(t, vocabs, batch_size=128, shuffle=True, seed=5)
    feats, label = ds.element_spec
    assert feats["user_id"].dtype == tf.int64 and label.dtype == tf.float32
    sizes = [int(b[1].shape[0]) for b in ds]
    assert sizes == [128] * (len(t) // 128) + ([len(t) % 128] if len(t) % 128 else [])
    key, rating = _epoch(ds)
    ids = vocabs.encode(t)
    expected = ids["user_id"] * 1000 + ids["item_id"]
    assert len(np.unique(expected)) == len(t)  # pairs are unique in synthetic data
    np.testing.assert_array_equal(np.sort(key), np.sort(expected))  # exactly once per epoch
    by_key = dict(zip(expected.tolist(), t.rating.tolist(), strict=True))
    assert [by_key[k] for k in key.tolist()] == rating.tolist()  # labels stay aligned


def test_reshuffle_differs_per_epoch_but_repeats_for_a_seed(small):
    t, vocabs = small
    ds = pointwise_dataset(t, vocabs, batch_size=256, shuffle=True, seed=11)
    e1, e2 = _epoch(ds)[0], _epoch(ds)[0]
    assert not np.array_equal(e1, e2)
    np.testing.assert_array_equal(np.sort(e1), np.sort(e2))
    same = pointwise_dataset(t, vocabs, batch_size=256, shuffle=True, seed=11)
    np.testing.assert_array_equal(_epoch(same)[0], e1)
    np.testing.assert_array_equal(_epoch(same)[0], e2)
    other = pointwise_dataset(t, vocabs, batch_size=256, shuffle=True, seed=12)
    assert not np.array_equal(_epoch(other)[0], e1)
    unshuffled = pointwise_dataset(t, vocabs, batch_size=256)
    ids = vocabs.encode(t)
    np.testing.assert_array_equal(_epoch(unshuffled)[0], ids["user_id"] * 1000 + ids["item_id"])
    # repeated epochs inside one pipeline (what model.fit(epochs=2) does with .repeat())
    two = _epoch(pointwise_dataset(t, vocabs, batch_size=256, shuffle=True, seed=11).repeat(2))
    np.testing.assert_array_equal(two[0], np.concatenate([e1, e2]))


def test_retrieval_dataset(small):
    t, vocabs = small
    ds = retrieval_dataset(t, vocabs, batch_size=100, with_rating=True)
    batch = next(iter(ds))
    assert set(batch) == {"user_id", "item_id", "rating"}
    assert batch["user_id"].shape == (100,) and batch["rating"].dtype == tf.float32
    assert sum(int(b["item_id"].shape[0]) for b in ds) == len(t)
    no_rating = t.take(np.arange(len(t)))
    no_rating = Interactions.from_columns({"user_id": no_rating.user_id,
                                           "item_id": no_rating.item_id})
    with pytest.raises(DataError, match="rating"):
        pointwise_dataset(no_rating, vocabs)


def test_history_dataset_pads_and_truncates():
    t = Interactions.from_columns({
        "user_id": ["a", "a", "a", "a", "b", "c", "c"],
        "item_id": ["1", "2", "3", "4", "2", "3", "1"],
        "timestamp": [4, 1, 3, 2, 1, 5, 9]})
    vocabs = Vocabularies.build(t)
    users, hist = user_histories(t, vocabs, max_len=3)
    item = vocabs.item.lookup
    by_user = dict(zip(vocabs.user.token(users).tolist(), hist.tolist(), strict=True))
    assert by_user["a"] == item(np.array(["4", "3", "1"])).tolist()  # last 3 by time
    assert by_user["b"] == [0, 0, *item(np.array(["2"]))]            # left-padded with 0
    assert by_user["c"] == [0, *item(np.array(["3", "1"]))]
    ds = history_dataset(t, vocabs, max_len=3, batch_size=2, shuffle=True, seed=0)
    batches = list(ds.as_numpy_iterator())
    assert [b["history"].shape for b in batches] == [(2, 3), (1, 3)]
    assert sorted(np.concatenate([b["user_id"] for b in batches]).tolist()) == \
        sorted(users.tolist())


def test_load_synthetic_spec():
    t = load("synthetic?num_users=20&num_items=10&num_interactions=100&seed=2")
    assert t.num_users <= 20 and len(t) <= 100 and t.source == "synthetic"
