"""Every table of a sweep's analysis, and its export as Markdown and LaTeX."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from famlab.analysis.claims import paper_claims
from famlab.analysis.evals import eval_table_or_empty
from famlab.analysis.results import SweepResults
from famlab.analysis.tables import ablation_table, format_mean_ci, paper_agreement, paper_table


def flat_columns(df: pd.DataFrame) -> pd.DataFrame:
    """A table with one header row: MultiIndex columns joined with ' / ', a named column axis as a
    prefix of each column, the index as the first column(s)."""
    out = df.copy()
    if isinstance(out.columns, pd.MultiIndex):
        out.columns = [" / ".join(str(x) for x in c if str(x) != "") for c in out.columns]
    elif out.columns.name is not None:  # a named column axis ("val/loss by model.attention", "variant")
        out.columns = [f"{out.columns.name}: {c}" for c in out.columns]
    if isinstance(out.index, pd.MultiIndex) or out.index.name is not None:
        out = out.reset_index()
        out.columns = [" / ".join(str(x) for x in c) if isinstance(c, tuple) else str(c) for c in out.columns]
        return out
    return out.reset_index(names=[""]) if not isinstance(out.index, pd.RangeIndex) else out


def to_markdown(df: pd.DataFrame, path: str | Path | None = None, floatfmt: str = ".4g") -> str:
    """A table as GitHub Markdown (MultiIndex columns joined with ' / '); written to ``path`` too."""
    text = flat_columns(df).to_markdown(index=False, floatfmt=floatfmt) + "\n"
    if path is not None:
        Path(path).write_text(text)
    return text


def to_latex(
    df: pd.DataFrame,
    path: str | Path | None = None,
    *,
    caption: str | None = None,
    label: str | None = None,
    float_format: str = "{:.4g}",
) -> str:
    """A table as a LaTeX ``tabular`` (booktabs rules, names escaped); written to ``path`` too."""
    text = df.to_latex(
        float_format=float_format.format, caption=caption, label=label, escape=True, multicolumn_format="c"
    )
    if path is not None:
        Path(path).write_text(text)
    return text


def all_tables(res: SweepResults) -> dict[str, pd.DataFrame]:
    """Every table of a sweep's analysis, by name (empty ones left out)."""
    if not res.ok:
        return {}
    tables = {
        "ablation": format_mean_ci(ablation_table(res)),
        "paper": paper_table(res),
        "agreement": paper_agreement(res),
        "claims": paper_claims(res),
        "eval": eval_table_or_empty(res),
    }
    return {k: v for k, v in tables.items() if not v.empty}


def export_tables(tables: dict[str, pd.DataFrame], out_dir: str | Path, prefix: str = "") -> list[Path]:
    """Write each table as ``<prefix>_<name>.md`` and ``.tex`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, df in tables.items():
        stem = f"{prefix}_{name}" if prefix else name
        written.append(out / f"{stem}.md")
        to_markdown(df, written[-1])
        written.append(out / f"{stem}.tex")
        to_latex(df, written[-1], caption=f"{prefix} {name}".strip().replace("_", " "), label=f"tab:{stem}")
    return written
