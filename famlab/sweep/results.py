"""TEMPORARY: the sweep's own view of its trials, moved here unchanged from famlab/sweep.py.

famlab.analysis is becoming the one reader of Optuna trials with the same functions; then this file
goes and ``famlab sweep`` (famlab.sweep.command) prints analysis's tables instead.
"""

from __future__ import annotations

import optuna

from famlab.sweep.spec import SweepSpec
from famlab.sweep.storage import make_storage


def trials_frame(spec: SweepSpec, storage_url: str):
    """All trials of the study as a DataFrame: number, state, params, objective, metrics, run dir."""
    import pandas as pd

    storage = make_storage(storage_url)
    try:
        study = optuna.load_study(study_name=spec.study_name, storage=storage)
    except KeyError:
        return pd.DataFrame()
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = {"number": t.number, "state": t.state.name, **t.params, "objective": t.value}
        row["duration_s"] = t.duration.total_seconds() if t.duration else None
        for key, value in t.user_attrs.items():
            if key.startswith("m."):
                row[key[2:]] = value
        row["retry_of"] = t.user_attrs.get("retry_of")
        row["fail_reason"] = t.user_attrs.get("fail_reason")
        row["run_dir"] = t.user_attrs.get("run_dir")
        rows.append(row)
    return pd.DataFrame(rows)


def status_table(spec: SweepSpec, storage_url: str) -> str:
    df = trials_frame(spec, storage_url)
    if df.empty:
        return f"study {spec.study_name}: no trials yet"
    counts = df["state"].value_counts().to_dict()
    head = ", ".join(f"{k.lower()}: {v}" for k, v in sorted(counts.items()))
    cols = ["number", "state", *spec.varied, "seed", "objective", "duration_s", "fail_reason"]
    cols = [c for c in cols if c in df.columns]
    return f"study {spec.study_name} ({head})\n" + df[cols].to_string(index=False)


def ablation_table(spec: SweepSpec, storage_url: str):
    """Completed trials aggregated over seeds: one row per varied setting; per metric (the objective
    first, then the spec's ``metrics``) "mean ± std" over seeds, and n, the number of seeds."""
    import pandas as pd

    df = trials_frame(spec, storage_url)
    if df.empty:
        return df
    done = df[df["state"] == "COMPLETE"]
    keys = [k for k in spec.varied if k in done.columns]
    if done.empty or not keys:
        return pd.DataFrame()
    metrics = [spec.metric, *[m for m in spec.metrics if m != spec.metric]]
    metrics = [m for m in metrics if m in done.columns]
    groups = done.groupby(keys, dropna=False, sort=False)
    table = groups.size().rename("n").to_frame()
    for m in metrics:
        mean, std = groups[m].mean(), groups[m].std()
        table[m] = [f"{mu:.4g}" if pd.isna(sd) else f"{mu:.4g} ± {sd:.2g}" for mu, sd in zip(mean, std)]
    order = [p for p in (spec.grid or {}).get(keys[0], [])] if len(keys) == 1 else None
    if order:  # the spec's own order of settings (e.g. M0, M1, ..., FAM)
        table = table.reindex([o for o in order if o in table.index])
    return table[[*metrics, "n"]]
