"""Verdicts: the effect a claim is about, with its interval, turned into holds / contradicted / inconclusive.

A claim compares settings that ran with the same seeds (same data order, same validation batches),
so the test is on **paired differences over seeds**: for each seed, the score of one setting minus
the score of the other ("higher is better" scores), then the mean of the differences with its
two-sided t-interval (:func:`paired_difference`). Three kinds of claim read that interval:

* ``beats`` (A is better than B): ``holds`` when the interval lies above 0, ``contradicted`` when
  it lies below 0, else ``inconclusive``.
* ``at_least`` (A is at least as good as B, within ``margin``): ``holds`` when the interval's
  lower end is at or above ``-margin``, ``contradicted`` when its upper end is below ``-margin``.
* ``about_equal`` (|A - B| <= ``margin``; an equivalence test in the spirit of TOST):
  ``holds`` when the whole interval lies within ``[-margin, margin]``, ``contradicted`` when it lies
  wholly outside, else ``inconclusive``.

With fewer than 2 seeds there is no interval and every verdict is ``inconclusive``; so is a
``beats`` or ``at_least`` comparison where the two settings score exactly the same in every seed
(e.g. both at 0 PassKey accuracy: the run cannot tell them apart).

A claim over several comparisons (FAM beats *every* BSWA variant) holds when every comparison holds
and is contradicted when any is (:func:`combine`).

:func:`rank_correlation` gives Spearman's rho with a Fisher-z interval (Bonett & Wright's standard
error) for claims about an ordering.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from famlab.analysis.stats import mean_ci, spearman

HOLDS, CONTRADICTED, INCONCLUSIVE = "holds", "contradicted", "inconclusive"
VERDICTS = (HOLDS, CONTRADICTED, INCONCLUSIVE)
CLAIM_KINDS = ("beats", "at_least", "about_equal")


@dataclass(frozen=True)
class Effect:
    """A measured effect: ``label`` (e.g. ``FAM - M1``), its mean, the ``level`` interval and n
    (seeds, or points for a rank correlation); ``tie`` when every paired difference is exactly 0."""

    label: str
    mean: float
    ci_low: float
    ci_high: float
    n: int
    tie: bool = False

    def text(self, digits: int = 3) -> str:
        """``FAM - M1: +0.041 [+0.012, +0.070] (3 seeds)``; without an interval, the mean alone."""
        if pd.isna(self.mean):
            return f"{self.label}: no common seeds"
        if pd.isna(self.ci_low):
            return f"{self.label}: {self.mean:+.{digits}g} (n={self.n}: no interval)"
        return f"{self.label}: {self.mean:+.{digits}g} [{self.ci_low:+.{digits}g}, {self.ci_high:+.{digits}g}] (n={self.n})"


def paired_difference(a: pd.Series, b: pd.Series, label: str, level: float = 0.95) -> Effect:
    """Mean of ``a - b`` over the seeds both have (series indexed by seed), with its t-interval."""
    both = pd.concat([a, b], axis=1, keys=["a", "b"]).dropna()
    diff = both["a"] - both["b"]
    ci = mean_ci(diff.tolist(), level)
    tie = bool(len(diff) > 0 and (diff == 0).all())
    return Effect(label, ci["mean"], ci["ci_low"], ci["ci_high"], int(ci["n"]), tie)


def verdict(effect: Effect, kind: str, margin: float = 0.0) -> str:
    """The verdict of one comparison (see the module docstring)."""
    if kind not in CLAIM_KINDS:
        raise ValueError(f"kind={kind!r} is not allowed: expected one of {', '.join(CLAIM_KINDS)}")
    if not margin >= 0:
        raise ValueError(f"margin={margin!r} is not allowed: expected a number >= 0")
    low, high = effect.ci_low, effect.ci_high
    if effect.n < 2 or pd.isna(low) or pd.isna(high):
        return INCONCLUSIVE
    if kind == "beats":
        if effect.tie:
            return INCONCLUSIVE
        return HOLDS if low > 0 else CONTRADICTED if high < 0 else INCONCLUSIVE
    if kind == "at_least":
        if effect.tie and margin == 0:
            return INCONCLUSIVE
        return HOLDS if low >= -margin else CONTRADICTED if high < -margin else INCONCLUSIVE
    if -margin <= low and high <= margin:
        return HOLDS
    return CONTRADICTED if low > margin or high < -margin else INCONCLUSIVE


def combine(verdicts: Sequence[str]) -> str:
    """All comparisons of a claim: holds if each holds, contradicted if any is, else inconclusive."""
    if not verdicts:
        return INCONCLUSIVE
    if any(v == CONTRADICTED for v in verdicts):
        return CONTRADICTED
    return HOLDS if all(v == HOLDS for v in verdicts) else INCONCLUSIVE


def binding(effects: Sequence[Effect], verdicts: Sequence[str]) -> Effect:
    """The comparison that decides a combined verdict: a contradicting one if any, else the one
    with the lowest interval end (the closest to failing; the lowest mean where there is no interval)."""
    for effect, v in zip(effects, verdicts):
        if v == CONTRADICTED:
            return effect
    lows = [e.ci_low if not pd.isna(e.ci_low) else e.mean if not pd.isna(e.mean) else math.inf for e in effects]
    return effects[int(np.argmin(lows))]


def rank_correlation(x: Sequence[float], y: Sequence[float], label: str, level: float = 0.95) -> Effect:
    """Spearman's rho of the pairs, with a Fisher-z interval: z = atanh(rho), standard error
    sqrt((1 + rho^2 / 2) / (n - 3)) (Bonett & Wright 2000); no interval below 4 pairs or at |rho| = 1
    where z is infinite (then the interval is the point)."""
    from scipy import stats

    rho = spearman(x, y)
    n = sum(1 for a, b in zip(x, y) if not (pd.isna(a) or pd.isna(b)))
    if pd.isna(rho) or n < 4:
        return Effect(label, rho, math.nan, math.nan, n)
    if abs(rho) >= 1.0:
        return Effect(label, rho, rho, rho, n)
    se = math.sqrt((1 + rho**2 / 2) / (n - 3))
    half = float(stats.norm.ppf(0.5 + level / 2)) * se
    z = math.atanh(rho)
    return Effect(label, rho, math.tanh(z - half), math.tanh(z + half), n)
