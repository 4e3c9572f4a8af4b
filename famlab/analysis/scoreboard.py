"""The claims scoreboard: every claim of the paper that a spec checks, with famlab's deciding effect,
its 95% interval over seeds and the verdict, one row per claim across all studies.

``famlab claims`` prints it, ``famlab report`` opens with it and ``make reproduce`` ends with it.
A study without results shows its claims as ``not run`` (not a verdict: nothing was measured).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from famlab.analysis.claims import evaluate_claims, spec_claims
from famlab.analysis.results import load_sweep
from famlab.resources import spec_names

NOT_RUN = "not run"
SCOREBOARD_COLUMNS = ["study", "paper", "claim", "statement", "effect", "ci_low", "ci_high", "n", "verdict", "evidence"]


def paper_order(label: str) -> tuple:
    """Tables first by number, then figures, then the rest: ``Table 5`` < ``Table 11`` < ``PassKey figure``."""
    match = re.search(r"Table (\d+)", label or "")
    return (0, int(match.group(1)), label) if match else (1, 0, label or "")


def claim_studies(profile: str = "tiny") -> list[str]:
    """The spec names (from ``sweeps/``) whose spec declares claims, in the paper's order."""
    from famlab.sweep.spec import load_spec

    found = []
    for name in spec_names():
        try:
            spec = load_spec(name, profile, validate_runs=False)
        except ValueError:
            continue
        if spec_claims(spec):
            found.append((paper_order(spec.paper), name))
    return [name for _, name in sorted(found)]


def claim_rows(name: str, res: Any) -> list[dict[str, Any]]:
    """The scoreboard rows of one study's results (``not run`` rows where it has none)."""
    if not res.ok:
        return [
            {
                "study": name,
                "paper": res.spec.paper,
                "claim": claim.get("id"),
                "statement": claim.get("statement"),
                "effect": "–",
                "verdict": NOT_RUN,
                "evidence": res.message,
            }
            for claim in spec_claims(res.spec)
        ]
    rows = []
    for r in evaluate_claims(res):
        effect = r.effect
        rows.append(
            {
                "study": name,
                "paper": res.spec.paper,
                "claim": r.id,
                "statement": r.statement,
                "effect": r.effect_text,
                "ci_low": effect.ci_low if effect else None,
                "ci_high": effect.ci_high if effect else None,
                "n": effect.n if effect else None,
                "verdict": r.verdict,
                "evidence": r.evidence,
            }
        )
    return rows


def scoreboard(
    profile: str = "tiny",
    *,
    storage: str | None = None,
    root: str | Path | None = None,
    studies: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One row per claim: study, the paper's table or figure, claim id, the paper's statement,
    famlab's deciding effect (its label, mean and interval as text; ``ci_low``/``ci_high``/``n``
    as numbers), the verdict and the evidence."""
    rows: list[dict[str, Any]] = []
    for name in studies or claim_studies(profile):
        res = load_sweep(name, profile, storage=storage, root=root)
        if res.spec is not None:
            rows += claim_rows(name, res)
    return pd.DataFrame(rows, columns=SCOREBOARD_COLUMNS)


def claims_text(spec: Any, storage_url: str) -> str:
    """What ``famlab sweep run`` prints after the table: the study's claims with their verdicts
    ("" when the spec has none or nothing completed)."""
    res = load_sweep(spec, spec.profile, storage=storage_url)
    if not res.ok or not spec_claims(res.spec):
        return ""
    return scoreboard_text(pd.DataFrame(claim_rows(res.study, res), columns=SCOREBOARD_COLUMNS))


def verdict_counts(board: pd.DataFrame) -> str:
    """``3 hold, 1 contradicted, 5 inconclusive, 2 not run`` (the kinds present)."""
    counts = board["verdict"].value_counts() if not board.empty else pd.Series(dtype=int)
    words = {"holds": "hold"}
    order = ["holds", "contradicted", "inconclusive", NOT_RUN]
    return ", ".join(f"{counts[v]} {words.get(v, v)}" for v in order if v in counts) or "no claims"


def scoreboard_text(board: pd.DataFrame, width: int = 60) -> str:
    """The scoreboard for a terminal: verdict, study, claim id and the effect, one line per claim."""
    if board.empty:
        return "no claims"
    lines = [f"claims: {verdict_counts(board)} (effect: mean [95% interval] over seeds, paired by seed)"]
    for _, row in board.iterrows():
        effect = row["effect"] if len(str(row["effect"])) <= width else str(row["effect"])[: width - 1] + "…"
        lines.append(f"  {row['verdict']:<12} {row['study'] + ': ' + str(row['claim']):<48} {effect}")
    return "\n".join(lines)


def scoreboard_markdown(board: pd.DataFrame) -> str:
    """The scoreboard as a Markdown table (the README's): the paper's statement, the effect, the verdict."""
    if board.empty:
        return "no claims"
    out = ["| paper | claim | famlab effect (95% CI, n seeds) | verdict |", "|---|---|---|---|"]
    for _, row in board.iterrows():
        statement = str(row["statement"]).replace("|", "\\|")
        out.append(f"| {row['paper']} | {statement} | {row['effect']} | **{row['verdict']}** |")
    return "\n".join(out)


__all__ = [
    "NOT_RUN",
    "SCOREBOARD_COLUMNS",
    "claim_rows",
    "claim_studies",
    "claims_text",
    "scoreboard",
    "scoreboard_markdown",
    "scoreboard_text",
    "verdict_counts",
]
