"""Towers: output shape, optional features, OOV, save / rebuild, side-feature tables."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfrec_p5 import data
from tfrec_p5.towers import ItemTower, SideFeatures, UserTower, load_tower, save_tower


@pytest.fixture(scope="module")
def small():
    table = data.load("synthetic", num_users=120, num_items=80, num_interactions=3000)
    vocabs = data.Vocabularies.build(table)
    return table, vocabs, SideFeatures.build(table, vocabs)


def _ids(n: int) -> tf.Tensor:
    return tf.constant([0, 1, 2, n - 1], tf.int64)


def test_side_feature_tables(small):
    table, vocabs, side = small
    assert set(side.user) == {"user_segment", "bucketized_user_age"}
    assert set(side.item) == {"item_genres", "item_title"}
    for feats, vocab in ((side.user, vocabs.user), (side.item, vocabs.item)):
        for f in feats.values():
            assert f.values.shape[0] == len(vocab)
            assert np.all(f.values[0] == 0)  # OOV row = unknown
            assert f.values.max() < f.cardinality
    # Every known item has at least one genre and one title token.
    assert np.all(side.item["item_genres"].values[1:, 0] > 0)
    assert np.all(side.item["item_title"].values[1:, 0] > 0)
    # The table is indexed by vocabulary index: check one item against its first row.
    row = 5
    idx = vocabs.item.lookup(table.item_id[row:row + 1])[0]
    genres = table.columns["item_genres"][row]
    tokens = side.item["item_genres"].vocab
    got = [tokens[v - 1] for v in side.item["item_genres"].values[idx] if v > 0]
    assert got == [str(g) for g in genres if g >= 0]


def test_side_features_save_load_no_pickle(small, tmp_path):
    _, _, side = small
    side.save(tmp_path)
    loaded = SideFeatures.load(tmp_path)
    for a, b in ((side.user, loaded.user), (side.item, loaded.item)):
        assert list(a) == list(b)
        for name in a:
            np.testing.assert_array_equal(a[name].values, b[name].values)
            assert a[name].vocab == b[name].vocab
    with np.load(tmp_path / "side_features.npz", allow_pickle=False) as npz:
        assert npz["item/item_title"].dtype.kind == "i"


@pytest.mark.parametrize("user_feats,item_feats", [
    ([], []), (["user_segment"], ["item_genres"]), (["bucketized_user_age"], ["item_title"]),
    (None, None)])
def test_tower_shapes_each_feature_optional(small, user_feats, item_feats):
    _, vocabs, side = small
    chosen = side.select(user_feats, item_feats)
    user = UserTower.from_vocab(vocabs, chosen, embedding_dim=8, output_dim=12)
    item = ItemTower.from_vocab(vocabs, chosen, embedding_dim=8, output_dim=12)
    assert user(_ids(len(vocabs.user))).shape == (4, 12)
    assert item(_ids(len(vocabs.item))).shape == (4, 12)
    assert user.dim == item.dim == 12


def test_id_only_tower_is_plain_embedding(small):
    _, vocabs, _ = small
    tower = UserTower.from_vocab(vocabs, None, embedding_dim=8)
    out = tower(_ids(len(vocabs.user)))
    assert out.shape == (4, 8) and tower.projection is None
    np.testing.assert_allclose(out.numpy(), tower.id_embedding.embeddings.numpy()[
        [0, 1, 2, len(vocabs.user) - 1]])


def test_oov_id_gets_default_features(small):
    _, vocabs, side = small
    tower = ItemTower.from_vocab(vocabs, side, embedding_dim=8)
    unknown = vocabs.item.lookup(np.array(["never-seen-item"]))
    assert unknown[0] == data.OOV_INDEX
    out = tower(tf.constant(unknown))
    assert out.shape == (1, 8) and np.all(np.isfinite(out.numpy()))


def test_tower_save_and_rebuild_identical(small, tmp_path):
    _, vocabs, side = small
    tower = ItemTower.from_vocab(vocabs, side, embedding_dim=8, output_dim=6)
    ids = _ids(len(vocabs.item))
    expected = tower(ids).numpy()
    save_tower(tower, tmp_path / "item_tower")
    rebuilt = load_tower(tmp_path / "item_tower")
    assert isinstance(rebuilt, ItemTower)
    np.testing.assert_array_equal(rebuilt(ids).numpy(), expected)
    # from_config alone gives the same architecture (tables are weights, not config).
    clone = ItemTower.from_config(tower.get_config())
    clone(ids)
    clone.set_weights(tower.get_weights())
    np.testing.assert_array_equal(clone(ids).numpy(), expected)


def test_set_tables_shape_mismatch_is_clear(small):
    _, vocabs, side = small
    tower = ItemTower.from_vocab(vocabs, side.select([], ["item_genres"]), embedding_dim=4)
    with pytest.raises(ValueError, match="item_genres"):
        tower.set_tables({"item_genres": np.zeros((3, 2), np.int32)})


def test_history_features(small):
    table, vocabs, _ = small
    side = SideFeatures().with_histories(table, vocabs, max_len=10)
    hist = side.user["rated_items"].values
    assert hist.shape == (len(vocabs.user), 10) and np.all(hist[0] == 0)
    u = vocabs.user.lookup(table.user_id[:1])[0]
    rated = set(vocabs.item.lookup(table.item_id[table.user_id == table.user_id[0]]))
    assert set(hist[u][hist[u] > 0]) <= rated
    tower = UserTower.from_vocab(vocabs, side, embedding_dim=4)
    assert tower(_ids(len(vocabs.user))).shape == (4, 4)
