"""Cold start, new items (issue #19): a catalog beyond the interactions.

Items a catalog lists but training never saw get vocabulary rows and side features of
their own, are represented from those features, and can be ranked and recommended by the
export; without new items nothing changes.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import tfrec_p5  # noqa: F401  (conftest.py imported it before TensorFlow)
from tfrec_p5.data import DataError, Interactions, Vocabularies, catalog_items, load
from tfrec_p5.export import build_module
from tfrec_p5.models.unified import UnifiedConfig, train_unified
from tfrec_p5.towers import ItemTower, SideFeatures, load_tower, save_tower

SMALL = {"num_users": 200, "num_items": 80, "num_interactions": 4000}
FAST = dict(epochs=2, embedding_dim=16, batch_size=512, steps_per_execution=4)


def _tiny() -> Interactions:
    return Interactions.from_columns(
        {"user_id": ["u1", "u1", "u2", "u3"], "item_id": ["a", "b", "a", "c"],
         "genres": np.array([[0, 1], [2, -1], [0, 1], [1, -1]]),
         "title": ["Red Fox", "Blue Sky", "Red Fox", "Green Fox"],
         "year": np.array([1990.0, 2000.0, 1990.0, 2010.0], np.float32)},
        item_features=("genres", "title", "year"),
        feature_kinds={"genres": "multi_categorical", "title": "text", "year": "numeric"})


def _catalog() -> Interactions:
    """Items a, b, c (trained) plus d and e, which nobody has interacted with."""
    return Interactions.from_columns(
        {"user_id": [""] * 5, "item_id": ["e", "d", "a", "b", "c"],
         "genres": np.array([[2, 7], [1, -1], [0, 1], [2, -1], [1, -1]]),
         "title": ["Blue Unseen", "Red Sky", "Red Fox", "Blue Sky", "Green Fox"],
         "year": np.array([np.nan, 2000.0, 1990.0, 2000.0, 2010.0], np.float32)},
        item_features=("genres", "title", "year"),
        feature_kinds={"genres": "multi_categorical", "title": "text", "year": "numeric"})


def test_catalog_items_get_rows_after_the_trained_ones():
    train = _tiny()
    plain = Vocabularies.build(train)
    vocabs = Vocabularies.build(train, catalog=_catalog())
    # Trained items keep their indices (frequency order); new items follow, sorted by ID.
    assert vocabs.item.tokens.tolist() == [*plain.item.tokens.tolist(), "d", "e"]
    assert vocabs.user == plain.user
    np.testing.assert_array_equal(catalog_items(train, vocabs), [4, 5])
    assert len(catalog_items(train, plain)) == 0
    # A training item below min_count stays on the OOV row; the catalog does not revive it.
    cut = Vocabularies.build(train, min_count=2, catalog=_catalog())
    assert cut.item.tokens.tolist() == ["a", "d", "e"]
    # Plain ID lists work as catalogs too; hashed items refuse one.
    assert Vocabularies.build(train, catalog=np.array(["d", "a"])).item.tokens[-1] == "d"
    with pytest.raises(ValueError, match="hashed"):
        Vocabularies.build(train, hash_buckets={"item_id": 8}, catalog=_catalog())


def test_new_items_take_their_features_from_the_catalog():
    train = _tiny()
    vocabs = Vocabularies.build(train, catalog=_catalog())
    side = SideFeatures.build(train, vocabs, catalog=_catalog())
    plain = SideFeatures.build(train, Vocabularies.build(train))
    d, e = vocabs.item.lookup(np.array(["d", "e"]))
    genres, title, year = (side.item[n] for n in ("genres", "title", "year"))
    # Values are encoded with what the training rows fitted: genre 7 and the word
    # "unseen" are unknown (0); the year is standardized with the training mean / std.
    assert genres.vocab == plain.item["genres"].vocab
    assert genres.values[d].tolist() == [genres.vocab.index("1") + 1, 0]
    assert genres.values[e].tolist() == [genres.vocab.index("2") + 1, 0]
    assert title.vocab == plain.item["title"].vocab
    assert title.values[e].tolist()[:2] == [title.vocab.index("blue") + 1, 0]
    mean, std = year.stats
    assert year.values[d] == pytest.approx((2000.0 - mean) / std) and year.values[e] == 0.0
    # The trained items' rows are untouched.
    n = len(vocabs.item) - 2
    for name in ("genres", "title", "year"):
        np.testing.assert_array_equal(side.item[name].values[:n], plain.item[name].values)
    with pytest.raises(DataError, match="no column"):
        SideFeatures.build(train, vocabs, catalog=Interactions.from_columns(
            {"user_id": [""], "item_id": ["d"]}))


def test_item_rows_is_the_catalog_of_a_table():
    rows = _tiny().item_rows()
    assert rows.item_id.tolist() == ["a", "b", "c"] and set(rows.user_id) == {""}
    assert set(rows.columns) == {"user_id", "item_id", "genres", "title", "year"}
    assert rows.item_features == ("genres", "title", "year") and rows.user_features == ()


@pytest.fixture(scope="module")
def cold_split():
    """Synthetic data (planted genres); 20 % of the items lose every interaction."""
    table = load("synthetic", **SMALL)
    items = np.unique(table.item_id)
    new = np.sort(np.random.default_rng(0).permutation(items)[:16])
    is_new = np.isin(table.item_id, new)
    return table, table.take(np.flatnonzero(~is_new)), new


@pytest.fixture(scope="module")
def cold_trained(cold_split):
    table, train, _ = cold_split
    config = UnifiedConfig(use_side_features=True, **FAST)
    return train_unified(train, None, config, seed=3, verbose=0, catalog=table.item_rows())


def test_new_items_are_scored_from_their_features(cold_split, cold_trained):
    table, train, new = cold_split
    trained = cold_trained
    rows = trained.vocabs.item.lookup(new)
    assert (rows > 0).all() and len(np.unique(rows)) == len(new)
    np.testing.assert_array_equal(np.sort(rows), catalog_items(train, trained.vocabs))
    # The losses compare against trained items only.
    head = trained.model.heads["retrieval"]
    assert not np.isin(rows, head.trained_items.numpy()).any()
    scores = trained.user_vectors()[1:] @ trained.item_vectors()[rows].T
    assert np.isfinite(scores).all()
    # Not one OOV score: new items with different features score differently, two with
    # the same features (the same genres, in any order; no known title word) the same.
    tables = trained.side_features.item
    described = np.concatenate([np.sort(tables[n].values[rows].reshape(len(rows), -1), 1)
                                for n in sorted(tables)], axis=1)
    kinds = len(np.unique(described, axis=0))
    assert kinds > len(new) // 2
    assert len(np.unique(scores[0].round(6))) == kinds
    # Feature-driven: a new item's ID embedding is left out, so swapping the feature rows
    # of two new items swaps their vectors exactly (a trained item keeps its ID part).
    tower = trained.model.item_tower
    assert tower.feature_only_from == rows.min()
    pair = np.array([rows[0], rows[1], 1])
    before = tower(tf.constant(pair)).numpy()
    saved = {n: v.numpy().copy() for n, v in tower.tables.items()}
    swapped = {n: v.copy() for n, v in saved.items()}
    for n, v in swapped.items():
        v[[rows[0], rows[1], 1]] = saved[n][[rows[1], rows[0], rows[0]]]
    tower.set_tables(swapped)
    after = tower(tf.constant(pair)).numpy()
    tower.set_tables(saved)
    np.testing.assert_allclose(after[:2], before[1::-1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(after[2], before[0], atol=1e-3)   # the trained ID still counts


def test_new_items_can_be_ranked_and_recommended(cold_split, cold_trained):
    table, train, new = cold_split
    trained = cold_trained
    module = build_module(trained, k=len(trained.vocabs.item))
    user = str(train.user_id[0])
    rec = module.signature("recommend")(user_id=tf.constant([user]))
    served = set(rec["item_ids"].numpy().astype(str)[0])
    assert set(new) <= served                              # new items are in the catalog
    rank = module.signature("rank")(user_id=tf.constant([user]),
                                     item_ids=tf.constant([new.tolist()]))
    scores = rank["scores"].numpy()[0]
    assert np.isfinite(scores).all() and len(np.unique(scores.round(6))) > len(new) // 2
    want = trained.user_vectors()[trained.vocabs.user.lookup(np.array([user]))] \
        @ trained.item_vectors()[trained.vocabs.item.lookup(new)].T
    np.testing.assert_allclose(np.sort(scores), np.sort(want[0]), rtol=1e-5, atol=1e-6)


def test_a_catalog_without_new_items_changes_nothing(cold_split):
    _, train, _ = cold_split
    config = UnifiedConfig(use_side_features=True, **FAST)
    plain = train_unified(train, None, config, seed=3, verbose=0)
    same = train_unified(train, None, config, seed=3, verbose=0, catalog=train.item_rows())
    assert plain.vocabs.item == same.vocabs.item
    assert same.model.heads["retrieval"].trained_items is None
    np.testing.assert_array_equal(plain.item_vectors(), same.item_vectors())
    np.testing.assert_array_equal(plain.user_vectors(), same.user_vectors())


def test_tower_feature_only_ids_and_id_dropout():
    train = _tiny()
    vocabs = Vocabularies.build(train, catalog=_catalog())
    side = SideFeatures.build(train, vocabs, catalog=_catalog())
    tower = ItemTower.from_vocab(vocabs, side, embedding_dim=4, feature_only_from=4,
                                 id_dropout=0.5)
    ids = tf.constant([1, 2, 3, 4, 5] * 40, tf.int64)
    out = tower(ids).numpy()
    # Feature-only IDs (4, 5 = d, e): zeroing their ID rows changes nothing.
    emb = tower.id_embedding.embeddings
    saved = emb.numpy()
    emb.assign(np.where(np.arange(len(saved))[:, None] >= 4, 0.0, saved))
    np.testing.assert_array_equal(tower(ids).numpy(), out)
    emb.assign(saved)
    # ID dropout acts only while training, per example; inference is deterministic.
    np.testing.assert_array_equal(tower(ids, training=False).numpy(), out)
    dropped = tower(ids, training=True).numpy()
    warm = np.asarray(ids) < 4
    changed = ~np.isclose(dropped, out).all(axis=1)
    assert 0 < changed[warm].mean() < 1 and not changed[~warm].any()
    # The settings survive a save / reload.
    assert tower.get_config()["feature_only_from"] == 4
    plain = ItemTower.from_vocab(Vocabularies.build(train), SideFeatures.build(
        train, Vocabularies.build(train)), embedding_dim=4)
    assert "id_dropout" not in plain.get_config()    # unchanged config without them
    with pytest.raises(ValueError, match="id_dropout"):
        ItemTower.from_vocab(vocabs, side, id_dropout=1.0)


def test_tower_settings_round_trip(tmp_path):
    train = _tiny()
    vocabs = Vocabularies.build(train, catalog=_catalog())
    side = SideFeatures.build(train, vocabs, catalog=_catalog())
    tower = ItemTower.from_vocab(vocabs, side, embedding_dim=4, feature_only_from=4,
                                 id_dropout=0.25)
    ids = tf.constant([1, 4, 5], tf.int64)
    save_tower(tower, tmp_path / "t")
    again = load_tower(tmp_path / "t")
    assert (again.feature_only_from, again.id_dropout) == (4, 0.25)
    np.testing.assert_array_equal(again(ids).numpy(), tower(ids).numpy())


def test_text_min_count_keeps_one_title_words_out():
    train = _tiny()
    vocabs = Vocabularies.build(train, catalog=_catalog())
    side = SideFeatures.build(train, vocabs, catalog=_catalog(), min_token_count=2)
    title = side.item["title"]
    assert title.vocab == ("fox",)                       # "fox" is in two titles
    a, b, d = vocabs.item.lookup(np.array(["a", "b", "d"]))
    assert title.values[a].tolist() == [1] and title.values[b].tolist() == [0]
    assert title.values[d].tolist() == [0]               # "red", "sky": one title each


def test_cold_start_options_need_side_features():
    assert UnifiedConfig(use_side_features=True, item_id_dropout=0.25).item_id_dropout == 0.25
    with pytest.raises(ValueError, match="item_id_dropout does nothing"):
        UnifiedConfig(item_id_dropout=0.25)
    with pytest.raises(ValueError, match="item_id_dropout must be below 1"):
        UnifiedConfig(use_side_features=True, item_id_dropout=1.0)
    with pytest.raises(ValueError, match="text_min_count"):
        UnifiedConfig(use_side_features=True, text_min_count=0)
