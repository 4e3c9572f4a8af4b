"""famlab.analysis.verdicts: paired differences over seeds read as holds / contradicted / inconclusive,
checked against scipy's own paired t-test and on synthetic results with a known truth."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from famlab.analysis.verdicts import (
    CONTRADICTED,
    HOLDS,
    INCONCLUSIVE,
    Effect,
    combine,
    paired_difference,
    rank_correlation,
    verdict,
)


def seeds(values) -> pd.Series:
    return pd.Series(values, index=range(len(values)), dtype=float)


def test_paired_interval_matches_scipys_paired_t_test():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 0.3, 6), rng.normal(0.8, 0.3, 6)
    effect = paired_difference(seeds(a), seeds(b), "a - b")
    ref = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert effect.n == 6 and effect.mean == pytest.approx(np.mean(a - b))
    assert (effect.ci_low, effect.ci_high) == pytest.approx((ref.low, ref.high))
    # the interval is on the differences, not on the two means: a shared seed effect cancels
    shared = rng.normal(0, 5.0, 6)
    shifted = paired_difference(seeds(a + shared), seeds(b + shared), "a - b")
    assert (shifted.ci_low, shifted.ci_high) == pytest.approx((ref.low, ref.high))


def test_only_common_seeds_are_paired():
    a = pd.Series({0: 1.0, 1: 2.0, 2: 3.0})
    b = pd.Series({1: 1.0, 2: 2.0, 3: 9.0})
    effect = paired_difference(a, b, "a - b")
    assert effect.n == 2 and effect.mean == 1.0 and effect.tie is False


def clear_effect(rng, n=5, size=1.0, noise=0.1):
    base = rng.normal(0, 1, n)
    return seeds(base + size + rng.normal(0, noise, n)), seeds(base + rng.normal(0, noise, n))


def test_a_clear_effect_holds_and_its_reverse_is_contradicted():
    rng = np.random.default_rng(1)
    a, b = clear_effect(rng)
    assert verdict(paired_difference(a, b, "a - b"), "beats") == HOLDS
    assert verdict(paired_difference(b, a, "b - a"), "beats") == CONTRADICTED


def test_pure_noise_is_inconclusive_in_most_draws():
    """Two settings with no difference: 'beats' must be inconclusive about 95% of the time (the
    interval covers 0), never holds in more than ~2.5% + sampling slack."""
    rng = np.random.default_rng(2)
    outcomes = []
    for _ in range(400):
        base = rng.normal(0, 1, 3)
        a, b = seeds(base + rng.normal(0, 0.1, 3)), seeds(base + rng.normal(0, 0.1, 3))
        outcomes.append(verdict(paired_difference(a, b, "a - b"), "beats"))
    share = {v: outcomes.count(v) / len(outcomes) for v in (HOLDS, CONTRADICTED, INCONCLUSIVE)}
    assert share[INCONCLUSIVE] > 0.9 and share[HOLDS] < 0.05 and share[CONTRADICTED] < 0.05


def test_one_seed_is_always_inconclusive():
    effect = paired_difference(seeds([5.0]), seeds([1.0]), "a - b")
    assert math.isnan(effect.ci_low)
    assert [verdict(effect, k, 0.1) for k in ("beats", "at_least", "about_equal")] == [INCONCLUSIVE] * 3


def test_a_tie_in_every_seed_cannot_show_a_difference():
    zeros = paired_difference(seeds([0.0, 0.0, 0.0]), seeds([0.0, 0.0, 0.0]), "a - b")
    assert zeros.tie and verdict(zeros, "beats") == INCONCLUSIVE and verdict(zeros, "at_least") == INCONCLUSIVE
    assert verdict(zeros, "about_equal", 0.01) == HOLDS  # equal within any margin
    always_better = paired_difference(seeds([1.0, 1.0, 1.0]), seeds([0.0, 0.0, 0.0]), "a - b")
    assert verdict(always_better, "beats") == HOLDS  # a zero-variance difference away from 0 is decided


def effect(low, high, n=3):
    return Effect("x", (low + high) / 2, low, high, n)


@pytest.mark.parametrize(
    "low, high, margin, expected",
    [
        (-0.01, 0.01, 0.05, HOLDS),  # inside the margin
        (0.06, 0.09, 0.05, CONTRADICTED),  # wholly above it
        (-0.09, -0.06, 0.05, CONTRADICTED),  # wholly below it
        (-0.02, 0.08, 0.05, INCONCLUSIVE),  # straddles the margin
        (-0.01, 0.01, 0.0, INCONCLUSIVE),  # no margin: equality cannot be shown
    ],
)
def test_about_equal_is_an_equivalence_test(low, high, margin, expected):
    assert verdict(effect(low, high), "about_equal", margin) == expected


@pytest.mark.parametrize(
    "low, high, margin, expected",
    [
        (0.01, 0.2, 0.0, HOLDS),
        (-0.04, 0.2, 0.05, HOLDS),
        (-0.3, -0.1, 0.05, CONTRADICTED),
        (-0.1, 0.2, 0.05, INCONCLUSIVE),
    ],
)
def test_at_least_is_a_non_inferiority_test(low, high, margin, expected):
    assert verdict(effect(low, high), "at_least", margin) == expected


def test_bad_kind_or_margin_is_an_error():
    with pytest.raises(ValueError, match="kind='better' is not allowed: expected one of beats, at_least, about_equal"):
        verdict(effect(0, 1), "better")
    with pytest.raises(ValueError, match="margin=-1 is not allowed"):
        verdict(effect(0, 1), "about_equal", -1)


def test_combine_needs_every_comparison():
    assert combine([HOLDS, HOLDS]) == HOLDS
    assert combine([HOLDS, INCONCLUSIVE]) == INCONCLUSIVE
    assert combine([HOLDS, CONTRADICTED, INCONCLUSIVE]) == CONTRADICTED
    assert combine([]) == INCONCLUSIVE


def test_rank_correlation_interval():
    x = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    rng = np.random.default_rng(3)
    y = [v + rng.normal(0, 2) for v in x]
    rho = rank_correlation(x, y, "rho")
    assert rho.mean == pytest.approx(stats.spearmanr(x, y).statistic)
    assert -1 < rho.ci_low < rho.mean < rho.ci_high < 1
    # Bonett-Wright: z = atanh(rho) +- 1.96 sqrt((1 + rho^2/2) / (n - 3))
    half = stats.norm.ppf(0.975) * math.sqrt((1 + rho.mean**2 / 2) / 7)
    assert rho.ci_low == pytest.approx(math.tanh(math.atanh(rho.mean) - half))
    assert verdict(rank_correlation(x, x[::-1], "rho"), "beats") == CONTRADICTED  # rho = -1: a point interval
    few = rank_correlation([1, 2, 3], [1, 2, 3], "rho")
    assert few.mean == 1.0 and math.isnan(few.ci_low) and verdict(few, "beats") == INCONCLUSIVE
