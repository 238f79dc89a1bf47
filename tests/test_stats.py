"""The statistics behind `minirun report`, checked against values worked out by hand or published."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import permutation_test

from minirun.eval.stats import (
    brier_score,
    calibration_error,
    mcnemar_exact,
    newcombe_paired_interval,
    holm,
    paired_bootstrap_interval,
    sign_flip_p,
    wilson_interval,
)


def test_wilson_7_of_10_by_hand():
    # z = 1.959964; centre (0.7 + z²/20) / (1 + z²/10) = 0.644490;
    # half z * sqrt(0.7 * 0.3 / 10 + z² / 400) / (1 + z²/10) = 0.247713
    low, high = wilson_interval(7, 10)
    assert low == pytest.approx(0.644490 - 0.247713, abs=1e-5)
    assert high == pytest.approx(0.644490 + 0.247713, abs=1e-5)


def test_wilson_edges():
    # 0/10: upper z² / (10 + z²) = 0.277533; n/n mirrors it
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.277533), abs=1e-6)
    assert wilson_interval(10, 10) == pytest.approx((0.722467, 1.0), abs=1e-6)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    # exactly the estimate at the edges for every n, not 3e-17 or 1 - 1e-16 (a chart's error bar goes negative)
    assert all(wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0 for n in range(1, 2001))


def test_mcnemar_exact_by_hand():
    # b=1, c=6: 2 * P(X <= 1), X ~ Bin(7, 1/2) = 2 * (1 + 7) / 128
    assert mcnemar_exact(1, 6) == pytest.approx(0.125)
    assert mcnemar_exact(6, 1) == pytest.approx(0.125)
    assert mcnemar_exact(3, 3) == pytest.approx(1.0)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)


def test_newcombe_matches_published_example():
    # Cavo et al. (2012) in Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency
    # Tables", ch. 8: table [[59, 6], [16, 80]], estimate -0.0621, 95% CI -0.1186 to -0.0046
    low, high = newcombe_paired_interval(59, 6, 16, 80)
    assert low == pytest.approx(-0.1186, abs=5e-5) and high == pytest.approx(-0.0046, abs=5e-5)
    flipped = newcombe_paired_interval(59, 16, 6, 80)
    assert flipped == pytest.approx((-high, -low))


def test_newcombe_without_correlation_is_square_and_add():
    # nobody is right under the second alone or wrong under both: a zero margin, so phi is 0 and
    # the interval is the plain square-and-add of the two Wilson intervals
    l1, u1 = wilson_interval(3, 3)
    l2, u2 = wilson_interval(1, 3)
    low, high = newcombe_paired_interval(1, 2, 0, 0)
    diff = 2 / 3
    assert low == pytest.approx(diff - math.hypot(1 - l1, u2 - 1 / 3))
    assert high == pytest.approx(diff + math.hypot(u1 - 1, 1 / 3 - l2))
    assert all(math.isnan(x) for x in newcombe_paired_interval(0, 0, 0, 0))


def test_bootstrap_by_hand():
    # resampling two items {0, 1}: means 0, 1/2, 1 with chance 1/4, 1/2, 1/4 -> 2.5% and 97.5% points 0 and 1
    assert paired_bootstrap_interval([0.0, 1.0]) == (0.0, 1.0)
    assert paired_bootstrap_interval([0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert all(math.isnan(x) for x in paired_bootstrap_interval([]))
    assert all(math.isnan(x) for x in paired_bootstrap_interval([0.4]))  # one item: no interval, not [0.4, 0.4]


def test_bootstrap_is_seeded():
    diffs = np.random.default_rng(3).integers(-1, 2, 60) / 3
    first = paired_bootstrap_interval(diffs, seed=0)
    assert paired_bootstrap_interval(diffs, seed=0) == first
    assert paired_bootstrap_interval(diffs, seed=1) != first
    assert first[0] < diffs.mean() < first[1]
    se = diffs.std() / math.sqrt(len(diffs))  # close to the normal interval for 60 items
    assert first == pytest.approx((diffs.mean() - 1.96 * se, diffs.mean() + 1.96 * se), abs=0.03)


def test_sign_flip_by_hand():
    # five positive differences: only all-positive or all-negative signs sum as far from 0, 2 / 2^5
    assert sign_flip_p([0.2, 0.4, 0.6, 0.8, 1.0]) == pytest.approx(0.0625)
    assert sign_flip_p([1.0, -1.0, 2.0, -2.0]) == 1.0  # the observed sum is 0: every pattern is as far
    assert sign_flip_p([0.0, 0.0, 0.0]) == 1.0  # all zero: agreement, not nan
    # zeros cannot flip: [1, 2, 3, -4] sums to 2, and a pattern's sum is 10 - 2 x (the negated values), which
    # misses |sum| >= 2 only when those total 5 ({1, 4} or {2, 3}): 14 of 16
    assert sign_flip_p([0.0, 0.0, 1.0, 2.0, 3.0, -4.0]) == pytest.approx(14 / 16)
    assert math.isnan(sign_flip_p([]))


def test_sign_flip_ties_survive_float_noise():
    # correct - per-prompt accuracy: 1 - 1/3 and 1 - 2/3 differ from 2/3 and 1/3 in the last bit. In thirds
    # the non-zero |differences| are 1, 1, 2 x5, 3 (sum 15, observed 13): a sum as far needs the flipped
    # ones to total <= 1 or >= 14, i.e. {}, {1}, {1'} or their complements, 6 of 2^8
    noisy = [1 - 1.0, 1 - 2 / 3, 0 - 1 / 3, *[1 - 1 / 3] * 5, 1 - 0.0, 0 - 0.0]
    assert 1 - 1 / 3 != 2 / 3
    assert sign_flip_p(noisy) == pytest.approx(6 / 256)
    # a mean of 0 that the sum leaves as float noise (-1/3 - 1 + 1 + 1/3 = 5.6e-17): every pattern is as far
    assert sum([-1 / 3, -1.0, 1.0, 1 / 3]) != 0 and sign_flip_p([-1 / 3, -1.0, 1.0, 1 / 3]) == 1.0


def test_sign_flip_tests_the_mean_not_the_median():
    # 60 small gains and 13 large losses: the mean is -0.014 and the bootstrap interval holds 0; a rank
    # test calls this significant (Wilcoxon p = 0.0045), the mean's own test must not
    diffs = [0.2] * 60 + [-1.0] * 13
    low, high = paired_bootstrap_interval(diffs)
    assert low < 0 < high
    p = sign_flip_p(diffs)
    assert p > 0.5
    reference = permutation_test((np.array(diffs),), np.sum, permutation_type="samples", n_resamples=100_000,
                                 vectorized=True, random_state=np.random.default_rng(1)).pvalue
    assert p == pytest.approx(reference, abs=0.01)  # Monte Carlo beyond 16 differences: scipy's test agrees
    assert sign_flip_p(diffs, seed=0) == p and sign_flip_p(diffs, seed=1) != p


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 of three: 3 x 0.01, max(that, 2 x 0.03), max(that, 1 x 0.04)
    assert holm([0.01, 0.04, 0.03, math.nan])[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(holm([0.01, 0.04, 0.03, math.nan])[3])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []


def test_calibration_error_by_hand():
    # 15 bins: 0.9 in [13/15, 14/15) (acc 0.5: gap 0.4), 0.6 in [9/15, 10/15) (acc 1: gap 0.4), 0.3 in
    # [4/15, 5/15) (acc 0: gap 0.3); weighted 2/5, 2/5, 1/5
    confidence, correct = [0.9, 0.9, 0.6, 0.6, 0.3], [True, False, True, True, False]
    assert calibration_error(confidence, correct) == pytest.approx(0.4 * 2 / 5 + 0.4 * 2 / 5 + 0.3 / 5)
    assert calibration_error(confidence, correct, bins=1) == pytest.approx(abs(3 / 5 - 3.3 / 5))  # one bin: the means
    assert calibration_error([1.0, 1.0], [True, True]) == 0.0  # sure and right: 1.0 falls in the last bin
    assert calibration_error([1.0, 0.5], [False, False]) == pytest.approx(0.75)
    assert math.isnan(calibration_error([], []))


def test_sign_flip_of_continuous_differences_matches_scipys_permutation_test():
    """Differences with many distinct values (MC2's) flip by a random bit per item: the same test, seeded."""
    from scipy.stats import permutation_test

    diffs = np.random.default_rng(1).normal(0.02, 0.1, 300)
    expected = permutation_test((diffs,), np.mean, permutation_type="samples", n_resamples=100_000,
                                random_state=0).pvalue
    assert sign_flip_p(diffs, seed=0) == pytest.approx(expected, abs=0.005) and 0.001 < expected < 0.2
    assert sign_flip_p(diffs, seed=0) == sign_flip_p(diffs, seed=0) != sign_flip_p(diffs, seed=1)


def test_calibration_error_bins_are_closed_on_the_right_as_guo_et_al_bin():
    """Bins (k/15, (k+1)/15]: a confidence on an edge (2/3 = 10/15, a vote's 3 of 5 prompts = 9/15) is in the bin it
    closes, not the next one up, whatever the float product's last bit."""
    assert calibration_error([2 / 3, 5 / 7], [True, False]) == pytest.approx((1 / 3 + 5 / 7) / 2)  # two bins
    assert calibration_error([0.6, 0.55], [True, False]) == pytest.approx(abs(0.5 - 0.575))  # one bin: (8/15, 9/15]
    assert calibration_error([0.0, 1 / 15], [False, False]) == pytest.approx(1 / 30)  # 0 joins the first bin


def test_calibration_error_refuses_what_is_not_a_probability_per_verdict():
    with pytest.raises(ValueError, match="2 confidences for 1 verdicts"):
        calibration_error([0.5, 0.5], [True])
    with pytest.raises(ValueError, match="probabilities"):
        calibration_error([1.5], [True])


def test_brier_score_by_hand():
    # (0.3² + 0.2² + 0.1²) = 0.14 and (0.5² + 0.5²) = 0.5: items of 3 and 2 options
    assert brier_score([[0.7, 0.2, 0.1], [0.5, 0.5]], [0, 1]) == pytest.approx((0.14 + 0.5) / 2)
    assert brier_score([[1.0, 0.0]], [1]) == 2.0 and brier_score([[0.0, 1.0]], [1]) == 0.0
    assert math.isnan(brier_score([], []))
    with pytest.raises(ValueError, match="2 option distributions for 1 gold"):
        brier_score([[1.0], [1.0]], [0])
