"""The statistics behind `minirun report`, checked against values worked out by hand or published."""
from __future__ import annotations

import math

import numpy as np
import pytest

from minirun.eval.stats import (
    mcnemar_exact,
    newcombe_paired_interval,
    paired_bootstrap_interval,
    wilcoxon_p,
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


def test_bootstrap_is_seeded():
    diffs = np.random.default_rng(3).integers(-1, 2, 60) / 3
    first = paired_bootstrap_interval(diffs, seed=0)
    assert paired_bootstrap_interval(diffs, seed=0) == first
    assert paired_bootstrap_interval(diffs, seed=1) != first
    assert first[0] < diffs.mean() < first[1]
    se = diffs.std() / math.sqrt(len(diffs))  # close to the normal interval for 60 items
    assert first == pytest.approx((diffs.mean() - 1.96 * se, diffs.mean() + 1.96 * se), abs=0.03)


def test_wilcoxon_by_hand():
    # five distinct positive differences: only all-positive or all-negative signs are as extreme, 2 / 2^5
    assert wilcoxon_p([0.2, 0.4, 0.6, 0.8, 1.0]) == pytest.approx(0.0625)
    assert wilcoxon_p([1.0, -1.0, 2.0, -2.0]) == pytest.approx(1.0)  # rank sums 5 and 5: no evidence
    assert wilcoxon_p([0.0, 0.0, 0.0]) == 1.0  # all zero: agreement, not nan

def test_wilcoxon_keeps_zeros_in_the_ranks():
    # Pratt: zeros take ranks 1.5, 1.5, so 1, 2, 3, -4 rank 3, 4, 5, 6 and R- = 6; sign subsets of
    # {3, 4, 5, 6} summing to at most 6: {}, {3}, {4}, {5}, {6}, so p = 2 * 5 / 16 (dropping the
    # zeros first would give 2 * 7 / 16)
    assert wilcoxon_p([0.0, 0.0, 1.0, 2.0, 3.0, -4.0]) == pytest.approx(0.625)


def test_wilcoxon_ties_survive_float_noise():
    # correct - per-prompt accuracy: 1 - 1/3 and 1 - 2/3 differ from 2/3 and 1/3 in the last bit, which
    # must not break their ties. By hand (Pratt): ranks 1.5 x2 (zeros), 3.5 x2, 7 x5, 10; R- = 3.5;
    # subsets with sum <= 3.5: {}, {3.5}, {3.5'}: p = 2 * 3 / 2^8
    noisy = [1 - 1.0, 1 - 2 / 3, 0 - 1 / 3, *[1 - 1 / 3] * 5, 1 - 0.0, 0 - 0.0]
    assert 1 - 1 / 3 != 2 / 3
    assert wilcoxon_p(noisy) == pytest.approx(6 / 256)
    assert math.isnan(wilcoxon_p([]))
