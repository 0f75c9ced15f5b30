"""New items without retraining: ``score_new_items`` and ``tfrec-p5 add-items``.

Two kinds of users (half like genre 0 "alpha" items, half genre 1 "beta" items) train a
retrieval model with item side features of every kind (multi-categorical genres, text
title, numeric year, categorical studio) and a catalog with two untrained items. An
item described by its features must score exactly like such a catalog item, and an item
added to the export from a file must be served by the new version -- checked in a
process that imports only TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from _cli import run, run_tf_only

import tfrec_p5  # noqa: F401  (conftest.py imported it before TensorFlow)
from tfrec_p5.data import Interactions
from tfrec_p5.export import (
    build_module,
    export,
    item_titles,
    load_export,
    load_metadata,
    read_new_items,
)
from tfrec_p5.export.new_items import ItemFeatureEncoder
from tfrec_p5.export.saved_model import file_digest
from tfrec_p5.models.unified import UnifiedConfig, train_unified

KINDS = {"genres": "multi_categorical", "title": "text", "year": "numeric",
         "studio": "categorical"}
FAST = dict(epochs=5, embedding_dim=16, batch_size=128, steps_per_execution=4)
USERS = [f"u{u}" for u in range(60)]
TASTE = np.arange(60) % 2          # user u likes genre u % 2
HEADER = "item_id,genres,title,year,studio\n"


def _items() -> dict[str, np.ndarray]:
    """20 items per genre, plus the untrained catalog items catA (genre 0), catB (1)."""
    rows = []
    for g, word in ((0, "alpha"), (1, "beta")):
        for i in range(20):
            rows.append((f"{'ab'[g]}{i}", [g, 2 if i % 3 == 0 else -1],
                         f"{word} tale {'émile' if i % 4 == 0 else 'night'}",
                         1990.0 + 10 * g + i % 5, f"s{g}{i % 2}"))
    rows.append(("catA", [0, -1], "ALPHA Tale! ÉMILE's", 1995.0, "s00"))
    rows.append(("catB", [1, -1], "beta TALE, night", np.nan, "s10"))
    return {"item_id": np.array([r[0] for r in rows]),
            "genres": np.array([r[1] for r in rows]),
            "title": np.array([r[2] for r in rows]),
            "year": np.array([r[3] for r in rows], np.float32),
            "studio": np.array([r[4] for r in rows])}


#: The raw inputs (as a client gives them) describing catA and catB.
CAT_FEATURES = {"genres": ["0", "1"], "title": ["ALPHA Tale! ÉMILE's", "beta TALE, night"],
                "year": [1995.0, np.nan], "studio": ["s00", "s10"]}


def _tables(seed: int = 0) -> tuple[Interactions, Interactions]:
    rng = np.random.default_rng(seed)
    items = _items()
    users, rows = [], []
    for u, g in enumerate(TASTE):
        picked = rng.choice(20, 10, replace=False) + 20 * g
        users += [USERS[u]] * len(picked)
        rows += picked.tolist()
    train = Interactions.from_columns(
        {"user_id": np.array(users), **{k: v[rows] for k, v in items.items()}},
        item_features=tuple(KINDS), feature_kinds=KINDS)
    catalog = Interactions.from_columns(
        {"user_id": np.full(len(items["item_id"]), ""), **items},
        item_features=tuple(KINDS), feature_kinds=KINDS)
    return train, catalog


def _text(tensor) -> list[str]:
    return [b.decode("utf-8") for b in tensor.numpy()]


def _features(values: dict) -> dict[str, tf.Tensor]:
    return {k: tf.constant(v, tf.float64 if k == "year" else tf.string)
            for k, v in values.items()}


@pytest.fixture(scope="module")
def tastes(tmp_path_factory):
    train, catalog = _tables()
    config = UnifiedConfig(use_side_features=True, item_id_dropout=0.5, **FAST)
    trained = train_unified(train, None, config, seed=1, verbose=0, catalog=catalog)
    module = build_module(trained, k=12, titles=item_titles(catalog, trained.vocabs))
    base = tmp_path_factory.mktemp("saved_models") / "tastes"
    export(module, base)
    return {"trained": trained, "module": module, "base": base, "catalog": catalog}


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A retrieval export without item side features: nothing to describe items by."""
    train, _ = _tables()
    trained = train_unified(train, None, UnifiedConfig(**{**FAST, "epochs": 1}), seed=1,
                            verbose=0)
    module = build_module(trained, k=5)
    base = tmp_path_factory.mktemp("saved_models") / "plain"
    export(module, base)
    return {"module": module, "base": base}


def test_score_new_items_is_a_catalog_items_score(tastes):
    trained, module = tastes["trained"], tastes["module"]
    assert "score_new_items" in module.signature_names()
    # In-graph encoding of raw values = what SideFeatures gave the catalog's rows.
    encoder = ItemFeatureEncoder(trained.side_features.item, trained.config.max_text_tokens)
    rows = trained.vocabs.item.lookup(np.array(["catA", "catB"]))
    encoded = encoder(_features(CAT_FEATURES))
    for name, table in trained.side_features.item.items():
        want, got = table.values[rows], encoded[name].numpy()
        if table.kind in ("multi_categorical", "text"):  # same values, any padding
            want = [sorted(v[v > 0].tolist()) for v in want]
            got = [sorted(v[v > 0].tolist()) for v in got]
            assert all(want), name                     # known values were found
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=name)
    # The signature's scores are the retrieval scores rank gives those catalog items.
    scores = module.signature("score_new_items")(
        user_id=tf.constant(USERS), **_features(CAT_FEATURES))["scores"].numpy()
    assert scores.shape == (60, 2)
    rank = module.signature("rank")(user_id=tf.constant(USERS),
                                     item_ids=tf.constant([["catA", "catB"]] * 60))
    ranked = {(u, i.decode()): s for u, (ids, ss) in enumerate(zip(
        rank["item_ids"].numpy(), rank["scores"].numpy(), strict=True))
        for i, s in zip(ids, ss, strict=True)}
    want = np.array([[ranked[(u, "catA")], ranked[(u, "catB")]] for u in range(60)])
    np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-6)
    # Features, not IDs: each taste prefers the new item of its genre.
    assert (scores[TASTE == 0, 0] > scores[TASTE == 0, 1]).mean() >= 0.9
    assert (scores[TASTE == 1, 1] > scores[TASTE == 1, 0]).mean() >= 0.9
    # With score fusion (+ w log p(item)) a new item gets a catalog new item's prior.
    fused = build_module(dataclasses.replace(
        trained, config=trained.config.replace(popularity_weight=0.5)), k=12)
    scores = fused.signature("score_new_items")(
        user_id=tf.constant(USERS[:2]), **_features(CAT_FEATURES))["scores"].numpy()
    rank = fused.signature("rank")(user_id=tf.constant(USERS[:2]),
                                    item_ids=tf.constant([["catA"], ["catB"]]))["scores"]
    np.testing.assert_allclose(scores[[0, 1], [0, 1]], rank.numpy()[:, 0], rtol=1e-5)
    assert not np.allclose(scores, want[:2], atol=1e-3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="same length"):
        module.signature("score_new_items")(
            user_id=tf.constant(["u0"]), genres=tf.constant(["0"]), title=tf.constant(["a"]),
            year=tf.constant([1.0, 2.0], tf.float64), studio=tf.constant(["s00"]))


def test_models_without_features_have_no_score_new_items(plain):
    assert "score_new_items" not in plain["module"].signature_names()
    assert {"recommend", "rank"} <= set(plain["module"].signature_names())


CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    path, users = sys.argv[1], json.loads(sys.argv[2])
    m = tf.saved_model.load(path)
    rec = m.signatures["recommend"](user_id=tf.constant(users))
    rank = m.signatures["rank"](user_id=tf.constant(users),
                                item_ids=tf.constant([["newA", "newB"]] * len(users)))
    new = m.signatures["score_new_items"](
        user_id=tf.constant(users), genres=tf.constant(["0", "1"]),
        title=tf.constant(["alpha tale night", "beta tale"]),
        year=tf.constant([1993.0, np.nan], tf.float64), studio=tf.constant(["s01", "s10"]))
    print(json.dumps({
        "recommend": rec["item_ids"].numpy().astype(str).tolist(),
        "rank_ids": rank["item_ids"].numpy().astype(str).tolist(),
        "rank_scores": rank["scores"].numpy().tolist(),
        "score_new_items": new["scores"].numpy().tolist(),
        "signatures": sorted(m.signatures),
        "modules": sorted(n for n in sys.modules
                    if n.split(".")[0] in ("tfrec_p5",
                                           "tensorflow_recommenders"))}))
""")


def _bare_tensorflow(version_dir) -> dict:
    """Call the version's signatures in a process that imports only TensorFlow."""
    return run_tf_only(CHILD, version_dir, json.dumps(USERS))


def test_add_items_serves_new_items_in_bare_tensorflow(tastes, tmp_path):
    base = tmp_path / "tastes"
    shutil.copytree(tastes["base"], base)
    items = tmp_path / "new.csv"
    items.write_text(HEADER + "newA,0,alpha tale night,1993,s01\n"
                     'newB,1,"beta tale",,s10\n', encoding="utf-8")
    status, stdout, stderr = run(["add-items", "--model", str(base), "--items", str(items)])
    assert status == 0, stderr
    assert stdout.startswith(f"wrote {base / '2'}: 2 new item(s)")
    loaded, version_dir, meta = load_export(base)             # digests checked
    assert version_dir == str(base / "2")
    added = meta["added_items"]
    assert (added["count"], added["total"], added["parent_version"]) == (2, 2, 1)
    assert added["source_sha256"] == file_digest(items)["sha256"]
    assert "metrics" not in meta and meta["signature_tasks"]["recommend"] == "retrieval"
    titles = dict(zip(_text(loaded.retrieval_index.item_tokens),
                      _text(loaded.retrieval_index.item_titles), strict=True))
    assert titles["newA"] == "alpha tale night" and titles["a1"] == "alpha tale night"

    got = _bare_tensorflow(version_dir)
    assert got["modules"] == []
    assert {"recommend", "rank", "score_new_items"} <= set(got["signatures"])
    # The new item is recommended to the users whose taste matches its features (each
    # has 12 unseen items of their genre, new ones included: k = 12), lower or not at
    # all to the others.
    for item, taste in (("newA", 0), ("newB", 1)):
        position = np.array([row.index(item) if item in row else len(row)
                             for row in got["recommend"]])
        assert (position[TASTE == taste] < 12).mean() >= 0.9, item
        assert position[TASTE == taste].mean() < position[TASTE != taste].mean(), item
    # rank orders them by taste; score_new_items gives the same scores as rank.
    first = np.array([row[0] for row in got["rank_ids"]])
    assert (first[TASTE == 0] == "newA").mean() >= 0.9
    assert (first[TASTE == 1] == "newB").mean() >= 0.9
    ranked = [dict(zip(ids, s, strict=True)) for ids, s in zip(
        got["rank_ids"], got["rank_scores"], strict=True)]
    want = np.array([[r["newA"], r["newB"]] for r in ranked])
    np.testing.assert_allclose(got["score_new_items"], want, rtol=1e-5, atol=1e-6)

    # Adding again extends the original version directly (one level), keeping newA.
    more = tmp_path / "more.csv"
    more.write_text(HEADER + "newC,1|2,beta night,2001.5,s11\n", encoding="utf-8")
    status, _, stderr = run(["add-items", "--model", str(base), "--items", str(more),
                             "--json"])
    assert status == 0, stderr
    loaded, version_dir, meta = load_export(base)
    assert version_dir == str(base / "3") and meta["added_items"]["total"] == 3
    assert not hasattr(loaded.extends, "extends")
    tokens = _text(loaded.retrieval_index.item_tokens)
    assert tokens[-3:] == ["newA", "newB", "newC"]
    rank = loaded.signatures["rank"](user_id=tf.constant(USERS[:1]),
                                     item_ids=tf.constant([["newA", "newB", "newC"]]))
    again = dict(zip(_text(rank["item_ids"][0]), rank["scores"].numpy()[0], strict=True))
    np.testing.assert_allclose([again["newA"], again["newB"]], want[0], rtol=1e-5)
    rec = loaded.signatures["recommend"](user_id=tf.constant(USERS))["item_ids"].numpy()
    assert np.mean(["newC" in _text(tf.constant(row)) for row in rec[TASTE == 1]]) >= 0.5


def test_item_files_csv_tsv_and_parquet_read_alike(tastes, tmp_path):
    meta = load_metadata(tastes["base"] / "1")
    rows = [["newA", "0|2", "Alpha, night", "1993", "s01"], ["newB", "1", "", "", "s10"]]
    csv_file, tsv_file = tmp_path / "new.csv", tmp_path / "new.tsv"
    csv_file.write_text(HEADER + "".join(",".join(f'"{v}"' for v in r) + "\n" for r in rows),
                        encoding="utf-8")
    tsv_file.write_text(HEADER.replace(",", "\t")
                        + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    want = read_new_items(csv_file, meta)
    assert want.ids.tolist() == ["newA", "newB"]
    assert want.features["genres"].tolist() == ["0|2", "1"]
    np.testing.assert_array_equal(want.features["year"], [1993.0, np.nan])
    assert want.titles.tolist() == ["Alpha, night", ""]
    found = [read_new_items(tsv_file, meta)]
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"item_id": ["newA", "newB"], "genres": ["0|2", "1"],
                             "title": ["Alpha, night", ""], "year": [1993.0, None],
                             "studio": ["s01", "s10"]}), tmp_path / "new.parquet")
    found.append(read_new_items(tmp_path / "new.parquet", meta))
    for got in found:
        assert got.ids.tolist() == want.ids.tolist() and got.titles.tolist() == ["Alpha, night", ""]
        for name, values in want.features.items():
            np.testing.assert_array_equal(got.features[name], values, err_msg=name)


def _refused(argv: list[str], match: str) -> None:
    status, stdout, stderr = run(argv)
    assert status == 2, stderr
    assert stdout == "" and len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith("tfrec-p5: error: ") and match in stderr, stderr


def test_add_items_refusals(tastes, plain, tmp_path):
    good = tmp_path / "good.csv"
    good.write_text(HEADER + "newA,0,alpha,1993,s01\n", encoding="utf-8")
    base = str(tastes["base"])
    _refused(["add-items", "--model", str(plain["base"]), "--items", str(good)],
             "cannot score items by their features")
    missing = tmp_path / "missing.csv"
    missing.write_text("item_id,genres,title,studio\nnewA,0,alpha,s01\n", encoding="utf-8")
    _refused(["add-items", "--model", base, "--items", str(missing)], "no column 'year'")
    known = tmp_path / "known.csv"
    known.write_text(HEADER + "a3,0,alpha,1993,s01\ncatB,1,beta,,s10\n", encoding="utf-8")
    _refused(["add-items", "--model", base, "--items", str(known)],
             "2 item(s) are already in export")
    twice = tmp_path / "twice.csv"
    twice.write_text(HEADER + "newA,0,alpha,1993,s01\nnewA,1,beta,1993,s01\n",
                     encoding="utf-8")
    _refused(["add-items", "--model", base, "--items", str(twice)], "listed 2 times")
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "newA,0,alpha,soon,s01\n", encoding="utf-8")
    _refused(["add-items", "--model", base, "--items", str(bad)], "not a finite number")
    _refused(["add-items", "--model", base, "--items", str(tmp_path / "nope.csv")],
             "does not exist")
    # rank scored by another head (a ranking head): metadata.json is not digested.
    other = tmp_path / "ranked"
    shutil.copytree(tastes["base"], other)
    meta_file = other / "1" / "assets.extra" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["signature_tasks"]["rank"] = "ranking"
    meta_file.write_text(json.dumps(meta))
    _refused(["add-items", "--model", str(other), "--items", str(good)],
             "rank is scored by its ranking head")
    meta["signature_tasks"]["rank"] = "retrieval"
    meta["custom_ops"] = ["scann"]                  # refused before the ScaNN ops load
    meta_file.write_text(json.dumps(meta))
    _refused(["add-items", "--model", str(other), "--items", str(good)], "ScaNN index")
    assert sorted(os.listdir(tastes["base"])) == ["1"]        # nothing was written
    assert sorted(os.listdir(other)) == ["1"]
