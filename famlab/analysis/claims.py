"""The paper's claims, checked on famlab's numbers.

A spec declares the claims its study tests in a ``claims:`` section, each with an ``id``, the
paper's ``statement``, the ``check`` (a kind registered here), ``needs`` (what the sweep must have
for the check to say anything) and the check's parameters::

    claims:
      - id: fam_beats_bswa
        statement: FAM beats every BSWA memory segment (Table 11)
        check: fam_beats_bswa
        needs: FAM and BSWA variants

A check kind is a function ``(res, **params) -> (evidence, holds)``; it raises :class:`NotTestable`
when the sweep lacks what it needs. ``holds`` is True / False, or None where the evidence cannot
decide (a tie).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from famlab import paper
from famlab.analysis.evals import beyond_training, eval_table_or_empty
from famlab.analysis.results import SweepResults
from famlab.analysis.tables import fam_vs_bswa, setting_scores

ClaimCheck = Callable[..., tuple[str, bool | None]]
CHECKS: dict[str, ClaimCheck] = {}
CLAIM_FIELDS = ("id", "statement", "check")  # required; every other key is a parameter of the check
TIE = " (a tie: uninformative)"
CLAIM_COLUMNS = ["claim", "famlab", "holds"]


class NotTestable(Exception):
    """The sweep lacks what a check needs (the message says what)."""


@dataclass(frozen=True)
class ClaimResult:
    id: str
    statement: str
    evidence: str
    holds: bool | None


def check_kind(name: str) -> Callable[[ClaimCheck], ClaimCheck]:
    """Register a check kind under ``name`` (the ``check:`` of a claim)."""

    def register(fn: ClaimCheck) -> ClaimCheck:
        CHECKS[name] = fn
        return fn

    return register


def at_least(a: float, b: float) -> bool | None:
    """a >= b for an 'at least as good' claim; None on a tie (e.g. every variant at 0 accuracy)."""
    return None if a == b else bool(a > b)


def spec_claims(spec: Any) -> list[dict[str, Any]]:
    """The ``claims:`` of a spec: ``spec.claims`` where the spec loader keeps them, else read from
    the spec's YAML file."""
    if spec is None:
        return []
    claims = getattr(spec, "claims", None)
    if claims is None and getattr(spec, "path", ""):
        from omegaconf import OmegaConf

        raw = OmegaConf.to_container(OmegaConf.load(spec.path), resolve=True)
        claims = raw.get("claims") if isinstance(raw, dict) else None
    return [dict(c) for c in claims or []]


def check_claim(res: SweepResults, claim: dict[str, Any]) -> ClaimResult:
    """One claim's evidence and verdict. A claim that names an unknown check, or parameters its
    check does not take, is a ValueError (a mistake in the spec)."""
    missing = [k for k in CLAIM_FIELDS if k not in claim]
    if missing:
        raise ValueError(f"claim {claim.get('id', claim)!r}: missing {', '.join(missing)}")
    kind = claim["check"]
    if kind not in CHECKS:
        raise ValueError(f"claim {claim['id']!r}: unknown check {kind!r}: expected one of {', '.join(sorted(CHECKS))}")
    params = {k: v for k, v in claim.items() if k not in CLAIM_FIELDS}
    try:
        evidence, holds = CHECKS[kind](res, **params)
    except NotTestable as lack:
        evidence, holds = f"not testable: the sweep lacks {lack}", None
    except TypeError as err:
        raise ValueError(f"claim {claim['id']!r} (check {kind}): {err}") from err
    return ClaimResult(str(claim["id"]), str(claim["statement"]), evidence, holds)


def evaluate_claims(res: SweepResults) -> list[ClaimResult]:
    """Every claim of the sweep's spec, in the spec's order ([] when there are no results)."""
    if not res.ok:
        return []
    return [check_claim(res, c) for c in spec_claims(res.spec)]


def paper_claims(res: SweepResults) -> pd.DataFrame:
    """The paper's findings for this study (the spec's ``claims:``), each with famlab's evidence
    and ``holds`` (True / False, None when the sweep lacks the settings). :func:`evaluate_claims`
    gives the same with each claim's id."""
    results = evaluate_claims(res)
    rows = [{"claim": r.statement, "famlab": r.evidence, "holds": r.holds} for r in results]
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


# ----------------------------------------------------------------------------------------------
# check kinds on the seed means of the objective ('higher is better' scores, one per setting)


@check_kind("interior_best")
def interior_best(res: SweepResults, *, needs: str, label: str, among: str = "settings", min_settings: int = 3):
    """The best setting is neither the smallest nor the largest. ``among``: ``settings`` (the varied
    values themselves) or ``bswa_segments`` (the BSWA variants M<m>, ordered by m)."""
    scores = setting_scores(res)
    if among == "settings":
        size = {s: s for s in scores.index}
    elif among == "bswa_segments":
        _, bswa = fam_vs_bswa(list(scores.index))
        size = {s: int(str(s)[1:]) for s in bswa if str(s)[1:].isdigit()}
    else:
        raise ValueError(f"among={among!r}: expected settings or bswa_segments")
    if len(size) < min_settings:
        raise NotTestable(needs)
    best = scores[list(size)].idxmax()
    ordered = sorted(size, key=size.get)
    evidence = f"best {label} by {res.metric}: {best} of {ordered}"
    return evidence, bool(size[best] not in (min(size.values()), max(size.values())))


@check_kind("fam_beats_bswa")
def fam_beats_bswa(res: SweepResults, *, needs: str):
    """The best FAM variant scores above the best BSWA variant."""
    scores = setting_scores(res)
    fam, bswa = fam_vs_bswa(list(scores.index))
    if not (fam and bswa):
        raise NotTestable(needs)
    f, b = scores[fam].max(), scores[bswa].max()
    evidence = f"{res.metric}: FAM {abs(f):.4g} vs best BSWA ({scores[bswa].idxmax()}) {abs(b):.4g}"
    return evidence, bool(f > b)


@check_kind("setting_at_least_as_good")
def setting_at_least_as_good(res: SweepResults, *, needs: str, setting: Any):
    """``setting`` scores at least as well as every other one (None on a tie)."""
    scores = setting_scores(res)
    if setting not in scores.index or len(scores) < 2:
        raise NotTestable(needs)
    evidence = f"{res.metric}: " + ", ".join(f"{k} {abs(v):.4g}" for k, v in scores.items())
    return evidence, at_least(scores[setting], scores.drop(setting).max())


@check_kind("setting_beats")
def setting_beats(res: SweepResults, *, needs: str, better: Any, worse: Any, better_label: str, worse_label: str):
    """``better`` scores strictly above ``worse``."""
    scores = setting_scores(res)
    if not {better, worse} <= set(scores.index):
        raise NotTestable(needs)
    a, b = scores[better], scores[worse]
    return f"{res.metric}: {better_label} {abs(a):.4g}, {worse_label} {abs(b):.4g}", bool(a > b)


@check_kind("best_setting")
def best_setting(res: SweepResults, *, needs: str, setting: Any, label: str, min_settings: int = 2):
    """``setting`` is the best of the settings tried."""
    scores = setting_scores(res)
    if len(scores) < min_settings:
        raise NotTestable(needs)
    best = scores.idxmax()
    same = math.isclose(best, setting) if isinstance(setting, int | float) else best == setting
    return f"best {label} by {res.metric}: {best} of {sorted(scores.index)}", bool(same)


@check_kind("worse_than_best")
def worse_than_best(
    res: SweepResults, *, needs: str, needs_setting: str, setting: Any, label: str, min_settings: int = 2
):
    """``setting`` scores below the best setting."""
    scores = setting_scores(res)
    if len(scores) < min_settings:
        raise NotTestable(needs)
    found = [s for s in scores.index if s == setting]
    if not found:
        raise NotTestable(needs_setting)
    value = scores[found[0]]
    return f"{res.metric}: {label} {abs(value):.4g}, best {abs(scores.max()):.4g}", bool(value < scores.max())


@check_kind("within_paper_gap")
def within_paper_gap(res: SweepResults, *, needs: str, setting: Any, reference: Any, paper_table: str):
    """``setting`` is no further from ``reference`` (relative to it) than the paper's table finds
    them on any task."""
    scores = setting_scores(res)
    if not {setting, reference} <= set(scores.index):
        raise NotTestable(needs)
    ref, value = abs(scores[reference]), abs(scores[setting])
    rel = abs(value - ref) / ref if ref else math.inf
    gap = paper.relative_gap(paper.TABLES[paper_table], setting, reference)
    evidence = (
        f"{res.metric}: {reference} {ref:.4g}, {setting} {value:.4g} "
        f"({100 * rel:.2f}% apart; paper up to {100 * gap:.1f}%)"
    )
    return evidence, bool(rel <= gap)


@check_kind("within_paper_spread")
def within_paper_spread(res: SweepResults, *, needs: str, paper_table: str, task: str, min_settings: int = 2):
    """The settings' spread ((max - min) / mean) is no wider than the paper's table has on ``task``."""
    scores = setting_scores(res)
    if len(scores) < min_settings:
        raise NotTestable(needs)
    values = scores.abs()
    spread = (values.max() - values.min()) / values.mean()
    paper_spread = paper.relative_spread(paper.TABLES[paper_table], task)
    evidence = (
        f"{res.metric} over {sorted(scores.index)}: spread {100 * spread:.2f}% of the mean "
        f"(paper {100 * paper_spread:.1f}%)"
    )
    return evidence, bool(spread <= paper_spread)


# ----------------------------------------------------------------------------------------------
# check kinds on the evaluation table (settings across, lengths down)


@check_kind("eval_fam_vs_bswa_at_longest")
def eval_fam_vs_bswa_at_longest(res: SweepResults, *, needs: str, value: str = "accuracy"):
    """At the longest evaluated length the best FAM variant is at least as good as every BSWA one."""
    ev = eval_table_or_empty(res, value)
    if ev.empty:
        raise NotTestable("evaluation tables")
    longest = ev.iloc[-1]
    fam, bswa = fam_vs_bswa(list(ev.columns))
    if not (fam and bswa):
        raise NotTestable(needs)
    f, b = longest[fam].max(), longest[bswa].max()
    evidence = f"{value} at length {ev.index[-1]}: FAM {f:.3g}, best BSWA {b:.3g}{TIE if f == b else ''}"
    return evidence, at_least(f, b)


@check_kind("eval_beyond_training")
def eval_beyond_training(
    res: SweepResults,
    *,
    needs: str,
    better: Any,
    worse: Any,
    better_label: str | None = None,
    worse_label: str | None = None,
    value: str = "accuracy",
    on_tie: bool | None = None,
):
    """Past the training length, ``better``'s mean is above ``worse``'s (``on_tie`` on a tie)."""
    ev = eval_table_or_empty(res, value)
    if ev.empty:
        raise NotTestable("evaluation tables")
    beyond = beyond_training(res, ev)
    if beyond.empty or not {better, worse} <= set(beyond.columns):
        raise NotTestable(needs)
    a, b = beyond[better].mean(), beyond[worse].mean()
    labels = (better_label or str(better), worse_label or str(worse))
    evidence = f"mean {value} beyond training length: {labels[0]} {a:.3g}, {labels[1]} {b:.3g}{TIE if a == b else ''}"
    return evidence, on_tie if a == b else bool(a > b)
