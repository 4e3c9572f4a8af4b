"""Check kinds on the evaluation rows (PassKey accuracy by length, per seed); the rest and the
machinery are in :mod:`famlab.analysis.checks`."""

from __future__ import annotations

from typing import Any

import pandas as pd

from famlab.analysis.checks import Comparison, Finding, NotTestable, check_kind, claim_kind, diff, find_setting, versus
from famlab.analysis.evals import eval_seed_scores
from famlab.analysis.results import SweepResults
from famlab.analysis.tables import fam_vs_bswa


def eval_scores(res: SweepResults, value: str, where: str, needs: str) -> tuple[pd.DataFrame, str]:
    scores, what = eval_seed_scores(res, value, where)
    if scores.empty:
        raise NotTestable("evaluation tables" if not what else f"{needs} (evaluated {what})")
    return scores, what


@check_kind("eval_fam_beats_bswa")
def eval_fam_beats_bswa(
    res: SweepResults,
    *,
    needs: str,
    value: str = "accuracy",
    kind: str = "beats",
    margin: float = 0.0,
    where: str = "longest",
):
    """On the evaluation rows ``where`` (see :func:`eval_beats`) the best FAM variant beats (``kind``)
    every BSWA variant."""
    scores, what = eval_scores(res, value, where, needs)
    fam, bswa = fam_vs_bswa(list(scores.columns))
    if not (fam and bswa):
        raise NotTestable(needs)
    means = scores.mean()
    f, b = means[fam].idxmax(), means[bswa].idxmax()
    evidence = f"{value} {what} (seed means): FAM {means[f]:.3g}, best BSWA ({b}) {means[b]:.3g}"
    return Finding(evidence, versus(scores, f, bswa, claim_kind(kind), float(margin)))


@check_kind("eval_fam_vs_bswa_at_longest")
def eval_fam_vs_bswa_at_longest(res: SweepResults, *, needs: str, **params: Any):
    """:func:`eval_fam_beats_bswa` at the longest evaluated length."""
    if "where" in params:
        raise TypeError("eval_fam_vs_bswa_at_longest() got an unexpected keyword argument 'where'")
    return eval_fam_beats_bswa(res, needs=needs, where="longest", **params)


@check_kind("eval_beats")
def eval_beats(
    res: SweepResults,
    *,
    needs: str,
    better: Any,
    worse: Any,
    better_label: str | None = None,
    worse_label: str | None = None,
    value: str = "accuracy",
    kind: str = "beats",
    margin: float = 0.0,
    where: str = "all",
):
    """``better`` beats (``kind``) ``worse`` on the mean of ``value`` over the evaluation rows
    ``where`` = ``all`` lengths, those up to the ``training`` length, ``beyond`` it or the ``longest``."""
    scores, what = eval_scores(res, value, where, needs)
    a, b = find_setting(scores, better), find_setting(scores, worse)
    if a is None or b is None:
        raise NotTestable(needs)
    labels = {a: better_label or str(better), b: worse_label or str(worse)}
    means = scores.mean()
    evidence = f"mean {value} {what} (seed means): {labels[a]} {means[a]:.3g}, {labels[b]} {means[b]:.3g}"
    return Finding(evidence, [Comparison(diff(scores, a, b, labels), claim_kind(kind), float(margin))])


@check_kind("eval_beyond_training")
def eval_beyond_training(res: SweepResults, *, needs: str, better: Any, worse: Any, **params: Any):
    """:func:`eval_beats` past the training length (the same parameters, without ``where``)."""
    if "where" in params:
        raise TypeError("eval_beyond_training() got an unexpected keyword argument 'where'")
    return eval_beats(res, needs=needs, better=better, worse=worse, where="beyond", **params)


@check_kind("eval_beats_every")
def eval_beats_every(
    res: SweepResults,
    *,
    needs: str,
    better: Any,
    worse: list[Any],
    value: str = "accuracy",
    kind: str = "beats",
    margin: float = 0.0,
    where: str = "all",
):
    """``better`` beats (``kind``) each of the settings ``worse`` on the mean of ``value`` over the evaluation
    rows ``where`` (as :func:`eval_beats`): one comparison each, so the claim holds only if every one holds.
    A setting of ``worse`` that was not evaluated makes the claim not testable."""
    scores, what = eval_scores(res, value, where, needs)
    a, others = find_setting(scores, better), [find_setting(scores, w) for w in worse]
    if a is None or not others or any(b is None for b in others):
        raise NotTestable(needs)
    means = scores.mean()
    shown = ", ".join(f"{b} {means[b]:.3g}" for b in others)
    evidence = f"mean {value} {what} (seed means): {better} {means[a]:.3g}; {shown}"
    return Finding(evidence, versus(scores, a, others, claim_kind(kind), float(margin)))
