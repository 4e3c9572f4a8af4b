"""Evaluation tables: the rows ``famlab eval`` stores on each trial (PassKey accuracy by filler
length, bits per byte by position, recall accuracy by gap), aggregated over seeds."""

from __future__ import annotations

import pandas as pd

from famlab.analysis.frames import eval_frame
from famlab.analysis.results import SweepResults, run_setting
from famlab.analysis.stats import aggregate

EVAL_ROW_KEYS = ("gap", "length", "position_bucket_start")  # recall rows also have a length
EVAL_VALUE_KEYS = ("accuracy", "bpb", "digit_accuracy", "example_accuracy")


def eval_keys(res: SweepResults, long: pd.DataFrame, rows: str | None, value: str | None) -> tuple[str, str]:
    """The row key (the spec's ``table.eval_rows``, else the first known one present) and the value."""
    rows = rows or (res.spec.table or {}).get("eval_rows")
    if rows is None or rows not in long.columns:
        rows = next((k for k in EVAL_ROW_KEYS if k in long.columns), None)
    value = value or next((k for k in EVAL_VALUE_KEYS if k in long.columns), None)
    if rows is None or value is None or value not in long.columns:
        raise KeyError(f"evaluation rows have no known row key or value: {list(long.columns)}")
    return rows, value


def eval_long(res: SweepResults) -> pd.DataFrame:
    """Every completed trial's evaluation rows (text: the per-position buckets, not 'overall')."""
    if not res.ok:
        return pd.DataFrame()
    long = eval_frame(res.complete)
    if not long.empty and "scope" in long.columns:
        long = long[long["scope"] == "bucket"]
    return long


def eval_aggregate(res: SweepResults, value: str | None = None, rows: str | None = None, level: float = 0.95):
    """Evaluation values per (eval row, setting): each trial's mean over the other evaluation
    dimensions (e.g. depth), then an aggregate over seeds."""
    long = eval_long(res)
    if long.empty:
        return pd.DataFrame()
    rows, value = eval_keys(res, long, rows, value)
    per_trial = long.groupby([*res.varied, "seed", rows], dropna=False, sort=False)[value].mean().reset_index()
    return aggregate(per_trial, [rows, *res.varied], [value], level=level, complete_only=False, order=res.order())


def eval_values(res: SweepResults) -> list[str]:
    """The evaluation values the trials recorded (accuracy, digit_accuracy, bpb, ...)."""
    long = eval_long(res)
    return [k for k in EVAL_VALUE_KEYS if k in long.columns]


def eval_table(res: SweepResults, value: str | None = None, rows: str | None = None) -> pd.DataFrame:
    """The evaluation in the paper's figure shape: eval rows (PassKey filler length, position
    bucket, recall gap) down, settings across, the mean of ``value`` (accuracy, bpb) over the other
    evaluation dimensions and seeds."""
    agg = eval_aggregate(res, value, rows)
    if agg.empty:
        return pd.DataFrame()
    value = agg.columns.get_level_values(0)[0]
    means = agg[(value, "mean")]
    wide = means.unstack(list(range(1, means.index.nlevels)))
    order = res.order()
    if len(res.varied) == 1:
        known = order.get(res.varied[0], [])
        wide = wide.reindex(
            columns=[c for c in known if c in wide.columns] + [c for c in wide.columns if c not in known]
        )
    wide.columns.name = value
    return wide.sort_index()


def eval_table_or_empty(res: SweepResults, value: str | None = None) -> pd.DataFrame:
    """:func:`eval_table`, or an empty frame where the trials have no evaluation rows it can read."""
    try:
        return eval_table(res, value)
    except (KeyError, ValueError):
        return pd.DataFrame()


def beyond_training(res: SweepResults, ev: pd.DataFrame) -> pd.DataFrame:
    """Rows of an eval table (indexed by length in tokens) past the training sequence length."""
    seq_len = run_setting(res, "data.seq_len")
    if ev.empty or not seq_len or ev.index.name != "length":
        return pd.DataFrame()
    return ev[ev.index > seq_len]


def eval_seed_scores(res: SweepResults, value: str, where: str = "beyond") -> tuple[pd.DataFrame, str]:
    """Per seed (rows) and setting (columns): the mean of ``value`` over the evaluation rows
    ``where`` = ``beyond`` (lengths past the training length), ``training`` (lengths up to it),
    ``longest`` (the longest length evaluated) or ``all`` (every length), and a description of those
    rows; an empty frame where there are none."""
    long = eval_long(res)
    if long.empty or len(res.varied) != 1 or value not in long.columns or "length" not in long.columns:
        return pd.DataFrame(), ""
    if where == "longest":
        longest = long["length"].max()
        rows, what = long[long["length"] == longest], f"at length {longest}"
    elif where == "all":
        rows, what = long, "over every evaluated length"
    elif where in ("beyond", "training"):
        seq_len = run_setting(res, "data.seq_len")
        inside = long["length"] <= seq_len if seq_len else None
        if inside is None:
            rows = long.iloc[0:0]
        else:
            rows = long[~inside] if where == "beyond" else long[inside]
        what = "beyond the training length" if where == "beyond" else "up to the training length"
    else:
        raise ValueError(f"where={where!r} is not allowed: expected all, training, beyond or longest")
    if rows.empty:
        return pd.DataFrame(), what
    frame = rows.pivot_table(index="seed", columns=res.varied[0], values=value, aggfunc="mean")
    return frame, what
