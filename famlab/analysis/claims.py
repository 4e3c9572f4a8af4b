"""The paper's claims, checked on famlab's numbers with an interval and a verdict.

A spec declares the claims its study tests in a ``claims:`` section, each with an ``id``, the
paper's ``statement``, the ``check`` (a kind registered in :mod:`famlab.analysis.checks` or
:mod:`famlab.analysis.eval_checks`), ``needs`` (what the sweep must have for the check to say
anything) and the check's parameters::

    claims:
      - id: fam_beats_bswa
        statement: FAM beats every BSWA memory segment (Table 11)
        check: fam_beats_bswa
        needs: FAM and BSWA variants

The claim's verdict is ``holds``, ``contradicted`` or ``inconclusive``: every comparison holds / one
is contradicted / the intervals cannot tell (:func:`famlab.analysis.verdicts.combine`); a claim the
sweep cannot test (:class:`~famlab.analysis.checks.NotTestable`) is inconclusive. Settings are picked
by their seed means (e.g. "the best BSWA variant"); the interval is then taken over seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from famlab.analysis import eval_checks  # noqa: F401  (registers the evaluation check kinds)
from famlab.analysis.checks import CHECKS, Comparison, Finding, NotTestable, check_kind
from famlab.analysis.results import SweepResults
from famlab.analysis.verdicts import HOLDS, INCONCLUSIVE, Effect, binding, combine

__all__ = [
    "CHECKS",
    "CLAIM_COLUMNS",
    "ClaimResult",
    "Comparison",
    "Finding",
    "NotTestable",
    "check_claim",
    "check_kind",
    "evaluate_claims",
    "paper_claims",
    "spec_claims",
]

CLAIM_FIELDS = ("id", "statement", "check")  # required; every other key is a parameter of the check
CLAIM_COLUMNS = ["claim", "famlab", "effect", "verdict"]


@dataclass(frozen=True)
class ClaimResult:
    """A claim's outcome: ``verdict`` (holds / contradicted / inconclusive) and ``effect``, the
    comparison that decides it (its mean and interval), or None where the sweep could not test it."""

    id: str
    statement: str
    evidence: str
    verdict: str
    effect: Effect | None = None

    @property
    def holds(self) -> bool | None:
        """True / False for a decided claim, None for an inconclusive one."""
        return None if self.verdict == INCONCLUSIVE else self.verdict == HOLDS

    @property
    def effect_text(self) -> str:
        return self.effect.text() if self.effect is not None else "–"


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
    """One claim's evidence, effect and verdict. A claim that names an unknown check, or
    parameters its check does not take, is a ValueError (a mistake in the spec)."""
    missing = [k for k in CLAIM_FIELDS if k not in claim]
    if missing:
        raise ValueError(f"claim {claim.get('id', claim)!r}: missing {', '.join(missing)}")
    kind = claim["check"]
    if kind not in CHECKS:
        raise ValueError(f"claim {claim['id']!r}: unknown check {kind!r}: expected one of {', '.join(sorted(CHECKS))}")
    params = {k: v for k, v in claim.items() if k not in CLAIM_FIELDS}
    ident, statement = str(claim["id"]), str(claim["statement"])
    try:
        finding = CHECKS[kind](res, **params)
    except NotTestable as lack:
        return ClaimResult(ident, statement, f"not testable: the sweep lacks {lack}", INCONCLUSIVE)
    except TypeError as err:
        raise ValueError(f"claim {claim['id']!r} (check {kind}): {err}") from err
    if not finding.comparisons:
        return ClaimResult(ident, statement, finding.evidence, INCONCLUSIVE)
    verdicts = [c.verdict for c in finding.comparisons]
    decisive = binding([c.effect for c in finding.comparisons], verdicts)
    return ClaimResult(ident, statement, finding.evidence, combine(verdicts), decisive)


def evaluate_claims(res: SweepResults) -> list[ClaimResult]:
    """Every claim of the sweep's spec, in the spec's order ([] when there are no results)."""
    if not res.ok:
        return []
    return [check_claim(res, c) for c in spec_claims(res.spec)]


def paper_claims(res: SweepResults) -> pd.DataFrame:
    """The paper's findings for this study (the spec's ``claims:``): the statement, famlab's
    evidence, the deciding effect with its 95% interval over seeds, and the verdict."""
    rows = [
        {"claim": r.statement, "famlab": r.evidence, "effect": r.effect_text, "verdict": r.verdict}
        for r in evaluate_claims(res)
    ]
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)
