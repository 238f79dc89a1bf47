"""Statistics for publishable accuracy figures: intervals for one accuracy and paired tests
between two methods answering the same items. Pure functions of counts or arrays.

Chosen for small evaluation sets: Wilson's interval stays inside [0, 1] and keeps its coverage
near 0 and 1 where the normal (Wald) interval fails; McNemar's exact test and Newcombe's paired
interval use the pairing, which an unpaired comparison of two accuracies would throw away. For
non-binary per-item differences the mean gets a bootstrap interval and a sign-flip permutation
test of the same mean, so the p-value and the interval shown beside it are about one quantity (they
can still part near the boundary, and at a few items, where the percentile bootstrap is too narrow).
Calibration (how far a method's confidence in its picks is from how often they are right) is the
expected calibration error over equal-width bins and the multi-class Brier score.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import binomtest

Interval = tuple[float, float]
_NAN: Interval = (math.nan, math.nan)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval for a proportion successes/n (scipy's, exactly 0 or 1 at the ends); (nan, nan) when n
    is 0."""
    if n == 0:
        return _NAN
    interval = binomtest(successes, n).proportion_ci(confidence, method="wilson")
    return float(interval.low), float(interval.high)


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
    that grows with the distinct values (few, for accuracy differences), not the items. Fewer than two
    items: nan (resampling one value gives it back every time, an interval of no width that says nothing)."""
    diffs = np.asarray(diffs, dtype=float)
    if diffs.size < 2:
        return _NAN
    values, counts = np.unique(diffs, return_counts=True)
    rng = np.random.default_rng(seed)
    chunk = max(1, 10_000_000 // len(values))  # bounds memory at ~80 MB of counts
    means = np.concatenate([rng.multinomial(diffs.size, counts / diffs.size, size=min(chunk, resamples - start))
                            @ values / diffs.size for start in range(0, resamples, chunk)])
    low, high = np.quantile(means, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])
    return float(low), float(high)


EXACT_SIGN_FLIPS = 16  # up to this many non-zero differences every sign pattern is enumerated (65,536)


def sign_flip_p(diffs: Sequence[float] | np.ndarray, seed: int = 0, resamples: int = 100_000) -> float:
    """Two-sided p-value that per-item differences have mean 0: the chance that flipping each
    difference's sign at random gives a mean at least as far from 0 as the observed one.

    It tests the mean, which `paired_bootstrap_interval` bounds (a rank test such as Wilcoxon's
    tests the median and can call a difference significant whose interval holds 0). Zero
    differences cannot change sign and drop out. Exact up to EXACT_SIGN_FLIPS non-zero
    differences; beyond, `resamples` draws from a generator seeded with `seed`, counted as
    (1 + hits) / (1 + resamples) so p is never 0. A draw needs only how many of each distinct
    |difference| flip (binomial), so it costs the distinct values, not the items (where they are many, as
    continuous differences are, a random bit per item instead). No items: nan;
    all differences zero: 1. Differences are rounded to 12 decimals so float noise cannot break
    the ties the test compares."""
    diffs = np.round(np.asarray(diffs, dtype=float), 12)
    if diffs.size == 0:
        return math.nan
    diffs = diffs[diffs != 0]
    if diffs.size == 0:
        return 1.0
    # sums equal up to rounding count as "at least as far": the slack follows the terms' size, not the sum's, which
    # cancels to float noise where the mean is 0
    observed = abs(diffs.sum()) - 1e-9 * np.abs(diffs).sum()
    if diffs.size <= EXACT_SIGN_FLIPS:
        signs = 1 - 2 * ((np.arange(2 ** diffs.size)[:, None] >> np.arange(diffs.size)) & 1)
        return float((np.abs(signs @ diffs) >= observed).mean())
    values, counts = np.unique(np.abs(diffs), return_counts=True)
    rng = np.random.default_rng(seed)
    if len(values) > DISTINCT_BY_BITS:  # continuous differences (MC2's): a random bit per item beats a binomial each
        return _sign_bits_p(diffs, observed, rng, resamples)
    chunk = max(1, 10_000_000 // len(values))  # bounds memory at ~80 MB of counts
    hits = sum(int((np.abs((2 * rng.binomial(counts, 0.5, size=(min(chunk, resamples - start), len(values)))
                             - counts) @ values) >= observed).sum()) for start in range(0, resamples, chunk))
    return (1 + hits) / (1 + resamples)


DISTINCT_BY_BITS = 64  # above this many distinct |differences| a draw flips each item by a random bit


def _sign_bits_p(diffs: np.ndarray, observed: float, rng: np.random.Generator, resamples: int) -> float:
    """`sign_flip_p`'s draws for many distinct differences: each item's sign a random bit (eight from a random
    byte), the cost of a draw the items' count, where a binomial per distinct value costs far more per value."""
    chunk = max(1, 10_000_000 // diffs.size)
    hits = 0
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        bits = np.unpackbits(rng.integers(0, 256, size=(rows, -(-diffs.size // 8)), dtype=np.uint8), axis=1,
                             count=diffs.size)
        hits += int((np.abs((2.0 * bits - 1.0) @ diffs) >= observed).sum())
    return (1 + hits) / (1 + resamples)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (each method against origin), which
    controls the chance of any false positive in the family without assuming independence; NaNs
    stay NaN and are not counted in the family."""
    present = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (len(present) - rank) * p))
        out[i] = running
    return out


CALIBRATION_BINS = 15  # Guo et al. (2017), "On Calibration of Modern Neural Networks": the usual choice since


def calibration_error(confidence: Sequence[float] | np.ndarray, correct: Sequence[bool] | np.ndarray,
                      bins: int = CALIBRATION_BINS) -> float:
    """Expected calibration error: the picks are grouped by their confidence into `bins` equal-width bins
    ((k/bins, (k+1)/bins], the first one closed: Guo et al.'s, 2017), and each bin's |accuracy - mean confidence|
    is weighted by its share of the picks. 0 for a method exactly as often right as it is sure; nan for no picks.
    A confidence on an edge (a vote's share of 5 prompts, 0.6 = 9/15) is rounded to 9 decimals first, so float
    noise does not move it to the next bin up."""
    confidence, correct = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    if confidence.shape != correct.shape:
        raise ValueError(f"{confidence.size} confidences for {correct.size} verdicts")
    if not confidence.size:
        return math.nan
    if ((confidence < 0) | (confidence > 1)).any():
        raise ValueError("confidences are probabilities, in [0, 1]")
    which = np.maximum(np.ceil(np.round(confidence * bins, 9)).astype(int) - 1, 0)
    counts = np.bincount(which, minlength=bins)
    gaps = np.bincount(which, weights=correct - confidence, minlength=bins)  # per bin: n * (accuracy - confidence)
    return float(np.abs(gaps).sum() / counts.sum())


def brier_score(probabilities: Sequence[Sequence[float]], gold: Sequence[int]) -> float:
    """Brier's (1950) multi-class score: the mean over items of the squared distance between the options'
    probabilities and the one-hot gold answer, 0 (sure and right) to 2 (sure and wrong); nan for no items.
    Items may have different numbers of options."""
    if len(probabilities) != len(gold):
        raise ValueError(f"{len(probabilities)} option distributions for {len(gold)} gold answers")
    if not len(gold):
        return math.nan
    scores = []
    for p, g in zip(probabilities, gold):
        target = np.zeros(len(p))
        target[g] = 1.0
        scores.append(float(((np.asarray(p, dtype=float) - target) ** 2).sum()))
    return float(np.mean(scores))
