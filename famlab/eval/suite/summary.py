"""Effective length (RULER's): the longest evaluated length up to which a task's score stays at or above
a threshold.

A task's score at a length is its mean over depth buckets (``score``: RULER's all-match for the
synthetic tasks, per-query accuracy for MQAR). Its effective length is the largest evaluated length L
such that the score is >= ``threshold`` at L and at every shorter evaluated length (0 if the shortest
already fails; a length where the task did not fit, and so was skipped, is not an evaluated length). The default threshold, 0.85, is RULER's (it uses Llama-2-7B's 85.6% at 4K as the bar): an
absolute bar, so that runs of one sweep are compared against the same number. The suite's effective
length applies the same rule to the score averaged over its tasks (RULER's "average" row);
``mean_effective_length`` averages the tasks' own effective lengths.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

DEFAULT_THRESHOLD = 0.85


def effective_length(by_length: pd.Series, threshold: float) -> int:
    """The effective length of scores indexed by length (see the module docstring)."""
    best = 0
    for length, value in by_length.sort_index().items():
        if not value >= threshold:  # nan fails too
            break
        best = int(length)
    return best


def summarize(df: pd.DataFrame, seq_len: int, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """{"threshold", "score", "effective_length", "effective_length_x", "mean_effective_length",
    "mean_effective_length_x", "tasks": {task: {"score", "effective_length", "effective_length_x"}}} over the
    rows with a ``score`` (tidy: task, length, score)."""
    scored = df.dropna(subset=["score"]) if "score" in df.columns else df.iloc[0:0]
    if scored.empty:
        return {}
    per = scored.groupby(["task", "length"])["score"].mean()
    tasks = {}
    for task, series in per.groupby(level="task"):
        s = series.droplevel("task")
        eff = effective_length(s, threshold)
        tasks[task] = {"score": float(s.mean()), "effective_length": eff, "effective_length_x": eff / seq_len}
    average = per.groupby(level="length").mean()
    eff = effective_length(average, threshold)
    mean_eff = float(np.mean([t["effective_length"] for t in tasks.values()]))
    return {
        "threshold": threshold,
        "score": float(average.mean()),
        "effective_length": eff,
        "effective_length_x": eff / seq_len,
        "mean_effective_length": mean_eff,
        "mean_effective_length_x": mean_eff / seq_len,
        "tasks": tasks,
    }
