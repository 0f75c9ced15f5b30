"""Ranking metrics against small cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tfrec_p5.evaluation import (
    cross_fitted_metrics,
    factorized_topk_accuracy,
    full_ranking_metrics,
    group_by_row,
    metrics_from_ranks,
    ranks_of_targets,
    sample_negatives,
    sampled_ranking_metrics,
    single_target_metrics,
)


def test_ranks_exclude_and_pessimistic_ties():
    scores = np.array([[0.9, 0.5, 0.5, 0.1, 0.7]])
    # Target 1 ties with item 2 → pessimistic rank counts item 2 above it.
    assert ranks_of_targets(scores, np.array([[1]]))[0, 0] == 4  # items 0, 4, 2 beat/tie it
    # Excluding items 0 and 2 (e.g. seen in training) lifts it to rank 2 (behind item 4).
    assert ranks_of_targets(scores, np.array([[1]]), np.array([[0, 2]]))[0, 0] == 2
    assert ranks_of_targets(scores, np.array([[1]]), ties="optimistic")[0, 0] == 3


def test_constant_scores_earn_nothing():
    scores = np.zeros((3, 50))
    ranks = ranks_of_targets(scores, np.array([[4], [7], [9]]))
    assert (ranks == 50).all()
    assert metrics_from_ranks(ranks, ks=(10,))["hr@10"] == 0.0


def test_multi_target_metrics_by_hand():
    # User A: targets at ranks 1 and 3; user B: one target at rank 2; K = 2.
    ranks = np.array([[1, 3], [2, 0]])
    m = metrics_from_ranks(ranks, ks=(2,))
    assert m["recall@2"] == pytest.approx(2 / 3)           # pooled hits / targets
    assert m["user_recall@2"] == pytest.approx((1 / 2 + 1) / 2)
    assert m["hr@2"] == 1.0
    ndcg_a = 1.0 / (1 + 1 / math.log2(3))                  # DCG 1, ideal 1 + 1/log2(3)
    ndcg_b = (1 / math.log2(3)) / 1.0
    assert m["ndcg@2"] == pytest.approx((ndcg_a + ndcg_b) / 2)
    assert m["mrr"] == pytest.approx((1 + 1 / 2) / 2)


def test_full_ranking_batches_match_single_pass():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(10, 30))
    targets = group_by_row(rng.integers(0, 10, 25), rng.integers(0, 30, 25), 10)
    exclude = group_by_row(rng.integers(0, 10, 40), rng.integers(0, 30, 40), 10)

    def score_fn(rows):
        return scores[rows]

    users = np.arange(10)
    one = full_ranking_metrics(score_fn, users, targets, exclude, ks=(5,), batch_size=100)
    many = full_ranking_metrics(score_fn, users, targets, exclude, ks=(5,), batch_size=3)
    assert one == pytest.approx(many)


def test_factorized_topk_counts_seen_items_and_favours_ties():
    scores = np.array([[3.0, 2.0, 2.0, 1.0]])
    queries = np.array([0, 0])
    items = np.array([2, 3])   # item 2 ties item 1 → optimistic rank 2; item 3 rank 4
    acc = factorized_topk_accuracy(lambda q: np.repeat(scores, len(q), 0), queries, items,
                                   ks=(2, 3))
    assert acc == {"factorized_top_2": 0.5, "factorized_top_3": 0.5}


def test_sampled_protocol():
    interacted = np.array([[1, 2, -1], [3, -1, -1]])
    neg = sample_negatives(interacted, num_items=20, num_negatives=5, seed=2022)
    assert neg.shape == (2, 5)
    assert not np.isin(neg[0], [0, 1, 2]).any() and not np.isin(neg[1], [0, 3]).any()
    assert len(set(neg[0])) == 5
    np.testing.assert_array_equal(neg, sample_negatives(interacted, 20, 5, seed=2022))
    # Score = item index: target 19 beats all negatives, target 0 is beaten by all.
    scores = np.tile(np.arange(20.0), (2, 1))
    neg = np.array([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]])
    m = sampled_ranking_metrics(lambda q: scores[q], np.arange(2), np.array([19, 0]), neg,
                                ks=(1, 5))
    assert m["hr@1"] == 0.5 and m["hr@5"] == 0.5
    assert m["mrr"] == pytest.approx((1 + 1 / 6) / 2)


def test_references_on_a_tiny_matrix():
    from tfrec_p5.evaluation import EASE, ItemKNN, MostPopular

    users = np.array([0, 0, 1, 1, 2])
    items = np.array([0, 1, 0, 1, 2])
    pop = MostPopular.fit(items, 4)
    np.testing.assert_array_equal(pop.score(np.array([0]))[0], [2, 2, 1, 0])
    knn = ItemKNN.fit(users, items, 3, 4)
    # Items 0 and 1 always co-occur: cosine 1; item 2 shares no user with them.
    assert knn.sim[0, 1] == pytest.approx(1.0) and knn.sim[0, 2] == 0.0
    ease = EASE.fit(users, items, 3, 4, l2=1.0)
    s = ease.score(np.array([2]))[0]
    assert s[0] == pytest.approx(0.0) and s[1] == pytest.approx(0.0)  # no co-occurrence with 2
    s = EASE.fit(np.array([0, 1, 1]), np.array([0, 0, 1]), 2, 3, l2=1.0).score(np.array([0]))[0]
    assert s[1] > 0 and s[0] == 0.0 and s[2] == 0.0  # self-weight is zero by construction


def test_expected_metrics_put_ties_in_random_order():
    from tfrec_p5.evaluation import expected_ranking_metrics

    # Constant scores: every rank equally likely, so recall@K = K / candidates exactly.
    m = expected_ranking_metrics(lambda q: np.zeros((len(q), 40)), np.arange(2),
                                 np.array([[3, -1], [5, 7]]), ks=(10,))
    assert m["recall@10"] == pytest.approx(10 / 40)
    assert m["capped_recall@10"] == pytest.approx(10 / 40)
    disc = 1 / np.log2(np.arange(2, 12))
    ndcg_one = disc.sum() / 40 / 1.0                 # one target: E[DCG] / ideal 1
    ndcg_two = 2 * disc.sum() / 40 / disc[:2].sum()  # two targets
    assert m["ndcg@10"] == pytest.approx((ndcg_one + ndcg_two) / 2)
    # No ties: the expectation is the deterministic value (ranks 1 and 3 of 4, K = 2).
    scores = np.array([[4.0, 3.0, 2.0, 1.0]])
    m = expected_ranking_metrics(lambda q: scores, np.arange(1), np.array([[0, 2]]), ks=(2,))
    assert m["recall@2"] == pytest.approx(0.5) and m["capped_recall@2"] == pytest.approx(0.5)
    assert m["ndcg@2"] == pytest.approx(1 / (1 + 1 / math.log2(3)))
    # The target ties with one other item for ranks 2-3: half a hit at K = 2.
    scores = np.array([[4.0, 3.0, 3.0, 1.0]])
    m = expected_ranking_metrics(lambda q: scores, np.arange(1), np.array([[1]]), ks=(2,))
    assert m["recall@2"] == pytest.approx(0.5)
    assert m["ndcg@2"] == pytest.approx(0.5 / math.log2(3))
    # Excluding item 0 (and the tied item 2) lifts the target to rank 1.
    m = expected_ranking_metrics(lambda q: scores, np.arange(1), np.array([[1]]),
                                 exclude=np.array([[0, 2, 1]]), ks=(1,))
    assert m["recall@1"] == 1.0


def test_capped_recall_lets_a_long_list_reach_one():
    from tfrec_p5.evaluation import expected_ranking_metrics

    scores = np.arange(20.0)[::-1][None, :]          # item 0 first
    m = expected_ranking_metrics(lambda q: scores, np.arange(1),
                                 np.arange(12)[None, :], ks=(10,))
    assert m["capped_recall@10"] == 1.0 and m["recall@10"] == pytest.approx(10 / 12)


def test_content_references():
    from tfrec_p5.evaluation import FeaturePopularity, FeatureProfile

    genres = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=float)
    # User 0 liked items 0 and 2 (profile [2, 1]); user 1 nothing.
    profile = FeatureProfile.fit(np.array([0, 0]), np.array([0, 2]), genres, num_users=2)
    s = profile.score(np.array([0, 1]))
    assert s[0, 0] == pytest.approx(2 / math.sqrt(5))
    assert s[0, 2] == pytest.approx(3 / math.sqrt(5) / math.sqrt(2))
    assert s[0, 3] == 0.0 and (s[1] == 0).all()      # no features / no profile: 0
    # Item 0 has 3 interactions, item 1 has 1, items 2, 3 none (new): genre 0 averages 3,
    # genre 1 averages 1 over the items that were seen.
    pop = FeaturePopularity.fit(np.array([0, 0, 0, 1]), genres)
    np.testing.assert_allclose(pop.score(np.array([0]))[0], [3.0, 1.0, 2.0, 2.0])


def test_single_target_metrics():
    got = single_target_metrics(np.array([1, 3, 20]), ks=(10,))
    assert got == pytest.approx({"hr@10": 2 / 3, "ndcg@10": (1 + 1 / np.log2(4)) / 3})
    assert single_target_metrics(np.array([], np.int64), ks=(5,)) == {"hr@5": 0.0,
                                                                     "ndcg@5": 0.0}


def test_cross_fitted_metrics_give_noise_no_best_epoch_bonus():
    # Epoch e lucky for user e alone: the best epoch scores 1/4 on all users, but an
    # epoch picked on one half never helps the other half.
    noise = np.full((4, 4), 500)
    np.fill_diagonal(noise, 1)
    assert single_target_metrics(noise[0])["hr@10"] == 0.25
    for seed in range(5):
        assert cross_fitted_metrics(noise, seed=seed)["hr@10"] == 0.0
    # A real gain (epoch 2 better for everyone) is kept in full.
    real = np.array([[50, 60, 70, 80], [1, 2, 1, 3]])
    assert cross_fitted_metrics(real) == single_target_metrics(real[1])
    assert cross_fitted_metrics(real[:, :1]) is None      # one user: nothing to cross
