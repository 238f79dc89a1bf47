"""Statistics for publishable accuracy figures: intervals for one accuracy and paired tests
between two methods answering the same items. Pure functions of counts or arrays.

Chosen for small evaluation sets: Wilson's interval stays inside [0, 1] and keeps its coverage
near 0 and 1 where the normal (Wald) interval fails; McNemar's exact test and Newcombe's paired
interval use the pairing, which an unpaired comparison of two accuracies would throw away.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import binomtest, norm, wilcoxon

Interval = tuple[float, float]
_NAN: Interval = (math.nan, math.nan)


def _z(confidence: float) -> float:
    return float(norm.ppf(1 - (1 - confidence) / 2))


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval for a proportion successes/n; (nan, nan) when n is 0."""
    if n == 0:
        return _NAN
    z, p = _z(confidence), successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Exact McNemar p-value: two-sided binomial test of the discordant pairs against 1/2.

    `only_first` items are right under the first method alone, `only_second` under the second
    alone; with no discordant pair there is no evidence of a difference, so p is 1."""
    discordant = only_first + only_second
    return 1.0 if discordant == 0 else float(binomtest(only_first, discordant, 0.5).pvalue)


def newcombe_paired_interval(both: int, only_first: int, only_second: int, neither: int,
                             confidence: float = 0.95) -> Interval:
    """Newcombe's (1998, method 10) interval for p_first - p_second on paired binary outcomes.

    Square-and-add of the two marginals' Wilson intervals, corrected by the (continuity-
    corrected) phi correlation of the pairs; (nan, nan) with no pairs."""
    n = both + only_first + only_second + neither
    if n == 0:
        return _NAN
    p1, p2 = (both + only_first) / n, (both + only_second) / n
    l1, u1 = wilson_interval(both + only_first, n, confidence)
    l2, u2 = wilson_interval(both + only_second, n, confidence)
    margins = (both + only_first) * (only_second + neither) * (both + only_second) * (only_first + neither)
    cross = both * neither - only_first * only_second
    if margins == 0 or 0 <= cross <= n / 2:
        phi = 0.0
    else:
        phi = (cross - n / 2 if cross > n / 2 else cross) / math.sqrt(margins)
    diff = p1 - p2
    lower = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    upper = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return diff - lower, diff + upper


def paired_bootstrap_interval(diffs: Sequence[float] | np.ndarray, seed: int = 0, resamples: int = 10_000,
                              confidence: float = 0.95) -> Interval:
    """Percentile bootstrap interval for the mean of per-item differences, items resampled with
    replacement from a generator seeded with `seed` (so a report is reproducible).

    A resample's mean depends only on how often each distinct difference is drawn, which is
    multinomial: drawing those counts gives the same distribution as drawing items, in time
    that grows with the distinct values (few, for accuracy differences), not the items."""
    diffs = np.asarray(diffs, dtype=float)
    if diffs.size == 0:
        return _NAN
    values, counts = np.unique(diffs, return_counts=True)
    rng = np.random.default_rng(seed)
    chunk = max(1, 10_000_000 // len(values))  # bounds memory at ~80 MB of counts
    means = np.concatenate([rng.multinomial(diffs.size, counts / diffs.size, size=min(chunk, resamples - start))
                            @ values / diffs.size for start in range(0, resamples, chunk)])
    low, high = np.quantile(means, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])
    return float(low), float(high)


def wilcoxon_p(diffs: Sequence[float] | np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value that the per-item differences centre on 0.

    Zero differences are kept in the ranking and their ranks dropped (Pratt), so items where
    both sides agree weigh in without counting as wins; all differences zero gives p = 1, no
    items gives nan. Differences are rounded to 12 decimals first, so float noise (1 - 1/3 against
    2/3) cannot break the ties the ranks depend on."""
    diffs = np.round(np.asarray(diffs, dtype=float), 12)
    if diffs.size == 0:
        return math.nan
    if not diffs.any():
        return 1.0
    return float(wilcoxon(diffs, zero_method="pratt").pvalue)
