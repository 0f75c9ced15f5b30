"""``tfrec-p5 add-items`` on a next-item export: added items in ``next_items``.

Two worlds of users (half only ever pick items of attribute 1, half of attribute 2)
train a tiny next-item model with ``item_attributes`` and a catalog with one untrained
item per world (``new0``, ``new1``). Items added to the export afterwards with the same
attributes (``add0``, ``add1``) must score exactly like those catalog items -- what the
trained head gives an item known only by its features -- and be served by the new
version's ``next_items`` / ``score_items``, checked in a process that imports only
TensorFlow.
"""

from __future__ import annotations

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
from tfrec_p5.export import export, load_export
from tfrec_p5.export.sequential import sequential_module
from tfrec_p5.models.sequential import SequentialConfig, train_sequential

TOP_K = 25
FAST = dict(embedding_dim=16, max_len=8, num_blocks=1, epochs=6, patience=0, refit=False,
            dropout=0.1, steps_per_execution=1, top_k=TOP_K)


def _attributes(ids) -> np.ndarray:
    return np.array([[1 if i.startswith(("w0", "new0", "add0")) else 2] for i in ids],
                    np.int64)


def _tables() -> tuple[Interactions, Interactions, list[list[str]]]:
    """The sequences, a catalog with ``new0`` / ``new1`` that no sequence holds, and
    every user's last three items as a history (world ``u % 2``)."""
    rng = np.random.default_rng(0)
    users, items, ts, histories = [], [], [], []
    for u in range(120):
        picked = [f"w{u % 2}_{i}" for i in rng.choice(20, 8, replace=False)]
        users += [f"u{u}"] * len(picked)
        items += picked
        ts += list(range(len(picked)))
        histories.append(picked[-3:])
    kinds = {"item_attributes": "multi_categorical"}
    table = Interactions.from_columns(
        {"user_id": users, "item_id": items, "timestamp": ts,
         "item_attributes": _attributes(items)},
        item_features=tuple(kinds), feature_kinds=kinds)
    ids = [*sorted(set(items)), "new0", "new1"]
    catalog = Interactions.from_columns(
        {"user_id": [""] * len(ids), "item_id": ids, "item_attributes": _attributes(ids)},
        item_features=tuple(kinds), feature_kinds=kinds)
    return table, catalog, histories


WORLD = np.arange(120) % 2


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    table, catalog, histories = _tables()
    config = SequentialConfig(item_id_dropout=0.5, **FAST)
    trained = train_sequential(table, None, config, seed=0, catalog=catalog)
    module = sequential_module(trained.vocabs, trained.head, top_k=TOP_K,
                               side_features=trained.side_features)
    base = tmp_path_factory.mktemp("saved_models") / "worlds"
    export(module, base)
    return {"trained": trained, "module": module, "base": base, "histories": histories}


def test_score_new_items_is_a_catalog_items_next_item_score(worlds):
    trained, module, histories = worlds["trained"], worlds["module"], worlds["histories"]
    assert {"next_items", "score_items", "score_new_items"} <= set(module.signature_names())
    history = tf.constant(histories)
    scores = module.signature("score_new_items")(
        history=history, item_attributes=tf.constant(["1", "2"]))["scores"].numpy()
    # The trained head's scores of the catalog items new0 / new1 for the same histories.
    vocab = trained.vocabs.item
    head_scores = trained.head.score_history(
        tf.constant(vocab.lookup(np.array(histories)), tf.int64)).numpy()
    want = head_scores[:, vocab.lookup(np.array(["new0", "new1"]))]
    np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-5)
    # Features, not IDs: each world prefers the new item of its attribute.
    assert (scores[WORLD == 0, 0] > scores[WORLD == 0, 1]).mean() >= 0.9
    assert (scores[WORLD == 1, 1] > scores[WORLD == 1, 0]).mean() >= 0.9


CHILD = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    path, histories = sys.argv[1], json.loads(sys.argv[2])
    m = tf.saved_model.load(path)
    width = max(len(h) for h in histories)
    history = tf.constant([h + [""] * (width - len(h)) for h in histories])
    nxt = m.signatures["next_items"](history=history)
    cand = tf.constant([["add0", "add1", "new0", "w0_1", "nobody"]] * len(histories))
    scored = m.signatures["score_items"](history=history, item_id=cand)
    print(json.dumps({
        "ids": nxt["item_ids"].numpy().astype(str).tolist(),
        "scores": nxt["scores"].numpy().tolist(),
        "score_items": scored["scores"].numpy().tolist(),
        "signatures": sorted(m.signatures),
        "modules": sorted(n for n in sys.modules
                    if n.split(".")[0] in ("tfrec_p5",
                                           "tensorflow_recommenders"))}))
""")


def _bare_tensorflow(version_dir, histories: list[list[str]]) -> dict:
    """Call the version's signatures in a process that imports only TensorFlow."""
    return run_tf_only(CHILD, version_dir, json.dumps(histories))


def test_add_items_serves_new_items_in_next_items(worlds, tmp_path):
    base = tmp_path / "worlds"
    shutil.copytree(worlds["base"], base)
    items = tmp_path / "new.csv"
    items.write_text("item_id,item_attributes\nadd0,1\nadd1,2\n", encoding="utf-8")
    status, stdout, stderr = run(["add-items", "--model", str(base), "--items", str(items)])
    assert status == 0, stderr
    assert stdout.startswith(f"wrote {base / '2'}: 2 new item(s)")
    assert "served by next_items and score_items" in stdout
    _, version_dir, meta = load_export(base)                    # digests checked
    assert meta["added_items"]["served_by"] == ["next_items", "score_items"]
    assert meta["next_items"] == {"k": TOP_K, "top_k": TOP_K}

    histories = worlds["histories"]
    # The last two: an added item in the history is never returned for it.
    asked = histories + [["add0", "w0_1", "w0_2"], ["nobody", "w0_1", "w0_2"]]
    got = _bare_tensorflow(version_dir, asked)
    assert got["modules"] == []
    assert {"next_items", "score_items", "score_new_items"} <= set(got["signatures"])
    # Each added item scores exactly as the catalog item of the same attributes does in
    # the trained head, in score_items and in next_items.
    module = worlds["module"]
    cand = tf.constant([["new0", "new1", "w0_1", "nobody"]] * len(histories))
    want = module.signature("score_items")(history=tf.constant(histories),
                                           item_id=cand)["scores"].numpy()
    scored = np.array(got["score_items"])[:len(histories)]
    np.testing.assert_allclose(scored[:, :2], want[:, :2], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scored[:, 2], want[:, 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scored[:, 3:], want[:, 2:], rtol=1e-5, atol=1e-5)
    for row, (ids, scores) in enumerate(zip(got["ids"][:len(histories)],
                                            got["scores"][:len(histories)], strict=True)):
        served = dict(zip(ids, scores, strict=True))
        for item, col in (("add0", 0), ("add1", 1)):
            if item in served:
                np.testing.assert_allclose(served[item], want[row, col], rtol=1e-5,
                                           atol=1e-5)
        assert not set(histories[row]) & set(ids)
        assert np.all(np.diff(scores) <= 0)
    # The new world-0 item is served to world-0 histories, lower or not at all to world 1.
    position = {item: np.array([ids.index(item) if item in ids else TOP_K
                                for ids in got["ids"][:len(histories)]])
                for item in ("add0", "add1")}
    assert (position["add0"][WORLD == 0] < TOP_K).mean() >= 0.9
    assert position["add0"][WORLD == 0].mean() < position["add0"][WORLD == 1].mean()
    assert (position["add1"][WORLD == 1] < TOP_K).mean() >= 0.9
    assert position["add1"][WORLD == 1].mean() < position["add1"][WORLD == 0].mean()
    # An added item in a history is unknown to the query (as "nobody") but not served.
    seen, unknown = got["ids"][-2], got["ids"][-1]
    assert "add0" not in seen and "add0" in unknown
    # new1 and add1 have the same attributes: an exact tie, whose order the CPU's kernels
    # decide, so the comparison reads them as one item.
    tie = {"new1": "new1|add1", "add1": "new1|add1"}
    assert [tie.get(i, i) for i in unknown if i != "add0"][:TOP_K - 1] == \
        [tie.get(i, i) for i in seen[:TOP_K - 1]]

    # Adding again extends the original version directly (one level), keeping add0.
    more = tmp_path / "more.csv"
    more.write_text("item_id,item_attributes\nadd2,1\n", encoding="utf-8")
    status, stdout, stderr = run(["add-items", "--model", str(base), "--items", str(more),
                                  "--json"])
    assert status == 0, stderr
    assert json.loads(stdout)["served_by"] == ["next_items", "score_items"]
    loaded, version_dir, meta = load_export(base)
    assert version_dir == str(base / "3") and meta["added_items"]["total"] == 3
    assert not hasattr(loaded.extends, "extends")
    scores = loaded.signatures["score_items"](
        history=tf.constant(histories[:2]),
        item_id=tf.constant([["add0", "add2", "add1"]] * 2))["scores"].numpy()
    np.testing.assert_allclose(scores[:, 0], scores[:, 1], rtol=1e-6)   # same features
    np.testing.assert_allclose(scores[:, [0, 2]], want[:2, :2], rtol=1e-5, atol=1e-5)
    status, _, stderr = run(["add-items", "--model", str(base), "--items", str(more)])
    assert status == 2 and "1 item(s) are already in export" in stderr


def test_add_items_refuses_a_next_item_model_without_item_features(tmp_path):
    table, _, _ = _tables()
    config = SequentialConfig(use_item_features=False, **{**FAST, "epochs": 1})
    trained = train_sequential(table, None, config, seed=0)
    module = sequential_module(trained.vocabs, trained.head, top_k=5,
                               side_features=trained.side_features)
    assert "score_new_items" not in module.signature_names()
    base = tmp_path / "plain"
    export(module, base)
    items = tmp_path / "new.csv"
    items.write_text("item_id,item_attributes\nadd0,1\n", encoding="utf-8")
    status, stdout, stderr = run(["add-items", "--model", str(base), "--items", str(items)])
    assert status == 2 and stdout == "" and len(stderr.strip().splitlines()) == 1, stderr
    assert "next-item model that cannot score items by their features" in stderr
    assert sorted(os.listdir(base)) == ["1"]


def test_cli_sequential_train_with_items_then_add_items(tmp_path):
    """``train --task sequential --items`` exports ``score_new_items``; ``add-items``
    extends that export."""
    rng = np.random.default_rng(0)
    rows = ["user_id,item_id,timestamp"]
    for u in range(60):
        rows += [f"u{u},w{u % 2}_{i},{t}"
                 for t, i in enumerate(rng.choice(60, 6, replace=False))]
    log, catalog = tmp_path / "log.csv", tmp_path / "items.csv"
    log.write_text("\n".join(rows) + "\n")
    catalog.write_text("item_id,genre\n" + "".join(
        f"w{w}_{i},g{w}\n" for w in (0, 1) for i in range(60)) + "new0,g0\n")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**{k: v for k, v in FAST.items() if k != "top_k"},
                                  "epochs": 1, "item_id_dropout": 0.5}))
    out = tmp_path / "out"
    status, stdout, stderr = run(["train", "--task", "sequential", "--data", f"csv:{log}",
                                  "--items", str(catalog), "--config", str(config),
                                  "--split", "leave-one-out", "--no-references", "--quiet",
                                  "--out", str(out)])
    assert status == 0, stderr + stdout
    new = tmp_path / "new.csv"
    new.write_text("item_id,genre\nadd0,g0\n")
    status, stdout, stderr = run(["add-items", "--model", str(out), "--items", str(new)])
    assert status == 0, stderr
    loaded, _, _ = load_export(out)
    scores = loaded.signatures["score_items"](
        history=tf.constant([["w0_1", "w0_2"]]),
        item_id=tf.constant([["add0", "new0"]]))["scores"].numpy()
    np.testing.assert_allclose(scores[0, 0], scores[0, 1], rtol=1e-5)   # same features
