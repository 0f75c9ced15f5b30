"""Serving inputs: every exported signature answers hostile requests with well-formed output.

Two small trained exports (a unified rating + retrieval + ranking model, and a sequential
model), built once for the module, are loaded in a process that imports only TensorFlow
(no tfrec_p5, TFRS or tf-keras, no ``TF_USE_LEGACY_KERAS``) and called with: empty
batches, unknown IDs, empty strings, 20,000-character and non-ASCII IDs, bytes that are
not UTF-8, candidate lists of length 0, and histories longer than ``max_len``. The
documented fallbacks (``docs/reliability.md``, "Odd serving requests") are checked value
by value:

* ``predict_rating`` / ``serving_default``: unknown or empty IDs use the OOV rows; the
  rating is finite and inside the rating range; an empty batch gives shape ``[0]``.
* ``recommend``: an unknown user gets the most popular items (the same list for every
  unknown ID); ``k`` distinct real items, scores finite and sorted; empty batch ``[0, k]``.
* ``rank``: returns the request's items re-ordered; unknown / empty items score ``-inf``
  and sort last; ``n = 0`` candidates gives ``[B, 0]``.
* ``next_items`` / ``score_items``: only the last ``max_len`` real items are read (scores
  equal those of the truncated history), every history item is excluded; an empty or
  all-unknown history gets the most popular items; zero-length histories are fine.
"""

from __future__ import annotations

import json
import textwrap

import _forked as forked
import numpy as np
import pytest
from _sequences import cyclic_interactions  # tests/ is on sys.path

from tfrec_p5.data import Interactions, leave_one_out, load, random_split
from tfrec_p5.export import build_module
from tfrec_p5.export.saved_model import export
from tfrec_p5.export.sequential import sequential_module
from tfrec_p5.models.sequential import SequentialConfig, train_sequential
from tfrec_p5.models.unified import UnifiedConfig, train_unified

K = 10
MAX_LEN = 6


def _cyclic() -> Interactions:
    return cyclic_interactions(num_users=60, num_items=30, length=8)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    base = tmp_path_factory.mktemp("serving")
    table = load("synthetic", num_users=120, num_items=60, num_interactions=2000)
    train = random_split(table, 0.8, seed=1).train
    unified = train_unified(train, None, UnifiedConfig(
        weights={"rating": 1.0, "retrieval": 1.0, "ranking": 1.0}, epochs=1,
        batch_size=256, embedding_dim=8, validation_fraction=0.0, refit=False),
        verbose=0)
    module = build_module(unified, k=K)
    all_path = export(module, base / "all")
    split = leave_one_out(_cyclic())
    seq = train_sequential(split.train, None, SequentialConfig(
        epochs=1, embedding_dim=8, max_len=MAX_LEN, num_blocks=1, batch_size=32,
        steps_per_execution=1, refit=False), seed=1)
    seq_path = export(sequential_module(seq.vocabs, seq.head, top_k=K), base / "seq")
    known_user = str(train.user_id[0])
    return {"all": all_path, "seq": seq_path, "user": known_user,
            "items": sorted(set(train.item_id.tolist()))[:4],
            "seq_items": [str(t) for t in seq.vocabs.item.tokens],
            "rating_range": list(table.rating_range)}


SCRIPT = r"""
import json, sys
import tensorflow as tf

args = json.loads(sys.argv[1])
out = {}
LONG = "x" * 20000
ODD = ["", "ünïcødé", "中文", "🙂", LONG, "nobody"]
NOT_UTF8 = b"\xff\xfe\x00"

def s(values):
    return tf.constant(values, tf.string)

def dump(result):
    return {k: {"shape": list(v.shape), "dtype": v.dtype.name,
                "value": [[x.decode("utf-8", "replace") if isinstance(x, bytes) else x
                           for x in row] if isinstance(row, list) else
                          (row.decode("utf-8", "replace") if isinstance(row, bytes) else row)
                          for row in v.numpy().tolist()]}
            for k, v in result.items()}

m = tf.saved_model.load(args["all"])
pr = m.signatures["predict_rating"]
out["rating_empty"] = dump(pr(user_id=s([]), item_id=s([])))
out["rating_odd"] = dump(pr(user_id=s(ODD + [NOT_UTF8]), item_id=s(ODD + [NOT_UTF8])))
out["rating_known"] = dump(pr(user_id=s([args["user"]]), item_id=s([args["items"][0]])))
out["default_odd"] = dump(m.signatures["serving_default"](user_id=s(ODD)))
rec = m.signatures["recommend"]
out["recommend_empty"] = dump(rec(user_id=s([])))
out["recommend_odd"] = dump(rec(user_id=s(ODD + [NOT_UTF8])))
out["recommend_known"] = dump(rec(user_id=s([args["user"]])))
rank = m.signatures["rank"]
cands = args["items"] + ["", LONG, "nobody-item", "中文"]
out["rank_empty_batch"] = dump(rank(user_id=s([]), item_ids=tf.zeros([0, 3], tf.string)))
out["rank_no_candidates"] = dump(rank(user_id=s(["u1", "x"]),
                                      item_ids=tf.zeros([2, 0], tf.string)))
out["rank_odd"] = dump(rank(user_id=s([args["user"], "", LONG]), item_ids=s([cands] * 3)))

q = tf.saved_model.load(args["seq"])
nx, sc = q.signatures["next_items"], q.signatures["score_items"]
items = args["seq_items"]
long_history = [items[i % len(items)] for i in range(200)]      # 200 > max_len
holes = [items[0], "", items[1], "", "", items[2]] + [""] * 4
out["next_long"] = dump(nx(history=s([long_history])))
out["next_last"] = dump(nx(history=s([long_history[-args["max_len"]:]])))
out["next_empty_batch"] = dump(nx(history=tf.zeros([0, 5], tf.string)))
try:  # a client sending "history": [[]] (a new user): [B, 0]
    out["next_zero_length"] = dump(nx(history=tf.zeros([2, 0], tf.string)))
except tf.errors.InvalidArgumentError as err:
    out["next_zero_length"] = {"error": str(err).strip().splitlines()[-2:]}
out["next_odd"] = dump(nx(history=s([["", "", ""], ["nobody", LONG, "中文"], holes[:3]])))
out["next_holes"] = dump(nx(history=s([holes])))
cand = s([items[:5]])
out["score_long"] = dump(sc(history=s([long_history]), item_id=cand))
out["score_last"] = dump(sc(history=s([long_history[-args["max_len"]:]]), item_id=cand))
out["score_no_candidates"] = dump(sc(history=s([items[:3]]), item_id=tf.zeros([1, 0],
                                                                          tf.string)))
out["score_unknown"] = dump(sc(history=s([items[:3]]), item_id=s([["nobody", "", LONG]])))
out["leaked"] = sorted({k.split(".")[0] for k in sys.modules}
                       & {"tfrec_p5", "tensorflow_recommenders", "tf_keras", "keras"})
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def answers(exports):
    env = forked.tf_only_env()
    args = {**{k: str(v) if k in ("all", "seq") else v for k, v in exports.items()},
            "max_len": MAX_LEN}
    proc = forked.run(["-c", textwrap.dedent(SCRIPT), json.dumps(args)], kind="tensorflow",
                      env=env, timeout=300, cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_tensorflow_only_process(answers):
    # keras may be imported by TensorFlow itself; what matters is none of *our* stack
    assert not set(answers["leaked"]) & {"tfrec_p5", "tensorflow_recommenders", "tf_keras"}


def test_predict_rating_fallbacks(answers, exports):
    lo, hi = exports["rating_range"]
    assert answers["rating_empty"]["rating"]["shape"] == [0]
    odd = answers["rating_odd"]["rating"]
    assert odd["shape"] == [7] and odd["dtype"] == "float32"
    assert all(np.isfinite(odd["value"])) and all(lo <= r <= hi for r in odd["value"])
    # every unknown ID (empty, non-ASCII, 20k chars, not UTF-8) is the same OOV user/item
    assert len(set(odd["value"])) == 1
    assert lo <= answers["rating_known"]["rating"]["value"][0] <= hi
    # serving_default is recommend in a model with a retrieval head
    assert answers["default_odd"]["item_ids"]["shape"] == [6, K]


def test_recommend_fallbacks(answers):
    assert answers["recommend_empty"]["item_ids"]["shape"] == [0, K]
    assert answers["recommend_empty"]["scores"]["shape"] == [0, K]
    odd = answers["recommend_odd"]
    assert odd["item_ids"]["shape"] == [7, K]
    rows = odd["item_ids"]["value"]
    assert all(row == rows[0] for row in rows)            # unknown → most popular, same list
    for result in (odd, answers["recommend_known"]):
        for ids, scores in zip(result["item_ids"]["value"], result["scores"]["value"],
                               strict=True):
            assert len(set(ids)) == K and "" not in ids
            assert all(np.isfinite(scores)) and scores == sorted(scores, reverse=True)


def test_rank_fallbacks(answers, exports):
    assert answers["rank_empty_batch"]["item_ids"]["shape"] == [0, 3]
    assert answers["rank_no_candidates"]["item_ids"]["shape"] == [2, 0]
    assert answers["rank_no_candidates"]["scores"]["shape"] == [2, 0]
    odd = answers["rank_odd"]
    known = exports["items"]
    for ids, scores in zip(odd["item_ids"]["value"], odd["scores"]["value"], strict=True):
        assert sorted(ids) == sorted(known + ["", "x" * 20000, "nobody-item", "中文"])
        assert ids[:len(known)] == sorted(known, key=ids.index)  # known items first
        assert set(ids[:len(known)]) == set(known)
        assert all(np.isfinite(scores[:len(known)]))
        assert all(s == -np.inf for s in scores[len(known):])  # unknown: -inf, last
        assert scores[:len(known)] == sorted(scores[:len(known)], reverse=True)


def test_next_items_fallbacks(answers, exports):
    items = exports["seq_items"]
    long_history = {items[i % len(items)] for i in range(200)}
    # A history longer than max_len reads only its last max_len items ...
    assert answers["score_long"]["scores"]["value"] == answers["score_last"]["scores"]["value"]
    # ... and excludes every item of it (here: the whole catalog → only "" padding left).
    nl = answers["next_long"]
    assert nl["item_ids"]["shape"] == [1, K]
    assert not set(nl["item_ids"]["value"][0]) & long_history
    last = answers["next_last"]["item_ids"]["value"][0]
    assert not set(last) & set(list(long_history)[:0])  # well-formed
    assert answers["next_empty_batch"]["item_ids"]["shape"] == [0, K]
    odd = answers["next_odd"]
    popular = odd["item_ids"]["value"][0]                 # all-padding history
    assert popular == items[:K]                           # most popular = vocabulary order
    assert odd["item_ids"]["value"][1] == popular         # only unknown IDs: no information
    holes = answers["next_holes"]["item_ids"]["value"][0]
    assert len(set(holes)) == K and not set(holes) & {items[0], items[1], items[2]}
    for result in (odd, answers["next_holes"], answers["next_last"]):
        for scores in result["scores"]["value"]:
            assert scores == sorted(scores, reverse=True)
    assert answers["score_no_candidates"]["scores"]["shape"] == [1, 0]
    unknown = answers["score_unknown"]["scores"]["value"][0]
    assert len(set(unknown)) == 1 and np.isfinite(unknown[0])  # the OOV row's score


def test_next_items_zero_length_history_gets_popular_items(answers, exports):
    zero = answers["next_zero_length"]
    assert "error" not in zero, zero.get("error")
    assert zero["item_ids"]["shape"] == [2, K]
    assert zero["item_ids"]["value"] == [exports["seq_items"][:K]] * 2
