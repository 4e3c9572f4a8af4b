"""A sweep's results: its trials (from :mod:`famlab.analysis.frames`) together with its spec."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from famlab.analysis.frames import load_study, run_config, store_file_missing
from famlab.analysis.locate import runs_root
from famlab.sweep.spec import STORAGE_ENV, SweepSpec, default_storage, load_spec, redact


def storage_for(spec: Any, storage: str | None = None, root: str | Path | None = None) -> str:
    """The storage URL of a spec's study: ``storage`` if given, else $FAMLAB_STORAGE, else the
    default SQLite file ``<root>/sweeps/<study>/<profile>.db`` (``root`` None: the nearest ``runs/``
    with stores, :func:`famlab.analysis.locate.runs_root`)."""
    return storage or os.environ.get(STORAGE_ENV) or default_storage(spec, runs_root(root))


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
    root: str | Path | None = None,
    config: bool = False,
) -> SweepResults:
    """The results of a sweep, by spec (name from ``sweeps/``, a YAML path, or a loaded
    ``SweepSpec``) and profile; ``root`` None finds the stores from the working directory or a parent
    (:func:`famlab.analysis.locate.runs_root`). Never raises for a missing store or study: ``message`` says so."""
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
        missing = "no such file" if store_file_missing(url) else "no trials"
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


def spec_setting(spec: Any, key: str, params: dict[str, Any] | None = None) -> Any:
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

    from famlab.config import ConfigError, preset_path

    try:
        preset = preset_path(spec.preset)
    except ConfigError:
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
            cfg = run_config(run_dir)
            if key in cfg:
                return cfg[key]
            break
    return spec_setting(res.spec, key) if res.spec is not None else None
