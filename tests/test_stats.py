"""probing.stats against independent computations (scikit-learn, scipy, hand-worked cases)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from probing.errors import LirefError
from probing.stats import (
    accuracy_with_ci,
    auroc,
    auroc_with_ci,
    balanced_accuracy_with_ci,
    balanced_threshold,
    benjamini_hochberg,
    bootstrap_auroc,
    bootstrap_ci,
    cohens_d,
    mcnemar_exact,
    paired_bootstrap_diff,
)


def _scores(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = rng.normal(size=n) + y
    s[:40] = np.round(s[:40])  # ties
    return y, s


def test_auroc_equals_sklearn_with_ties():
    y, s = _scores()
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert np.isnan(auroc([1, 1], [0.1, 0.2]))


def test_vectorised_bootstrap_equals_a_loop_over_resamples():
    y, s = _scores(60)
    fast = bootstrap_auroc(y, s, n_resamples=50, seed=1)
    # the same multinomial draws, expanded into explicit resamples
    rng = np.random.default_rng(1)
    s1, s0 = s[y == 1], s[y == 0]
    w1 = rng.multinomial(s1.size, np.full(s1.size, 1 / s1.size), size=50)
    w0 = rng.multinomial(s0.size, np.full(s0.size, 1 / s0.size), size=50)
    slow = [roc_auc_score(np.r_[np.ones(s1.size), np.zeros(s0.size)],
                          np.r_[np.repeat(s1, w1[b]), np.repeat(s0, w0[b])]) for b in range(50)]
    assert np.allclose(fast, slow)


def test_intervals_cover_and_shrink_with_n():
    y, s = _scores(200)
    value, lo, hi = auroc_with_ci(y, s)
    assert lo < value < hi
    y2, s2 = _scores(2000, seed=1)
    _, lo2, hi2 = auroc_with_ci(y2, s2)
    assert (hi2 - lo2) < (hi - lo) / 2
    acc, alo, ahi = accuracy_with_ci([1, 0, 1, 1] * 50)
    assert acc == 0.75 and alo < 0.75 < ahi
    lo3, hi3 = bootstrap_ci(lambda a: a.mean(), [np.arange(100.0)], n_resamples=300)
    assert lo3 < 49.5 < hi3


def test_paired_tests_hand_worked():
    a = np.array([1, 1, 1, 0, 0, 0, 1, 1])
    b = np.array([1, 0, 0, 0, 1, 0, 0, 0])
    r = mcnemar_exact(a, b)  # 4 flips down, 1 up: p = 2 * P(X <= 1 | n=5) = 2 * 6/32
    assert (r["flips_up"], r["flips_down"]) == (1, 4)
    assert r["p_value"] == pytest.approx(12 / 32)
    assert mcnemar_exact(a, a)["p_value"] == 1.0
    diff, lo, hi = paired_bootstrap_diff(a, b)
    assert diff == pytest.approx(-3 / 8) and lo <= diff <= hi
    with pytest.raises(LirefError, match="equal"):
        mcnemar_exact([1, 0], [1])


def test_cohens_d_and_benjamini_hochberg():
    x, y = np.array([2.0, 4.0, 6.0]), np.array([1.0, 2.0, 3.0])
    pooled = np.sqrt((2 * 4.0 + 2 * 1.0) / 4)
    assert cohens_d(x, y) == pytest.approx(2.0 / pooled)
    assert cohens_d([1, 1], [1, 1]) == 0.0
    q = benjamini_hochberg([0.01, 0.04, 0.03, 0.5])
    assert np.allclose(q, [0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.5])


def test_library_backed_statistics_equal_the_former_hand_written_values():
    """auroc (sklearn), benjamini_hochberg (scipy false_discovery_control) and mcnemar_exact
    (scipy binomtest) give the values the hand-written versions gave (ties included)."""
    assert auroc([0, 0, 1, 1, 1, 0, 1, 0], [0.1, 0.4, 0.35, 0.8, 0.4, 0.4, 0.9, 0.2]) == 0.8125
    assert auroc([0, 1, 0, 1], [1, 1, 1, 1]) == 0.5
    y, s = _scores()
    assert auroc(y, s) == pytest.approx(0.8108682996731001, rel=1e-12)
    q = benjamini_hochberg([0.01, 0.04, 0.03, 0.5, 0.04, 1.0, 0.0, 0.2])
    assert np.allclose(q, [0.04, 0.064, 0.064, 0.5714285714285714, 0.064, 1.0, 0.0,
                           0.26666666666666666], rtol=1e-12, atol=0)
    p = np.random.default_rng(3).uniform(size=12) ** 3
    assert np.allclose(benjamini_hochberg(p), [
        0.0050039923044378955, 0.03187235414062807, 0.5144508734940965, 0.23676248442993977,
        0.0050039923044378955, 0.13929284164781333, 0.16490632870768906, 0.0122279440374079,
        0.43241505713517303, 0.005875173866693129, 0.11976238012910484, 0.18397357160115999],
        rtol=1e-12, atol=0)
    assert benjamini_hochberg([]).shape == (0,)
    with pytest.raises(LirefError, match=r"\[0, 1\]"):
        benjamini_hochberg([0.1, float("nan")])
    old = {(1, 4): 0.375, (0, 0): 1.0, (3, 3): 1.0, (10, 2): 0.03857421875, (0, 7): 0.015625,
           (25, 40): 0.08168153394154003, (1, 0): 1.0}
    for (up, down), p_old in old.items():
        a = np.array([0] * up + [1] * down + [1, 0])
        b = np.array([1] * up + [0] * down + [1, 0])
        r = mcnemar_exact(a, b)
        assert (r["flips_up"], r["flips_down"]) == (up, down)
        assert r["p_value"] == pytest.approx(p_old, rel=1e-12)


def test_balanced_threshold_keeps_a_best_default_else_the_nearest_best_cut():
    y = np.array([1] * 10 + [0] * 30)
    s = np.r_[np.linspace(1, 2, 10), np.linspace(-3, 0.5, 30)]  # gap between 0.5 and 1
    assert balanced_threshold(y, s) == 0.75  # 0 misreads memory items: halfway in the gap
    assert balanced_threshold(y, s, default=0.7) == 0.7  # already perfect: kept
    assert balanced_threshold(y, s, default=5.0) == 0.75
    assert balanced_threshold([1, 1, 1], [0.1, 0.2, 0.3], default=0.4) == 0.4  # one class
    assert balanced_threshold([1, 0, 1, 0], [1.0, 1.0, 1.0, 1.0]) == 0.0  # nothing to gain
    y2, s2 = _scores(400, seed=2)  # overlapping classes: the cut beats every other cut
    cut = balanced_threshold(y2, s2)
    from sklearn.metrics import balanced_accuracy_score

    best = balanced_accuracy_score(y2, s2 > cut)
    assert all(balanced_accuracy_score(y2, s2 > c) <= best + 1e-12 for c in np.unique(s2))


def test_balanced_accuracy_with_ci_equals_sklearn():
    from sklearn.metrics import balanced_accuracy_score

    y = np.array([1] * 20 + [0] * 80)
    pred = np.r_[np.ones(15), np.zeros(5), np.zeros(70), np.ones(10)].astype(int)
    value, lo, hi = balanced_accuracy_with_ci(y, pred, n_resamples=300)
    assert value == pytest.approx(balanced_accuracy_score(y, pred)) == (15 / 20 + 70 / 80) / 2
    assert lo < value < hi
    acc = accuracy_with_ci(pred == y, n_resamples=300)[0]
    assert acc == pytest.approx(0.85) and value == pytest.approx(0.8125)
