"""Optuna sweeps over famlab training runs.

A sweep spec (``sweeps/*.yaml``) is data: a study name, a base preset plus overrides, either a
``grid`` (every combination, run once per replicate seed) or a ``search`` space with a sampler and
a pruner, the objective metric and direction, and per-profile settings (``tiny`` for CPU minutes,
``paper`` for cluster scale). See ``sweeps/README.md`` for the format.

How trials run (choices):

* One trial = one ``famlab train`` in its own process (a crash or OOM kills the trial, not the
  worker), dying with its worker (``PR_SET_PDEATHSIG``). Its run directory, exit status, log tail
  and every final metric are stored on the trial as user attributes.
* The worker reports the validation metric from the run's ``metrics.jsonl`` as intermediate values
  while the run trains, so pruners work; a pruned run is killed.
* Grids use Optuna's ``GridSampler`` with a fixed seed shared by all workers (workers with different
  seeds would map trial numbers to different grid points). Trial number k < grid size gets grid
  point k, so concurrent workers never collide; where a race is still possible (a re-run after a
  failure), a trial that finds another live or completed trial on its grid point prunes itself at
  once (the lower trial number wins), so no point is trained twice.
* Storage is an RDB (SQLite file by default, PostgreSQL on clusters) with heartbeats: a worker killed
  mid-trial leaves a RUNNING trial whose heartbeat goes stale; any worker then marks it failed and
  ``RetryHeartbeatStaleTrialCallback`` queues it again. A worker killed before its trial's first
  heartbeat leaves a RUNNING trial with none; ``SweepStorage`` calls that stale too, after the same
  grace period. A trial that fails by itself (non-zero exit, NaN objective, past ``trial_timeout``)
  is re-queued at most ``max_retries`` times; the rest of the sweep goes on.
* A worker keeps going while there is queued work, and waits while other workers' trials run (they
  may die and come back as retries), so N workers together finish every grid point exactly once.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import itertools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.orm
from omegaconf import OmegaConf
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState

from famlab.config import config_error, unknown_key_error

SWEEP_DIR = Path(__file__).resolve().parent.parent / "sweeps"
STORAGE_ENV = "FAMLAB_STORAGE"
SAMPLERS = ("tpe", "random")
PRUNERS = ("none", "median", "hyperband", "threshold")
DIRECTIONS = ("minimize", "maximize")
SPEC_KEYS = (
    "study",
    "description",
    "paper",
    "preset",
    "overrides",
    "grid",
    "variants",
    "search",
    "seeds",
    "objective",
    "metrics",
    "max_retries",
    "trial_timeout",
    "profiles",
    "table",
    "evaluate",
    "eval_overrides",
    "claims",
)
PROFILE_KEYS = tuple(k for k in SPEC_KEYS if k not in ("study", "description", "paper", "profiles"))
SEARCH_KEYS = ("sampler", "pruner", "n_trials", "space", "prune_above")
PARAM_KEYS = ("type", "low", "high", "log", "step", "choices")
GRID_SAMPLER_SEED = 0  # shared by every worker of every grid study: see the module docstring


class TrialFailed(Exception):
    """A trial that failed by itself (bad value, crash, NaN): recorded, maybe retried, never fatal."""


# ----------------------------------------------------------------------------------------------
# spec


@dataclass
class Param:
    type: str  # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list | None = None


@dataclass
class SweepSpec:
    """A spec resolved for one profile."""

    study: str
    profile: str
    preset: str
    overrides: dict[str, Any]
    grid: dict[str, list] | None
    space: dict[str, Param] | None
    sampler: str
    pruner: str
    n_trials: int
    prune_above: float | None
    seeds: list[int]
    metric: str
    direction: str
    metrics: list[str]
    max_retries: int
    trial_timeout: float | None = None  # seconds per trial (train + eval); a hung run is killed and failed
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    evaluate: bool = False  # run `famlab eval` on each trained run (its table goes on the trial)
    eval_overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    paper: str = ""
    table: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    @property
    def study_name(self) -> str:
        return f"{self.study}-{self.profile}"

    @property
    def varied(self) -> list[str]:
        """Parameters the sweep varies (seed excluded)."""
        return list(self.grid or self.space or {})

    def eval_overrides_list(self) -> list[str]:
        return [f"{k}={_dot_value(v)}" for k, v in self.eval_overrides.items()]

    def grid_points(self) -> list[dict[str, Any]]:
        """Every combination of the grid, once per seed (seed is the last key)."""
        assert self.grid is not None
        keys = list(self.grid)
        return [
            dict(zip(keys, values), seed=seed)
            for values in itertools.product(*self.grid.values())
            for seed in self.seeds
        ]

    def trial_overrides(self, params: dict[str, Any]) -> list[str]:
        """The dotlist for one trial: base overrides, then the named variant's overrides (grid key
        ``variant``), then the trial's other parameters."""
        variant = self.variants.get(params["variant"], {}) if "variant" in params else {}
        rest = {k: v for k, v in params.items() if k not in ("seed", "variant")}
        merged = {**self.overrides, **variant, **rest}
        items = [f"{k}={_dot_value(v)}" for k, v in merged.items()]
        if "seed" in params:
            items.append(f"seed={params['seed']}")
        return items


def _dot_value(value: Any) -> str:
    """A value as OmegaConf's dotlist parser reads it back (lists as YAML flow, None as null)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_dot_value(v) for v in value) + "]"
    return str(value)


def spec_path(name_or_path: str) -> Path:
    """A spec by path, or by name from ``sweeps/`` (``fam_length`` -> ``sweeps/fam_length.yaml``)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = SWEEP_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    known = sorted(p.stem for p in SWEEP_DIR.glob("*.yaml"))
    raise ValueError(f"sweep spec {name_or_path!r} not found: give a path or one of {', '.join(known)}")


def _check_keys(owner: str, data: dict, valid: Sequence[str]) -> None:
    for key in data:
        if key not in valid:
            raise unknown_key_error(owner, str(key), list(valid))


def load_spec(name_or_path: str, profile: str = "tiny", *, validate_runs: bool = True) -> SweepSpec:
    """Load and check a spec for one profile. Everything is checked before any trial runs: spec keys,
    the profile, value types, an empty grid, and (``validate_runs``) every trial's run config."""
    path = spec_path(name_or_path)
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a sweep spec must be a mapping")
    owner = path.stem
    _check_keys(owner, raw, SPEC_KEYS)
    profiles = raw.get("profiles") or {}
    if profile not in profiles:
        raise config_error(owner, "profile", profile, "one of " + ", ".join(profiles or ["(none defined)"]))
    prof = profiles[profile] or {}
    _check_keys(f"{owner}.profiles.{profile}", prof, PROFILE_KEYS)

    def pick(key: str, default: Any = None) -> Any:
        return prof[key] if key in prof else raw.get(key, default)

    def merged(key: str) -> dict:  # mappings merge: the profile's entries over the top level's
        return {**(raw.get(key) or {}), **(prof.get(key) or {})}

    overrides, variants, eval_overrides = merged("overrides"), merged("variants"), merged("eval_overrides")
    grid = raw.get("grid")
    if grid is not None or prof.get("grid") is not None:
        grid = {**(grid or {}), **(prof.get("grid") or {})}
    search = pick("search")
    if (grid is None) == (search is None):
        raise ValueError(f"{owner}: give exactly one of `grid` or `search`")
    space, sampler, pruner, n_trials, prune_above = None, "grid", "none", 0, None
    if grid is not None:
        if not grid:
            raise config_error(owner, "grid", grid, "at least one parameter with values")
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise config_error(owner, f"grid.{key}", values, "a non-empty list of values")
            if key == "seed":
                raise config_error(owner, "grid.seed", values, "replicate seeds under `seeds`, not in the grid")
        for name in grid.get("variant", []):
            if name not in variants:
                raise config_error(owner, "grid.variant", name, "a name under `variants`: " + ", ".join(variants))
    else:
        _check_keys(f"{owner}.search", search, SEARCH_KEYS)
        sampler = search.get("sampler", "tpe")
        pruner = search.get("pruner", "median")
        n_trials = search.get("n_trials", 20)
        prune_above = search.get("prune_above")
        if pruner == "threshold" and not isinstance(prune_above, int | float):
            raise config_error(owner, "search.prune_above", prune_above, "a number (the threshold pruner's bound)")
        if sampler not in SAMPLERS:
            raise config_error(owner, "search.sampler", sampler, "one of " + ", ".join(SAMPLERS))
        if pruner not in PRUNERS:
            raise config_error(owner, "search.pruner", pruner, "one of " + ", ".join(PRUNERS))
        if not (isinstance(n_trials, int) and n_trials > 0):
            raise config_error(owner, "search.n_trials", n_trials, "an integer > 0")
        space = {}
        for key, p in (search.get("space") or {}).items():
            _check_keys(f"{owner}.search.space.{key}", p, PARAM_KEYS)
            param = Param(**p)
            if param.type not in ("float", "int", "categorical"):
                raise config_error(owner, f"search.space.{key}.type", param.type, "one of float, int, categorical")
            if param.type == "categorical" and not param.choices:
                raise config_error(owner, f"search.space.{key}.choices", param.choices, "a non-empty list")
            if param.type != "categorical" and not (
                isinstance(param.low, int | float) and isinstance(param.high, int | float) and param.low < param.high
            ):
                raise config_error(owner, f"search.space.{key}", p, "numbers low < high")
            space[key] = param
        if not space:
            raise config_error(owner, "search.space", search.get("space"), "at least one parameter")
    seeds = pick("seeds", [0])
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds)):
        raise config_error(owner, "seeds", seeds, "a non-empty list of integers")
    objective = pick("objective") or {}
    _check_keys(f"{owner}.objective", objective, ("metric", "direction"))
    metric, direction = objective.get("metric", "val_loss"), objective.get("direction", "minimize")
    if direction not in DIRECTIONS:
        raise config_error(owner, "objective.direction", direction, "one of " + ", ".join(DIRECTIONS))
    max_retries = pick("max_retries", 2)
    if not (isinstance(max_retries, int) and max_retries >= 0):
        raise config_error(owner, "max_retries", max_retries, "an integer >= 0")
    trial_timeout = pick("trial_timeout", None)
    if trial_timeout is not None and not (
        isinstance(trial_timeout, int | float) and not isinstance(trial_timeout, bool) and trial_timeout > 0
    ):
        raise config_error(owner, "trial_timeout", trial_timeout, "a number of seconds > 0, or null for no limit")
    preset = pick("preset", "tiny")
    spec = SweepSpec(
        study=raw.get("study", owner),
        profile=profile,
        preset=preset,
        overrides=overrides,
        grid=grid,
        space=space,
        sampler=sampler,
        pruner=pruner,
        n_trials=n_trials,
        prune_above=prune_above,
        seeds=seeds,
        metric=metric,
        direction=direction,
        metrics=list(pick("metrics", []) or []),
        max_retries=max_retries,
        trial_timeout=trial_timeout,
        variants=variants,
        evaluate=bool(pick("evaluate", False)),
        eval_overrides=eval_overrides,
        description=raw.get("description", ""),
        paper=raw.get("paper", ""),
        table=pick("table", {}) or {},
        path=str(path),
    )
    if validate_runs:
        validate_trials(spec)
    return spec


def validate_trials(spec: SweepSpec) -> None:
    """Resolve the run config of every trial (grid) or of the space's corners (search) so a typo'd
    key or a bad value fails now, naming the trial, not an hour into the sweep."""
    from famlab.config import load_run_config

    if spec.grid is not None:
        candidates = spec.grid_points()
    else:
        candidates = []
        for corner in ("low", "high"):
            params = {}
            for key, p in spec.space.items():
                params[key] = p.choices[0 if corner == "low" else -1] if p.type == "categorical" else getattr(p, corner)
                if p.type == "int":
                    params[key] = int(params[key])
            candidates.append(params)
    for params in candidates:
        try:
            load_run_config(spec.preset, spec.trial_overrides(params))
        except ValueError as err:
            shown = ", ".join(f"{k}={v}" for k, v in params.items())
            raise ValueError(f"{Path(spec.path).stem}: trial ({shown}) has a bad run config: {err}") from None


# ----------------------------------------------------------------------------------------------
# storage


def default_storage(spec: SweepSpec, root: str | Path = "runs") -> str:
    return f"sqlite:///{Path(root).resolve() / 'sweeps' / spec.study / f'{spec.profile}.db'}"


def redact(url: str) -> str:
    """A storage URL safe to print: the password is masked."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy knows: show the scheme only
        return url.split("://", 1)[0] + "://***"


class SweepStorage(RDBStorage):
    """Optuna's RDB storage, with one more kind of stale trial: a RUNNING trial that never
    recorded a heartbeat and started more than the grace period ago.

    ``study.optimize`` creates the trial (RUNNING, several writes while the sampler stamps it)
    before it starts the heartbeat thread. A worker killed in that window leaves a trial Optuna
    never calls stale (it skips trials without a heartbeat row), so every other worker would wait
    for it forever and its grid point would never run."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        stale = super()._get_stale_trial_ids(study_id)
        # datetime_start comes from the creating worker's clock (datetime.now()), not the DB's
        cutoff = datetime.datetime.now() - datetime.timedelta(seconds=self.grace_period or 2 * self.heartbeat_interval)
        with _create_scoped_session(self.scoped_session) as session:
            running = (
                session.query(models.TrialModel)
                .options(sqlalchemy.orm.selectinload(models.TrialModel.heartbeats))
                .filter(models.TrialModel.state == TrialState.RUNNING)
                .filter(models.TrialModel.study_id == study_id)
                .all()
            )
            never_beat = [
                t.trial_id
                for t in running
                if not t.heartbeats and t.datetime_start is not None and t.datetime_start < cutoff
            ]
        return stale + [i for i in never_beat if i not in stale]


def make_storage(url: str, *, heartbeat: int = 10, grace: int | None = None, max_stale_retries: int = 3) -> RDBStorage:
    """An RDB storage with heartbeats: stale RUNNING trials (no heartbeat for ``grace`` seconds,
    or none ever, see ``SweepStorage``) are failed and queued again."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats are stable
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    return SweepStorage(
        url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=heartbeat,
        grace_period=grace or 3 * heartbeat,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_stale_retries),
    )


def make_sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    if spec.grid is not None:
        space = {k: list(v) for k, v in spec.grid.items()}
        space["seed"] = list(spec.seeds)
        return optuna.samplers.GridSampler(space, seed=GRID_SAMPLER_SEED)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.seeds[0])
    return optuna.samplers.TPESampler(seed=spec.seeds[0])


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if spec.pruner == "threshold":  # prune a run whose metric passes the bound (in the bad direction)
        bound = {"upper": spec.prune_above} if spec.direction == "minimize" else {"lower": spec.prune_above}
        return optuna.pruners.ThresholdPruner(**bound)
    return optuna.pruners.NopPruner()


def open_study(spec: SweepSpec, storage: RDBStorage) -> optuna.Study:
    """Create the spec's study, or open it to resume. A study keeps its objective direction and
    (for a grid) its grid and seeds: a spec that changed either is refused with what to do, instead
    of Optuna's error deep inside a trial."""
    study = optuna.create_study(
        study_name=spec.study_name,
        storage=storage,
        sampler=make_sampler(spec),
        pruner=make_pruner(spec),
        direction=spec.direction,
        load_if_exists=True,
    )
    if study.direction.name.lower() != spec.direction:
        raise ValueError(
            f"study {spec.study_name!r} was created to {study.direction.name.lower()} its objective; the spec now "
            f"says direction={spec.direction!r}: use a new study name (the spec's `study:`) or another storage"
        )
    grid = {**spec.grid, "seed": list(spec.seeds)} if spec.grid is not None else None
    stored = study.user_attrs.get("grid")
    if grid is not None and stored is not None and stored != grid:
        raise ValueError(
            f"study {spec.study_name!r} was created with the grid {stored}; the spec now has {grid}. A grid "
            "study cannot grow or change: use a new study name (the spec's `study:`) or another storage, and "
            "combine the studies in the analysis (famlab.analysis.load_studies)"
        )
    with contextlib.suppress(Exception):  # informational; a concurrent writer may race us
        if "spec" not in study.user_attrs:
            study.set_user_attr("spec", spec.path)
            study.set_user_attr("varied", spec.varied)
            study.set_user_attr("metric", spec.metric)
        if grid is not None and stored is None:
            study.set_user_attr("grid", grid)
    return study


# ----------------------------------------------------------------------------------------------
# one trial


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _suggest(trial: optuna.Trial, spec: SweepSpec) -> dict[str, Any]:
    if spec.grid is not None:
        params = {k: trial.suggest_categorical(k, v) for k, v in spec.grid.items()}
        params["seed"] = trial.suggest_categorical("seed", spec.seeds)
        return params
    params = {}
    for key, p in spec.space.items():
        if p.type == "float":
            params[key] = trial.suggest_float(key, p.low, p.high, log=p.log, step=p.step)
        elif p.type == "int":
            params[key] = trial.suggest_int(key, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            params[key] = trial.suggest_categorical(key, p.choices)
    params["seed"] = spec.seeds[0]
    return params


def _duplicate_of(trial: optuna.Trial, params: dict[str, Any]) -> int | None:
    """Another trial on the same point that completed, or runs with a lower number."""
    for other in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
        if other.number == trial.number or other.params != params:
            continue
        if other.state == TrialState.COMPLETE or other.number < trial.number:
            return other.number
    return None


def _read_jsonl(path: Path, offset: int) -> tuple[list[dict], int]:
    if not path.exists():
        return [], offset
    with path.open() as f:
        f.seek(offset)
        data = f.read()
    complete = data[: data.rfind("\n") + 1]
    rows = []
    for line in complete.splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return rows, offset + len(complete)


def find_run_dir(root: Path) -> Path | None:
    """The run directory a ``famlab train`` made under ``root`` (the one holding config.yaml)."""
    found = sorted(root.glob("**/config.yaml"))
    return found[-1].parent if found else None


def _flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"eval": {"accuracy": 1}} -> {"eval/accuracy": 1}; only scalars are kept."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, int | float | str | bool) or value is None:
            flat[f"{prefix}{key}"] = value
    return flat


def _run(
    cmd: list[str], log_path: Path, env: dict[str, str], on_poll=None, poll: float = 1.0, deadline: float | None = None
) -> int:
    """Run a child process that dies with us, logging to ``log_path``; ``on_poll()`` runs every
    ``poll`` seconds while it lives and may raise to stop it (the child is killed). Past
    ``deadline`` (a ``time.monotonic()`` value) the child is killed and ``TrialFailed`` raised."""
    with log_path.open("a") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent, env=env)
        try:
            while proc.poll() is None:
                time.sleep(poll)
                if on_poll is not None:
                    on_poll()
                if deadline is not None and time.monotonic() > deadline and proc.poll() is None:
                    raise TrialFailed(f"famlab {cmd[3]} still running when trial_timeout ran out: killed")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return proc.returncode


def _log_tail(log_path: Path, lines: int = 3) -> str:
    tail = log_path.read_text(errors="replace").strip().splitlines()[-lines:]
    return " | ".join(tail)[-500:]


def run_trial(trial: optuna.Trial, spec: SweepSpec, out_root: Path, *, threads: int = 1, poll: float = 1.0) -> float:
    """Train one run (and evaluate it if the spec says so) in child processes; store its results
    on the trial; return the objective."""
    params = _suggest(trial, spec)
    dup = _duplicate_of(trial, params)
    if dup is not None:
        trial.set_user_attr("duplicate_of", dup)
        raise optuna.TrialPruned(f"grid point already taken by trial {dup}")
    trial_dir = out_root / spec.study_name / f"trial-{trial.number:04d}"
    trial_dir.mkdir(parents=True, exist_ok=True)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    tags = [f"{k}={v}" for k, v in params.items()]
    famlab = [sys.executable, "-m", "famlab.cli"]
    cmd = [
        *famlab,
        "train",
        f"preset={spec.preset}",
        *spec.trial_overrides(params),
        f"out_dir={trial_dir}",
        f"name={spec.study}",
        f"logger.group={spec.study_name}",
        f"logger.name={spec.study_name}-trial{trial.number}",
        f"logger.tags={_dot_value(tags)}",
    ]
    trial.set_user_attr("command", " ".join(["famlab", *cmd[3:]]))
    log_path = trial_dir / "train.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)}
    env.pop(STORAGE_ENV, None)  # the run never needs the study's credentials
    seen = {"run_dir": None, "offset": 0, "step": -1}

    def report_progress() -> None:  # intermediate values from the run's metrics.jsonl, for pruners
        seen["run_dir"] = seen["run_dir"] or find_run_dir(trial_dir)
        if seen["run_dir"] is None:
            return
        if "run_dir" not in trial.user_attrs:
            trial.set_user_attr("run_dir", str(seen["run_dir"]))
        rows, seen["offset"] = _read_jsonl(seen["run_dir"] / "metrics.jsonl", seen["offset"])
        for row in rows:
            value, step = row.get(spec.metric), row.get("step")
            if isinstance(value, int | float) and isinstance(step, int) and step > seen["step"]:
                trial.report(float(value), step)
                seen["step"] = step
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at step {step} ({spec.metric}={value:.4g})")

    deadline = time.monotonic() + spec.trial_timeout if spec.trial_timeout else None
    code = _run(cmd, log_path, env, on_poll=report_progress, poll=poll, deadline=deadline)
    run_dir = seen["run_dir"] or find_run_dir(trial_dir)
    if run_dir is not None:
        trial.set_user_attr("run_dir", str(run_dir))
    if code != 0:
        raise TrialFailed(f"famlab train exited with {code}: {_log_tail(log_path)}")
    if run_dir is None or not (run_dir / "final_metrics.json").exists():
        raise TrialFailed(f"no final_metrics.json under {trial_dir}")
    if spec.evaluate:
        eval_cmd = [*famlab, "eval", str(run_dir), *spec.eval_overrides_list(), "--device", "cpu"]
        code = _run(eval_cmd, trial_dir / "eval.log", env, poll=poll, deadline=deadline)
        if code != 0:
            raise TrialFailed(f"famlab eval exited with {code}: {_log_tail(trial_dir / 'eval.log')}")
        eval_csv = run_dir / "eval.csv"
        if eval_csv.exists():
            import pandas as pd

            trial.set_user_attr("eval_table", pd.read_csv(eval_csv).to_dict(orient="records"))
    metrics = _flatten(json.loads((run_dir / "final_metrics.json").read_text()))
    for key, value in metrics.items():
        trial.set_user_attr(f"m.{key}", value)
    value = metrics.get(spec.metric)
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise TrialFailed(f"objective {spec.metric}={value!r} is not a finite number")
    return float(value)


# ----------------------------------------------------------------------------------------------
# workers


def _retry_failed(spec: SweepSpec):
    """Queue a self-failed trial again, at most ``max_retries`` times (stale ones are queued by the
    storage's heartbeat callback instead)."""

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state != TrialState.FAIL or "fail_reason" not in trial.user_attrs:
            return
        tries = int(trial.user_attrs.get("retry", 0))
        if tries < spec.max_retries:
            origin = trial.user_attrs.get("retry_of", trial.number)
            # like RetryHeartbeatStaleTrialCallback: keep the sampler's system attrs (GridSampler's
            # grid_id: enqueue_trial would drop it and GridSampler.after_trial needs it) and fix the params
            study.add_trial(
                optuna.trial.create_trial(
                    state=TrialState.WAITING,
                    params=trial.params,
                    distributions=trial.distributions,
                    user_attrs={"retry": tries + 1, "retry_of": origin},
                    system_attrs={**trial.system_attrs, "fixed_params": trial.params},
                )
            )

    return callback


def _work_left(study: optuna.Study, spec: SweepSpec) -> tuple[bool, bool]:
    """(something to start now, other trials still running)."""
    trials = study.get_trials(deepcopy=False)
    waiting = any(t.state == TrialState.WAITING for t in trials)
    running = any(t.state == TrialState.RUNNING for t in trials)
    if spec.grid is not None:  # GridSampler stamps each trial with its grid point (retries keep it)
        started = {t.system_attrs["grid_id"] for t in trials if "grid_id" in t.system_attrs}
        return waiting or len(started) < len(spec.grid_points()), running
    # a search point counts once it completed, was pruned, is running, or failed for good (its last
    # retry failed too): otherwise a spec whose every run fails would start new points forever
    gave_up = sum(
        1 for t in trials if t.state == TrialState.FAIL and int(t.user_attrs.get("retry", 0)) >= spec.max_retries
    )
    done = gave_up + sum(1 for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    return waiting or done < spec.n_trials, running


def _taken_over(study: optuna.Study, number: int | None) -> bool:
    """Whether trial ``number`` is already finished in the storage (failed by another worker)."""
    if number is None:
        return False
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    return trial is not None and trial.state.is_finished()


def work(
    spec: SweepSpec,
    storage_url: str,
    out_root: Path,
    *,
    heartbeat: int = 10,
    grace: int | None = None,
    threads: int = 1,
) -> None:
    """One worker: run trials until the study has nothing left to start or to wait for."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(storage_url, heartbeat=heartbeat, grace=grace)
    study = open_study(spec, storage)

    current: dict[str, int] = {}  # the number of the trial this worker runs now

    def objective(trial: optuna.Trial) -> float:
        current["number"] = trial.number
        try:
            return run_trial(trial, spec, out_root, threads=threads)
        except TrialFailed as err:
            trial.set_user_attr("fail_reason", str(err))
            raise

    while True:
        fail_stale_trials(study)
        start_now, others_running = _work_left(study, spec)
        if start_now:
            current.clear()
            try:
                study.optimize(objective, n_trials=1, catch=(TrialFailed,), callbacks=[_retry_failed(spec)])
            except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
                if not _taken_over(study, current.get("number")):
                    raise
                # Another worker failed this trial as stale (its heartbeat came late: a busy machine,
                # a database locked by a frozen process) and queued its point again, so optuna can no
                # longer record it ("Cannot tell a FAIL trial"). The training child is killed; go on.
                warnings.warn(
                    f"trial {current['number']} was failed as stale by another worker while this one ran "
                    "it (late heartbeats); its point runs again as a retry",
                    stacklevel=1,
                )
        elif others_running:
            time.sleep(max(1.0, heartbeat / 2))
        else:
            return


def run_sweep(
    spec: SweepSpec,
    storage_url: str | None = None,
    *,
    workers: int = 1,
    out_root: str | Path = "runs",
    heartbeat: int = 10,
    grace: int | None = None,
    threads: int | None = None,
) -> str:
    """Start ``workers`` worker processes on one study and wait for them. Returns the storage URL."""
    storage_url = storage_url or os.environ.get(STORAGE_ENV) or default_storage(spec, out_root)
    out_root = Path(out_root).resolve()
    threads = threads or 1  # tiny CPU runs slow down badly when threads oversubscribe the cores
    print(f"sweep {spec.study_name}: storage {redact(storage_url)}, {workers} worker(s)", flush=True)
    open_study(spec, make_storage(storage_url, heartbeat=heartbeat, grace=grace))  # create it once, here
    if workers == 1:
        work(spec, storage_url, out_root, heartbeat=heartbeat, grace=grace, threads=threads)
        return storage_url
    cmd = worker_command(spec, out_root, heartbeat=heartbeat, grace=grace, threads=threads)
    env = {**os.environ, STORAGE_ENV: storage_url}  # in the environment: never in a process list
    procs = [subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent) for _ in range(workers)]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise RuntimeError(f"sweep workers exited with {codes}")
    return storage_url


def worker_command(spec: SweepSpec, out_root: Path, *, heartbeat: int, grace: int | None, threads: int) -> list[str]:
    """The command of one worker; the storage URL comes from $FAMLAB_STORAGE."""
    cmd = [sys.executable, "-m", "famlab.sweep", "worker", spec.path, "--profile", spec.profile]
    cmd += ["--out-root", str(out_root), "--heartbeat", str(heartbeat), "--threads", str(threads)]
    return cmd + (["--grace", str(grace)] if grace else [])


# ----------------------------------------------------------------------------------------------
# results


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


ACTIONS = ("run", "status", "worker")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in ACTIONS and not argv[0].startswith("-"):
        argv = ["run", *argv]  # `famlab sweep SPEC` means run
    parser = argparse.ArgumentParser(
        prog="famlab sweep",
        description="Run or inspect an Optuna sweep. `run` starts workers on the spec's study (creating it "
        "if needed, resuming it otherwise) and prints the ablation table; `status` lists the trials; "
        "`worker` is one worker (what `run --workers N` and SLURM jobs start).",
    )
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument("spec", help="a spec name from sweeps/ or a path to a YAML spec")
    parser.add_argument("--profile", default="tiny", help="the spec profile: tiny (CPU) or paper (cluster)")
    parser.add_argument("--storage", default=None, help=f"Optuna storage URL (default: ${STORAGE_ENV} or SQLite)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    parser.add_argument("--out-root", default="runs", help="trial run directories and the default SQLite store")
    parser.add_argument("--heartbeat", type=int, default=10, help="heartbeat interval in seconds")
    parser.add_argument("--grace", type=int, default=None, help="seconds without heartbeat before a trial is stale")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per trial (default 1)")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec, args.profile, validate_runs=args.action != "status")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    storage = args.storage or os.environ.get(STORAGE_ENV) or default_storage(spec, args.out_root)
    if args.action in ("run", "worker"):
        try:  # a spec that no longer matches its stored study: one line, before any trial starts
            open_study(spec, make_storage(storage, heartbeat=args.heartbeat, grace=args.grace))
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    if args.action == "worker":
        threads = args.threads or 1
        work(spec, storage, Path(args.out_root).resolve(), heartbeat=args.heartbeat, grace=args.grace, threads=threads)
        return 0
    if args.action == "run":
        run_sweep(
            spec,
            storage,
            workers=args.workers,
            out_root=args.out_root,
            heartbeat=args.heartbeat,
            grace=args.grace,
            threads=args.threads,
        )
    print(status_table(spec, storage))
    table = ablation_table(spec, storage)
    if args.action == "run" and len(table):
        print(f"\n{spec.study} ({spec.profile}): {spec.direction} {spec.metric}; mean ± std over seeds")
        print(table.to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
