"""ScaNN (opt-in): the TFRS layer in our stack, and ``recommend`` from a ScaNN index --
close to brute force, never a seen item, refused where it cannot work.

Skipped when scann is not installed (``pip install -e '.[scann]'``; ``[dev]`` has it) or
its ops do not load into this TensorFlow (scann 1.4.2 is built for TensorFlow 2.20).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import tfrec_p5  # noqa: F401  (before TensorFlow)
from tfrec_p5.export.scann_index import scann_unavailable

# Under another TensorFlow than scann's, `import scann` raises NotFoundError, not ImportError.
if scann_unavailable():
    pytest.skip(scann_unavailable(), allow_module_level=True)
pytest.importorskip("scann")

import tensorflow as tf
from _cli import SMALL, run

from tfrec_p5.data import load, random_split
from tfrec_p5.export import (
    ExportError,
    build_module,
    export,
    load_export,
    load_metadata,
)
from tfrec_p5.export.scann_index import ScannOptions, scann_recommend
from tfrec_p5.models.unified import UnifiedConfig, train_unified

K = 10
#: Approximate on purpose: 4 of 30 leaves, few candidates re-scored (recall@10 0.97).
APPROX = ScannOptions(num_leaves=30, num_leaves_to_search=4, min_reorder=20, reorder=2)


def _recall(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx, exact,
                                                                         strict=True)]))


def test_tfrs_scann_layer_indexes_and_queries():
    import tensorflow_recommenders as tfrs

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(20, 32))
    items = (centers[rng.integers(20, size=3000)] + 0.3 * rng.normal(size=(3000, 32)))
    items = tf.constant(items.astype(np.float32))
    ids = tf.constant([f"i{i}" for i in range(3000)])
    queries = tf.constant(rng.normal(size=(50, 32)).astype(np.float32))
    scann = tfrs.layers.factorized_top_k.ScaNN(k=K, num_leaves=50, num_leaves_to_search=15,
                                               num_reordering_candidates=200)
    scann.index(items, ids)
    brute = tfrs.layers.factorized_top_k.BruteForce(k=K)
    brute.index(items, ids)
    scores, found = scann(queries)
    _, exact = brute(queries)
    assert scores.shape == (50, K) and found.dtype == tf.string
    assert _recall(found.numpy(), exact.numpy()) >= 0.9


@pytest.fixture(scope="module")
def trained():
    split = random_split(load("synthetic", num_users=300, num_items=1500,
                              num_interactions=12000), 0.8, seed=42)
    model = train_unified(split.train, None, UnifiedConfig(
        weights={"retrieval": 1.0}, epochs=2, batch_size=512), verbose=0)
    seen: dict[str, set[str]] = {}
    for u, i in zip(split.train.user_id.tolist(), split.train.item_id.tolist(), strict=True):
        seen.setdefault(u, set()).add(i)
    users = model.vocabs.user.tokens.astype(str).tolist()
    return {"model": model, "seen": seen, "users": users,
            "brute": build_module(model, k=K),
            "scann": build_module(model, k=K, index="scann", scann_options=APPROX)}


def _ids(module, users) -> np.ndarray:
    out = module.signature("recommend")(user_id=tf.constant(users))
    return out["item_ids"].numpy().astype(str)


def test_scann_recommend_is_close_to_brute_force_and_never_serves_seen_items(trained):
    users = trained["users"] + ["nobody"]
    exact, approx = _ids(trained["brute"], users), _ids(trained["scann"], users)
    assert approx.shape == (len(users), K)
    assert _recall(approx[:-1], exact[:-1]) >= 0.9
    assert approx[-1].tolist() == exact[-1].tolist()   # unknown user: the popularity list
    for user, row in zip(users, approx, strict=True):
        assert not set(row) & trained["seen"].get(user, set())
        assert "" not in row and len(set(row)) == K       # no padding, no duplicates


def test_the_scann_path_itself_excludes_seen_items_and_falls_back_when_short(trained):
    """Called directly with a sentinel fallback: the answer really comes from ScaNN; with
    one tiny leaf searched, ScaNN finds fewer than k items and brute force answers."""
    model = trained["model"]
    # Every leaf searched: ScaNN's partitions of a 2-epoch model differ by CPU (on one
    # machine APPROX's 4 nearest leaves held only 28 items), and here ScaNN must find
    # k + the most seen items for every user.
    module = build_module(model, k=K, index="scann", scann_options=ScannOptions(
        num_leaves=10, num_leaves_to_search=10, min_reorder=20, reorder=2))
    users = trained["users"]
    user_index = tf.constant(model.vocabs.user.lookup(np.array(users)), tf.int64)

    def sentinel():
        return {"item_ids": tf.fill([len(users), K], "FALLBACK"),
                "scores": tf.zeros([len(users), K])}

    out = scann_recommend(module.retrieval_index, module.scann_index, user_index, K, True,
                          sentinel)["item_ids"].numpy().astype(str)
    assert "FALLBACK" not in out
    for user, row in zip(users, out, strict=True):
        assert not set(row) & trained["seen"][user]
    short = build_module(model, k=K, index="scann", scann_options=ScannOptions(
        num_leaves=200, num_leaves_to_search=1, scoring="brute_force"))
    out = scann_recommend(short.retrieval_index, short.scann_index, user_index, K, True,
                          sentinel)["item_ids"].numpy().astype(str)
    assert (out == "FALLBACK").all()
    # Through the signature the fallback is brute force: the exact lists.
    assert (_ids(short, users) == _ids(trained["brute"], users)).all()


def test_scann_export_says_it_needs_scann_and_load_export_loads_it(trained, tmp_path,
                                                                   monkeypatch):
    path = export(trained["scann"], tmp_path / "scann")
    meta = load_metadata(path)
    assert meta["custom_ops"] == ["scann"] and meta["recommend_index"]["kind"] == "scann"
    loaded, _, _ = load_export(path)
    users = trained["users"][:20]
    got = loaded.signatures["recommend"](user_id=tf.constant(users))["item_ids"]
    assert (got.numpy().astype(str) == _ids(trained["scann"], users)).all()
    # Brute force (the default) records no custom ops.
    assert "custom_ops" not in load_metadata(export(trained["brute"], tmp_path / "bf"))
    # Without usable ScaNN ops: one ExportError that says what to install.
    import tfrec_p5.export.saved_model as saved_model

    monkeypatch.setattr(saved_model, "scann_unavailable", lambda: "scann is not installed")
    with pytest.raises(ExportError, match="needs the ScaNN ops.*scann is not installed"):
        load_export(path)


def test_padding_and_scores_follow_brute_force_on_a_tiny_catalog():
    """Users who have seen most of 40 items: both indexes pad the same rows the same way
    (default options on a tiny catalog re-score every item, so the lists are equal)."""
    split = random_split(load("synthetic", num_users=60, num_items=40,
                              num_interactions=1500), 0.8, seed=0)
    model = train_unified(split.train, None, UnifiedConfig(weights={"retrieval": 1.0},
                                                           epochs=1), verbose=0)
    users = tf.constant(model.vocabs.user.tokens.astype(str).tolist() + ["nobody"])
    exact = build_module(model, k=30).signature("recommend")(user_id=users)
    approx = build_module(model, k=30, index="scann").signature("recommend")(user_id=users)
    ids = exact["item_ids"].numpy()
    assert (ids == b"").any()                                   # some rows are padded
    assert (approx["item_ids"].numpy() == ids).all()
    # Same dot products by other kernels: equal to float32 rounding, not bit for bit.
    np.testing.assert_allclose(approx["scores"].numpy(), exact["scores"].numpy(),
                               rtol=1e-5, atol=1e-8)


def test_build_module_refuses_scann_without_a_retrieval_head():
    split = random_split(load("synthetic", num_users=60, num_items=40,
                              num_interactions=800), 0.8, seed=0)
    rating = train_unified(split.train, None, UnifiedConfig(weights={"rating": 1.0},
                                                            epochs=1), verbose=0)
    with pytest.raises(ValueError, match="needs a retrieval head"):
        build_module(rating, index="scann")
    with pytest.raises(ValueError, match="unknown recommend index"):
        build_module(rating, index="annoy")


@pytest.mark.parametrize("argv, message", [
    (["--task", "ranking"], "needs a retrieval head"),
    (["--task", "all", "--weights", "rating=1"], "needs a retrieval head"),
    (["--task", "rating"], "--index does nothing for --task rating"),
])
def test_cli_refuses_scann_where_it_cannot_work(tmp_path, argv, message):
    status, _, err = run(["train", *argv, "--data", SMALL, "--index", "scann", "--quiet",
                          "--out", str(tmp_path / "m")])
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()


def test_cli_refuses_scann_when_it_does_not_load(tmp_path, monkeypatch):
    import tfrec_p5.export.unified as unified

    monkeypatch.setattr(unified, "scann_unavailable", lambda: "ScaNN is not usable here")
    status, _, err = run(["train", "--task", "retrieval", "--data", SMALL, "--index", "scann",
                          "--quiet", "--out", str(tmp_path / "m")])
    assert status == 2 and "ScaNN is not usable here" in err
    assert len(err.strip().splitlines()) == 1


def test_cli_train_with_scann_index_then_recommend(tmp_path):
    out = tmp_path / "ret"
    status, _, err = run(["train", "--task", "retrieval", "--data", SMALL, "--epochs", "1",
                          "--index", "scann", "--top-k", "5", "--quiet", "--out", str(out)])
    assert status == 0, err
    assert load_metadata(out / "1")["custom_ops"] == ["scann"]
    status, stdout, err = run(["recommend", "--model", str(out), "--user", "u1", "--json"])
    assert status == 0, err
    assert len(json.loads(stdout.strip().splitlines()[-1])["u1"]) == 5
