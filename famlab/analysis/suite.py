"""The long-context suite across a sweep (a spec with ``eval_suite``, :mod:`famlab.eval.suite`): the needle
heatmaps of every setting side by side, and the effective-length table (RULER's: settings down, tasks across).

The heatmaps read the rows ``famlab eval --suite`` stores on each trial (``suite_table``: score per task, length
and depth bucket) and average them over the trials of a setting (its seeds). The table reads each trial's summary
numbers (``eval/<suite>/effective_length_x``, ``eval/<suite>/tasks/<task>/effective_length_x``: in multiples of
the training length, so settings trained at one length compare directly) and averages them over seeds with a
95% t-interval.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from famlab.analysis.frames import eval_frame
from famlab.analysis.plots import pyplot
from famlab.analysis.results import SweepResults
from famlab.analysis.stats import aggregate, setting_sort_key
from famlab.analysis.tables import format_mean_ci
from famlab.config.metrics import RULER_TASKS

TASK_ORDER = (*RULER_TASKS, "mqar")
AVERAGE = "average"  # the suite's own effective length: the rule applied to the score averaged over its tasks


def suite_of(res: SweepResults) -> str | None:
    """The spec's ``eval_suite`` (None where the spec runs no suite)."""
    return getattr(res.spec, "eval_suite", None) if res.spec is not None else None


def suite_long(res: SweepResults) -> pd.DataFrame:
    """Every completed trial's suite rows, with its parameters and seed in front."""
    return eval_frame(res.complete, column="suite_table") if res.ok else pd.DataFrame()


def settings(res: SweepResults, values: Any) -> list[Any]:
    """The settings of the single varied parameter in the spec's order (others after, sorted)."""
    order = res.order().get(res.varied[0]) if len(res.varied) == 1 else None
    return sorted(dict.fromkeys(values), key=lambda v: setting_sort_key(v, order))


def heatmap_tasks(long: pd.DataFrame) -> list[str]:
    """The tasks with a needle depth, in the order the suite ran them."""
    if long.empty or not {"task", "depth", "score"} <= set(long.columns):
        return []
    return [t for t in dict.fromkeys(long["task"]) if long.loc[long["task"] == t, "depth"].notna().any()]


def suite_grids(res: SweepResults, task: str) -> dict[Any, pd.DataFrame]:
    """{setting: the score of ``task`` by depth (rows, top: 0) and length_x (columns)}: the mean over the
    setting's trials (seeds) and samples."""
    long = suite_long(res)
    if long.empty or len(res.varied) != 1:
        return {}
    rows = long[long["task"] == task]
    key = res.varied[0]
    return {
        s: rows[rows[key] == s].pivot_table(index="depth", columns="length_x", values="score", aggfunc="mean")
        for s in settings(res, rows[key])
    }


def plot_suite_heatmaps(res: SweepResults, tasks: list[str] | None = None):
    """The needle heatmaps side by side: one row per task (default: every task with a depth), one column per
    setting; score (all-match) by length (x, multiples of the training length) and depth (y). None when the
    trials stored no suite rows."""
    tasks = tasks or heatmap_tasks(suite_long(res))
    grids = {t: suite_grids(res, t) for t in tasks}
    grids = {t: g for t, g in grids.items() if g}
    if not grids:
        return None
    cols = list(dict.fromkeys(s for g in grids.values() for s in g))
    plt = pyplot()
    fig, axes = plt.subplots(
        len(grids), len(cols), figsize=(3.1 * len(cols), 2.6 * len(grids)), squeeze=False, layout="constrained"
    )
    image = None
    for i, (task, by_setting) in enumerate(grids.items()):
        for j, setting in enumerate(cols):
            ax = axes[i, j]
            g = by_setting.get(setting)
            if g is None or g.empty:
                ax.set_visible(False)
                continue
            image = ax.imshow(g.to_numpy(dtype=float), vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
            ax.set_xticks(range(g.shape[1]), [f"{x:g}x" for x in g.columns])
            ax.set_yticks(range(g.shape[0]), [f"{d:.2f}" for d in g.index])
            for (r, c), v in np.ndenumerate(g.to_numpy(dtype=float)):
                if np.isfinite(v):
                    ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7)
            ax.set_title(f"{setting}: {task}", fontsize=9)
            if i == len(grids) - 1:
                ax.set_xlabel("length (x training)")
            if j == 0:
                ax.set_ylabel("needle depth")
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, label="score (all-match, mean over seeds)")
    fig.suptitle(f"famlab {res.study_name}: {suite_of(res) or 'suite'} needle heatmaps")
    return fig


def effective_length_metrics(res: SweepResults) -> dict[str, str]:
    """{column: the ``eval/...`` metric}: the suite's average, then each task's effective length (x training)."""
    suite = suite_of(res)
    done = res.complete if res.ok else pd.DataFrame()
    if suite is None or done.empty:
        return {}
    # the suite's section: its one member's ("ruler"), or for "all" the one over every scored task
    prefix, suffix = f"eval/{suite}/tasks/", "/effective_length_x"
    tasks = [c[len(prefix) : -len(suffix)] for c in done.columns if c.startswith(prefix) and c.endswith(suffix)]
    tasks.sort(key=lambda t: TASK_ORDER.index(t) if t in TASK_ORDER else len(TASK_ORDER))  # as the suite runs them
    return {AVERAGE: f"eval/{suite}{suffix}", **{t: f"{prefix}{t}{suffix}" for t in tasks}}


def effective_length_table(res: SweepResults, formatted: bool = True) -> pd.DataFrame:
    """Settings (rows) by task (columns, ``average`` first): the effective length in multiples of the training
    length, mean ± 95% t-interval over seeds (``formatted=False``: the seed means as numbers)."""
    metrics = effective_length_metrics(res)
    if not metrics or len(res.varied) != 1:
        return pd.DataFrame()
    key = res.varied[0]
    frame = res.complete[[key, "seed", *metrics.values()]].rename(columns={v: k for k, v in metrics.items()})
    frame[list(metrics)] = frame[list(metrics)].apply(pd.to_numeric, errors="coerce")
    agg = aggregate(frame, key, list(metrics), complete_only=False, order=res.order())
    agg = agg.reindex(settings(res, agg.index))
    if not formatted:
        out = agg.xs("mean", axis=1, level="stat")
        out.columns.name = "effective length (x training)"
        return out
    out = format_mean_ci(agg, digits=3)
    out.columns.name = "effective length (x training)"
    return out
