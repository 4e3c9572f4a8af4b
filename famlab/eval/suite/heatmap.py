"""The needle heatmap: score over (length x depth), one panel per task that has a needle depth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def depth_tasks(df: pd.DataFrame) -> list[str]:
    if not {"task", "depth", "score"} <= set(df.columns):
        return []
    return [t for t in dict.fromkeys(df["task"]) if df.loc[df["task"] == t, "depth"].notna().any()]


def grid(df: pd.DataFrame, task: str) -> pd.DataFrame:
    """Score of ``task`` with depth as rows (top: 0) and length_x as columns."""
    rows = df[df["task"] == task]
    return rows.pivot_table(index="depth", columns="length_x", values="score", aggfunc="mean").sort_index()


def write_heatmap(df: pd.DataFrame, path: str | Path, title: str = "") -> Path | None:
    """Write the heatmap PNG (None, nothing written, when no task has a depth)."""
    tasks = depth_tasks(df)
    if not tasks:
        return None
    from matplotlib.figure import Figure

    cols = min(len(tasks), 3)
    nrows = (len(tasks) + cols - 1) // cols
    fig = Figure(figsize=(4.2 * cols, 3.4 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, cols, squeeze=False)).ravel()
    image = None
    for ax, task in zip(axes, tasks):
        g = grid(df, task)
        image = ax.imshow(g.values, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(g.shape[1]), [f"{x:g}x" for x in g.columns])
        ax.set_yticks(range(g.shape[0]), [f"{d:.2f}" for d in g.index])
        ax.set_xlabel("length (x training seq_len)")
        ax.set_ylabel("needle depth")
        ax.set_title(task, fontsize=10)
        for (i, j), v in np.ndenumerate(g.values):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
    for ax in axes[len(tasks) :]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=list(axes[: len(tasks)]), shrink=0.8, label="score (all-match)")
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
