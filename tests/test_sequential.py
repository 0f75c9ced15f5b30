"""Sequential (next-item) task: encoder, head, leave-one-out pipeline, metrics, export, CLI.

Small hand-made data throughout: in ``_cyclic`` every user walks a ring of items
(next item = previous + 1), which any causal sequence model should learn in seconds.
"""

from __future__ import annotations

import json
import textwrap

import _forked as forked
import numpy as np
import pytest
import tensorflow as tf
from _loop_spy import FitCalled, fit_calls
from _sequences import cyclic_interactions  # tests/ is on sys.path

from tfrec_p5 import data
from tfrec_p5.data.errors import DataError
from tfrec_p5.data.interactions import Interactions
from tfrec_p5.evaluation import MostPopular, evaluate_next_items, full_ranking_metrics
from tfrec_p5.export.sequential import sequential_module
from tfrec_p5.models.sequential import (
    SequentialConfig,
    length_bucketed_dataset,
    next_item_examples,
    rank_batch_fn,
    ranking_metrics,
    ranking_queries,
    train_sequential,
)
from tfrec_p5.tasks.next_item import NextItemTask
from tfrec_p5.towers import ItemTower
from tfrec_p5.towers.history import SequenceEncoder

SMALL = dict(embedding_dim=16, max_len=8, num_blocks=1, dropout=0.1, learning_rate=5e-3,
             batch_size=32, steps_per_execution=4, patience=50)


_cyclic = cyclic_interactions


@pytest.fixture(scope="module")
def trained():
    split = data.leave_one_out(_cyclic())
    config = SequentialConfig(epochs=12, refit=False, **SMALL)  # the selected model itself
    return split, train_sequential(split.train, split.validation, config, seed=1)


def test_ema_momentum_reaches_the_training_loop(monkeypatch):
    # An option the trainer dropped would train the last iterate under a config that says
    # otherwise; the loop (training.loop.fit, tested with WeightAverage) must be asked.
    from tfrec_p5.models import sequential as sequential_module

    asked = fit_calls(monkeypatch, sequential_module)
    split = data.leave_one_out(_cyclic())
    for momentum in (0.9, None):
        with pytest.raises(FitCalled):
            train_sequential(split.train, split.validation,
                             SequentialConfig(epochs=1, ema_momentum=momentum, **SMALL))
    assert [a["ema_momentum"] for a in asked] == [0.9, None]


# ---------------------------------------------------------------------- encoder
@pytest.mark.parametrize("kind", ["transformer", "gru"])
def test_encoder_is_causal(kind):
    tf.keras.utils.set_random_seed(0)
    tower = ItemTower(30, embedding_dim=8)
    enc = SequenceEncoder(tower, max_len=6, kind=kind, num_blocks=2, dropout=0.0)
    a = np.array([[0, 0, 3, 7, 2, 9], [4, 5, 6, 7, 8, 1]], np.int64)
    b = a.copy()
    b[:, 4:] = [[11, 12], [13, 14]]            # change everything after position 3
    out_a, out_b = enc(tf.constant(a)).numpy(), enc(tf.constant(b)).numpy()
    np.testing.assert_allclose(out_a[:, :4], out_b[:, :4], atol=1e-5)
    assert not np.allclose(out_a[:, 4:], out_b[:, 4:])
    assert np.all(out_a[0, :2] == 0.0)         # padding positions are zeroed
    # Left padding is invisible: a shorter input gives the same last state.
    np.testing.assert_allclose(enc(tf.constant(a[:1, 2:])).numpy()[:, -1], out_a[:1, -1],
                               atol=1e-5)


def test_embeddings_are_shared_with_item_tower():
    tower = ItemTower(20, embedding_dim=8)
    head = NextItemTask(max_len=4, num_blocks=1)
    head.bind(None, tower)
    head.score_history(tf.constant([[0, 1, 2, 3]], tf.int64))
    assert head.encoder.item_table() is tower.id_embedding.embeddings
    names = {v.name for v in head.trainable_variables}
    assert sum("id_embedding" in n for n in names) == 1


def test_head_plugs_into_unified_model():
    from tfrec_p5.models.unified import UnifiedModel
    from tfrec_p5.towers import UserTower

    tf.keras.utils.set_random_seed(0)
    items = ItemTower(12, embedding_dim=8)
    model = UnifiedModel(UserTower(5, embedding_dim=8), items,
                         {"next_item": NextItemTask(max_len=4, num_blocks=1, dropout=0.0)})
    model.compile(tf.keras.optimizers.Adam(0.05))
    hist = np.array([[0, 1, 2, 3], [0, 0, 4, 5]] * 8, np.int64)
    nxt = np.array([[0, 2, 3, 4], [0, 0, 5, 6]] * 8, np.int64)
    ds = tf.data.Dataset.from_tensors({"user_id": np.ones(16, np.int64), "history": hist,
                                       "next_item": nxt}).repeat(30)
    losses = model.fit(ds, epochs=1, verbose=0).history["loss"]
    assert losses[-1] < np.log(11)
    head = model.heads["next_item"]
    assert head.encoder.item_table() is items.id_embedding.embeddings
    top = tf.argmax(head.score_history(tf.constant([[0, 1, 2, 3]], tf.int64)), axis=1)
    assert int(top[0]) == 4


# ---------------------------------------------------------------------- pipeline
def test_loo_never_exposes_held_out_items_to_training():
    table = _cyclic(num_users=50, num_items=100, length=7)  # no repeats within a user
    split = data.leave_one_out(table)
    vocabs = data.Vocabularies.build(split.train)
    ex = next_item_examples(split.train, vocabs, max_len=4)
    held = {}
    for part in (split.validation, split.test):
        for u, i in zip(part.user_id, part.item_id, strict=True):
            held.setdefault(vocabs.user.lookup(np.array([u]))[0], set()).add(
                vocabs.item.lookup(np.array([i]))[0])
    for u, h, t in zip(ex["user_id"], ex["history"], ex["next_item"], strict=True):
        seen = set(h[h > 0]) | set(t[t > 0])
        assert not seen & held[u]
    # All prefixes: 5 training items -> 4 targets per user, each the successor.
    assert (ex["next_item"] > 0).sum() == 50 * 4
    rows = np.arange(len(ex["history"]))
    assert np.all(ex["history"][rows, -1] != 0)
    # Validation inputs are training items only; test inputs add the validation item.
    q = ranking_queries(split.train, split.validation, vocabs, max_len=8)
    assert (q.history > 0).sum(axis=1).max() == 5
    q = ranking_queries(Interactions.concat(split.train, split.validation), split.test, vocabs, 8)
    assert (q.history > 0).sum(axis=1).max() == 6


def test_bucketed_batches_keep_every_row_once_and_trim_padding():
    table = _cyclic(num_users=70, num_items=30, length=5)
    table = table.take(np.flatnonzero(~((table.user_id == "u3") &
                                        (table.timestamp > 1))))  # one short user
    vocabs = data.Vocabularies.build(table)
    ex = next_item_examples(table, vocabs, max_len=10)
    ds = length_bucketed_dataset(ex, batch_size=16, seed=0, chunk_batches=2)
    users = []
    for batch in ds:
        assert batch["history"].shape[1] <= 4
        assert np.all(batch["history"].numpy()[:, -1] > 0)
        users.extend(batch["user_id"].numpy().tolist())
    assert sorted(users) == sorted(ex["user_id"].tolist())


# ---------------------------------------------------------------------- metrics
class _FixedScores:
    """A stand-in head with known scores (to test ranks and ties)."""

    def __init__(self, scores):
        self.scores = tf.constant(scores, tf.float32)

    def score_history(self, history):
        return tf.gather(self.scores, history[:, -1])


def test_in_graph_ranks_exclude_history_and_break_ties_pessimistically():
    head = _FixedScores([[0.0, 5.0, 3.0, 3.0, 1.0]])  # item 2 ties item 3
    ranks = rank_batch_fn(head)(tf.constant([[0, 0], [0, 0], [0, 0]], tf.int64),
                                tf.constant([2, 2, 4], tf.int64),
                                tf.constant([[-1], [1], [1]], tf.int64)).numpy()
    # target 2: beaten by 1 (5.0) and tied with 3 -> rank 3; excluding 1 -> rank 2;
    # target 4 (1.0) with 1 excluded: beaten by 2 and 3 only -> rank 3.
    assert ranks.tolist() == [3, 2, 3]


def test_evaluate_next_items_both_protocols_with_ties():
    hist = Interactions.from_columns({"user_id": ["a", "a"], "item_id": ["x0", "x1"],
                                      "timestamp": [0, 1]})
    held = Interactions.from_columns({"user_id": ["a"], "item_id": ["x5"], "timestamp": [2]})
    catalog = np.array([f"x{i}" for i in range(6)])

    def signatures(name):
        if name == "next_items":
            return lambda history: {"item_ids": tf.constant([["x3", "x5", "x2"]])}
        # every candidate scores the same: pessimistic ties put x5 last of 4 candidates
        return lambda history, item_id: {"scores": tf.zeros(tf.shape(item_id))}
    out = evaluate_next_items(signatures, held, hist, protocol="all", num_negatives=3,
                              catalog=catalog)
    assert out["hr@5"] == 1.0 and out["ndcg@5"] == pytest.approx(1 / np.log2(3))
    assert out["sampled_hr@1"] == 0.0 and out["sampled_hr@5"] == 1.0
    assert out["sampled_ndcg@5"] == pytest.approx(1 / np.log2(5))


def test_a_catalog_too_small_for_the_sampled_protocol_is_said_not_crashed():
    """6 items, 3 seen by the user: 3 never-seen items cannot give 4 negatives. "all"
    keeps the full-ranking metrics and warns why the sampled ones are missing;
    "sampled" alone refuses in one line."""
    hist = Interactions.from_columns({"user_id": ["a", "a"], "item_id": ["x0", "x1"]})
    held = Interactions.from_columns({"user_id": ["a"], "item_id": ["x5"]})
    catalog = np.array([f"x{i}" for i in range(6)])

    def signatures(name):
        return lambda history: {"item_ids": tf.constant([["x3", "x5", "x2"]])}
    with pytest.warns(UserWarning, match="sampled 1 [+] 4 metrics left out: a user has only "
                                         "3 never-seen items of the 6"):
        out = evaluate_next_items(signatures, held, hist, protocol="all", num_negatives=4,
                                  catalog=catalog)
    assert out["hr@5"] == 1.0 and not any(k.startswith("sampled_") for k in out)
    with pytest.raises(DataError, match="only 3 never-seen items"):
        evaluate_next_items(signatures, held, hist, protocol="sampled", num_negatives=4,
                            catalog=catalog)


def test_evaluate_next_items_scores_the_first_held_out_event_in_time():
    # A temporal split leaves several held-out events per user, in file order: the next
    # item is the earliest (x3 at time 3), not the first row (x5 at time 5).
    hist = Interactions.from_columns({"user_id": ["a", "a"], "item_id": ["x0", "x1"],
                                      "timestamp": [0, 1]})
    held = Interactions.from_columns({"user_id": ["a", "a"], "item_id": ["x5", "x3"],
                                      "timestamp": [5, 3]})

    def signatures(name):
        return lambda history: {"item_ids": tf.constant([["x3", "x2"]])}
    assert evaluate_next_items(signatures, held, hist, protocol="full")["hr@5"] == 1.0


def test_validation_queries_rank_the_first_held_out_event_in_time():
    # after a time cut a user holds several validation events: the model is selected on
    # the earliest, as the test scores it (evaluate_next_items), not on the last row
    hist = Interactions.from_columns({"user_id": ["a", "a"], "item_id": ["x0", "x1"],
                                      "timestamp": [0, 1]})
    held = Interactions.from_columns({"user_id": ["a", "a", "a"],
                                      "item_id": ["x5", "x3", "x4"], "timestamp": [5, 3, 4]})
    vocabs = data.Vocabularies.build(Interactions.concat(hist, held))
    q = ranking_queries(hist, held, vocabs, max_len=4)
    assert vocabs.item.lookup(np.array(["x3"])).tolist() == q.targets.tolist()


def test_cli_sequential_validates_a_temporal_split_on_its_own_time_cut(tmp_path, capsys):
    from tfrec_p5.cli import main

    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({**SMALL, "refit": False}))
    assert main(["train", "--task", "sequential", "--data",
                 "synthetic:num_users=150,num_items=120,num_interactions=3000",
                 "--split", "temporal:0.8", "--epochs", "1", "--config", str(cfg),
                 "--no-references", "--out", str(tmp_path / "saved")]) == 0
    printed = capsys.readouterr().out
    assert "the first event after the same time cut inside the training part" in printed
    assert "each user's last training event" not in printed


# ---------------------------------------------------------------------- training
def test_training_beats_most_popular(trained):
    split, model = trained
    queries = ranking_queries(split.train, split.validation, model.vocabs, 8)
    got = ranking_metrics(model.head, queries)
    pop = MostPopular.fit(model.vocabs.item.lookup(split.train.item_id), len(model.vocabs.item))
    ref = full_ranking_metrics(pop.score, queries.history, queries.targets[:, None],
                               queries.exclude, ks=(10,))
    assert got["hr@10"] > 0.6 > ref["hr@10"] + 0.3
    assert model.best_epoch >= 1 and model.history[0]["epoch"] == 1
    assert got == pytest.approx(model.best_metrics)  # best weights restored
    # fit(build_on=...) made the variables and the slots: one trace of the step, not two
    assert model.model.train_tf_function.experimental_get_tracing_count() == 1


def test_refit_adds_the_validation_items_and_keeps_the_selection_metrics():
    table = _cyclic(num_users=60, num_items=30, length=6, seed=2)
    users, items = table.user_id.copy(), table.item_id.copy().astype(object)
    items[4] = "i_only_in_validation"  # user u0's second-to-last event (time 4 of 0..5)
    items[11] = "i_only_in_test"        # user u1's last event
    table = Interactions.from_columns({"user_id": users, "item_id": items,
                                       "timestamp": table.timestamp})
    split = data.leave_one_out(table)
    assert "i_only_in_validation" not in set(split.train.item_id)
    assert "i_only_in_validation" in set(split.validation.item_id)
    assert "i_only_in_test" in set(split.test.item_id)
    config = SequentialConfig(epochs=3, **SMALL)
    assert config.refit  # the documented default
    model = train_sequential(split.train, split.validation, config, seed=0)
    selected = train_sequential(split.train, split.validation, config.replace(refit=False),
                                seed=0)
    assert model.vocabs.item.lookup(np.array(["i_only_in_validation"]))[0] > 0
    assert selected.vocabs.item.lookup(np.array(["i_only_in_validation"]))[0] == 0
    assert model.vocabs.item.lookup(np.array(["i_only_in_test"]))[0] == 0  # never trained
    refit_rows = [r for r in model.history if r.get("refit")]
    assert len(refit_rows) == model.best_epoch >= 1
    assert model.epochs_run == selected.epochs_run + model.best_epoch
    assert model.best_metrics == pytest.approx(selected.best_metrics)


def test_sampled_softmax_option_learns():
    split = data.leave_one_out(_cyclic(num_users=80))
    config = SequentialConfig(epochs=6, loss="sampled", num_negatives=10, refit=False,
                              **SMALL)  # the selection run's metrics: no refit needed
    model = train_sequential(split.train, split.validation, config, seed=0)
    assert model.best_metrics["hr@10"] > 0.5


# ---------------------------------------------------------------------- export
def test_next_items_signature(trained, tmp_path):
    split, model = trained
    module = sequential_module(model.vocabs, model.head, top_k=5)
    fn = module.signature("next_items")
    long = [f"i{i}" for i in range(3, 3 + 20)]                 # longer than max_len 8
    hist = tf.constant([long, ["i0", "i1", "i2"] + [""] * 17, [""] * 20,
                        ["i7", "nobody"] + [""] * 18])
    out = fn(history=hist)
    ids = out["item_ids"].numpy().astype(str)
    assert ids.shape == (4, 5)
    for row, h in enumerate(hist.numpy().astype(str)):
        assert not set(ids[row]) & set(h)                        # history excluded
    assert ids[0, 0] == "i23" and ids[1, 0] == "i3"             # the ring continues
    assert np.all(np.diff(out["scores"].numpy(), axis=1) <= 0)
    # An all-padding row gets the most popular items (vocabulary order).
    assert list(ids[2]) == list(model.vocabs.item.tokens[:5])
    # Only the last max_len real items matter.
    same = fn(history=tf.constant([long[-8:]]))["item_ids"].numpy().astype(str)
    assert not set(same[0]) & set(long[-8:])
    scores = module.signature("score_items")(history=tf.constant([long[-8:]]),
                                             item_id=tf.constant([["i23", "i5"]]))["scores"]
    assert scores.numpy()[0, 0] > scores.numpy()[0, 1]
    # Unknown IDs and holes are left out of what the model reads: an unknown newest
    # item does not blank the query (the ring still continues after i2).
    holes = fn(history=tf.constant([["i0", "nobody", "i1", "", "i2", "nobody"]]))
    plain = fn(history=tf.constant([["i0", "i1", "i2"]]))
    np.testing.assert_array_equal(holes["item_ids"].numpy(), plain["item_ids"].numpy())
    np.testing.assert_allclose(holes["scores"].numpy(), plain["scores"].numpy(), rtol=1e-5)
    assert plain["item_ids"].numpy()[0, 0] == b"i3"

    from tfrec_p5.export import export
    path = export(module, tmp_path / "seq")
    script = textwrap.dedent("""
        import json, sys, tensorflow as tf
        m = tf.saved_model.load(sys.argv[1])
        out = m.signatures["next_items"](history=tf.constant([["i0", "i1", ""], ["", "", ""]]))
        bad = sorted({m.split(".")[0] for m in sys.modules}
                     & {"tfrec_p5", "tensorflow_recommenders", "tf_keras"})
        print(json.dumps([out["item_ids"].numpy()[0, 0].decode(), out["item_ids"].shape[1],
                          bad]))
    """)
    res = forked.run(["-c", script, str(path)], kind="tensorflow", timeout=120,
                     env=forked.tf_only_env(), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    first, k, bad = json.loads(res.stdout.strip().splitlines()[-1])
    assert first == "i2" and k == 5 and bad == []


def test_cli_train_and_evaluate_sequential(tmp_path, capsys):
    from tfrec_p5.cli import main

    table = _cyclic(num_users=120, num_items=130, length=8, seed=3)
    path = tmp_path / "seq.txt"
    rows: dict[str, list[str]] = {}
    for u, i in zip(table.user_id, table.item_id, strict=True):
        rows.setdefault(u, []).append(i)
    path.write_text("".join(f"{u} {' '.join(v)}\n" for u, v in rows.items()))
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({k: v for k, v in SMALL.items()}))
    out = tmp_path / "saved"
    assert main(["train", "--task", "sequential", "--data", f"amazon:{path}", "--split",
                 "leave-one-out", "--epochs", "3", "--config", str(cfg), "--top-k", "20",
                 "--quiet", "--json", "--out", str(out)]) == 0
    trained_metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"test_hr@10", "test_ndcg@10", "test_sampled_hr@1", "validation_ndcg@10"} \
        <= set(trained_metrics)
    assert main(["evaluate", "--model", str(out), "--protocol", "full", "--json"]) == 0
    full = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert full["test_ndcg@10"] == pytest.approx(trained_metrics["test_ndcg@10"])
    assert "test_sampled_hr@1" not in full
    assert main(["evaluate", "--model", str(out), "--protocol", "sampled:99", "--json"]) == 0
    sampled = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sampled["test_sampled_ndcg@10"] == pytest.approx(
        trained_metrics["test_sampled_ndcg@10"])
    # `recommend --history`: next_items after a typed history, its items excluded.
    history = next(iter(rows.values()))[:3]
    assert main(["recommend", "--model", str(out), "--history", ",".join(history), "-k", "5",
                 "--json"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])[",".join(history)]
    assert len(got) == 5 and not set(history) & {g["item_id"] for g in got}


def _histories(lengths: list[int]) -> Interactions:
    users = np.repeat([f"u{i}" for i in range(len(lengths))], lengths)
    items = np.concatenate([np.arange(n) for n in lengths]).astype(str)
    return Interactions.from_columns({"user_id": users, "item_id": items})


def test_auto_max_len_follows_the_histories_within_its_range():
    short = _histories([5] * 95 + [21] * 5)          # Beauty-like: 95 % at most 5-21 items
    config, notes = SequentialConfig().for_data(short, num_items=12_101)
    assert config.max_len == 50 and config.loss == "softmax"
    assert notes[0].startswith("max_len 50 (auto: 95 % of the training histories have at "
                               "most 5 items")
    medium = _histories([120] * 100)
    assert SequentialConfig().for_data(medium, 1_000)[0].max_len == 120
    long = _histories([400] * 100)
    assert SequentialConfig().for_data(long, 1_000)[0].max_len == 200
    # A length the user gives is kept, and says nothing.
    config, notes = SequentialConfig(max_len=8, loss="softmax").for_data(long, 1_000)
    assert (config.max_len, notes) == (8, ())


def test_auto_loss_switches_to_sampled_when_full_logits_get_large():
    config, notes = SequentialConfig(max_len=50).for_data(_histories([10] * 10), 1_000_000)
    assert config.loss == "sampled"
    assert "loss sampled (auto: a batch's logits over the 1,000,000 items take up to " \
        "47.68 GiB, over the 1 GiB of the full softmax)" in notes
    assert SequentialConfig(max_len=50).for_data(_histories([10] * 10), 12_101)[0].loss \
        == "softmax"
    with pytest.raises(ValueError, match="max_len must be a length or 'auto'"):
        SequentialConfig(max_len="long")
    with pytest.raises(ValueError, match="loss must be one of"):
        SequentialConfig(loss="bce")
