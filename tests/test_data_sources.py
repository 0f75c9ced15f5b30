"""Sources: MovieLens (100K real files, 1M hand-made), TFDS mapping, Amazon, CSV, parquet."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfrec_p5.data import DataError, Interactions, load, tfrs_split
from tfrec_p5.data.sources.movielens import GENRE_LABELS, OCCUPATION_LABELS
from tfrec_p5.data.sources.tfds_source import table_from_tfds


@pytest.fixture(scope="module")
def ml100k(ml100k_dir) -> Interactions:
    return load(f"movielens:{ml100k_dir}")


# ----------------------------------------------------------------------------- MovieLens
def test_movielens_100k_counts_and_first_row(ml100k):
    t = ml100k
    assert (len(t), t.num_users, t.num_items) == (100_000, 943, 1_682)
    # u.data line 1: "196\t242\t3\t881250949"; movie 242 = Kolya (1996), Comedy;
    # user 196 = 49, M, writer, 55105.
    row = {k: v[0] for k, v in t.columns.items()}
    assert (row["user_id"], row["item_id"], row["rating"], row["timestamp"]) == \
        ("196", "242", 3.0, 881250949)
    assert row["movie_title"] == "Kolya (1996)"
    assert [GENRE_LABELS[g] for g in row["movie_genres"] if g >= 0] == ["Comedy"]
    assert row["user_gender"] is np.True_ and row["raw_user_age"] == 49.0
    assert row["bucketized_user_age"] == 45.0
    assert OCCUPATION_LABELS[row["user_occupation_label"]] == "writer"
    assert (row["user_occupation_text"], row["user_zip_code"]) == ("writer", "55105")
    # last u.data row keeps file order
    assert (t.user_id[-1], t.item_id[-1], t.timestamp[-1]) == ("12", "203", 879959583)


def test_movielens_100k_metadata(ml100k):
    t = ml100k
    assert t.rating_range == (1.0, 5.0)
    assert t.tfds_names["item_id"] == "movie_id" and t.tfds_names["rating"] == "user_rating"
    assert set(t.user_features) == {"user_gender", "bucketized_user_age",
                                    "user_occupation_label", "raw_user_age"}
    assert set(t.item_features) == {"movie_title", "movie_genres"}
    assert t.feature_kinds["movie_genres"] == "multi_categorical"
    assert t.feature_kinds["movie_title"] == "text"
    assert t.feature_kinds["raw_user_age"] == "numeric"
    assert t.columns["movie_genres"].dtype == np.int64
    assert t.columns["movie_genres"].min() == -1  # padding
    # Fantasy etc.: every genre label used in 100K is one TFDS has ("IMAX" is 20M+ only).
    used = {GENRE_LABELS[g] for g in np.unique(t.columns["movie_genres"]) if g >= 0}
    assert "IMAX" not in used and "Unknown" in used and len(used) == 19
    assert sorted(np.unique(t.columns["bucketized_user_age"])) == [1, 18, 25, 35, 45, 50, 56]


def test_tfrs_split_on_real_ml100k(ml100k, ml100k_dir):
    split = tfrs_split(ml100k, ml100k_dir / "tfrs_split_seed42.tsv")
    assert (len(split.train), len(split.test)) == (80_000, 20_000)


def test_to_tfds_like_dataset_matches_tfds_spec(ml100k, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    expected = tfds.builder("movielens/100k-ratings",
                            data_dir=str(tmp_path)).info.features.get_tensor_spec()
    ds = ml100k.to_tfds_like_dataset()
    assert ds.element_spec == expected
    first = next(iter(ds))
    assert first["movie_id"].numpy() == b"242" and first["user_rating"].numpy() == 3.0
    assert first["movie_genres"].numpy().tolist() == [GENRE_LABELS.index("Comedy")]
    assert ds.cardinality().numpy() == 100_000
    # TFRS-tutorial code runs unchanged (on a prefix, to keep the test fast):
    pairs = ds.take(2000).map(lambda x: {"movie_title": x["movie_title"],
                                         "user_id": x["user_id"]}).batch(1000)
    batches = list(pairs.as_numpy_iterator())
    assert [len(b["user_id"]) for b in batches] == [1000, 1000]
    assert batches[0]["movie_title"][0] == b"Kolya (1996)"


def test_tfds_round_trip_gives_same_table(ml100k):
    small = ml100k.take(np.arange(3000))
    back = table_from_tfds(small.to_tfds_like_dataset(), "movielens/100k-ratings",
                           batch_size=1000)
    assert set(back.columns) == set(small.columns)
    for name, col in small.columns.items():
        other = back.columns[name]
        if col.ndim == 2:  # padding width may shrink to the widest row of the subset
            other = np.pad(other, ((0, 0), (0, col.shape[1] - other.shape[1])),
                           constant_values=-1)
        np.testing.assert_array_equal(other, col, err_msg=name)
        assert other.dtype.kind == col.dtype.kind, name
    assert back.user_features == small.user_features
    assert back.tfds_names == small.tfds_names


def _write(path, text: str, encoding: str = "latin-1") -> None:
    path.write_bytes(text.encode(encoding))


@pytest.fixture()
def ml1m_folder(tmp_path):
    _write(tmp_path / "movies.dat",
           "1::Toy Story (1995)::Animation|Children's|Comedy\n"
           "2::Café Society (1995)::Drama\n")
    _write(tmp_path / "users.dat",
           "1::F::1::10::48067\n"
           "2::M::56::16::70072\n")
    _write(tmp_path / "ratings.dat",
           "1::1::5::978300760\n"
           "2::2::3::978298413\n"
           "2::1::4::978220179\n")
    return tmp_path


def test_movielens_1m_format(ml1m_folder):
    t = load(f"movielens:{ml1m_folder}")
    assert len(t) == 3 and list(t.user_id) == ["1", "2", "2"]
    assert list(t.item_id) == ["1", "2", "1"] and list(t.rating) == [5.0, 3.0, 4.0]
    assert t.timestamp[0] == 978300760
    assert t.columns["movie_title"][1] == "Café Society (1995)"  # latin-1 decoded
    genres = [GENRE_LABELS[g] for g in t.columns["movie_genres"][0] if g >= 0]
    assert genres == ["Animation", "Children", "Comedy"]  # "Children's" renamed as TFDS does
    assert list(t.columns["user_gender"]) == [False, True, True]
    assert list(t.columns["bucketized_user_age"]) == [1.0, 56.0, 56.0]
    # occupation 10 = "K-12 student" -> TFDS label "student"; 16 = self-employed
    assert t.columns["user_occupation_text"][0] == "K-12 student"
    assert OCCUPATION_LABELS[t.columns["user_occupation_label"][0]] == "student"
    assert OCCUPATION_LABELS[t.columns["user_occupation_label"][1]] == "self-employed"
    assert "raw_user_age" not in t.columns  # 1M has only buckets
    assert t.user_features == ("user_gender", "bucketized_user_age", "user_occupation_label")
    tfds = pytest.importorskip("tensorflow_datasets")
    spec = tfds.builder("movielens/1m-ratings",
                        data_dir=str(ml1m_folder / "tfds")).info.features.get_tensor_spec()
    assert t.to_tfds_like_dataset().element_spec == spec


def test_movielens_bad_lines(ml1m_folder):
    _write(ml1m_folder / "ratings.dat", "1::1::5::978300760\n2::2::3\n")
    with pytest.raises(DataError, match=r"ratings\.dat:2: expected 4") as err:
        load(f"movielens:{ml1m_folder}")
    assert err.value.line == 2
    _write(ml1m_folder / "ratings.dat", "1::1::5::978300760\n2::2::6::978298413\n")
    with pytest.raises(DataError, match=r"ratings\.dat:2: .*outside the declared range"):
        load(f"movielens:{ml1m_folder}")
    _write(ml1m_folder / "ratings.dat", "1::1::5::978300760\n2::9::3::978298413\n")
    with pytest.raises(DataError, match=r"ratings\.dat:2: movie '9' is not in movies\.dat"):
        load(f"movielens:{ml1m_folder}")
    t = load(f"movielens:{ml1m_folder}?on_bad_lines=skip")
    assert len(t) == 1


def test_movielens_not_a_folder(tmp_path):
    with pytest.raises(DataError, match="not a MovieLens folder"):
        load(f"movielens:{tmp_path}")


# ----------------------------------------------------------------------------- TFDS
def test_tfds_offline_fails_fast_with_local_alternative(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(DataError, match=r"movielens:PATH/ml-100k"):
        load(f"tfds:movielens/100k-ratings?data_dir={tmp_path}&download=0")
    # Default (download allowed) with the network unreachable: same clear failure.
    from tfrec_p5.data.sources import tfds_source

    monkeypatch.setattr(tfds_source, "_online", lambda url: False)
    with pytest.raises(DataError, match=r"no network.*movielens:PATH/ml-1m"):
        load("tfds:movielens/1m-ratings", data_dir=str(tmp_path))
    with pytest.raises(DataError, match="unknown TFDS dataset"):
        load("tfds:no_such_dataset_xyz", data_dir=str(tmp_path))


def test_tfds_generic_mapping():
    ds = tf.data.Dataset.from_tensor_slices({"visitor": ["a", "b"], "sku": ["x", "y"],
                                            "score": [1.0, 2.0]})
    t = table_from_tfds(ds, "my_ds", user="visitor", item="sku", rating="score")
    assert list(t.user_id) == ["a", "b"] and list(t.rating) == [1.0, 2.0]
    assert t.tfds_names == {"user_id": "visitor", "item_id": "sku", "rating": "score"}
    with pytest.raises(DataError, match="no feature 'user_id'"):
        table_from_tfds(ds, "my_ds")


# ----------------------------------------------------------------------------- Amazon
def test_amazon_beauty_counts(beauty_file):
    t = load(f"amazon:{beauty_file}")
    assert (len(t), t.num_users, t.num_items) == (198_502, 22_363, 12_101)
    assert t.rating is None
    # line 1 is "1 1 2 3 4 5": positions are the timestamps
    assert list(t.item_id[:5]) == ["1", "2", "3", "4", "5"]
    assert list(t.timestamp[:6]) == [0, 1, 2, 3, 4, 0]
    assert t.item_features == ("item_attributes",)
    assert t.feature_kinds["item_attributes"] == "multi_categorical"
    attrs = t.columns["item_attributes"]
    assert attrs.shape[0] == len(t) and (attrs[:, 0] >= 0).all()


def test_amazon_small_file_and_errors(tmp_path):
    f = tmp_path / "Toy.txt"
    f.write_text("u1 a b c\nu2 c a\n")
    (tmp_path / "Toy_item2attributes.json").write_text('{"a": [3, 4], "b": [5]}')
    t = load(f"amazon:{f}")
    assert list(t.user_id) == ["u1"] * 3 + ["u2"] * 2
    assert list(t.timestamp) == [0, 1, 2, 0, 1]
    np.testing.assert_array_equal(t.columns["item_attributes"],
                                  [[3, 4], [5, -1], [-1, -1], [-1, -1], [3, 4]])
    assert "item_attributes" not in load(f"amazon:{f}?attributes=none").columns
    f.write_text("u1 a b\nu2\nu1 c\n")
    with pytest.raises(DataError, match=r"Toy\.txt:2: user 'u2' has no items"):
        load(f"amazon:{f}")
    f.write_text("u1 a b\nu1 c\n")
    with pytest.raises(DataError, match=r"Toy\.txt:2: user 'u1' already had a line"):
        load(f"amazon:{f}")
    f.write_text("")
    with pytest.raises(DataError, match="empty file"):
        load(f"amazon:{f}")
