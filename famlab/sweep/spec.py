"""Sweep specs: the YAML format (``sweeps/README.md``), its validation, and resolving it for one profile.

Pure data: no optuna, no torch, no subprocess, so the analysis can read specs without the sweep
machinery. A spec is a study name, a base preset plus overrides, either a ``grid`` (every combination,
run once per replicate seed) or a ``search`` space with a sampler and a pruner, the objective metric
and direction, per-profile settings (``tiny`` for CPU minutes, ``paper`` for cluster scale), and
optionally ``claims`` (read by the analysis, kept here as given).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from famlab.config import config_error, reject_unknown_keys
from famlab.config.metrics import SUITES
from famlab.resources import spec_file
from famlab.sweep.shape import check_shape, read_spec_yaml
from famlab.sweep.validate import validate_trials

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
    "eval_suite",  # `famlab eval RUN --suite <value>` after training (famlab.eval.suite): its metrics eval/<member>/...
    "eval_suite_threshold",  # its --threshold: the score an effective length keeps (null: the eval's default, 0.85)
    "claims",
    "notebook",  # the analysis notebook's heading (title, about, evaluate), read by famlab.report
    "slurm",  # `famlab sweep submit`'s settings (famlab.sweep.slurm)
)
PROFILE_KEYS = tuple(k for k in SPEC_KEYS if k not in ("study", "description", "paper", "profiles", "notebook"))
SEARCH_KEYS = ("sampler", "pruner", "n_trials", "space", "prune_above")
PARAM_KEYS = ("type", "low", "high", "log", "step", "choices")
SLURM_KEYS = ("partition", "account", "time", "mem", "sbatch", "setup", "signal_delay_s")
SLURM_KEYS += ("gpus_per_worker", "cpus_per_worker")  # famlab.sweep.slurm reads and checks them
STUDY_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")  # a file name: never a path, never empty


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
    eval_suite: str | None = None  # run `famlab eval --suite` on each trained run (its table goes on the trial)
    eval_suite_threshold: float | None = None  # its --threshold (None: famlab eval's default)
    description: str = ""
    paper: str = ""
    table: dict[str, Any] = field(default_factory=dict)
    claims: list[dict[str, Any]] = field(default_factory=list)  # the analysis declares and reads them
    slurm: dict[str, Any] = field(default_factory=dict)  # checked by famlab.sweep.slurm when submitting
    path: str = ""

    @property
    def study_name(self) -> str:
        return f"{self.study}-{self.profile}"

    @property
    def varied(self) -> list[str]:
        """Parameters the sweep varies (seed excluded)."""
        return list(self.grid or self.space or {})

    @property
    def evaluates(self) -> bool:
        """Whether a trial runs ``famlab eval`` after training: plain (``evaluate``), the suite, or both."""
        return self.evaluate or self.eval_suite is not None

    def suite_args(self) -> list[str]:
        """The arguments of the suite's ``famlab eval RUN ...`` (``--suite S``, and ``--threshold X`` if set)."""
        threshold = [] if self.eval_suite_threshold is None else ["--threshold", repr(self.eval_suite_threshold)]
        return ["--suite", str(self.eval_suite), *threshold]

    def eval_overrides_list(self) -> list[str]:
        return [f"{k}={dot_value(v)}" for k, v in self.eval_overrides.items()]

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
        items = [f"{k}={dot_value(v)}" for k, v in merged.items()]
        if "seed" in params:
            items.append(f"seed={params['seed']}")
        return items


def dot_value(value: Any) -> str:
    """A value as OmegaConf's dotlist parser reads it back (lists as YAML flow, None as null)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ",".join(dot_value(v) for v in value) + "]"
    return str(value)


def spec_path(name_or_path: str) -> Path:
    """A spec by path, or by name (``fam_length``): ``./sweeps/`` first, then the specs shipped with
    famlab (see :func:`famlab.resources.spec_file`)."""
    return spec_file(name_or_path)


def _grid(owner: str, grid: dict, variants: dict) -> dict[str, list]:
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
    return grid


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _param(owner: str, key: str, p: Any) -> Param:
    """One search-space parameter, checked so that Optuna's ``suggest_*`` can never refuse it mid-sweep."""
    if not isinstance(p, dict):
        raise config_error(owner, key, p, "a mapping with type: float, int or categorical")
    reject_unknown_keys(f"{owner}.{key}", p, PARAM_KEYS)
    kind = p.get("type")
    if kind not in ("float", "int", "categorical"):
        raise config_error(owner, f"{key}.type", kind, "one of float, int, categorical")
    if kind == "categorical":
        choices = p.get("choices")
        if not (isinstance(choices, list) and choices):
            raise config_error(owner, f"{key}.choices", choices, "a non-empty list")
        bad = [c for c in choices if not (c is None or isinstance(c, bool | int | float | str))]
        if bad:
            raise config_error(owner, f"{key}.choices", choices, "numbers, strings, booleans or null")
        extra = [k for k in ("low", "high", "log", "step") if k in p]
        if extra:
            raise config_error(owner, f"{key}.{extra[0]}", p[extra[0]], "no low/high/log/step for a categorical")
        return Param(type=kind, choices=choices)
    low, high, log, step = p.get("low"), p.get("high"), p.get("log", False), p.get("step")
    number = (lambda v: isinstance(v, int) and not isinstance(v, bool)) if kind == "int" else _number
    what = "integers" if kind == "int" else "numbers"
    if not (number(low) and number(high) and low < high):
        raise config_error(owner, key, p, f"{what} low < high")
    if "choices" in p:
        raise config_error(owner, f"{key}.choices", p["choices"], f"no choices for type {kind} (or type categorical)")
    if not isinstance(log, bool):
        raise config_error(owner, f"{key}.log", log, "true or false")
    if step is not None and not (number(step) and step > 0):
        raise config_error(owner, f"{key}.step", step, f"{what[:-1]} > 0, or no step")
    if log and step is not None and not (kind == "int" and step == 1):
        raise config_error(
            owner, f"{key}.step", step, "no step with log: true (Optuna samples a log scale continuously)"
        )
    if log and low <= 0:
        raise config_error(owner, f"{key}.low", low, "a number > 0 with log: true")
    return Param(type=kind, low=low, high=high, log=log, step=step)


def _search(owner: str, search: dict) -> dict[str, Any]:
    """The search settings as SweepSpec fields: space, sampler, pruner, n_trials, prune_above."""
    reject_unknown_keys(f"{owner}.search", search, SEARCH_KEYS)
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
    space = {key: _param(owner, f"search.space.{key}", p) for key, p in (search.get("space") or {}).items()}
    if not space:
        raise config_error(owner, "search.space", search.get("space"), "at least one parameter")
    return {"space": space, "sampler": sampler, "pruner": pruner, "n_trials": n_trials, "prune_above": prune_above}


def _trial_settings(owner: str, pick: Callable[[str, Any], Any]) -> dict[str, Any]:
    """Seeds, objective, retries and the time limit as SweepSpec fields."""
    seeds = pick("seeds", [0])
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds)):
        raise config_error(owner, "seeds", seeds, "a non-empty list of integers")
    objective = pick("objective", None) or {}
    reject_unknown_keys(f"{owner}.objective", objective, ("metric", "direction"))
    metric, direction = objective.get("metric", "val/loss"), objective.get("direction", "minimize")
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
    claims = pick("claims", None) or []
    if not (isinstance(claims, list) and all(isinstance(c, dict) for c in claims)):
        raise config_error(owner, "claims", claims, "a list of mappings")
    return {
        "seeds": seeds,
        "metric": metric,
        "direction": direction,
        "max_retries": max_retries,
        "trial_timeout": trial_timeout,
        "claims": claims,
    }


def _eval_suite(owner: str, value: Any) -> str | None:
    """``eval_suite``: a suite of ``famlab eval --suite`` (:data:`famlab.config.metrics.SUITES`), or null for none."""
    if value is not None and not (isinstance(value, str) and value in SUITES):
        raise config_error(owner, "eval_suite", value, "one of " + ", ".join(SUITES) + ", or null for none")
    return value


def _suite_threshold(owner: str, value: Any) -> float | None:
    """``eval_suite_threshold``: a score in [0, 1] (an effective length keeps it), or null for the eval's default."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise config_error(owner, "eval_suite_threshold", value, "a number in [0, 1], or null for the default 0.85")
    return float(value)


def load_spec(name_or_path: str, profile: str = "tiny", *, validate_runs: bool = True) -> SweepSpec:
    """Load and check a spec for one profile. Everything is checked before any trial runs: spec keys,
    the profile, value types, an empty grid, and (``validate_runs``) every trial's run config."""
    path = spec_path(name_or_path)
    raw = read_spec_yaml(path)
    owner = path.stem
    check_shape(owner, raw)
    reject_unknown_keys(owner, raw, SPEC_KEYS)
    profiles = raw.get("profiles") or {}
    if profile not in profiles:
        raise config_error(owner, "profile", profile, "one of " + ", ".join(profiles or ["(none defined)"]))
    prof = profiles[profile] or {}
    reject_unknown_keys(f"{owner}.profiles.{profile}", prof, PROFILE_KEYS)

    def pick(key: str, default: Any = None) -> Any:
        return prof[key] if key in prof else raw.get(key, default)

    def merged(key: str) -> dict:  # mappings merge: the profile's entries over the top level's
        return {**(raw.get(key) or {}), **(prof.get(key) or {})}

    variants = merged("variants")
    grid = raw.get("grid")
    if grid is not None or prof.get("grid") is not None:
        grid = {**(grid or {}), **(prof.get("grid") or {})}
    search = pick("search")
    if (grid is None) == (search is None):
        raise ValueError(f"{owner}: give exactly one of `grid` or `search`")
    if grid is not None:
        trials = {"grid": _grid(owner, grid, variants), "space": None, "sampler": "grid", "pruner": "none"}
        trials |= {"n_trials": 0, "prune_above": None}
    else:
        trials = {"grid": None, **_search(owner, search)}
    study = raw.get("study", owner)
    if not (isinstance(study, str) and STUDY_NAME.fullmatch(study)):
        raise config_error(owner, "study", study, "a simple name: letters, digits, _, - and . (not leading)")
    spec = SweepSpec(
        study=study,
        profile=profile,
        preset=pick("preset", "tiny"),
        overrides=merged("overrides"),
        **trials,
        **_trial_settings(owner, pick),
        metrics=list(pick("metrics", []) or []),
        variants=variants,
        evaluate=bool(pick("evaluate", False)),
        eval_overrides=merged("eval_overrides"),
        eval_suite=_eval_suite(owner, pick("eval_suite", None)),
        eval_suite_threshold=_suite_threshold(owner, pick("eval_suite_threshold", None)),
        description=raw.get("description", ""),
        paper=raw.get("paper", ""),
        table=pick("table", {}) or {},
        slurm=merged("slurm"),
        path=str(path),
    )
    reject_unknown_keys(f"{owner}.slurm", spec.slurm, SLURM_KEYS)
    if validate_runs:
        validate_trials(spec)
    return spec


def default_storage(spec: SweepSpec, root: str | Path = "runs") -> str:
    """The SQLite store of a study when no URL is given: ``<root>/sweeps/<study>/<profile>.db``."""
    return f"sqlite:///{Path(root).resolve() / 'sweeps' / spec.study / f'{spec.profile}.db'}"


def redact(url: str) -> str:
    """A storage URL safe to print: the password is masked (a ``journal:PATH`` has none)."""
    if url.startswith("journal:"):
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy knows: show the scheme only
        return url.split("://", 1)[0] + "://***"
