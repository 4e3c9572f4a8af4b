"""Analysis of famlab sweeps and runs: tidy frames, seed aggregates, paper-shaped tables, plots.

Typical use (the notebooks in ``analysis/`` are thin wrappers around this)::

    from famlab import analysis as fa
    res = fa.load_sweep("fam_length", "tiny")          # default store runs/sweeps/fam_length/tiny.db
    res = fa.load_sweep("passkey", "paper", storage="postgresql://...")
    fa.ablation_table(res)        # mean, std, 95% t-interval and n over seeds, per setting
    fa.paper_table(res)           # famlab's metrics beside the paper's numbers, in the paper's shape
    fa.paper_agreement(res)       # does famlab order the settings as the paper does (Spearman, signs)
    fa.paper_claims(res)          # the paper's qualitative findings, checked on famlab's numbers
    fa.eval_table(res)            # evaluation tables (PassKey accuracy by length x variant, ...)
    fa.to_markdown(t), fa.to_latex(t)

Lower-level loaders: :func:`load_study` (any Optuna storage URL, one or every study in it),
:func:`load_studies` (several), :func:`load_runs` (run directories trained outside a sweep).
Frames are tidy: one row per trial or run, columns for the parameters (``model.fam_len``,
``variant``, ``seed``, ...), ``objective``, every recorded metric (``val/loss``,
``eval/accuracy``, ...), ``state``, ``duration_s``, ``run_dir`` and ``eval_table`` (the trial's
evaluation rows as a list of dicts, where the spec evaluates).

Conventions: famlab's metrics are mostly losses (lower is better) and the paper's are task scores
(higher is better); comparisons turn both into "higher is better" scores before ranking.
"""

from __future__ import annotations

import json
import math
import statistics
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from famlab import paper

# optuna imports tqdm.auto, which warns inside notebooks without ipywidgets
warnings.filterwarnings("ignore", message="IProgress not found")

HIGHER_IS_BETTER_HINTS = ("accuracy", "acc", "score", "tokens_per_s")
EVAL_ROW_KEYS = ("gap", "length", "position_bucket_start")  # recall rows also have a length
EVAL_VALUE_KEYS = ("accuracy", "bpb", "digit_accuracy", "example_accuracy")
TRIAL_COLUMNS = ("study", "number", "state")
INFO_COLUMNS = (
    "objective",
    "duration_s",
    "datetime_start",
    "datetime_complete",
    "run_dir",
    "worker",
    "fail_reason",
    "retry_of",
    "command",
    "eval_table",
)

# ----------------------------------------------------------------------------------------------
# statistics


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, dof: float) -> float:
    """CDF of Student's t distribution with ``dof`` degrees of freedom."""
    if math.isinf(dof):
        return statistics.NormalDist().cdf(t)
    tail = 0.5 * betainc(dof / 2.0, 0.5, dof / (dof + t * t))
    return 1.0 - tail if t > 0 else tail


def t_ppf(q: float, dof: float) -> float:
    """Quantile of Student's t (``t_ppf(0.975, 1) = 12.706``), by bisection on :func:`t_cdf`."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"q={q} is not allowed: expected 0 < q < 1")
    if dof <= 0:
        raise ValueError(f"dof={dof} is not allowed: expected dof > 0")
    if math.isinf(dof):
        return statistics.NormalDist().inv_cdf(q)
    if q < 0.5:
        return -t_ppf(1.0 - q, dof)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, dof) < q:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, dof) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def mean_ci(values: Iterable[float], level: float = 0.95) -> dict[str, float]:
    """Mean, sample std (ddof=1), n and the two-sided t-interval of the mean at ``level``.
    NaNs are dropped; with n = 1 the std and interval are NaN."""
    x = np.asarray([v for v in values if v is not None and not pd.isna(v)], dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    std = float(x.std(ddof=1)) if n > 1 else math.nan
    half = t_ppf(0.5 + level / 2.0, n - 1) * std / math.sqrt(n) if n > 1 else math.nan
    return {"mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half, "ci_half": half, "n": n}


STATS = ("mean", "std", "ci_low", "ci_high", "ci_half", "n")


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN with < 2 pairs or a constant side."""
    pairs = [(a, b) for a, b in zip(x, y) if not (pd.isna(a) or pd.isna(b))]
    if len(pairs) < 2:
        return math.nan
    rx = pd.Series([a for a, _ in pairs], dtype=float).rank(method="average").to_numpy()
    ry = pd.Series([b for _, b in pairs], dtype=float).rank(method="average").to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def lower_is_better(metric: str, direction: str | None = None) -> bool:
    """Whether a smaller value of ``metric`` is better (the spec's direction wins for its objective)."""
    if direction is not None:
        return direction == "minimize"
    name = metric.lower()
    return not any(h in name for h in HIGHER_IS_BETTER_HINTS)


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
    return _sort_index(out, order or {})


def _sort_key(values: Sequence, order: Sequence | None) -> list[tuple]:
    order = list(order or [])

    def key(v: Any) -> tuple:
        if v in order:
            return (0, order.index(v), "")
        if isinstance(v, bool | np.bool_):
            return (1, int(v), "")
        if isinstance(v, int | float | np.number) and not pd.isna(v):
            return (1, float(v), "")
        return (2, 0.0, str(v))

    return [key(v) for v in values]


def _sort_index(df: pd.DataFrame, order: dict[str, Sequence]) -> pd.DataFrame:
    if df.empty:
        return df
    names = list(df.index.names)
    tuples = [t if isinstance(t, tuple) else (t,) for t in df.index]
    keyed = [tuple(_sort_key([t[i]], order.get(n))[0] for i, n in enumerate(names)) for t in tuples]
    positions = sorted(range(len(tuples)), key=lambda i: keyed[i])
    return df.iloc[positions]


# ----------------------------------------------------------------------------------------------
# loading


def _open_storage(url: str):
    """An Optuna RDB storage for reading, or None when a SQLite file does not exist (opening one
    would create it)."""
    import optuna

    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.storages.RDBStorage(url)


def study_names(storage_url: str) -> list[str]:
    """Every study in a storage ([] when a SQLite file does not exist)."""
    import optuna

    storage = _open_storage(storage_url)
    return [] if storage is None else optuna.get_all_study_names(storage)


def _trial_row(study_name: str, t: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"study": study_name, "number": t.number, "state": t.state.name, **t.params}
    if t.values is not None and len(t.values) == 1:
        row["objective"] = t.values[0]
    elif t.values is not None:
        row["objective"] = list(t.values)
    else:
        row["objective"] = math.nan
    for key, value in t.user_attrs.items():
        if key.startswith("m."):
            row[key[2:]] = value
    row["duration_s"] = t.duration.total_seconds() if t.duration else math.nan
    row["datetime_start"] = t.datetime_start
    row["datetime_complete"] = t.datetime_complete
    for key in ("run_dir", "worker", "fail_reason", "retry_of", "command", "eval_table"):
        row[key] = t.user_attrs.get(key)
    return row


def _order_columns(df: pd.DataFrame, params: Sequence[str]) -> pd.DataFrame:
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

    storage = _open_storage(storage_url)
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
            rows.append(_trial_row(name, t))
            params.extend(k for k in t.params if k not in params)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    if config:
        df = _add_config(df)
    df = _order_columns(df, [p for p in params if p != "seed"])
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


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """A run's ``config.yaml`` flattened to dotted keys (``model.fam_len``); {} if missing. Lists
    become tuples (hashable, so they can group)."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        return {}
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    out: dict[str, Any] = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v

    walk(raw, "")
    return out


def _add_config(df: pd.DataFrame) -> pd.DataFrame:
    configs = [read_config(d) if isinstance(d, str) and d else {} for d in df.get("run_dir", [])]
    keys = list(dict.fromkeys(k for c in configs for k in c))
    extra = {k: [c.get(k) for c in configs] for k in keys if k not in df.columns}
    return pd.concat([df, pd.DataFrame(extra, index=df.index)], axis=1) if extra else df


def read_final_metrics(run_dir: str | Path) -> dict[str, Any]:
    """A run's ``final_metrics.json`` flattened the way sweeps store it (``eval/accuracy``)."""
    path = Path(run_dir) / "final_metrics.json"
    if not path.exists():
        return {}
    flat: dict[str, Any] = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}/")
            elif isinstance(v, int | float | str | bool) or v is None:
                flat[f"{prefix}{k}"] = v

    walk(json.loads(path.read_text()), "")
    return flat


def _find_run_dirs(path: Path) -> list[Path]:
    if (path / "config.yaml").exists():
        return [path]
    return sorted({p.parent for p in path.glob("**/config.yaml") if (p.parent / "metrics.jsonl").exists()})


def load_runs(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """Runs trained outside a sweep (``famlab train``): each path is a run directory or a folder
    searched for them. One row per run: the resolved config as dotted columns (``model.fam_len``,
    ``seed``, ...), every final metric, ``state`` (COMPLETE when final_metrics.json exists, else
    INCOMPLETE), ``duration_s`` (the run's wall time), ``run_dir`` and ``eval_table`` (eval.csv)."""
    if isinstance(paths, str | Path):
        paths = [paths]
    rows = []
    for root in paths:
        for run_dir in _find_run_dirs(Path(root)):
            cfg = read_config(run_dir)
            metrics = {k: v for k, v in read_final_metrics(run_dir).items() if k not in ("run_dir", "checkpoint")}
            row = {"state": "COMPLETE" if metrics else "INCOMPLETE", **cfg, **metrics}
            row["objective"] = metrics.get("val/loss", math.nan)
            row["duration_s"] = metrics.get("wall_time_s", math.nan)
            row["run_dir"] = str(run_dir.resolve())
            csv = run_dir / "eval.csv"
            row["eval_table"] = pd.read_csv(csv).to_dict(orient="records") if csv.exists() else None
            rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    return _order_columns(df, [])


def eval_frame(df: pd.DataFrame, keys: Sequence[str] | None = None) -> pd.DataFrame:
    """The ``eval_table`` rows of every trial, one row per evaluation row, with the trial's
    ``keys`` (default: study, number, every parameter and seed) in front."""
    if df.empty or "eval_table" not in df.columns:
        return pd.DataFrame()
    if keys is None:
        keys = [c for c in ("study", "number", *df.attrs.get("params", []), "seed", "run_dir") if c in df.columns]
    rows = []
    for _, trial in df.iterrows():
        table = trial["eval_table"]
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
        path = Path(str(trial["run_dir"])) / "metrics.jsonl"
        if not trial["run_dir"] or not path.exists():
            continue
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if key in rec and "step" in rec:
                rows.append({**{k: trial[k] for k in keys}, "step": rec["step"], key: rec[key]})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# sweep results


def storage_for(spec: Any, storage: str | None = None, root: str | Path = "runs") -> str:
    """The storage URL of a spec's study: ``storage`` if given, else $FAMLAB_STORAGE, else the
    default SQLite file ``<root>/sweeps/<study>/<profile>.db``."""
    import os

    from famlab.sweep import STORAGE_ENV, default_storage

    return storage or os.environ.get(STORAGE_ENV) or default_storage(spec, root)


@dataclass
class SweepResults:
    """A sweep's trials plus what the analysis needs from its spec. ``message`` says why there is
    nothing to analyse (missing store, study or completed trials); ``ok`` is False then."""

    spec: Any
    storage: str
    trials: pd.DataFrame
    message: str = ""
    params: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.message

    @property
    def study(self) -> str:
        return self.spec.study if self.spec is not None else ""

    @property
    def study_name(self) -> str:
        return self.spec.study_name if self.spec is not None else ""

    @property
    def complete(self) -> pd.DataFrame:
        """The COMPLETE trials, one per setting and seed: where two completed the same point and
        seed (workers racing on a retried point), the first (lowest trial number) counts, with a
        warning, so no point weighs twice in a mean or its confidence interval."""
        if self.trials.empty:
            return self.trials
        done = self.trials[self.trials["state"] == "COMPLETE"].copy()
        keys = [c for c in [*self.params, "seed"] if c in done.columns]
        if keys:
            if "number" in done.columns:
                done = done.sort_values("number", kind="stable")
            dup = done.duplicated(subset=keys, keep="first")
            if dup.any():
                extra = done.loc[dup, "number"].tolist() if "number" in done.columns else int(dup.sum())
                warnings.warn(
                    f"study {self.study_name}: trials {extra} repeat a completed setting and seed; "
                    "only the first of each counts",
                    stacklevel=2,
                )
                done = done[~dup]
        done.attrs = dict(self.trials.attrs)
        return done

    @property
    def metric(self) -> str:
        return self.spec.metric

    @property
    def direction(self) -> str:
        return self.spec.direction

    @property
    def metrics(self) -> list[str]:
        """The objective metric, then the spec's other metrics, where recorded."""
        names = [self.spec.metric, *self.spec.metrics]
        return [m for m in dict.fromkeys(names) if m in self.trials.columns]

    @property
    def varied(self) -> list[str]:
        """The parameters that vary (seed excluded), in the spec's order."""
        return list(self.params)

    def order(self) -> dict[str, list]:
        """The spec's order of grid values (e.g. M0, M1, ..., FAM), for sorting tables."""
        return {k: list(v) for k, v in (self.spec.grid or {}).items()} if self.spec is not None else {}

    def summary(self) -> str:
        if not self.ok:
            return self.message
        counts = self.trials["state"].value_counts().to_dict()
        states = ", ".join(f"{k.lower()} {v}" for k, v in sorted(counts.items()))
        from famlab.sweep import redact

        where = f" ({self.spec.paper})" if self.spec.paper else ""
        return (
            f"study {self.study_name}{where} in {redact(self.storage)}: {len(self.trials)} trials ({states}); "
            f"varied: {', '.join(self.varied) or '-'}; objective {self.metric} ({self.direction})"
        )


def load_sweep(
    spec: str | Path | Any,
    profile: str = "tiny",
    *,
    storage: str | None = None,
    root: str | Path = "runs",
    config: bool = False,
) -> SweepResults:
    """The results of a sweep, by spec (name from ``sweeps/``, a YAML path, or a loaded
    ``SweepSpec``) and profile. Never raises for a missing store or study: ``message`` says so."""
    from famlab.sweep import SweepSpec, load_spec, redact

    if not isinstance(spec, SweepSpec):
        try:
            spec = load_spec(str(spec), profile, validate_runs=False)
        except ValueError as err:
            return SweepResults(None, storage or "", pd.DataFrame(), message=f"No results: {err}")
    url = storage_for(spec, storage, root)
    hint = f"run `famlab sweep run {Path(spec.path).stem} --profile {spec.profile}` to produce it"
    try:
        df = load_study(url, spec.study_name, config=config)
    except Exception as err:  # an unreachable server, a corrupt file: a message, not a traceback
        return SweepResults(spec, url, pd.DataFrame(), message=f"No results: cannot read {redact(url)}: {err}")
    if df.empty:
        missing = (
            "no such file"
            if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists()
            else "no trials"
        )
        msg = f"No results for study '{spec.study_name}' in {redact(url)} ({missing}): {hint}."
        return SweepResults(spec, url, df, message=msg)
    varied = df.attrs["studies"].get(spec.study_name, {}).get("varied") or spec.varied
    params = [p for p in varied if p in df.columns]
    params += [p for p in df.attrs.get("params", []) if p not in params]
    df.attrs["params"] = params
    res = SweepResults(spec, url, df, params=params)
    if (df["state"] == "COMPLETE").sum() == 0:
        counts = ", ".join(f"{k.lower()} {v}" for k, v in df["state"].value_counts().items())
        res.message = f"No completed trials yet in study '{spec.study_name}' ({counts}): {hint}."
    return res


def trial_table(res: SweepResults) -> pd.DataFrame:
    """The trials: number, state, parameters, seed, objective, duration, why a trial failed."""
    df = res.trials
    cols = ["number", "state", *res.varied, "seed", "objective", "duration_s", "retry_of", "fail_reason"]
    cols = [c for c in cols if c in df.columns]
    out = df[cols].set_index("number")
    return out.dropna(axis=1, how="all")


def ablation_table(res: SweepResults, metrics: Sequence[str] | None = None, level: float = 0.95) -> pd.DataFrame:
    """Completed trials aggregated over seeds: one row per setting of the varied parameters,
    columns ``(metric, stat)`` (see :func:`aggregate`) for the objective and the spec's metrics."""
    if not res.ok:
        return pd.DataFrame()
    return aggregate(res.complete, res.varied, metrics or res.metrics, level=level, order=res.order())


def format_mean_ci(agg: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """An :func:`aggregate` table as text: ``mean ± half-width`` per metric (just the mean when
    n = 1) and an ``n`` column (the largest n of the row)."""
    if agg.empty:
        return pd.DataFrame()
    metrics = list(dict.fromkeys(agg.columns.get_level_values(0)))
    out = pd.DataFrame(index=agg.index)
    for m in metrics:
        out[m] = [_fmt_ci(mu, h, digits) for mu, h in zip(agg[(m, "mean")], agg[(m, "ci_half")])]
    out["n"] = agg.xs("n", axis=1, level="stat").max(axis=1).astype(int)
    return out


def _fmt_ci(mean: float, half: float, digits: int = 4) -> str:
    """``mean ± half`` with the half-width to 2 significant digits and the mean to the same
    decimals (``2.800 ± 0.033``); the mean alone (``digits`` significant) without an interval."""
    if pd.isna(half) or half <= 0 or pd.isna(mean):
        return _fmt(mean, digits)
    decimals = 1 - math.floor(math.log10(half))
    if decimals > 8:
        return f"{mean:.{digits - 1}e} ± {half:.1e}"
    decimals = max(0, decimals)
    return f"{mean:.{decimals}f} ± {half:.{decimals}f}"


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or pd.isna(x):
        return "–"
    x = float(x)
    if x != 0 and (abs(x) >= 10 ** (digits + 1) or abs(x) < 10 ** -(digits - 1)):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


# ----------------------------------------------------------------------------------------------
# paper comparison


def _spec_setting(spec: Any, key: str, params: dict[str, Any] | None = None) -> Any:
    """A run-config value a spec's trials use (trial params, then variant, then spec overrides,
    then the preset file), without building the full config."""
    params = params or {}
    if key in params:
        return params[key]
    variant = spec.variants.get(params.get("variant"), {}) if spec.variants else {}
    if key in variant:
        return variant[key]
    if key in spec.overrides:
        return spec.overrides[key]
    from omegaconf import OmegaConf

    preset = Path(spec.preset)
    if not preset.exists():
        preset = Path(__file__).resolve().parent / "presets" / f"{spec.preset}.yaml"
    if not preset.exists():
        return None
    return OmegaConf.select(OmegaConf.load(preset), key)


def run_setting(res: SweepResults, key: str) -> Any:
    """A run-config value of the sweep's runs: a trial column if the frame has it, else the first
    completed run's config.yaml (the truth, where readable), else what the spec resolves to."""
    done = res.complete
    if key in done.columns and len(done):
        return done[key].iloc[0]
    for run_dir in done.get("run_dir", []):
        if isinstance(run_dir, str) and run_dir:
            cfg = read_config(run_dir)
            if key in cfg:
                return cfg[key]
            break
    return _spec_setting(res.spec, key) if res.spec is not None else None


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
        return _sort_index(wide, res.order())
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


def _fam_vs_bswa(settings: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    fam = [s for s in settings if str(s).upper().startswith("FAM")]
    bswa = [s for s in settings if s not in fam and str(s).upper().startswith(("M", "BSWA"))]
    return fam, bswa


def paper_agreement(res: SweepResults, metric: str | None = None) -> pd.DataFrame:
    """Does famlab order the settings as the paper does? One row per paper task (plus the mean of
    the tasks): the settings both have (n), the Spearman rank correlation between famlab's score
    (the metric, negated when lower is better) and the paper's score, ``agree`` (rho > 0), each
    side's best setting, and where the study has FAM and BSWA variants, FAM minus the best BSWA on
    each side (famlab in the metric's units, paper in score points) and whether both say FAM wins."""
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
    fam, bswa = _fam_vs_bswa(settings) if key == "variant" else ([], [])
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
            "agree": bool(rho > 0) if not pd.isna(rho) else None,
            "famlab best": settings[int(np.nanargmax(ours))] if settings else None,
            "paper best": mapping_inverse(mapping, col.loc[[mapping[s] for s in settings]].idxmax())
            if settings
            else None,
        }
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
            row["sign agrees"] = row["FAM wins (famlab)"] == row["FAM wins (paper)"]
        rows.append(row)
    return pd.DataFrame(rows).set_index("task")


def mapping_inverse(mapping: dict[Any, Any], target: Any) -> Any:
    for k, v in mapping.items():
        if v == target:
            return k
    return target


def _scores(res: SweepResults, metric: str | None = None) -> pd.Series:
    """Seed means of the metric as 'higher is better' scores, indexed by the (single) varied param."""
    metric = metric or res.metric
    agg = ablation_table(res, [metric])
    if agg.empty or len(res.varied) != 1:
        return pd.Series(dtype=float)
    sign = -1.0 if lower_is_better(metric, res.direction if metric == res.metric else None) else 1.0
    return sign * agg[(metric, "mean")]


def _eval_means(res: SweepResults, value: str | None = None) -> pd.DataFrame:
    try:
        return eval_table(res, value)
    except (KeyError, ValueError):
        return pd.DataFrame()


def paper_claims(res: SweepResults) -> pd.DataFrame:
    """The paper's qualitative findings for this study (:data:`famlab.paper.CLAIMS`), each with
    famlab's evidence and ``holds`` (True / False, None when the sweep lacks the settings)."""
    claims = paper.CLAIMS.get(res.study, [])
    if not claims or not res.ok:
        return pd.DataFrame(columns=["claim", "famlab", "holds"])
    out = []
    scores = _scores(res)
    m = res.metric

    def add(i: int, evidence: str, holds: bool | None) -> None:
        out.append({"claim": claims[i], "famlab": evidence, "holds": holds})

    def need(i: int, what: str) -> None:
        add(i, f"not testable: the sweep lacks {what}", None)

    study = res.study
    if study == "fam_length":
        if len(scores) >= 3:
            best = scores.idxmax()
            vals = sorted(scores.index)
            add(0, f"best L_F by {m}: {best} of {vals}", bool(best not in (vals[0], vals[-1])))
        else:
            need(0, "at least 3 L_F values")
    elif study == "memory_segment":
        fam, bswa = _fam_vs_bswa(list(scores.index))
        if fam and bswa:
            f, b = scores[fam].max(), scores[bswa].max()
            best_b = scores[bswa].idxmax()
            add(0, f"{m}: FAM {abs(f):.4g} vs best BSWA ({best_b}) {abs(b):.4g}", bool(f > b))
        else:
            need(0, "FAM and BSWA variants")
        mems = {s: int(str(s)[1:]) for s in bswa if str(s)[1:].isdigit()}
        if len(mems) >= 3:
            best = max(mems, key=lambda s: scores[s])
            add(
                1,
                f"best BSWA by {m}: {best} of {sorted(mems, key=mems.get)}",
                mems[best] not in (min(mems.values()), max(mems.values())),
            )
        else:
            need(1, "3 or more BSWA memory segments")
    elif study == "passkey":
        ev = _eval_means(res, "accuracy")
        if ev.empty:
            need(0, "evaluation tables")
            need(1, "evaluation tables")
        else:
            longest = ev.iloc[-1]
            fam, bswa = _fam_vs_bswa(list(ev.columns))
            if fam and bswa:
                f, b = longest[fam].max(), longest[bswa].max()
                add(
                    0,
                    f"accuracy at length {ev.index[-1]}: FAM {f:.3g}, best BSWA {b:.3g}{_TIE if f == b else ''}",
                    _ge(f, b),
                )
            else:
                need(0, "FAM and BSWA variants")
            beyond = _beyond_training(res, ev)
            if {"M1", "M1_SG"} <= set(ev.columns) and not beyond.empty:
                a, s = beyond["M1"].mean(), beyond["M1_SG"].mean()
                add(
                    1,
                    f"mean accuracy beyond training length: M1 {a:.3g}, M1_SG {s:.3g}{_TIE if a == s else ''}",
                    _ge(a, s),
                )
            else:
                need(1, "M1, M1_SG and lengths beyond training")
    elif study == "stop_gradient":
        ev = _eval_means(res, "accuracy")
        beyond = _beyond_training(res, ev) if not ev.empty else ev
        if not beyond.empty and {True, False} <= set(beyond.columns):
            a, s = beyond[False].mean(), beyond[True].mean()
            add(
                0,
                f"mean accuracy beyond training length: no SG {a:.3g}, SG {s:.3g}{_TIE if a == s else ''}",
                bool(s < a),
            )
        else:
            need(0, "both settings evaluated beyond the training length")
    elif study == "fam_position":
        if "last" in scores.index and len(scores) >= 2:
            others = scores.drop("last")
            add(
                0,
                f"{m}: " + ", ".join(f"{k} {abs(v):.4g}" for k, v in scores.items()),
                _ge(scores["last"], others.max()),
            )
        else:
            need(0, "'last' and another position")
    elif study == "position_offset":
        if {True, False} <= set(scores.index):
            add(
                0,
                f"{m}: RPO on {abs(scores[True]):.4g}, off {abs(scores[False]):.4g}",
                bool(scores[True] > scores[False]),
            )
        else:
            need(0, "RPO on and off")
    elif study == "state_passing":
        if len(scores) >= 2:
            best = scores.idxmax()
            add(0, f"best P(RSP) by {m}: {best} of {sorted(scores.index)}", bool(math.isclose(best, 0.8)))
            zero = [p for p in scores.index if p == 0]
            if zero:
                add(
                    1,
                    f"{m}: P=0 {abs(scores[zero[0]]):.4g}, best {abs(scores.max()):.4g}",
                    bool(scores[zero[0]] < scores.max()),
                )
            else:
                need(1, "P(RSP) = 0")
        else:
            need(0, "2 or more P(RSP) values")
            need(1, "2 or more P(RSP) values")
    elif study == "txl_vs_bswa":
        if {"BSWA", "TXL"} <= set(scores.index):
            b, t = abs(scores["BSWA"]), abs(scores["TXL"])
            rel = abs(t - b) / b if b else math.inf
            gap = paper.relative_gap(paper.TABLE_8, "TXL", "BSWA")
            add(
                0,
                f"{m}: BSWA {b:.4g}, TXL {t:.4g} ({100 * rel:.2f}% apart; paper up to {100 * gap:.1f}%)",
                bool(rel <= gap),
            )
        else:
            need(0, "BSWA and TXL")
    elif study == "fam_prev_blocks":
        if len(scores) >= 2:
            vals = scores.abs()
            spread = (vals.max() - vals.min()) / vals.mean()
            paper_spread = paper.relative_spread(paper.TABLE_6, "XLSum")
            add(
                0,
                f"{m} over {sorted(scores.index)}: spread {100 * spread:.2f}% of the mean "
                f"(paper {100 * paper_spread:.1f}%)",
                bool(spread <= paper_spread),
            )
        else:
            need(0, "2 or more fam_prev_blocks values")
    return pd.DataFrame(out, columns=["claim", "famlab", "holds"])


_TIE = " (a tie: uninformative)"


def _ge(a: float, b: float) -> bool | None:
    """a >= b for an 'at least as good' claim; None on a tie (e.g. every variant at 0 accuracy)."""
    return None if a == b else bool(a > b)


def _beyond_training(res: SweepResults, ev: pd.DataFrame) -> pd.DataFrame:
    """Rows of an eval table (indexed by length in tokens) past the training sequence length."""
    seq_len = run_setting(res, "data.seq_len")
    if ev.empty or not seq_len or ev.index.name != "length":
        return pd.DataFrame()
    return ev[ev.index > seq_len]


# ----------------------------------------------------------------------------------------------
# evaluation tables


def _eval_keys(res: SweepResults, long: pd.DataFrame, rows: str | None, value: str | None) -> tuple[str, str]:
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
    dimensions (e.g. depth), then :func:`aggregate` over seeds."""
    long = eval_long(res)
    if long.empty:
        return pd.DataFrame()
    rows, value = _eval_keys(res, long, rows, value)
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


# ----------------------------------------------------------------------------------------------
# export


def _flat(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    if isinstance(out.columns, pd.MultiIndex):
        out.columns = [" / ".join(str(x) for x in c if str(x) != "") for c in out.columns]
    elif out.columns.name is not None:  # a named column axis ("val/loss by model.attention", "variant")
        out.columns = [f"{out.columns.name}: {c}" for c in out.columns]
    if isinstance(out.index, pd.MultiIndex) or out.index.name is not None:
        out = out.reset_index()
        out.columns = [" / ".join(str(x) for x in c) if isinstance(c, tuple) else str(c) for c in out.columns]
        return out
    return out.reset_index(names=[""]) if not isinstance(out.index, pd.RangeIndex) else out


def to_markdown(df: pd.DataFrame, path: str | Path | None = None, floatfmt: str = ".4g") -> str:
    """A table as GitHub Markdown (MultiIndex columns joined with ' / '); written to ``path`` too."""
    text = _flat(df).to_markdown(index=False, floatfmt=floatfmt) + "\n"
    if path is not None:
        Path(path).write_text(text)
    return text


def to_latex(
    df: pd.DataFrame,
    path: str | Path | None = None,
    *,
    caption: str | None = None,
    label: str | None = None,
    float_format: str = "{:.4g}",
) -> str:
    """A table as a LaTeX ``tabular`` (booktabs rules, names escaped); written to ``path`` too."""
    text = df.to_latex(
        float_format=float_format.format, caption=caption, label=label, escape=True, multicolumn_format="c"
    )
    if path is not None:
        Path(path).write_text(text)
    return text


def all_tables(res: SweepResults) -> dict[str, pd.DataFrame]:
    """Every table of a sweep's analysis, by name (empty ones left out)."""
    if not res.ok:
        return {}
    tables = {
        "ablation": format_mean_ci(ablation_table(res)),
        "paper": paper_table(res),
        "agreement": paper_agreement(res),
        "claims": paper_claims(res),
        "eval": _eval_means(res),
    }
    return {k: v for k, v in tables.items() if not v.empty}


def export_tables(tables: dict[str, pd.DataFrame], out_dir: str | Path, prefix: str = "") -> list[Path]:
    """Write each table as ``<prefix>_<name>.md`` and ``.tex`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, df in tables.items():
        stem = f"{prefix}_{name}" if prefix else name
        written.append(out / f"{stem}.md")
        to_markdown(df, written[-1])
        written.append(out / f"{stem}.tex")
        to_latex(df, written[-1], caption=f"{prefix} {name}".strip().replace("_", " "), label=f"tab:{stem}")
    return written


# ----------------------------------------------------------------------------------------------
# plots


def _plt():
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


def _label(name: str, labels: dict[str, str]) -> str:
    return labels.get(name, name)


def _numeric(values: Sequence) -> bool:
    return all(isinstance(v, int | float | np.number) and not isinstance(v, bool | np.bool_) for v in values)


def _log2_axis(values: Sequence) -> bool:
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
    plt = _plt()
    key = res.varied[0]
    agg = ablation_table(res, [metric])
    table, pkey, mapping = paper_reference(res)
    has_paper = table is not None and pkey is not None and bool(mapping)
    fig, axes = plt.subplots(1, 2 if has_paper else 1, figsize=(12.5 if has_paper else 6.5, 4.2), squeeze=False)
    ax = axes[0, 0]
    settings = list(agg.index)
    numeric = _numeric(settings)
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
    if numeric and _log2_axis(settings):
        ax.set_xscale("log", base=2)
    ax.set_xticks(xs)
    ax.set_xticklabels([str(s) for s in settings], rotation=0)
    if not numeric:
        ax.set_xlim(-0.5, len(settings) - 0.5)
    ax.set_xlabel(_label(key, PARAM_LABELS))
    better = "lower" if lower_is_better(metric, res.direction if metric == res.metric else None) else "higher"
    ax.set_ylabel(f"{_label(metric, METRIC_LABELS)} ({better} is better)")
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
        if numeric and _log2_axis(settings):
            ax2.set_xscale("log", base=2)
        ax2.set_xticks(xs)
        labels = [str(s) if s not in mapping or mapping[s] == s else f"{s}\n(paper {mapping[s]})" for s in settings]
        ax2.set_xticklabels(labels, fontsize=8)
        ax2.set_xlabel(_label(key, PARAM_LABELS))
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
    plt = _plt()
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
            label = f"{_label(hue, SHORT_NAMES)}={h}"
            ax.errorbar(g[x], g[(metric, "mean")], yerr=err, fmt="o-", capsize=3, color=f"C{i}", label=label)
        xs = sorted(set(sub[x]))
        if _numeric(xs):
            if _log2_axis(xs) or (len(xs) >= 3 and min(xs) > 0 and all(b == 2 * a for a, b in zip(xs, xs[1:]))):
                ax.set_xscale("log", base=2)
            ax.set_xticks(xs)
            ax.set_xticklabels([str(v) for v in xs])
        ax.set_xlabel(_label(x, PARAM_LABELS))
        ax.set_title(f"{_label(panel_key, SHORT_NAMES)}={p}" if p is not None else res.study_name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    better = "lower" if lower_is_better(metric, res.direction if metric == res.metric else None) else "higher"
    axes[0, 0].set_ylabel(f"{_label(metric, METRIC_LABELS)} ({better} is better)")
    fig.suptitle(f"famlab {res.study_name}: {metric} (mean ± 95% CI over seeds)")
    fig.tight_layout()
    return fig


def plot_eval(res: SweepResults, value: str | None = None, rows: str | None = None):
    """The evaluation against its row key (PassKey: accuracy by filler length), one line per
    setting, shaded 95% t-interval over seeds; a dashed line marks the training length."""
    agg = eval_aggregate(res, value, rows)
    if agg.empty:
        return None
    plt = _plt()
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
            _sort_key([kv[0][0] if isinstance(kv[0], tuple) else kv[0]], order.get(setting_cols[0]))[0]
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
    if _numeric(xs_all) and _log2_axis(xs_all):
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs_all)
        ax.set_xticklabels([f"{int(v)}" if float(v).is_integer() else f"{v:g}" for v in xs_all], rotation=30)
    seq_len = run_setting(res, "data.seq_len")
    if seq_len and row_key in ("length", "position_bucket_start"):
        ax.axvline(seq_len, color="grey", ls="--", lw=1, label=f"training length ({seq_len})")
    if value in ("accuracy", "digit_accuracy", "example_accuracy"):
        ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(_label(row_key, EVAL_ROW_LABELS))
    better = "lower" if value == "bpb" else "higher"
    ax.set_ylabel(f"{_label(value, METRIC_LABELS)} ({better} is better)")
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
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    groups = curves.groupby(res.varied, sort=False) if res.varied else [((), curves)]
    order = res.order()
    names = sorted(
        (name for name, _ in groups),
        key=lambda n: _sort_key(
            [n[0] if isinstance(n, tuple) else n], order.get(res.varied[0]) if res.varied else None
        )[0],
    )
    grouped = dict(list(curves.groupby(res.varied, sort=False))) if res.varied else {(): curves}
    for i, name in enumerate(names):
        g = grouped[name].groupby("step")[key].mean()
        label = ", ".join(f"{v}" for v in (name if isinstance(name, tuple) else (name,)))
        ax.plot(g.index, g.to_numpy(), "o-", ms=3, color=f"C{i % 10}", label=label)
    ax.set_xlabel("training step")
    ax.set_ylabel(_label(key, METRIC_LABELS))
    ax.set_title(f"famlab {res.study_name}: {key} during training (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title=", ".join(res.varied) or None, title_fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------
# cost (bench results)


def load_bench(paths: str | Path | Iterable[str | Path] = "bench/results") -> pd.DataFrame:
    """``famlab.bench`` JSON results (files or folders of ``bench_*.json``): one row per (file,
    variant) with the sequence length and model config, step time (median and min, seconds),
    tokens/s, peak training-step memory (MB; NaN when measured with --no-memory) and GFLOP/s."""
    if isinstance(paths, str | Path):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(p.glob("bench_*.json")) if p.is_dir() else [p] if p.exists() else [])
    rows = []
    for f in files:
        try:
            data = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        cfg = data.get("config", {})
        for v in data.get("variants", []):
            rows.append(
                {
                    "file": f.name,
                    "timestamp": data.get("timestamp", ""),
                    "variant": v.get("name"),
                    "attention": v.get("attention"),
                    "impl": v.get("impl"),
                    "seq_len": cfg.get("seq_len"),
                    "batch_size": cfg.get("batch_size"),
                    "d_model": cfg.get("d_model"),
                    "n_layers": cfg.get("n_layers"),
                    "block_size": cfg.get("block_size"),
                    "mem_segment": cfg.get("mem_segment"),
                    "fam_len": cfg.get("fam_len"),
                    "dtype": cfg.get("dtype"),
                    "quick": cfg.get("quick"),
                    "step_time_s": v.get("step_time_median_s", v.get("step_time_s")),
                    "step_time_min_s": v.get("step_time_min_s"),
                    "tokens_per_s": v.get("tokens_per_s"),
                    "peak_mem_mb": v.get("peak_mem_mb"),
                    "achieved_gflops": v.get("achieved_gflops"),
                }
            )
    df = pd.DataFrame(rows)
    for c in ("step_time_s", "step_time_min_s", "tokens_per_s", "peak_mem_mb", "achieved_gflops"):
        if c in df.columns:
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def bench_summary(bench: pd.DataFrame, where: str | Path = "bench/results") -> str:
    """One line on what bench results there are (or how to make some)."""
    if bench.empty:
        return (
            f"No bench results in {where}: run `make bench` or "
            "`python -m famlab.bench --quick --no-memory --seq-len 1024` first."
        )
    lengths = sorted(int(t) for t in bench["seq_len"].dropna().unique())
    return f"{bench['file'].nunique()} bench files; sequence lengths {lengths}; variants {sorted(bench['variant'].unique())}"


VARIANT_ORDER = ("full", "bswa", "txl", "fam", "fam-ref")
MODEL_KEYS = ("batch_size", "d_model", "n_layers", "block_size", "mem_segment", "fam_len", "dtype")


def cost_table(bench: pd.DataFrame) -> pd.DataFrame:
    """Step time (ms) and peak memory (MB) by sequence length (down) and variant (across), for the
    model config with the most sequence lengths; the newest file wins a repeated (T, variant).
    Also the FAM / BSWA ratios."""
    if bench.empty:
        return pd.DataFrame()
    keys = [k for k in MODEL_KEYS if k in bench.columns]
    configs = bench.groupby(keys, dropna=False)["seq_len"].nunique()
    best = configs.idxmax()
    best = best if isinstance(best, tuple) else (best,)
    sel = bench
    for k, v in zip(keys, best):
        sel = sel[sel[k].isna()] if pd.isna(v) else sel[sel[k] == v]
    # the newest measurement of each quantity wins (a --no-memory run keeps an older memory number)
    sel = sel.sort_values("timestamp").groupby(["seq_len", "variant"], sort=False).last().reset_index()
    out = pd.DataFrame(index=pd.Index(sorted(int(t) for t in sel["seq_len"].unique()), name="seq_len"))
    variants = [v for v in VARIANT_ORDER if v in set(sel["variant"])]
    variants += [v for v in dict.fromkeys(sel["variant"]) if v not in variants]
    for col, name, scale in (("step_time_s", "step time ms", 1000.0), ("peak_mem_mb", "peak memory MB", 1.0)):
        wide = sel.pivot(index="seq_len", columns="variant", values=col) * scale
        wide.index = wide.index.astype(int)
        for v in variants:
            out[(name, v)] = wide[v] if v in wide.columns else math.nan
    if {"fam", "bswa"} <= set(variants):
        out[("FAM / BSWA", "step time")] = out[("step time ms", "fam")] / out[("step time ms", "bswa")]
        out[("FAM / BSWA", "peak memory")] = out[("peak memory MB", "fam")] / out[("peak memory MB", "bswa")]
    out.columns = pd.MultiIndex.from_tuples(out.columns, names=["quantity", "variant"])
    out.attrs["config"] = dict(zip(keys, best))
    return out


def paper_cost_table() -> pd.DataFrame:
    """Tables 13/14 with the FAM / BSWA ratios."""
    ref = paper.TABLE_13_14.frame()
    ref["FAM / BSWA memory"] = ref["FAM memory GB"] / ref["BSWA memory GB"]
    ref["FAM / BSWA time"] = ref["FAM time s"] / ref["BSWA time s"]
    return ref


def _plain_log_y(ax) -> None:
    """A log y axis labelled with plain numbers (1, 2, 3, 5 x 10^k), no minor labels."""
    from matplotlib import ticker

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    ax.yaxis.set_minor_locator(ticker.NullLocator())
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 10 else f"{v:g}"))


def plot_cost(bench: pd.DataFrame):
    """Top: training-step time and peak memory against sequence length per variant (famlab bench).
    Bottom: the paper's inference memory and time (Tables 13/14) for BSWA and FAM."""
    table = cost_table(bench)
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    colors = {v: f"C{i}" for i, v in enumerate(VARIANT_ORDER)}
    if table.empty:
        for ax in axes[0]:
            ax.text(0.5, 0.5, "no bench results", ha="center", va="center", transform=ax.transAxes)
    else:
        cfg = table.attrs.get("config", {})
        shown = ", ".join(
            f"{k}={v}" for k, v in cfg.items() if k in ("d_model", "n_layers", "block_size", "batch_size")
        )
        titles = (f"famlab training-step time ({shown})", "famlab training-step peak memory (extra RSS)")
        for ax, quantity, unit, title in (
            (axes[0, 0], "step time ms", "ms", titles[0]),
            (axes[0, 1], "peak memory MB", "MB", titles[1]),
        ):
            sub = table[quantity]
            plotted = 0
            for v in sub.columns:
                ys = sub[v].to_numpy(dtype=float)
                if np.all(np.isnan(ys)):
                    continue
                style = "s--" if v.startswith("fam") else "o-"
                ax.plot(sub.index, ys, style, color=colors.get(v, "k"), label=v, ms=6)
                plotted += 1
            if not plotted:
                ax.text(0.5, 0.5, "not measured\n(bench --no-memory)", ha="center", va="center", transform=ax.transAxes)
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                ax.legend(fontsize=8, title="variant", title_fontsize=8)
                if len(sub.index) > 1:
                    ax.set_xscale("log", base=2)
                    _plain_log_y(ax)
                ax.set_xticks(list(sub.index))
                ax.set_xticklabels([f"{int(t)}" for t in sub.index])
            ax.set_xlabel("sequence length T (tokens)")
            ax.set_ylabel(f"{quantity.rsplit(' ', 1)[0]} ({unit})")
            ax.set_title(title, fontsize=10)
            ax.grid(alpha=0.3, which="both")
    ref = paper_cost_table()
    for ax, what, unit in ((axes[1, 0], "memory", "GB"), (axes[1, 1], "time", "s")):
        ax.plot(ref.index, ref[f"BSWA {what} {unit}"], "o-", color=colors["bswa"], label="BSWA")
        ax.plot(ref.index, ref[f"FAM {what} {unit}"], "s--", color=colors["fam"], label="FAM")
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(ref.index))
        ax.set_xticklabels([f"{t // 1000}k" for t in ref.index])
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel(f"inference {what} ({unit})")
        ratio = (ref[f"FAM / BSWA {what}"] - 1).abs().max() * 100
        ax.set_title(f"paper {paper.TABLE_13_14.name}: inference {what} (FAM within {ratio:.1f}% of BSWA)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
