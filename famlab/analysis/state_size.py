"""A score against the state each memory kind carries (the Zoology convention: recall quality against the
floats carried from block to block per sequence, ``state_floats`` in each run's ``final_metrics.json``)."""

from __future__ import annotations

import math

import pandas as pd

from famlab.analysis.evals import eval_seed_scores
from famlab.analysis.plots import pyplot
from famlab.analysis.results import SweepResults
from famlab.analysis.stats import mean_ci


def state_size_table(res: SweepResults, value: str = "accuracy", where: str = "all") -> pd.DataFrame:
    """Per setting: its state size (floats, the mean over seeds: every seed has the same model shape) and
    ``value`` over the evaluation rows ``where`` (mean, 95% t-interval over seeds). Empty when the trials have
    no ``state_floats`` or no evaluation; a setting whose state grows (``full``: null) is left out."""
    scores, _ = eval_seed_scores(res, value, where)
    done = res.complete
    if scores.empty or "state_floats" not in done.columns or len(res.varied) != 1:
        return pd.DataFrame()
    state = pd.to_numeric(done["state_floats"], errors="coerce").groupby(done[res.varied[0]]).mean()
    rows = []
    for setting in scores.columns:
        floats = state.get(setting, math.nan)
        if pd.isna(floats):
            continue
        ci = mean_ci(scores[setting])
        rows.append(
            {"setting": setting, "state_floats": int(floats), **{k: ci[k] for k in ("mean", "ci_low", "ci_high", "n")}}
        )
    return pd.DataFrame(rows).set_index("setting") if rows else pd.DataFrame()


def plot_state_size(res: SweepResults, value: str = "accuracy", where: str = "all"):
    """``value`` (mean over seeds, 95% t-interval bars) against the state size on a log axis, one labelled
    point per setting; None when :func:`state_size_table` is empty."""
    table = state_size_table(res, value, where)
    if table.empty:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    for i, (setting, row) in enumerate(table.iterrows()):
        err = [[row["mean"] - row["ci_low"]], [row["ci_high"] - row["mean"]]] if row["n"] > 1 else None
        ax.errorbar(
            row["state_floats"],
            row["mean"],
            yerr=err,
            fmt="s" if str(setting).upper().startswith("FAM") else "o",
            color=f"C{i % 10}",
            capsize=3,
        )
        ax.annotate(
            str(setting), (row["state_floats"], row["mean"]), textcoords="offset points", xytext=(5, 4), fontsize=8
        )
    ax.set_xscale("log")
    if value in ("accuracy", "digit_accuracy"):
        ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("state size (floats carried from block to block per sequence)")
    ax.set_ylabel(f"{value} ({where} evaluated lengths; higher is better)")
    ax.set_title(f"famlab {res.study_name}: {value} against state size\n(mean over seeds, 95% t-interval)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
