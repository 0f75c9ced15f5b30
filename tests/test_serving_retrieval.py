"""``recommend`` / ``rank`` / ``predict_rating`` exports, loaded by bare TensorFlow, and the
CLI ``train --task all`` → ``recommend`` round trip."""

from __future__ import annotations

import json
import textwrap

import _forked as forked
import numpy as np
import pytest

import tfrec_p5  # noqa: F401  (conftest.py imported it before TensorFlow)
from tfrec_p5 import cli
from tfrec_p5.cli import CliError
from tfrec_p5.cli.builtin import parse_weights
from tfrec_p5.data import load, random_split
from tfrec_p5.export import build_module, export, item_titles, load_metadata
from tfrec_p5.models.unified import UnifiedConfig, train_unified

SMALL = {"num_users": 300, "num_items": 150, "num_interactions": 6000}
SPEC = "synthetic?num_users=300&num_items=150&num_interactions=6000"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    split = random_split(load("synthetic", **SMALL), 0.8, seed=42)
    trained = train_unified(split.train, None, UnifiedConfig(
        weights={"rating": 1.0, "retrieval": 1.0}, epochs=1, batch_size=512), verbose=0)
    module = build_module(trained, k=20, titles=item_titles(split.train, trained.vocabs))
    path = export(module, tmp_path_factory.mktemp("exports") / "all", metadata={"x": 1})
    return {"path": path, "trained": trained, "train": split.train, "module": module}


def _run_tf_only(script: str, *args: str) -> dict:
    proc = forked.run(["-c", textwrap.dedent(script), *args], kind="tensorflow",
                      env=forked.tf_only_env(), timeout=120, cwd="/")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_signatures_load_and_run_in_a_tensorflow_only_process(exported):
    train = exported["train"]
    user = str(train.user_id[0])
    seen = sorted(set(train.item_id[train.user_id == user].tolist()))
    other = [i for i in np.unique(train.item_id).tolist() if i not in seen][:4]
    script = """
        import json, sys
        import tensorflow as tf
        m = tf.saved_model.load(sys.argv[1])
        user, items = sys.argv[2], json.loads(sys.argv[3])
        rec = m.signatures["recommend"](user_id=tf.constant([user, "nobody"]))
        dflt = m.signatures["serving_default"](user_id=tf.constant([user]))
        rank = m.signatures["rank"](user_id=tf.constant([user]),
                                    item_ids=tf.constant([items + ["never-seen"]]))
        rating = m.signatures["predict_rating"](user_id=tf.constant([user]),
                                                item_id=tf.constant([items[0]]))
        leaked = sorted({k.split(".")[0] for k in sys.modules}
                        & {"tfrec_p5", "tensorflow_recommenders", "tf_keras"})
        print(json.dumps({
            "rec": rec["item_ids"].numpy().astype(str).tolist(),
            "rec_scores": rec["scores"].numpy().tolist(),
            "default": dflt["item_ids"].numpy().astype(str).tolist(),
            "rank": rank["item_ids"].numpy().astype(str).tolist(),
            "rank_scores": rank["scores"].numpy().tolist(),
            "rating": rating["rating"].numpy().tolist(), "leaked": leaked,
            "sigs": sorted(m.signatures)}))
    """
    out = _run_tf_only(script, str(exported["path"]), user, json.dumps(other))
    assert out["leaked"] == []
    assert out["sigs"] == ["predict_rating", "rank", "recommend", "serving_default"]
    known, unknown = out["rec"]
    assert len(known) == 20 and len(set(known)) == 20
    assert not set(known) & set(seen)                       # training items excluded
    assert out["default"][0] == known                       # serving_default = recommend
    assert out["rec_scores"][0] == sorted(out["rec_scores"][0], reverse=True)
    # Unknown user: the most popular training items, most popular first.
    ids, counts = np.unique(train.item_id, return_counts=True)
    top = ids[np.lexsort((ids, -counts))][:20].tolist()
    assert unknown[:5] == top[:5]
    # rank: the same items, re-ordered by score; the unknown item last.
    assert sorted(out["rank"][0][:-1]) == sorted(other)
    assert out["rank"][0][-1] == "never-seen"
    finite = out["rank_scores"][0][:-1]
    assert finite == sorted(finite, reverse=True)
    assert 1.0 <= out["rating"][0] <= 5.0


def test_rank_matches_in_memory_retrieval_scores(exported):
    import tensorflow as tf

    trained, module = exported["trained"], exported["module"]
    user = str(exported["train"].user_id[3])
    items = trained.vocabs.item.tokens[:6].tolist()
    out = module.signature("rank")(user_id=tf.constant([user]), item_ids=tf.constant([items]))
    u = trained.vocabs.user.lookup(np.array([user]))
    scores = trained.retrieval_scores(u)[0, trained.vocabs.item.lookup(np.array(items))]
    expected = [items[i] for i in np.argsort(-scores, kind="stable")]
    assert out["item_ids"].numpy().astype(str).tolist()[0] == expected


def test_include_seen_export_can_return_training_items(exported):
    import tensorflow as tf

    trained, train = exported["trained"], exported["train"]
    module = build_module(trained, k=150, exclude_seen=False)
    user = str(train.user_id[0])
    recs = module.signature("recommend")(user_id=tf.constant([user]))["item_ids"]
    assert set(train.item_id[train.user_id == user]) <= set(recs.numpy().astype(str)[0])


def test_parse_weights():
    assert parse_weights("rating=1,retrieval=0.5") == {"rating": 1.0, "retrieval": 0.5}
    with pytest.raises(CliError, match="task=weight"):
        parse_weights("rating")


def test_cli_train_all_then_recommend_and_evaluate(tmp_path, capsys):
    out = tmp_path / "all"
    status = cli.main(["train", "--task", "all", "--data", SPEC, "--epochs", "1",
                       "--weights", "rating=1,retrieval=1", "--top-k", "15", "--quiet",
                       "--json", "--out", str(out)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    metrics = json.loads(captured.out.strip().splitlines()[-1])
    assert {"test_recall@10", "test_ndcg@10", "test_rating_rmse"} <= set(metrics)
    # a random split holds out random pairs, not each user's last event: no next-item head
    meta = load_metadata(out / "1")
    assert meta["weights"] == {"rating": 1.0, "retrieval": 1.0} and meta["top_k"] == 15
    assert "next_items" not in meta["signatures"]
    assert "recommend" in meta["signatures"] and "predict_rating" in meta["signatures"]

    status = cli.main(["recommend", "--model", str(out), "--user", "u1", "-k", "5"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    lines = captured.out.strip().splitlines()
    assert lines[0] == "user u1:" and len(lines) == 6
    assert lines[1].strip().startswith("1. i")
    assert any(word in lines[1] for word in ("action", "comedy", "drama", "horror",
                                             "romance", "scifi", "thriller", "animation",
                                             "documentary", "western", "musical",
                                             "mystery"))  # the title is printed

    status = cli.main(["evaluate", "--model", str(out), "--json"])
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert status == 0
    assert again["test_recall@10"] == pytest.approx(metrics["test_recall@10"], abs=1e-9)


def test_cli_retrieval_on_implicit_feedback(tmp_path, capsys):
    csv = tmp_path / "clicks.csv"
    rng = np.random.default_rng(0)
    rows = {(f"u{rng.integers(40)}", f"i{rng.integers(30)}") for _ in range(600)}
    csv.write_text("user_id,item_id\n" + "\n".join(f"{u},{i}" for u, i in sorted(rows)))
    out = tmp_path / "ret"
    status = cli.main(["train", "--task", "retrieval", "--data", f"csv:{csv}", "--epochs",
                       "1", "--quiet", "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    assert cli.main(["recommend", "--model", str(out), "--user", "u1", "--json"]) == 0
    recs = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["u1"]
    assert len(recs) == 10 and "title" not in recs[0]
