"""Large vocabularies: hashed IDs (no per-ID vocabulary) and ``min_count`` cut-offs."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfrec_p5 import data
from tfrec_p5.data.vocabulary import EMPTY_BUCKET, HashedVocabulary, Vocabulary
from tfrec_p5.export import IdLookup, ServingModule, add_rating_signatures, build_module, export
from tfrec_p5.models.rating import RatingConfig, predict_ratings, train_rating
from tfrec_p5.models.unified import UnifiedConfig, train_unified
from tfrec_p5.towers import UserTower, embedding_memory_bytes, load_tower, save_tower

SMALL = {"num_users": 150, "num_items": 90, "num_interactions": 2500, "seed": 3}


@pytest.fixture(scope="module")
def split():
    return data.random_split(data.load("synthetic", **SMALL), 0.8, seed=1)


def test_hashed_vocabulary_is_keras_hashing_plus_one_everywhere(tmp_path):
    ids = np.array(["u1", "u2", "someone-new", "", "ü-ß"])
    vocab = HashedVocabulary(1000, name="user_id")
    rows = vocab.lookup(ids)
    assert len(vocab) == 1001 and rows.dtype == np.int64
    assert rows.min() >= 1 and rows.max() <= 1000  # row 0 stays reserved
    np.testing.assert_array_equal(rows, tf.keras.layers.Hashing(1000)(ids).numpy() + 1)
    np.testing.assert_array_equal(rows, IdLookup(vocab)(tf.constant(ids)).numpy())  # export
    vocab.save(tmp_path / "v.json")
    again = Vocabulary.load(tmp_path / "v.json")
    assert isinstance(again, HashedVocabulary) and again == vocab and again.tokens is None


def test_hashed_vocabulary_keeps_the_most_frequent_id_per_row():
    values = np.array(["a"] * 3 + ["b"] * 2 + ["c"] * 5 + ["d"])
    vocab = HashedVocabulary.build(values, 2, keep_tokens=True)  # 4 IDs, 2 rows: collisions
    rows = dict(zip("abcd", vocab.lookup(np.array(list("abcd"))).tolist(), strict=True))
    counts = {"a": 3, "b": 2, "c": 5, "d": 1}
    for row in (1, 2):
        members = [t for t, r in rows.items() if r == row]
        want = max(members, key=lambda t: counts[t]) if members else EMPTY_BUCKET
        assert vocab.token(np.array([row]))[0] == want


def test_min_count_sends_rare_ids_to_the_oov_row(split):
    counts = dict(zip(*np.unique(split.train.user_id, return_counts=True), strict=True))
    vocabs = data.Vocabularies.build(split.train, min_count=20)
    rare = [u for u, c in counts.items() if c < 20]
    frequent = [u for u, c in counts.items() if c >= 20]
    assert rare and frequent
    assert np.all(vocabs.user.lookup(np.array(rare)) == 0)
    assert np.all(vocabs.user.lookup(np.array(frequent)) > 0)
    assert len(vocabs.user) == len(frequent) + 1


def test_hashed_tower_takes_strings_and_round_trips(tmp_path):
    tower = UserTower(65, embedding_dim=4, hash_buckets=64)
    names = np.array(["u1", "u7", "never-seen"])
    by_string = tower(tf.constant(names))
    by_index = tower(tf.constant(HashedVocabulary(64).lookup(names)))
    np.testing.assert_array_equal(by_string.numpy(), by_index.numpy())
    save_tower(tower, tmp_path / "t")
    again = load_tower(tmp_path / "t")
    assert again.hash_buckets == 64
    np.testing.assert_array_equal(again(tf.constant(names)).numpy(), by_string.numpy())
    with pytest.raises(ValueError, match="hash_buckets"):
        UserTower(10, hash_buckets=64)
    with pytest.raises(TypeError, match="vocabulary indices"):
        UserTower(10)(tf.constant(["u1"]))


def test_hashed_rating_model_trains_and_exports_without_a_table(split, tmp_path):
    config = RatingConfig(embedding_dim=8, hidden_units=(8,), epochs=1,
                          validation_fraction=0.0, history_len=8,
                          hash_buckets={"user_id": 64, "item_id": 48})
    trained = train_rating(split.train, None, config, seed=2, verbose=0)
    assert len(trained.vocabs.user) == 65 and len(trained.vocabs.item) == 49
    user_table = trained.model.get_layer("user_tower").id_embedding.embeddings
    assert tuple(user_table.shape) == (65, 8)  # rows = buckets, not users
    module = add_rating_signatures(ServingModule(trained.vocabs), trained.model, (1.0, 5.0))
    loaded = tf.saved_model.load(export(module, tmp_path / "m"))
    assert getattr(loaded.user_lookup, "table", None) is None  # hashing, no hash table
    rows = split.test.take(np.arange(40))
    users = np.r_[rows.user_id[:-2], ["unseen-1", "unseen-2"]]  # unseen IDs hash too
    table = data.Interactions.from_columns({"user_id": users, "item_id": rows.item_id,
                                            "rating": rows.rating})
    served = loaded.signatures["predict_rating"](
        user_id=tf.constant(users.astype(object)),
        item_id=tf.constant(rows.item_id.astype(object)))["rating"].numpy()
    np.testing.assert_allclose(served, predict_ratings(trained.model, table, trained.vocabs),
                               atol=1e-5)


def test_hashed_retrieval_recommends_only_real_items(split):
    config = UnifiedConfig(embedding_dim=8, epochs=1, batch_size=256,
                           hash_buckets={"item_id": 512})  # most rows stay empty
    trained = train_unified(split.train, None, config, seed=2, verbose=0)
    metrics = trained.evaluate(split.test, ks=(10,), factorized_ks=())
    assert 0.0 <= metrics["retrieval_recall@10"] <= 1.0
    module = build_module(trained, k=20)
    out = module.signature("recommend")(tf.constant(np.unique(split.test.user_id)[:10]
                                                    .astype(object)))
    served = {b.decode() for b in out["item_ids"].numpy().ravel()}
    assert served <= set(split.train.item_id.tolist())  # never an empty bucket
    assert np.all(np.isfinite(out["scores"].numpy()))


def test_embedding_memory_bytes_is_rows_dim_bytes_times_slots():
    assert embedding_memory_bytes(1_000_001, 32, "adam") == 1_000_001 * 32 * 4 * 3
    assert embedding_memory_bytes(10, 8, "adagrad") == 10 * 8 * 4 * 2
    assert embedding_memory_bytes(10, 8, "sgd", bytes_per_value=2) == 160
