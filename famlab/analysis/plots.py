"""The plots of a sweep: the ablation (seed means with 95% t-intervals, beside the paper), grids of
two or more varied parameters, evaluations by length or position, and training curves."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from famlab.analysis.evals import eval_aggregate
from famlab.analysis.frames import read_curves
from famlab.analysis.results import SweepResults, run_setting
from famlab.analysis.stats import lower_is_better, setting_sort_key
from famlab.analysis.tables import ablation_table, paper_reference


def pyplot():
    """matplotlib.pyplot, on the Agg backend outside a notebook (no display needed)."""
    import matplotlib

    if "ipykernel" not in str(matplotlib.get_backend()).lower() and "inline" not in str(matplotlib.get_backend()):
        import contextlib

        with contextlib.suppress(Exception):
            matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


PARAM_LABELS = {
    "model.fam_len": "FAM length $L_F$ (rows)",
    "model.block_size": "block size $B$ (tokens)",
    "model.mem_segment": "memory segment $m$ (blocks)",
    "model.rsp_prob": "P(random state passing)",
    "model.fam_pos": "FAM positions",
    "model.random_pos_offset": "random position offset",
    "model.stop_grad": "stop-gradient on memory",
    "model.attention": "attention",
    "variant": "variant",
}
SHORT_NAMES = {
    "model.fam_len": "L_F",
    "model.block_size": "B",
    "model.mem_segment": "m",
    "model.rsp_prob": "P(RSP)",
    "model.attention": "attention",
    "model.fam_pos": "FAM positions",
    "model.stop_grad": "stop-gradient",
    "model.random_pos_offset": "RPO",
}
METRIC_LABELS = {
    "val/loss": "validation loss (nats/token)",
    "val/bits_per_token": "validation bits per token",
    "eval/bpb": "eval bits per byte",
    "eval/accuracy": "PassKey accuracy",
    "accuracy": "accuracy",
    "eval/digit_accuracy": "PassKey digit accuracy",
    "digit_accuracy": "digit accuracy",
    "example_accuracy": "example accuracy",
    "bpb": "bits per byte",
    "wall_time_s": "wall time (s)",
    "train/loss_recent_mean": "train loss, recent mean (nats/token)",
}
EVAL_ROW_LABELS = {
    "length": "filler length (tokens)",
    "gap": "gap (tokens)",
    "position_bucket_start": "position from document start (bytes)",
}


def label_for(name: str, labels: dict[str, str]) -> str:
    return labels.get(name, name)


def all_numeric(values: Sequence) -> bool:
    return all(isinstance(v, int | float | np.number) and not isinstance(v, bool | np.bool_) for v in values)


def log2_axis(values: Sequence) -> bool:
    vals = [float(v) for v in values if float(v) > 0]
    return len(vals) == len(values) and len(vals) >= 3 and max(vals) / min(vals) >= 8


def plot_ablation(res: SweepResults, metric: str | None = None, task: str | None = None):
    """The metric's seed mean with its 95% t-interval (and each seed as a dot) against the varied
    setting; beside it, the paper's scores for the same settings where the paper has them.
    Returns the figure (None when there is nothing to plot)."""
    if not res.ok or not res.varied:
        return None
    metric = metric or res.metric
    if len(res.varied) > 1:
        return plot_grid(res, metric)
    plt = pyplot()
    key = res.varied[0]
    agg = ablation_table(res, [metric])
    table, pkey, mapping = paper_reference(res)
    has_paper = table is not None and pkey is not None and bool(mapping)
    fig, axes = plt.subplots(1, 2 if has_paper else 1, figsize=(12.5 if has_paper else 6.5, 4.2), squeeze=False)
    ax = axes[0, 0]
    settings = list(agg.index)
    numeric = all_numeric(settings)
    xs = [float(s) for s in settings] if numeric else list(range(len(settings)))
    mean, half = agg[(metric, "mean")].to_numpy(), agg[(metric, "ci_half")].to_numpy()
    err = np.where(np.isnan(half), 0.0, half)
    done = res.complete
    pos = dict(zip(settings, xs))
    ax.errorbar(xs, mean, yerr=err, fmt="o-" if numeric else "o", color="C0", capsize=4, lw=1.5, label="mean ± 95% CI")
    jitter = 0.0 if numeric else 0.08
    ax.scatter(
        [pos[s] + jitter for s in done[key]],
        pd.to_numeric(done[metric], errors="coerce"),
        s=14,
        color="C1",
        alpha=0.7,
        zorder=3,
        label="single seeds",
    )
    if numeric and log2_axis(settings):
        ax.set_xscale("log", base=2)
    ax.set_xticks(xs)
    ax.set_xticklabels([str(s) for s in settings], rotation=0)
    if not numeric:
        ax.set_xlim(-0.5, len(settings) - 0.5)
    ax.set_xlabel(label_for(key, PARAM_LABELS))
    better = "lower" if lower_is_better(metric, res.direction if metric == res.metric else None) else "higher"
    ax.set_ylabel(f"{label_for(metric, METRIC_LABELS)} ({better} is better)")
    if "accuracy" in metric:
        ax.set_ylim(-0.03, 1.03)
    ax.set_title(f"famlab {res.study_name}: {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if has_paper:
        ax2 = axes[0, 1]
        ref = table.frame()
        matched = [s for s in settings if s in mapping]
        px = [pos[s] for s in matched]
        tasks = [task] if task else list(ref.columns)
        for i, t in enumerate(tasks):  # centred per task: tasks differ in scale, the ordering is what compares
            ys = np.array([ref.loc[mapping[s], t] for s in matched], dtype=float)
            ax2.plot(px, ys - ys.mean(), "s--", color=f"C{i + 2}", label=f"{t} (mean {ys.mean():.1f})")
        ax2.axhline(0.0, color="grey", lw=0.8)
        if numeric and log2_axis(settings):
            ax2.set_xscale("log", base=2)
        ax2.set_xticks(xs)
        labels = [str(s) if s not in mapping or mapping[s] == s else f"{s}\n(paper {mapping[s]})" for s in settings]
        ax2.set_xticklabels(labels, fontsize=8)
        ax2.set_xlabel(label_for(key, PARAM_LABELS))
        ax2.set_ylabel("paper score − task mean (points, higher is better)")
        ax2.set_title(f"paper {table.name} ({table.model})")
        ax2.grid(alpha=0.3)
        if len(tasks) > 3:  # outside, right of the panel: many lines cross in the middle
            ax2.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), title="task", title_fontsize=7)
        else:
            ax2.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def plot_grid(res: SweepResults, metric: str | None = None):
    """Two or more varied parameters (block_size: B x m x attention): the metric's seed mean
    against the first row parameter, one line per value of the second, one panel per column
    parameter (the spec's ``table`` hints) or per other setting."""
    if not res.ok or len(res.varied) < 2:
        return None
    plt = pyplot()
    metric = metric or res.metric
    hints = res.spec.table or {}
    rows_hint = hints.get("rows") or res.varied[:2]
    rows_hint = [rows_hint] if isinstance(rows_hint, str) else list(rows_hint)
    x, hue = (rows_hint + [k for k in res.varied if k not in rows_hint])[:2]
    panel_key = (
        hints.get("columns") if hints.get("columns") in res.varied and hints.get("columns") not in (x, hue) else None
    )
    agg = ablation_table(res, [metric]).reset_index()
    panels = list(dict.fromkeys(agg[panel_key])) if panel_key else [None]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False, sharey=True)
    for ax, p in zip(axes[0], panels):
        sub = agg if p is None else agg[agg[panel_key] == p]
        for i, (h, g) in enumerate(sub.groupby(hue, sort=True)):
            g = g.sort_values(x)
            err = np.nan_to_num(g[(metric, "ci_half")].to_numpy(dtype=float))
            label = f"{label_for(hue, SHORT_NAMES)}={h}"
            ax.errorbar(g[x], g[(metric, "mean")], yerr=err, fmt="o-", capsize=3, color=f"C{i}", label=label)
        xs = sorted(set(sub[x]))
        if all_numeric(xs):
            if log2_axis(xs) or (len(xs) >= 3 and min(xs) > 0 and all(b == 2 * a for a, b in zip(xs, xs[1:]))):
                ax.set_xscale("log", base=2)
            ax.set_xticks(xs)
            ax.set_xticklabels([str(v) for v in xs])
        ax.set_xlabel(label_for(x, PARAM_LABELS))
        ax.set_title(f"{label_for(panel_key, SHORT_NAMES)}={p}" if p is not None else res.study_name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    better = "lower" if lower_is_better(metric, res.direction if metric == res.metric else None) else "higher"
    axes[0, 0].set_ylabel(f"{label_for(metric, METRIC_LABELS)} ({better} is better)")
    fig.suptitle(f"famlab {res.study_name}: {metric} (mean ± 95% CI over seeds)")
    fig.tight_layout()
    return fig


def plot_eval(res: SweepResults, value: str | None = None, rows: str | None = None):
    """The evaluation against its row key (PassKey: accuracy by filler length), one line per
    setting, shaded 95% t-interval over seeds; a dashed line marks the training length."""
    agg = eval_aggregate(res, value, rows)
    if agg.empty:
        return None
    plt = pyplot()
    value = agg.columns.get_level_values(0)[0]
    row_key = agg.index.names[0]
    flat = agg.reset_index()
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    setting_cols = list(agg.index.names[1:])
    groups = flat.groupby(setting_cols, sort=False) if setting_cols else [((), flat)]
    order = res.order()
    keyed = sorted(
        groups,
        key=lambda kv: (
            setting_sort_key(kv[0][0] if isinstance(kv[0], tuple) else kv[0], order.get(setting_cols[0]))
            if setting_cols
            else 0
        ),
    )
    for i, (name, g) in enumerate(keyed):
        g = g.sort_values(row_key)
        xs, ys = g[row_key].to_numpy(dtype=float), g[(value, "mean")].to_numpy(dtype=float)
        label = ", ".join(str(v) for v in (name if isinstance(name, tuple) else (name,)))
        fam = label.upper().startswith("FAM")
        ax.plot(xs, ys, "s-" if fam else "o-", color=f"C{i % 10}", label=label, lw=2.2 if fam else 1.4)
        lo, hi = g[(value, "ci_low")].to_numpy(dtype=float), g[(value, "ci_high")].to_numpy(dtype=float)
        if not np.all(np.isnan(lo)):
            ax.fill_between(xs, lo, hi, color=f"C{i % 10}", alpha=0.15)
    xs_all = sorted(set(flat[row_key]))
    if all_numeric(xs_all) and log2_axis(xs_all):
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs_all)
        ax.set_xticklabels([f"{int(v)}" if float(v).is_integer() else f"{v:g}" for v in xs_all], rotation=30)
    seq_len = run_setting(res, "data.seq_len")
    if seq_len and row_key in ("length", "position_bucket_start"):
        ax.axvline(seq_len, color="grey", ls="--", lw=1, label=f"training length ({seq_len})")
    if value in ("accuracy", "digit_accuracy", "example_accuracy"):
        ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(label_for(row_key, EVAL_ROW_LABELS))
    better = "lower" if value == "bpb" else "higher"
    ax.set_ylabel(f"{label_for(value, METRIC_LABELS)} ({better} is better)")
    ax.set_title(f"famlab {res.study_name}: {value} by {row_key} (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title=", ".join(setting_cols) or None, title_fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def plot_curves(res: SweepResults, key: str | None = None):
    """Validation curves (``key``, default the objective when metrics.jsonl logs it, else
    val/loss) against the step: the mean over seeds per setting."""
    if not res.ok:
        return None
    key = key or (res.metric if res.metric.startswith(("val/", "train/")) else "val/loss")
    curves = read_curves(res.complete, key)
    if curves.empty:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    groups = curves.groupby(res.varied, sort=False) if res.varied else [((), curves)]
    order = res.order()
    names = sorted(
        (name for name, _ in groups),
        key=lambda n: setting_sort_key(
            n[0] if isinstance(n, tuple) else n, order.get(res.varied[0]) if res.varied else None
        ),
    )
    grouped = dict(list(curves.groupby(res.varied, sort=False))) if res.varied else {(): curves}
    for i, name in enumerate(names):
        g = grouped[name].groupby("step")[key].mean()
        label = ", ".join(f"{v}" for v in (name if isinstance(name, tuple) else (name,)))
        ax.plot(g.index, g.to_numpy(), "o-", ms=3, color=f"C{i % 10}", label=label)
    ax.set_xlabel("training step")
    ax.set_ylabel(label_for(key, METRIC_LABELS))
    ax.set_title(f"famlab {res.study_name}: {key} during training (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title=", ".join(res.varied) or None, title_fontsize=8)
    fig.tight_layout()
    return fig
