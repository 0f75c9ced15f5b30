"""Retrieval head, its options, the history encoder and the listwise losses (issue #4)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import tfrec_p5  # noqa: F401  (conftest.py imported it before TensorFlow)
from tfrec_p5.data import Vocabularies, load, random_split
from tfrec_p5.evaluation import MostPopular
from tfrec_p5.models.unified import UnifiedConfig, retrieval_metrics, train_unified
from tfrec_p5.tasks import HistoryEncoder, ListMLELoss, ListwiseSoftmaxLoss, history_csr
from tfrec_p5.tasks.retrieval import RetrievalHead
from tfrec_p5.tasks.squared import SquaredRetrieval
from tfrec_p5.training import WeightAverage

# dim=2: the planted user-item factors decide most choices (with the default dim=8 the
# 16 popularity-drawn candidates dominate and even EASE does not beat most-popular).
SMALL = {"num_users": 300, "num_items": 150, "num_interactions": 6000, "dim": 2}


@pytest.fixture(scope="module")
def split():
    return random_split(load("synthetic", **SMALL), 0.8, seed=42)


@pytest.fixture(scope="module")
def trained(split):
    return train_unified(split.train, None, UnifiedConfig(epochs=8, batch_size=256,
                                                          learning_rate=5e-3), verbose=0)


def test_retrieval_beats_most_popular_on_held_out_data(split, trained):
    vocabs = trained.vocabs
    ours = trained.evaluate(split.test)
    pop = MostPopular.fit(vocabs.item.lookup(split.train.item_id), len(vocabs.item))

    def pop_score(q):
        s = pop.score(q)
        s[:, 0] = -np.inf
        return s
    base = retrieval_metrics(pop_score, split.test, vocabs, trained.seen_splits,
                             trained.seen_values)
    assert ours["retrieval_recall@10"] > base["recall@10"] + 0.03, (ours, base)
    assert ours["retrieval_ndcg@10"] > base["ndcg@10"]
    assert 0 < ours["retrieval_factorized_top_100"] <= 1


SOFTMAX = {"retrieval_loss": "softmax", "leave_target_out": True, "ema_momentum": None}


@pytest.mark.parametrize("overrides", [
    {**SOFTMAX, "log_q": False, "temperature": None},
    {**SOFTMAX, "num_hard_negatives": 8, "full_softmax": False},
    {"retrieval_loss": "softmax", "ema_momentum": None, "remove_accidental_hits": False,
     "full_softmax": False, "history": False, "use_user_tower": True},
    {**SOFTMAX, "item_bias": True, "use_user_tower": True, "use_side_features": True},
    {"history": False, "use_user_tower": True, "retrieval_l2": 0.0},  # squared, ID query
    {"item_bias": True, "use_side_features": True, "unobserved_weight": 0.5},  # squared
])
def test_retrieval_options_train(split, overrides):
    cfg = UnifiedConfig(epochs=1, batch_size=512, **overrides)
    out = train_unified(split.train, None, cfg, verbose=0)
    assert np.isfinite(out.history["loss"]).all()
    assert out.user_vectors().shape[0] == len(out.vocabs.user)
    assert np.isfinite(out.retrieval_scores(np.array([1, 2]))[:, 1:]).all()


def test_validation_recall_drives_early_stopping(split):
    carved = random_split(split.train, 0.9, seed=1)
    out = train_unified(carved.train, carved.test,
                        UnifiedConfig(epochs=2, patience=1, batch_size=512), verbose=0)
    assert len(out.history["val_recall@10"]) >= 2
    assert all(0 <= v <= 1 for v in out.history["val_recall@100"])


def test_squared_loss_is_the_full_matrix_loss():
    # With weight 1 and the positive inside the catalog, the Gramian form equals the plain
    # squared error of every catalog score against the one-hot row: sum_j (y_j - q.c_j)^2.
    rng = np.random.default_rng(0)
    q = rng.normal(size=(3, 4)).astype(np.float32)
    catalog = rng.normal(size=(6, 4)).astype(np.float32)
    pos = np.array([0, 4, 5])
    loss = SquaredRetrieval()(q, catalog[pos], catalog).numpy()
    y = np.eye(6)[pos]
    expected = np.mean(np.sum((y - q @ catalog.T) ** 2, axis=1))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # Row weights scale only the unobserved (all-items) part; weight 0 leaves (1 - s)^2 - s^2.
    s = np.sum(q * catalog[pos], axis=1)
    zero = SquaredRetrieval()(q, catalog[pos], catalog, tf.zeros(3)).numpy()
    np.testing.assert_allclose(zero, np.mean((1 - s) ** 2 - s ** 2), rtol=1e-5)
    with pytest.raises(ValueError, match="unobserved_weight"):
        SquaredRetrieval(unobserved_weight=-1.0)


def test_a_sampled_catalog_estimates_the_squared_loss_without_bias():
    """``catalog_sample``: each training step reads a uniform sample of the catalog with
    the unobserved term and the L2 scaled up; over many steps that averages to the exact
    loss (what the validation loss and a small catalog use)."""
    num_items, dim = 61, 4
    splits, values = np.array([0, 3, 5, 9]), np.array([1, 7, 9, 2, 30, 4, 5, 40, 60])
    tf.keras.utils.set_random_seed(1)
    item_tower = tf.keras.layers.Embedding(   # vectors large enough that scores matter
        num_items, dim, embeddings_initializer=tf.keras.initializers.RandomNormal(0.0, 0.5))

    history = HistoryEncoder(splits, values, num_items, dim, dropout=0.0,
                             leave_target_out=False)
    history.embedding.embeddings_initializer = tf.keras.initializers.RandomNormal(0.0, 0.5)

    def head(sample):
        head = RetrievalHead(num_items, loss="squared", history=history, l2=0.05,
                             use_user_tower=False, catalog_sample=sample,
                             user_counts=np.diff(splits))
        head.bind(None, item_tower)
        return head

    features = {"user_id": tf.constant([0, 1, 2, 2]), "item_id": tf.constant([7, 4, 40, 60])}
    items = item_tower(features["item_id"])
    sampled, whole = head(16), head(None)
    exact = float(whole.compute_loss(features, None, items, training=True))
    assert float(sampled.compute_loss(features, None, items, training=False)) == \
        pytest.approx(exact, rel=1e-6)  # validation: the whole catalog
    step = tf.function(lambda: sampled.compute_loss(features, None, items, training=True))
    draws = np.array([float(step()) for _ in range(3000)])
    assert draws.std() > 0.01 * abs(exact)  # it does sample ...
    assert draws.mean() == pytest.approx(exact, rel=0.02)  # ... and is right on average
    # A catalog no larger than the sample is used whole, every step.
    assert head(60).catalog_sample is None and sampled.catalog_sample == 16
    with pytest.raises(ValueError, match="catalog_sample does nothing with "
                                         "retrieval_loss='softmax'"):
        UnifiedConfig(retrieval_loss="softmax", catalog_sample=100)
    with pytest.raises(ValueError, match="catalog_sample must be >= 1"):
        UnifiedConfig(catalog_sample=0)


def test_bad_retrieval_loss_and_ema_are_refused():
    with pytest.raises(ValueError, match="retrieval_loss 'hinge'"):
        UnifiedConfig(retrieval_loss="hinge")
    with pytest.raises(ValueError, match="ema_momentum"):
        UnifiedConfig(ema_momentum=1.0)
    with pytest.raises(ValueError, match="retrieval loss 'hinge'"):
        RetrievalHead(10, loss="hinge")


def test_validation_scores_the_averaged_weights_that_fit_leaves(split):
    # With ema_momentum the model ends fit holding the moving average; the last epoch's
    # logged validation recall (and a user callback) must see exactly that model, not the
    # raw weights Keras trains, else epoch selection would pick by numbers nobody exports.
    carved = random_split(split.train, 0.9, seed=1)
    seen = []

    class Spy(tf.keras.callbacks.Callback):  # what a user callback sees at epoch end
        def on_epoch_end(self, epoch, logs=None):
            seen.append(self.model.trainable_variables[0].numpy().copy())

    out = train_unified(carved.train, carved.test,
                        UnifiedConfig(epochs=3, batch_size=256, ema_momentum=0.9),
                        verbose=0, callbacks=[Spy()])
    np.testing.assert_array_equal(seen[-1], out.model.trainable_variables[0].numpy())
    final = retrieval_metrics(out.retrieval_scores, carved.test, out.vocabs,
                              out.seen_splits, out.seen_values)
    assert out.history["val_recall@10"][-1] == pytest.approx(final["recall@10"], abs=1e-9)
    raw = train_unified(carved.train, carved.test,
                        UnifiedConfig(epochs=3, batch_size=256, ema_momentum=None), verbose=0)
    assert raw.history["val_recall@10"] != out.history["val_recall@10"]


def test_weight_average_warms_up_and_ends_in_the_model():
    # 4 steps of SGD(lr=1) on loss = -w: w goes 0 -> 1 -> 2 -> 3 -> 4. The average starts at
    # the weights after the first step, then decays min(0.99, (1+n)/(10+n)) = 2/11, 3/12,
    # 4/13 (warm-up): it follows the weights instead of staying near the initial 0 (a
    # plain EMA at 0.99 from the initial weights: 0.0985).
    model = tf.keras.Sequential([tf.keras.layers.Dense(1, use_bias=False,
                                                       kernel_initializer="zeros")])
    model.compile(optimizer=tf.keras.optimizers.SGD(1.0),
                  loss=lambda y, p: -tf.reduce_mean(p))
    average = WeightAverage(0.99)
    model.fit(np.ones((4, 1), np.float32), np.zeros((4, 1), np.float32), batch_size=1,
              epochs=1, verbose=0, callbacks=average.around([]))
    a = 1.0
    for n, w in [(1, 2.0), (2, 3.0), (3, 4.0)]:
        d = min(0.99, (1 + n) / (10 + n))
        a = d * a + (1 - d) * w
    assert model.layers[0].kernel.numpy().item() == pytest.approx(a, rel=1e-6)
    assert 2.0 < a < 4.0
    with pytest.raises(ValueError, match="momentum"):
        WeightAverage(1.0)


def test_history_encoder_leaves_the_target_out():
    # user 1 has items {2, 3}; with target 2 only item 3 remains: emb[3] / sqrt(1).
    enc = HistoryEncoder(np.array([0, 0, 2]), np.array([2, 3]), num_items=5, dim=4,
                         dropout=0.0)
    users = tf.constant([1], tf.int64)
    full = enc(users).numpy()
    emb = enc.embedding.embeddings.numpy()
    np.testing.assert_allclose(full[0], (emb[2] + emb[3]) / np.sqrt(2), rtol=1e-5)
    lto = enc(users, tf.constant([2], tf.int64), training=True).numpy()
    np.testing.assert_allclose(lto[0], emb[3], rtol=1e-5)
    assert np.all(enc(tf.constant([0], tf.int64)).numpy() == 0)  # OOV user: no history


def test_history_csr_rows_are_users(split):
    vocabs = Vocabularies.build(split.train)
    splits, values = history_csr(split.train, vocabs)
    assert splits[0] == splits[1] == 0  # OOV user
    u = vocabs.user.lookup(split.train.user_id[:1])[0]
    items = set(vocabs.item.lookup(split.train.item_id[split.train.user_id ==
                                                      split.train.user_id[0]]).tolist())
    assert set(values[splits[u]:splits[u + 1]].tolist()) == items


def _lse(x):
    x = np.asarray(x, np.float64)
    return np.log(np.exp(x - x.max()).sum()) + x.max()


def test_listwise_softmax_loss_by_hand():
    labels, scores = np.array([[5.0, 1.0, 3.0]]), np.array([[2.0, 0.0, 1.0]])
    target = labels / labels.sum()
    expected = -(target * (scores - _lse(scores[0]))).sum()
    got = float(ListwiseSoftmaxLoss()(labels, scores))
    assert got == pytest.approx(expected, rel=1e-5)
    # A padded entry (label -1) changes nothing.
    padded = float(ListwiseSoftmaxLoss()(np.array([[5.0, 1.0, 3.0, -1.0]]),
                                         np.array([[2.0, 0.0, 1.0, 9.0]])))
    assert padded == pytest.approx(expected, rel=1e-5)


def test_list_mle_loss_by_hand():
    labels, scores = np.array([[3.0, 1.0, 2.0]]), np.array([[1.0, 2.0, 0.0]])
    s = [1.0, 0.0, 2.0]  # scores in label order 3, 2, 1
    expected = (_lse(s) - s[0]) + (_lse(s[1:]) - s[1]) + (_lse(s[2:]) - s[2])
    assert float(ListMLELoss()(labels, scores)) == pytest.approx(expected, rel=1e-5)
    padded = float(ListMLELoss()(np.array([[3.0, -1.0, 1.0, 2.0]]),
                                 np.array([[1.0, 7.0, 2.0, 0.0]])))
    assert padded == pytest.approx(expected, rel=1e-5)
    # The right order has a lower loss than the reversed one.
    assert float(ListMLELoss()(labels, np.array([[3.0, 1.0, 2.0]]))) < expected
