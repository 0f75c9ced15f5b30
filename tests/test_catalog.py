"""Item / user catalogs: who exists beyond the interactions (``tfrec_p5.data.catalog``),
read from the data's own metadata or from ``--items`` / ``--users`` files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _cli import run, two_world_log

from tfrec_p5.data import DataError, Interactions, load
from tfrec_p5.data.catalog import Catalog, attach_features, load_catalog, read_entities
from tfrec_p5.export.saved_model import load_metadata

ITEMS_CSV = """item_id,genres,title,year,brand
a,Comedy|Drama,A Funny Drama,1995,acme
b,Action,Loud Film,,acme
c,Drama,Quiet Film,2001,
"""


@pytest.fixture()
def items_csv(tmp_path):
    path = tmp_path / "items.csv"
    path.write_text(ITEMS_CSV)
    return path


def test_read_entities_kinds_and_unknowns(items_csv):
    items = read_entities(f"{items_csv}?text=title&numeric=year&multi=genres", "item")
    assert items.item_id.tolist() == ["a", "b", "c"]
    assert items.user_id.tolist() == ["", "", ""]
    assert items.item_features == ("genres", "title", "year", "brand")
    assert items.feature_kinds == {"genres": "multi_categorical", "title": "text",
                                   "year": "numeric", "brand": "categorical"}
    # multi values: names, padded with ""
    assert items.columns["genres"].tolist() == [["Comedy", "Drama"], ["Action", ""],
                                                ["Drama", ""]]
    year = items.columns["year"]
    assert year[0] == 1995 and np.isnan(year[1]) and year[2] == 2001
    assert items.columns["brand"].tolist() == ["acme", "acme", ""]
    only = read_entities(f"csv:{items_csv}?features=brand", "item")
    assert only.item_features == ("brand",)


def test_read_entities_parquet_and_user_side(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "users.parquet"
    pq.write_table(pa.table({"uid": [1, 2], "age": [31.0, 45.0], "job": ["x", "y"]}), path)
    users = read_entities(f"{path}?id=uid&numeric=age", "user")
    assert users.user_id.tolist() == ["1", "2"] and users.item_id.tolist() == ["", ""]
    assert users.user_features == ("age", "job")
    assert users.columns["age"].tolist() == [31.0, 45.0]


@pytest.mark.parametrize("text, query, message", [
    ("item_id,x\na,1\na,2\n", "", r"csv:3: ID .a. already had a row at line 2"),
    ("item_id,x\na,1\n", "?id=sku", "no ID column 'sku'"),
    ("item_id,x\na,1\n", "?numeric=y", "'y' is not a feature column"),
    ("item_id,x\na,1\n", "?colour=red", "unknown option"),
    ("item_id,x\na,one\n", "?numeric=x", "'one' is not a number"),
    ("item_id,x\na,1,2\n", "", "3 fields"),
    ("item_id,x\n,1\n", "", "csv:2: empty item_id"),
])
def test_read_entities_refuses_bad_files(tmp_path, text, query, message):
    path = tmp_path / "items.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        read_entities(f"{path}{query}", "item")


def test_attach_features_gathers_by_id_and_marks_unknown(items_csv):
    items = read_entities(f"{items_csv}?text=title&numeric=year&multi=genres", "item")
    table = Interactions.from_columns({"user_id": ["u1", "u2", "u3"],
                                       "item_id": ["c", "zzz", "a"]})
    out = attach_features(table, Catalog(items=items))
    assert out.item_features == items.item_features
    assert out.columns["title"].tolist() == ["Quiet Film", "", "A Funny Drama"]
    assert out.columns["genres"].tolist() == [["Drama", ""], ["", ""], ["Comedy", "Drama"]]
    assert np.isnan(out.columns["year"][1]) and out.columns["year"][2] == 1995
    assert out.feature_kinds["genres"] == "multi_categorical"
    assert attach_features(table, Catalog()) == table


def test_movielens_catalog_lists_every_movie_and_user(ml100k_dir):
    spec = f"movielens:{ml100k_dir}"
    table, catalog = load(spec), load_catalog(spec)
    assert len(catalog.items) == 1682 and len(catalog.users) == 943
    assert catalog.items.item_features == table.item_features
    assert catalog.users.user_features == table.user_features
    # the catalog describes each ID exactly as the rating rows do
    again = attach_features(table, catalog)
    for name in (*table.item_features, *table.user_features):
        a, b = again.columns[name], table.columns[name]
        assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), name
    assert not any(len(v) for v in catalog.new_ids(table).values())


def test_amazon_catalog_from_attributes(tmp_path):
    (tmp_path / "Toy.txt").write_text("u1 i1 i2\nu2 i2 i3\n")
    (tmp_path / "Toy_item2attributes.json").write_text(json.dumps(
        {"i1": [1, 2], "i2": [3], "i3": [], "i4": [2, 5]}))
    catalog = load_catalog(f"amazon:{tmp_path / 'Toy.txt'}")
    assert catalog.items.item_id.tolist() == ["i1", "i2", "i3", "i4"]
    assert catalog.items.columns["item_attributes"][3].tolist() == [2, 5]
    assert catalog.users is None
    assert catalog.new_ids(load(f"amazon:{tmp_path / 'Toy.txt'}"))["item"].tolist() == ["i4"]
    assert not load_catalog(f"amazon:{tmp_path / 'Toy.txt'}?attributes=none")
    assert not load_catalog("synthetic")


def test_train_items_serves_new_items_from_their_features(tmp_path):
    log, items = two_world_log(tmp_path)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"use_side_features": True, "item_id_dropout": 0.5,
                                  "epochs": 8}))
    out = tmp_path / "out"
    status, stdout, _ = run(["train", "--task", "retrieval", "--data", f"csv:{log}",
                             "--items", f"{items}?multi=genre", "--config", str(config),
                             "--split", "none", "--no-references", "--quiet",
                             "--out", str(out)])
    assert status == 0, stdout
    assert "catalog: 42 items (2 without training rows)" in stdout
    assert load_metadata(out / "1")["catalog"]["new_items"] == 2
    # later: one more item, known only by the same kind of file, added without training
    later = tmp_path / "later.csv"
    later.write_text("item_id,genre\nlater_y,y\n")
    status, stdout, stderr = run(["add-items", "--model", str(out), "--items", str(later)])
    assert status == 0, stderr
    import tensorflow as tf

    rank = tf.saved_model.load(str(out / "2")).signatures["rank"]
    got = rank(user_id=tf.constant(["u0", "u45"]),
               item_ids=tf.constant([["new_x", "new_y", "later_y"]] * 2))
    ids = got["item_ids"].numpy()
    assert ids[0, 0] == b"new_x" and ids[1, 0] in (b"new_y", b"later_y")
    scores = dict(zip(ids[1].tolist(), got["scores"].numpy()[1].tolist(), strict=True))
    # same features (genre "y", no ID embedding) -> the same score as the trained catalog
    # item: the file's multi values reach the export by name
    assert abs(scores[b"later_y"] - scores[b"new_y"]) < 1e-5


def test_items_refused_where_it_does_nothing(tmp_path):
    log, items = two_world_log(tmp_path)
    status, stdout, stderr = run(["train", "--task", "rating", "--data", f"csv:{log}",
                                  "--items", items, "--out", str(tmp_path / "o")])
    assert status == 2 and "--items does nothing for --task rating" in stderr + stdout
    status, stdout, stderr = run(["train", "--task", "retrieval", "--data", f"csv:{log}",
                                  "--items", items, "--out", str(tmp_path / "o")])
    assert status == 2 and "use_side_features" in stderr + stdout
    off = tmp_path / "off.json"
    off.write_text(json.dumps({"use_item_features": False}))
    status, stdout, stderr = run(["train", "--task", "sequential", "--data", f"csv:{log}",
                                  "--items", items, "--config", str(off),
                                  "--out", str(tmp_path / "o")])
    assert status == 2 and "use_item_features" in stderr + stdout


def _two_world_sequences() -> tuple[Interactions, Interactions]:
    """Users who only ever pick items of attribute 1 or only of attribute 2, and a
    catalog with one new item of each attribute that no sequence holds."""
    rng = np.random.default_rng(0)
    users, items, ts = [], [], []
    for u in range(120):
        world = u % 2
        for t, i in enumerate(rng.choice(20, 8, replace=False)):
            users.append(f"u{u}")
            items.append(f"w{world}_{i}")
            ts.append(t)
    attrs = lambda ids: np.array([[1 if i.startswith(("w0", "new0")) else 2]  # noqa: E731
                                  for i in ids], np.int64)
    table = Interactions.from_columns(
        {"user_id": users, "item_id": items, "timestamp": ts,
         "item_attributes": attrs(items)},
        item_features=("item_attributes",),
        feature_kinds={"item_attributes": "multi_categorical"})
    ids = [*sorted(set(items)), "new0", "new1"]
    catalog = Interactions.from_columns(
        {"user_id": [""] * len(ids), "item_id": ids, "item_attributes": attrs(ids)},
        item_features=("item_attributes",),
        feature_kinds={"item_attributes": "multi_categorical"})
    return table, catalog


def test_next_item_scores_catalog_items_from_their_features():
    import tensorflow as tf

    from tfrec_p5.data import Vocabularies, leave_one_out
    from tfrec_p5.models.sequential import SequentialConfig, train_sequential

    table, catalog = _two_world_sequences()
    split = leave_one_out(table)
    config = SequentialConfig(embedding_dim=16, max_len=8, num_blocks=1, epochs=6,
                              patience=0, refit=False, item_id_dropout=0.5, dropout=0.1,
                              steps_per_execution=1)
    trained = train_sequential(split.train, None, config, seed=0, catalog=catalog)
    vocab = trained.vocabs.item
    assert vocab.tokens[-2:].tolist() == ["new0", "new1"]   # after the trained items
    assert Vocabularies.build(split.train).item.tokens.tolist() == vocab.tokens[:-2].tolist()
    head = trained.head
    assert head.untrained_items.tolist() == [len(vocab) - 2, len(vocab) - 1]
    hist = vocab.lookup(np.array([["w0_1", "w0_2", "w0_3"], ["w1_1", "w1_2", "w1_3"]]))
    scores = head.score_history(tf.constant(hist, tf.int64)).numpy()
    new0, new1 = len(vocab) - 2, len(vocab) - 1
    assert scores[0, new0] > scores[0, new1] and scores[1, new1] > scores[1, new0]
    with pytest.raises(ValueError, match="item_id_dropout"):
        SequentialConfig(use_item_features=False, item_id_dropout=0.5)


def test_movielens_derived_features(ml100k_dir):
    table = load(f"movielens:{ml100k_dir}?derived=1")
    assert table.item_features[-2:] == ("movie_release_year", "movie_year")
    assert table.user_features[-1] == "user_zip_region"
    first = int(np.flatnonzero(table.item_id == "1")[0])          # Toy Story (1995)
    assert table.columns["movie_release_year"][first] == 1995.0
    assert table.columns["movie_year"][first] == "1995"
    zips = table.columns["user_zip_code"]
    assert all(r == z[:1] for r, z in zip(table.columns["user_zip_region"][:50], zips[:50],
                                          strict=True))
    catalog = load_catalog(f"movielens:{ml100k_dir}?derived=1")
    assert catalog.items.item_features == table.item_features
    with pytest.raises(DataError, match="derived"):
        load(f"movielens:{ml100k_dir}?derived=2")
    with pytest.raises(DataError, match="unknown movielens option"):
        load(f"movielens:{ml100k_dir}?colour=1")


def test_train_users_serves_new_users_from_their_features(tmp_path):
    log, _ = two_world_log(tmp_path)
    users = tmp_path / "users.csv"
    users.write_text("user_id,taste\n" + "".join(
        f"u{u},{'x' if u < 30 else 'y'}\n" for u in range(60)) + "nu_x,x\nnu_y,y\n")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"use_side_features": True, "cold_user_tower": True,
                                  "user_id_dropout": 0.25, "epochs": 10}))
    out = tmp_path / "out"
    status, stdout, stderr = run(["train", "--task", "retrieval", "--data", f"csv:{log}",
                                  "--users", str(users), "--config", str(config),
                                  "--split", "none", "--no-references", "--quiet",
                                  "--out", str(out)])
    assert status == 0, stdout + stderr
    assert "62 users (2 without training rows)" in stdout
    assert load_metadata(out / "1")["user_catalog"]["new_users"] == 2
    import tensorflow as tf

    recommend = tf.saved_model.load(str(out / "1")).signatures["recommend"]
    top = recommend(user_id=tf.constant(["nu_x", "nu_y"]))["item_ids"].numpy()[:, :10]
    world_x = [sum(int(i.decode()[1:]) < 20 for i in row) for row in top]
    assert world_x[0] >= 8 and world_x[1] <= 2, top      # each from their taste alone
    status, stdout, stderr = run(["train", "--task", "retrieval", "--data", f"csv:{log}",
                                  "--users", str(users), "--out", str(tmp_path / "o")])
    assert status == 2 and "use_side_features" in stdout + stderr
