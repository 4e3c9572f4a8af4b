"""Trials and runs as tidy DataFrames: the only place that reads Optuna storages and run directories.

Frames are tidy: one row per trial or run, columns for the parameters (``model.fam_len``,
``variant``, ``seed``, ...), ``objective``, every recorded metric (``val/loss``, ``eval/accuracy``,
...), ``state``, ``duration_s``, ``run_dir``, ``eval_table`` (the trial's evaluation rows as a
list of dicts, where the spec evaluates) and ``suite_table`` (``famlab eval --suite``'s rows, where the spec
has an ``eval_suite``). Storages are opened for reading: a missing SQLite file is
an empty frame, never a new file. Run directories are read through :class:`famlab.runs.RunDir`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from famlab.runs import RunDir

# optuna imports tqdm.auto, which warns inside notebooks without ipywidgets
warnings.filterwarnings("ignore", message="IProgress not found")

TRIAL_COLUMNS = ("study", "number", "state")
TRIAL_ATTRS = ("run_dir", "worker", "slurm_job", "fail_reason", "retry_of", "command", "eval_table", "suite_table")
INFO_COLUMNS = ("objective", "duration_s", "datetime_start", "datetime_complete", *TRIAL_ATTRS)
METRIC_PREFIX = "m."  # sweep workers store each final metric as the trial user attribute "m.<name>"


def open_storage(url: str):
    """An Optuna storage for reading (RDB, or a ``journal:PATH`` file), or None when a SQLite or journal
    file does not exist (opening one would create it)."""
    import optuna

    from famlab.sweep.journal import journal_file, read_journal

    if journal_file(url) is not None:
        return read_journal(url)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.storages.RDBStorage(url)


def store_file_missing(url: str) -> Path | None:
    """The file of a SQLite or ``journal:`` storage URL when that file does not exist, else None."""
    from famlab.sweep.journal import journal_file

    path = journal_file(url) or (Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None)
    return path if path is not None and not path.exists() else None


def study_names(storage_url: str) -> list[str]:
    """Every study in a storage ([] when a SQLite file does not exist)."""
    import optuna

    storage = open_storage(storage_url)
    return [] if storage is None else optuna.get_all_study_names(storage)


def trial_row(study_name: str, t: Any) -> dict[str, Any]:
    """One frozen Optuna trial as a frame row."""
    row: dict[str, Any] = {"study": study_name, "number": t.number, "state": t.state.name, **t.params}
    if t.values is not None and len(t.values) == 1:
        row["objective"] = t.values[0]
    elif t.values is not None:
        row["objective"] = list(t.values)
    else:
        row["objective"] = math.nan
    for key, value in t.user_attrs.items():
        if key.startswith(METRIC_PREFIX):
            row[key[len(METRIC_PREFIX) :]] = value
    row["duration_s"] = t.duration.total_seconds() if t.duration else math.nan
    row["datetime_start"] = t.datetime_start
    row["datetime_complete"] = t.datetime_complete
    for key in TRIAL_ATTRS:
        row[key] = t.user_attrs.get(key)
    return row


def order_columns(df: pd.DataFrame, params: Sequence[str]) -> pd.DataFrame:
    """Trial columns, parameters, seed and objective first, then the metrics, then the bookkeeping."""
    first = [c for c in (*TRIAL_COLUMNS, *params, "seed", "objective") if c in df.columns]
    info = [c for c in INFO_COLUMNS if c in df.columns and c not in first]
    metrics = [c for c in df.columns if c not in first and c not in info]
    return df[[*dict.fromkeys([*first, *metrics, *info])]]


def load_study(storage_url: str, study: str | None = None, *, config: bool = False) -> pd.DataFrame:
    """Trials of one study (``study``) or of every study in the storage, as a tidy frame. Empty
    when the storage or study does not exist. ``config=True`` adds the run's resolved config
    (``model.*``, ``data.*``, ``train.*``, ...) from each trial's ``run_dir/config.yaml`` where
    it can be read, for columns the trial parameters do not already give."""
    import optuna

    storage = open_storage(storage_url)
    if storage is None:
        return pd.DataFrame()
    names = optuna.get_all_study_names(storage) if study is None else [study]
    rows, params, attrs = [], [], {}
    for name in names:
        try:
            s = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            continue
        attrs[name] = dict(s.user_attrs)
        for t in s.get_trials(deepcopy=False):
            rows.append(trial_row(name, t))
            params.extend(k for k in t.params if k not in params)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    if config:
        df = add_config(df)
    df = order_columns(df, [p for p in params if p != "seed"])
    df.attrs["params"] = [p for p in params if p != "seed"]
    df.attrs["studies"] = attrs
    return df


def load_studies(sources: Iterable[str | tuple[str, str | None]], *, config: bool = False) -> pd.DataFrame:
    """Several studies in one frame: each source is a storage URL (every study in it) or a
    ``(storage URL, study name)`` pair. The ``study`` column tells them apart."""
    frames, params = [], []
    for src in sources:
        url, name = (src, None) if isinstance(src, str) else src
        df = load_study(url, name, config=config)
        if not df.empty:
            frames.append(df)
            params.extend(p for p in df.attrs.get("params", []) if p not in params)
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True)
    out.attrs["params"] = params
    return out


def run_config(run_dir: str | Path | None) -> dict[str, Any]:
    """A run's config.yaml flattened to dotted keys (``model.fam_len``); {} for no or a missing run."""
    return RunDir(run_dir).read_flat_config() if isinstance(run_dir, str | Path) and str(run_dir) else {}


def add_config(df: pd.DataFrame) -> pd.DataFrame:
    """Each trial's run config as extra columns, for keys the frame does not have already."""
    configs = [run_config(d) for d in df.get("run_dir", [])]
    keys = list(dict.fromkeys(k for c in configs for k in c))
    extra = {k: [c.get(k) for c in configs] for k in keys if k not in df.columns}
    return pd.concat([df, pd.DataFrame(extra, index=df.index)], axis=1) if extra else df


def load_runs(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """Runs trained outside a sweep (``famlab train``): each path is a run directory or a folder
    searched for them. One row per run: the resolved config as dotted columns (``model.fam_len``,
    ``seed``, ...), every final metric, ``state`` (COMPLETE when final_metrics.json exists, else
    INCOMPLETE), ``duration_s`` (the run's wall time), ``run_dir`` and ``eval_table`` (eval.csv)."""
    if isinstance(paths, str | Path):
        paths = [paths]
    rows = []
    for root in paths:
        for run in RunDir.all_under(root):
            metrics = {k: v for k, v in run.read_flat_final_metrics().items() if k not in ("run_dir", "checkpoint")}
            row = {"state": "COMPLETE" if metrics else "INCOMPLETE", **run.read_flat_config(), **metrics}
            row["objective"] = metrics.get("val/loss", math.nan)
            row["duration_s"] = metrics.get("wall_time_s", math.nan)
            row["run_dir"] = str(run.path.resolve())
            evals = run.eval_path
            row["eval_table"] = pd.read_csv(evals).to_dict(orient="records") if evals.exists() else None
            rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    return order_columns(df, [])


def eval_frame(df: pd.DataFrame, keys: Sequence[str] | None = None, column: str = "eval_table") -> pd.DataFrame:
    """The ``eval_table`` rows (or ``column``'s: ``suite_table``) of every trial, one row per evaluation row,
    with the trial's ``keys`` (default: study, number, every parameter and seed) in front."""
    if df.empty or column not in df.columns:
        return pd.DataFrame()
    if keys is None:
        keys = [c for c in ("study", "number", *df.attrs.get("params", []), "seed", "run_dir") if c in df.columns]
    rows = []
    for _, trial in df.iterrows():
        table = trial[column]
        if not isinstance(table, list):
            continue
        for r in table:
            rows.append({**{k: trial[k] for k in keys}, **r})
    return pd.DataFrame(rows)


def read_curves(df: pd.DataFrame, key: str = "val/loss", keys: Sequence[str] | None = None) -> pd.DataFrame:
    """Training curves: ``step`` and ``key`` of every trial's ``metrics.jsonl`` rows that log it,
    with the trial's ``keys`` (default: parameters and seed). Trials whose run directory cannot
    be read are skipped."""
    if df.empty or "run_dir" not in df.columns:
        return pd.DataFrame()
    if keys is None:
        keys = [c for c in (*df.attrs.get("params", []), "seed") if c in df.columns]
    rows = []
    for _, trial in df.iterrows():
        if not trial["run_dir"]:
            continue
        # the complete rows only: a run still training may be half-way through writing its last line
        records, _ = RunDir(str(trial["run_dir"])).read_new_metrics(0)
        for rec in records:
            if key in rec and "step" in rec:
                rows.append({**{k: trial[k] for k in keys}, "step": rec["step"], key: rec[key]})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# what `famlab sweep` prints


def trials_frame(spec: Any, storage_url: str, frame: pd.DataFrame | None = None) -> pd.DataFrame:
    """All trials of a spec's study: number, state, parameters (and seed), objective, duration_s,
    the metrics, retry_of, fail_reason and run_dir. Empty when the store or study does not exist.
    ``frame``: the study's ``load_study`` frame, when the caller has it."""
    df = load_study(storage_url, spec.study_name) if frame is None else frame
    if df.empty:
        return df
    head = ["number", "state", *df.attrs["params"], "seed", "objective", "duration_s"]
    tail = ["retry_of", "fail_reason", "run_dir"]
    skip = {"study", "datetime_start", "datetime_complete", "worker", "slurm_job", "command", "eval_table"}
    skip.add("suite_table")
    metrics = [c for c in df.columns if c not in {*head, *tail, *skip}]
    out = df[[c for c in [*head, *metrics, *tail] if c in df.columns]]
    out.attrs = dict(df.attrs)
    return out


def status_table(spec: Any, storage_url: str) -> str:
    """The trials of a spec's study as text: a line of counts by state, then one line per trial."""
    full = load_study(storage_url, spec.study_name)
    df = trials_frame(spec, storage_url, frame=full)
    if df.empty:
        return f"study {spec.study_name}: no trials yet"
    counts = df["state"].value_counts().to_dict()
    head = ", ".join(f"{k.lower()}: {v}" for k, v in sorted(counts.items()))
    cols = ["number", "state", *spec.varied, "seed", "objective", "duration_s", "fail_reason"]
    cols = [c for c in cols if c in df.columns and not (c == "fail_reason" and df[c].isna().all())]
    text = f"study {spec.study_name} ({head})\n" + df[cols].to_string(index=False)
    running = full[full["state"] == "RUNNING"]
    if not running.empty:  # who runs them: a SLURM task (famlab sweep submit), else host:pid
        who = [
            f"trial {n} on " + (f"SLURM job {j} ({str(w).split(':')[0]})" if isinstance(j, str) and j else str(w))
            for n, j, w in zip(running["number"], running["slurm_job"], running["worker"])
        ]
        text += "\nrunning: " + ", ".join(who)
    done = df[(df["state"] == "COMPLETE") & df["objective"].notna()] if "objective" in df.columns else df.iloc[:0]
    if not done.empty:
        best = done.loc[done["objective"].idxmin() if spec.direction == "minimize" else done["objective"].idxmax()]
        params = " ".join(f"{k}={best[k]}" for k in [*spec.varied, "seed"] if k in best.index)
        text += f"\nbest: trial {best['number']} {params} -> {spec.metric} {best['objective']:.4g}"
    return text
