"""Check kinds: how a claim's comparisons are read off a sweep's results.

A check kind is a function ``(res, **params) -> Finding`` registered under a name with
:func:`check_kind` (a spec's ``check:``): the evidence in words and the claim's comparisons, each a
paired difference over seeds (:mod:`famlab.analysis.verdicts`) read as ``beats``, ``at_least`` or
``about_equal``. It raises :class:`NotTestable` when the sweep lacks what it needs. The kinds on the
objective are here; those on evaluation rows in :mod:`famlab.analysis.eval_checks`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from famlab import paper
from famlab.analysis.results import SweepResults
from famlab.analysis.tables import fam_vs_bswa, seed_scores
from famlab.analysis.verdicts import CLAIM_KINDS, Effect, paired_difference, verdict


class NotTestable(Exception):
    """The sweep lacks what a check needs (the message says what)."""


@dataclass(frozen=True)
class Comparison:
    """One comparison of a claim: the effect (a paired difference) and how the claim reads it."""

    effect: Effect
    kind: str = "beats"
    margin: float = 0.0

    @property
    def verdict(self) -> str:
        return verdict(self.effect, self.kind, self.margin)


@dataclass(frozen=True)
class Finding:
    """What a check found: the evidence in words and the claim's comparisons."""

    evidence: str
    comparisons: list[Comparison] = field(default_factory=list)


ClaimCheck = Callable[..., Finding]
CHECKS: dict[str, ClaimCheck] = {}


def check_kind(name: str) -> Callable[[ClaimCheck], ClaimCheck]:
    """Register a check kind under ``name`` (the ``check:`` of a claim)."""

    def register(fn: ClaimCheck) -> ClaimCheck:
        CHECKS[name] = fn
        return fn

    return register


# ----------------------------------------------------------------------------------------------
# helpers of the check kinds: per-seed 'higher is better' scores, one column per setting


def scores_for(res: SweepResults, needs: str, min_settings: int = 2) -> pd.DataFrame:
    """The objective per seed and setting (:func:`~famlab.analysis.tables.seed_scores`)."""
    scores = seed_scores(res)
    if scores.shape[1] < min_settings:
        raise NotTestable(needs)
    return scores


def find_setting(scores: pd.DataFrame, setting: Any) -> Any:
    """The column equal to ``setting`` (0 matches 0.0; a bool matches only a bool), else None."""
    for col in scores.columns:
        if isinstance(setting, bool) == isinstance(col, bool | np.bool_) and col == setting:
            return col
    return None


def subset(scores: pd.DataFrame, columns: list[Any]) -> pd.DataFrame:
    """Those columns, in that order (by position: a list of bools would be read as a mask)."""
    return scores.iloc[:, [list(scores.columns).index(c) for c in columns]]


def means_text(res: SweepResults, scores: pd.DataFrame, labels: dict[Any, str] | None = None) -> str:
    """``val/loss (seed means): M0 3.01, M1 2.52`` (losses shown as losses, not negated scores)."""
    labels = labels or {}
    parts = ", ".join(f"{labels.get(k, k)} {abs(v):.4g}" for k, v in scores.mean().items())
    return f"{res.metric} (seed means): {parts}"


def diff(scores: pd.DataFrame, a: Any, b: Any, labels: dict[Any, str] | None = None) -> Effect:
    labels = labels or {}
    return paired_difference(scores[a], scores[b], f"{labels.get(a, a)} - {labels.get(b, b)}")


def versus(scores: pd.DataFrame, a: Any, others: list[Any], kind: str, margin: float = 0.0) -> list[Comparison]:
    """``a`` against each of ``others``: one comparison each."""
    return [Comparison(diff(scores, a, b), kind, margin) for b in others]


def claim_kind(kind: str) -> str:
    if kind not in CLAIM_KINDS:
        raise ValueError(f"kind={kind!r} is not allowed: expected one of {', '.join(CLAIM_KINDS)}")
    return kind


# ----------------------------------------------------------------------------------------------
# check kinds on the objective


@check_kind("interior_best")
def interior_best(res: SweepResults, *, needs: str, label: str, among: str = "settings", min_settings: int = 3):
    """The best setting is neither the smallest nor the largest: the best interior one (by seed
    mean) beats both ends. ``among``: ``settings`` (the varied values themselves) or
    ``bswa_segments`` (the BSWA variants M<m>, ordered by m)."""
    scores = seed_scores(res)
    if among == "settings":
        size = {s: s for s in scores.columns}
    elif among == "bswa_segments":
        _, bswa = fam_vs_bswa(list(scores.columns))
        size = {s: int(str(s)[1:]) for s in bswa if str(s)[1:].isdigit()}
    else:
        raise ValueError(f"among={among!r}: expected settings or bswa_segments")
    if len(size) < min_settings:
        raise NotTestable(needs)
    ordered = sorted(size, key=size.get)
    inner = subset(scores, ordered[1:-1]).mean().idxmax()
    best = subset(scores, ordered).mean().idxmax()
    evidence = f"best {label} by {res.metric} (seed means): {best} of {ordered}"
    return Finding(evidence, versus(scores, inner, [ordered[0], ordered[-1]], "beats"))


@check_kind("fam_beats_bswa")
def fam_beats_bswa(res: SweepResults, *, needs: str):
    """The best FAM variant (by seed mean) beats every BSWA variant."""
    scores = seed_scores(res)
    fam, bswa = fam_vs_bswa(list(scores.columns))
    if not (fam and bswa):
        raise NotTestable(needs)
    means = scores.mean()
    f, b = means[fam].idxmax(), means[bswa].idxmax()
    evidence = f"{res.metric} (seed means): FAM {abs(means[f]):.4g} vs best BSWA ({b}) {abs(means[b]):.4g}"
    return Finding(evidence, versus(scores, f, bswa, "beats"))


@check_kind("setting_at_least_as_good")
def setting_at_least_as_good(res: SweepResults, *, needs: str, setting: Any, margin: float = 0.0):
    """``setting`` is at least as good as every other one (within ``margin``, the metric's units)."""
    scores = scores_for(res, needs)
    col = find_setting(scores, setting)
    if col is None:
        raise NotTestable(needs)
    others = [c for c in scores.columns if c != col]
    return Finding(means_text(res, scores), versus(scores, col, others, "at_least", float(margin)))


@check_kind("setting_beats")
def setting_beats(res: SweepResults, *, needs: str, better: Any, worse: Any, better_label: str, worse_label: str):
    """``better`` beats ``worse``."""
    scores = seed_scores(res)
    a, b = find_setting(scores, better), find_setting(scores, worse)
    if a is None or b is None:
        raise NotTestable(needs)
    labels = {a: better_label, b: worse_label}
    return Finding(means_text(res, subset(scores, [a, b]), labels), [Comparison(diff(scores, a, b, labels), "beats")])


@check_kind("best_setting")
def best_setting(res: SweepResults, *, needs: str, setting: Any, label: str, min_settings: int = 2):
    """``setting`` beats every other setting tried."""
    scores = scores_for(res, needs, min_settings)
    col = find_setting(scores, setting)
    if col is None:
        raise NotTestable(f"{label} = {setting}")
    best = scores.mean().idxmax()
    evidence = f"best {label} by {res.metric} (seed means): {best} of {sorted(scores.columns)}"
    return Finding(evidence, versus(scores, col, [c for c in scores.columns if c != col], "beats"))


@check_kind("worse_than_best")
def worse_than_best(
    res: SweepResults, *, needs: str, needs_setting: str, setting: Any, label: str, min_settings: int = 2
):
    """The best other setting (by seed mean) beats ``setting``."""
    scores = scores_for(res, needs, min_settings)
    col = find_setting(scores, setting)
    if col is None:
        raise NotTestable(needs_setting)
    best = scores.drop(columns=[col]).mean().idxmax()
    labels = {col: label}
    return Finding(means_text(res, scores, labels), [Comparison(diff(scores, best, col, labels), "beats")])


@check_kind("within_paper_gap")
def within_paper_gap(res: SweepResults, *, needs: str, setting: Any, reference: Any, paper_table: str):
    """``setting`` and ``reference`` are about equal: their difference lies within the largest
    relative gap the paper's table has between them (times the reference's mean)."""
    scores = seed_scores(res)
    if not {setting, reference} <= set(scores.columns):
        raise NotTestable(needs)
    gap = paper.relative_gap(paper.TABLES[paper_table], setting, reference)
    margin = gap * abs(scores[reference].mean())
    evidence = (
        f"{means_text(res, subset(scores, [reference, setting]))}; allowed gap {margin:.3g} ({100 * gap:.1f}%, paper)"
    )
    return Finding(evidence, [Comparison(diff(scores, setting, reference), "about_equal", margin)])


@check_kind("within_paper_spread")
def within_paper_spread(res: SweepResults, *, needs: str, paper_table: str, task: str, min_settings: int = 2):
    """The settings are about equal: the best minus the worst (by seed mean) lies within the
    relative spread ((max - min) / mean) the paper's table has on ``task``, times famlab's mean."""
    scores = scores_for(res, needs, min_settings)
    means = scores.mean()
    spread = paper.relative_spread(paper.TABLES[paper_table], task)
    margin = spread * float(means.abs().mean())
    evidence = f"{means_text(res, scores)}; allowed spread {margin:.3g} ({100 * spread:.1f}% of the mean, paper)"
    return Finding(evidence, [Comparison(diff(scores, means.idxmax(), means.idxmin()), "about_equal", margin)])
