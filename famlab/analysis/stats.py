"""Statistics over seeds: the t-interval of a mean, Spearman rank correlation, per-setting aggregates.

The distributions come from :mod:`scipy.stats`; this module only decides what famlab reports (sample
std with ddof=1, a two-sided t-interval, NaN rather than an error where there are too few values).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

HIGHER_IS_BETTER_HINTS = ("accuracy", "acc", "score", "tokens_per_s")
STATS = ("mean", "std", "ci_low", "ci_high", "ci_half", "n")


def t_ppf(q: float, dof: float) -> float:
    """Quantile of Student's t (``t_ppf(0.975, 1) = 12.706``); the normal quantile for ``dof = inf``."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"q={q} is not allowed: expected 0 < q < 1")
    if dof <= 0:
        raise ValueError(f"dof={dof} is not allowed: expected dof > 0")
    return float(stats.norm.ppf(q) if math.isinf(dof) else stats.t.ppf(q, dof))


def t_cdf(t: float, dof: float) -> float:
    """CDF of Student's t distribution with ``dof`` degrees of freedom."""
    return float(stats.norm.cdf(t) if math.isinf(dof) else stats.t.cdf(t, dof))


def mean_ci(values: Iterable[float], level: float = 0.95) -> dict[str, float]:
    """Mean, sample std (ddof=1), n and the two-sided t-interval of the mean at ``level``.
    NaNs are dropped; with n = 1 the std and interval are NaN."""
    x = np.asarray([v for v in values if v is not None and not pd.isna(v)], dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    std = float(x.std(ddof=1)) if n > 1 else math.nan
    half = t_ppf(0.5 + level / 2.0, n - 1) * std / math.sqrt(n) if n > 1 else math.nan
    return {"mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half, "ci_half": half, "n": n}


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN with < 2 pairs or a constant side."""
    pairs = [(a, b) for a, b in zip(x, y) if not (pd.isna(a) or pd.isna(b))]
    if len(pairs) < 2:
        return math.nan
    xs, ys = zip(*pairs)
    if len(set(xs)) < 2 or len(set(ys)) < 2:  # a constant side has no ranking (scipy would warn)
        return math.nan
    return float(stats.spearmanr(xs, ys).statistic)


def lower_is_better(metric: str, direction: str | None = None) -> bool:
    """Whether a smaller value of ``metric`` is better (the spec's direction wins for its objective)."""
    if direction is not None:
        return direction == "minimize"
    name = metric.lower()
    return not any(h in name for h in HIGHER_IS_BETTER_HINTS)


def setting_sort_key(value: Any, order: Sequence | None = None) -> tuple:
    """Where a setting sorts: first in ``order`` (the spec's grid order), then numbers (and bools)
    by value, then everything else by its text."""
    order = list(order or [])
    if value in order:
        return (0, order.index(value), "")
    if isinstance(value, bool | np.bool_):
        return (1, int(value), "")
    if isinstance(value, int | float | np.number) and not pd.isna(value):
        return (1, float(value), "")
    return (2, 0.0, str(value))


def sort_settings(df: pd.DataFrame, order: dict[str, Sequence]) -> pd.DataFrame:
    """Rows sorted by their index levels, each by :func:`setting_sort_key` with ``order[level]``."""
    if df.empty:
        return df
    names = list(df.index.names)
    tuples = [t if isinstance(t, tuple) else (t,) for t in df.index]
    keyed = [tuple(setting_sort_key(t[i], order.get(n)) for i, n in enumerate(names)) for t in tuples]
    return df.iloc[sorted(range(len(tuples)), key=lambda i: keyed[i])]


def aggregate(
    df: pd.DataFrame,
    by: str | Sequence[str],
    metrics: Sequence[str] | None = None,
    *,
    level: float = 0.95,
    complete_only: bool = True,
    order: dict[str, Sequence] | None = None,
) -> pd.DataFrame:
    """Aggregate over seeds (and any other column not in ``by``): one row per setting, columns
    ``(metric, stat)`` with stat in mean, std, ci_low, ci_high, ci_half (half-width of the
    ``level`` t-interval) and n (non-NaN values). Only COMPLETE trials where ``state`` exists.
    ``order`` maps a key to the order its values should appear in (others follow, sorted)."""
    by = [by] if isinstance(by, str) else list(by)
    if complete_only and "state" in df.columns:
        df = df[df["state"] == "COMPLETE"]
    if metrics is None:
        metrics = [c for c in df.columns if c not in by and c != "seed" and pd.api.types.is_numeric_dtype(df[c])]
    metrics = [m for m in metrics if m in df.columns]
    rows, keys = [], []
    for key, group in df.groupby(by, dropna=False, sort=False):
        keys.append(key if isinstance(key, tuple) else (key,))
        row = {}
        for m in metrics:
            values = pd.to_numeric(group[m], errors="coerce")
            for stat, value in mean_ci(values, level).items():
                row[(m, stat)] = value
        rows.append(row)
    columns = pd.MultiIndex.from_tuples([(m, s) for m in metrics for s in STATS], names=["metric", "stat"])
    index = pd.MultiIndex.from_tuples(keys, names=by) if len(by) > 1 else pd.Index([k[0] for k in keys], name=by[0])
    out = pd.DataFrame(rows, index=index, columns=columns)
    for m in metrics:
        out[(m, "n")] = out[(m, "n")].astype(int)
    return sort_settings(out, order or {})
