"""OOD metrics and the Frechet distance against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from model.metrics import (aupr_in, auroc, feature_statistics, fpr_at_95_tpr,
                           frechet_distance, frechet_distance_from_features, ood_metrics)


def test_auroc_perfect_and_reversed_separation():
    assert auroc([3, 4, 5], [0, 1, 2]) == 1.0
    assert auroc([0, 1, 2], [3, 4, 5]) == 0.0


def test_auroc_hand_worked_with_a_tie():
    # Pairs (in, out): in = [1, 2, 3], out = [0, 2].
    #   1>0 win, 1<2 loss; 2>0 win, 2=2 tie (1/2); 3>0 win, 3>2 win  -> 4.5 / 6 = 0.75
    assert auroc([1, 2, 3], [0, 2]) == pytest.approx(0.75)
    # All scores equal: every pair ties.
    assert auroc([1, 1], [1, 1, 1]) == pytest.approx(0.5)


def test_auroc_is_the_pairwise_win_rate():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 1, 40).round(1), rng.normal(0, 1, 30).round(1)  # rounding makes ties
    wins = (a[:, None] > b[None]).mean() + 0.5 * (a[:, None] == b[None]).mean()
    assert auroc(a, b) == pytest.approx(wins)


def test_aupr_in_hand_worked():
    # Ranking by score: in(4), out(3), in(2), out(1).  Precision at each in-distribution hit:
    # 1/1 and 2/3 -> AP = (1 + 2/3) / 2 = 5/6.  In-distribution is the positive class.
    assert aupr_in([4, 2], [3, 1]) == pytest.approx(5 / 6)
    assert aupr_in([5, 6], [1, 2]) == pytest.approx(1.0)


def test_fpr_at_95_tpr_hand_worked():
    # 20 in-distribution scores 0..19: accepting 95% (19 of 20) needs threshold 1.
    # OOD scores >= 1: 1.5, 2.5, 100 -> 3 of 4.
    in_scores = np.arange(20, dtype=float)
    assert fpr_at_95_tpr(in_scores, [0.5, 1.5, 2.5, 100]) == pytest.approx(0.75)
    assert fpr_at_95_tpr(in_scores, [-5, -4]) == 0.0
    assert fpr_at_95_tpr(in_scores, [50, 60]) == 1.0
    # An OOD score equal to the threshold is accepted (score >= threshold).
    assert fpr_at_95_tpr(in_scores, [1.0, -3.0]) == pytest.approx(0.5)


def test_ood_metrics_keys_and_bad_input():
    out = ood_metrics([2, 3], [0, 1])
    assert out == {"auroc": 1.0, "aupr_in": 1.0, "fpr95": 0.0}
    with pytest.raises(ValueError):
        auroc([], [1.0])
    with pytest.raises(ValueError):
        auroc([float("nan"), 1.0], [0.0])


def test_frechet_distance_identical_gaussians_is_zero():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5, 5))
    cov = a @ a.T + np.eye(5)
    mu = rng.normal(size=5)
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_shifted_gaussians_is_squared_shift():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(4, 4))
    cov = a @ a.T + 0.1 * np.eye(4)
    mu = rng.normal(size=4)
    shift = np.array([1.0, -2.0, 0.5, 3.0])
    assert frechet_distance(mu, cov, mu + shift, cov) == pytest.approx(shift @ shift)  # 14.25


def test_frechet_distance_hand_worked_covariances():
    # Diagonal covariances: d^2 = sum (sqrt(a_i) - sqrt(b_i))^2 = (1-2)^2 + (3-1)^2 = 5.
    cov1, cov2 = np.diag([1.0, 9.0]), np.diag([4.0, 1.0])
    assert frechet_distance(np.zeros(2), cov1, np.zeros(2), cov2) == pytest.approx(5.0)


def test_frechet_distance_singular_covariance_stays_finite():
    # Fewer samples than dimensions: rank-deficient covariances, the case the offset handles.
    rng = np.random.default_rng(3)
    f1, f2 = rng.normal(size=(5, 20)), rng.normal(size=(5, 20)) + 1.0
    value = frechet_distance_from_features(f1, f2)
    assert np.isfinite(value) and value > 0
    assert frechet_distance_from_features(f1, f1) == pytest.approx(0.0, abs=1e-4)


def test_frechet_from_features_matches_statistics():
    rng = np.random.default_rng(4)
    f1, f2 = rng.normal(size=(400, 3)), rng.normal(size=(400, 3)) * 2 + 1
    mu1, c1 = feature_statistics(f1)
    mu2, c2 = feature_statistics(f2)
    assert np.allclose(mu1, f1.mean(0)) and np.allclose(c1, np.cov(f1.T))
    assert frechet_distance_from_features(f1, f2) == pytest.approx(
        frechet_distance(mu1, c1, mu2, c2))
    # Population answer for N(0, I) vs N(1, 4I) in 3-d: 3*1 + 3*(1-2)^2 = 6.
    assert frechet_distance_from_features(f1, f2) == pytest.approx(6.0, rel=0.25)
