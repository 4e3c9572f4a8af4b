"""Tables of a sweep: the trials, THE ablation table (mean with a 95% t-interval over seeds, n),
famlab beside the paper in the paper's shape, and whether famlab orders the settings as the paper.

Conventions: famlab's metrics are mostly losses (lower is better) and the paper's are task scores
(higher is better); comparisons turn both into "higher is better" scores before ranking.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from famlab import paper
from famlab.analysis.results import SweepResults, load_sweep, run_setting
from famlab.analysis.stats import aggregate, lower_is_better, sort_settings, spearman


def trial_table(res: SweepResults) -> pd.DataFrame:
    """The trials: number, state, parameters, seed, objective, duration, why a trial failed."""
    df = res.trials
    cols = ["number", "state", *res.varied, "seed", "objective", "duration_s", "retry_of", "fail_reason"]
    cols = [c for c in cols if c in df.columns]
    out = df[cols].set_index("number")
    return out.dropna(axis=1, how="all")


def ablation_table(res: SweepResults, metrics: Sequence[str] | None = None, level: float = 0.95) -> pd.DataFrame:
    """Completed trials aggregated over seeds: one row per setting of the varied parameters,
    columns ``(metric, stat)`` (see :func:`~famlab.analysis.stats.aggregate`) for the objective and
    the spec's metrics."""
    if not res.ok:
        return pd.DataFrame()
    return aggregate(res.complete, res.varied, metrics or res.metrics, level=level, order=res.order())


def format_number(x: Any, digits: int = 4) -> str:
    """A number to ``digits`` significant digits (scientific when very large or small); "–" for none."""
    if x is None or pd.isna(x):
        return "–"
    x = float(x)
    if x != 0 and (abs(x) >= 10 ** (digits + 1) or abs(x) < 10 ** -(digits - 1)):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def format_ci(mean: float, half: float, digits: int = 4) -> str:
    """``mean ± half`` with the half-width to 2 significant digits and the mean to the same
    decimals (``2.800 ± 0.033``); the mean alone (``digits`` significant) without an interval."""
    if pd.isna(half) or half <= 0 or pd.isna(mean):
        return format_number(mean, digits)
    decimals = 1 - math.floor(math.log10(half))
    if decimals > 8:
        return f"{mean:.{digits - 1}e} ± {half:.1e}"
    decimals = max(0, decimals)
    return f"{mean:.{decimals}f} ± {half:.{decimals}f}"


def format_mean_ci(agg: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """An aggregate table as text: ``mean ± half-width`` per metric (just the mean when n = 1) and
    an ``n`` column (the largest n of the row)."""
    if agg.empty:
        return pd.DataFrame()
    metrics = list(dict.fromkeys(agg.columns.get_level_values(0)))
    out = pd.DataFrame(index=agg.index)
    for m in metrics:
        out[m] = [format_ci(mu, h, digits) for mu, h in zip(agg[(m, "mean")], agg[(m, "ci_half")])]
    out["n"] = agg.xs("n", axis=1, level="stat").max(axis=1).astype(int)
    return out


def ablation_text(spec: Any, storage_url: str) -> str:
    """What ``famlab sweep run`` prints at its end: a header line, then the ablation table (mean ±
    95% t-interval over seeds, n); "" when no trial completed."""
    res = load_sweep(spec, spec.profile, storage=storage_url)
    table = format_mean_ci(ablation_table(res))
    if table.empty:
        return ""
    header = f"{spec.study} ({spec.profile}): {spec.direction} {spec.metric}; mean ± 95% t-interval over seeds"
    return f"{header}\n{table.to_string()}"


# ----------------------------------------------------------------------------------------------
# famlab beside the paper


def paper_reference(res: SweepResults) -> tuple[paper.PaperTable | None, str | None, dict[Any, Any]]:
    """The paper table a study reproduces, the famlab parameter its settings correspond to and the
    map famlab setting -> paper setting (fam_length: settings match by L_F / B, since the tiny
    profile keeps the paper's ratios at a smaller block size)."""
    table = paper.BY_STUDY.get(res.study) if res.spec is not None else None
    if table is None or not res.ok or len(table.index) != 1:
        return None, None, {}
    key = table.index[0]
    if key not in res.varied:
        return table, None, {}
    ref = table.frame()
    values = list(dict.fromkeys(res.complete[key]))
    mapping: dict[Any, Any] = {}
    for v in values:
        target = v
        if key == "model.fam_len":
            block = run_setting(res, "model.block_size")
            target = v * paper.PAPER_BLOCK_SIZE / block if block else v
            target = int(target) if float(target).is_integer() else target
        if target in ref.index:
            mapping[v] = target
    return table, key, mapping


def paper_table(res: SweepResults, level: float = 0.95) -> pd.DataFrame:
    """famlab's seed means beside the paper's numbers, in the paper's shape.

    * spec ``table.rows`` only (e.g. fam_length): settings down; columns ``(source, name)``:
      ``("famlab", metric)`` per metric, ``("famlab", "n")`` seeds, then ``("paper <Table>",
      task)`` for settings the paper has (fam_length also ``("paper Table 5", "L_F")``, the
      paper's L_F at the same L_F / B).
    * ``table.columns`` only (e.g. memory_segment): the transpose, settings across, ``(source,
      name)`` down.
    * rows and columns (block_size): the objective's mean, ``rows`` down and ``columns`` across.
    """
    agg = ablation_table(res, level=level)
    if agg.empty:
        return pd.DataFrame()
    hints = res.spec.table or {}
    rows_hint = hints.get("rows")
    col_hint = hints.get("columns")
    rows_hint = [rows_hint] if isinstance(rows_hint, str) else list(rows_hint or [])
    if rows_hint and col_hint and all(k in res.varied for k in [*rows_hint, col_hint]):
        means = agg.xs("mean", axis=1, level="stat")[[res.metric]]
        wide = means[res.metric].unstack(col_hint)
        known = [c for c in res.order().get(col_hint, []) if c in wide.columns]
        wide = wide.reindex(columns=known + [c for c in wide.columns if c not in known])  # labels may be bools
        wide.columns.name = f"{res.metric} by {col_hint}"
        return sort_settings(wide, res.order())
    means = agg.xs("mean", axis=1, level="stat")
    out = pd.DataFrame(index=means.index)
    for m in means.columns:
        out[("famlab", m)] = means[m]
    out[("famlab", "n")] = agg.xs("n", axis=1, level="stat").max(axis=1).astype(int)
    table, key, mapping = paper_reference(res)
    if table is not None and key is not None and len(res.varied) == 1:
        ref = table.frame()
        label = f"paper {table.name}"
        if key == "model.fam_len":
            out[(label, "L_F")] = [mapping.get(v, math.nan) for v in out.index]
        for task in ref.columns:
            out[(label, task)] = [ref.loc[mapping[v], task] if v in mapping else math.nan for v in out.index]
    out.columns = pd.MultiIndex.from_tuples(out.columns, names=["source", "name"])
    if col_hint and not rows_hint:
        return out.T
    return out


def fam_vs_bswa(settings: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """The FAM settings (names starting with FAM) and the BSWA ones (M<m>, BSWA...) of a variant grid."""
    fam = [s for s in settings if str(s).upper().startswith("FAM")]
    bswa = [s for s in settings if s not in fam and str(s).upper().startswith(("M", "BSWA"))]
    return fam, bswa


def setting_scores(res: SweepResults, metric: str | None = None) -> pd.Series:
    """Seed means of the metric as 'higher is better' scores, indexed by the (single) varied param."""
    metric = metric or res.metric
    agg = ablation_table(res, [metric])
    if agg.empty or len(res.varied) != 1:
        return pd.Series(dtype=float)
    sign = -1.0 if lower_is_better(metric, res.direction if metric == res.metric else None) else 1.0
    return sign * agg[(metric, "mean")]


def seed_scores(res: SweepResults, metric: str | None = None) -> pd.DataFrame:
    """The metric per seed (rows) and setting of the single varied parameter (columns), as 'higher
    is better' scores: the paired data of a claim's test (settings that ran with one seed saw the
    same training batches and validation data)."""
    metric = metric or res.metric
    done = res.complete
    if not res.ok or len(res.varied) != 1 or metric not in done.columns or "seed" not in done.columns:
        return pd.DataFrame()
    sign = -1.0 if lower_is_better(metric, res.direction if metric == res.metric else None) else 1.0
    values = pd.to_numeric(done[metric], errors="coerce")
    frame = done.assign(_score=sign * values).pivot_table(
        index="seed", columns=res.varied[0], values="_score", aggfunc="first", dropna=False
    )
    frame.columns.name = res.varied[0]
    return frame


def mapping_inverse(mapping: dict[Any, Any], target: Any) -> Any:
    """The famlab setting that maps to the paper's ``target`` (``target`` itself when none does)."""
    for k, v in mapping.items():
        if v == target:
            return k
    return target


def direction_text(rho: float, n: int, famlab_best: Any, paper_best: Any) -> str:
    """Whether famlab orders the settings in the paper's direction, in words: yes when the Spearman
    correlation of the two scores is positive, no when it is not, with rho, the number of settings
    and whether the best setting is the same (a positive rho with different best settings is common:
    the overall trend agrees, the winner does not)."""
    if pd.isna(rho):
        return f"cannot tell (Spearman rho undefined over {n} settings: fewer than 2, or one side constant)"
    answer = "yes" if rho > 0 else "no"
    best = (
        f"same best setting ({famlab_best})"
        if famlab_best == paper_best
        else f"best setting differs: famlab {famlab_best}, paper {paper_best}"
    )
    return f"{answer} (Spearman rho={rho:+.2f} over {n} settings; {best})"


def paper_agreement(res: SweepResults, metric: str | None = None) -> pd.DataFrame:
    """Does famlab order the settings as the paper does? One row per paper task (plus the mean of
    the tasks): the settings both have (n), the Spearman rank correlation between famlab's score
    (the metric, negated when lower is better) and the paper's score, each side's best setting, the
    column ``direction agrees with the paper`` that says it in words ("yes (Spearman rho=+0.40 over
    4 settings; best setting differs: famlab 64, paper 4)", see :func:`direction_text`), and where
    the study has FAM and BSWA variants, FAM minus the best BSWA on each side (famlab in the metric's
    units, paper in score points), whether each says FAM wins, and ``FAM vs BSWA agrees with the
    paper`` (yes / no)."""
    table, key, mapping = paper_reference(res)
    if table is None or key is None or not mapping or len(res.varied) != 1:
        return pd.DataFrame()
    metric = metric or res.metric
    agg = ablation_table(res, [metric])
    famlab_mean = agg[(metric, "mean")]
    sign = -1.0 if lower_is_better(metric, res.direction if metric == res.metric else None) else 1.0
    settings = [s for s in famlab_mean.index if s in mapping]
    ref = table.frame()
    tasks = {t: ref[t] for t in ref.columns}
    tasks["mean of tasks"] = ref.mean(axis=1)
    fam, bswa = fam_vs_bswa(settings) if key == "variant" else ([], [])
    rows = []
    for task, col in tasks.items():
        ours = [sign * famlab_mean[s] for s in settings]
        theirs = [col[mapping[s]] for s in settings]
        rho = spearman(ours, theirs)
        row = {
            "paper": table.name,
            "task": task,
            "famlab metric": metric,
            "n settings": len(settings),
            "spearman rho": rho,
            "famlab best": settings[int(np.nanargmax(ours))] if settings else None,
            "paper best": mapping_inverse(mapping, col.loc[[mapping[s] for s in settings]].idxmax())
            if settings
            else None,
        }
        row["direction agrees with the paper"] = direction_text(
            rho, len(settings), row["famlab best"], row["paper best"]
        )
        if fam and bswa:
            f, b = fam[0], bswa
            best_ours = b[int(np.nanargmax([sign * famlab_mean[s] for s in b]))]
            best_theirs = max(b, key=lambda s: col[mapping[s]])
            ours_diff = famlab_mean[f] - famlab_mean[best_ours]
            theirs_diff = col[mapping[f]] - col[mapping[best_theirs]]
            row["famlab FAM - best BSWA"] = ours_diff
            row["paper FAM - best BSWA"] = theirs_diff
            row["FAM wins (famlab)"] = bool(sign * ours_diff > 0)
            row["FAM wins (paper)"] = bool(theirs_diff > 0)
            row["FAM vs BSWA agrees with the paper"] = (
                "yes" if row["FAM wins (famlab)"] == row["FAM wins (paper)"] else "no"
            )
        rows.append(row)
    return pd.DataFrame(rows).set_index("task")
