"""Every trial of a spec checked in this process, before the first trial starts: the run config ``famlab train``
would build for it, and the objective and ``metrics:`` names against what such a run writes.

A trial's run config is the preset, the spec's (profile's) overrides, the variant's and the trial's own
parameters (:meth:`~famlab.sweep.spec.SweepSpec.trial_overrides`), loaded by the loader ``famlab train`` uses
(:func:`famlab.config.load_run_config`) and checked by what it checks before building anything
(:func:`famlab.config.check_trainable`: the task's fit, the sizes). A grid checks every point; a search checks
each categorical choice, with the numbers at both ends of their ranges. Each error is one line naming the spec,
the trial's parameters and the error (``famlab sweep`` prints it and exits 2). Nothing here imports torch.
"""

from __future__ import annotations

import difflib
import itertools
from pathlib import Path
from typing import Any

from famlab.config import check_trainable, load_run_config
from famlab.config.metrics import logged_metrics

MAX_SEARCH_CANDIDATES = 256  # a search space with more categorical combinations checks each choice once


def search_candidates(space: dict[str, Any]) -> list[dict[str, Any]]:
    """The points of a search space to check: every combination of the categorical choices (each choice once
    if they are more than :data:`MAX_SEARCH_CANDIDATES`), with every number at its low end, then its high."""
    choices = {k: p.choices for k, p in space.items() if p.type == "categorical"}
    combos = [dict(zip(choices, c)) for c in itertools.product(*choices.values())]
    if len(combos) > MAX_SEARCH_CANDIDATES:
        longest = max((len(v) for v in choices.values()), default=1)
        combos = [{k: v[min(i, len(v) - 1)] for k, v in choices.items()} for i in range(longest)]
    out = []
    for corner in ("low", "high"):
        numbers = {}
        for key, p in space.items():
            if p.type != "categorical":
                value = getattr(p, corner)
                numbers[key] = int(value) if p.type == "int" else value
        out += [{**numbers, **combo} for combo in combos or [{}]]
    return out


def candidates(spec: Any) -> list[dict[str, Any]]:
    """The trials' parameters to check: every grid point (x seed), or the search space's candidates."""
    if spec.grid is not None:
        return spec.grid_points()
    return [{**params, "seed": spec.seeds[0]} for params in search_candidates(spec.space)]


def metric_error(owner: str, key: str, name: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(str(name), allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{owner}.{key}={name!r} is not a metric the trials write{hint}: expected one of {', '.join(allowed)}"


def check_metrics(spec: Any, cfg: Any, memo: dict[tuple, str | None]) -> str | None:
    """The objective (a number) and the ``metrics:`` names (any value) among what a trial of ``cfg`` writes."""
    numbers = logged_metrics(cfg, evaluate=spec.evaluate, suite=spec.eval_suite)
    # the names depend on the task, validation, tokenizer, attention kind and auxiliary losses
    key = (tuple(numbers), cfg.data.task, cfg.data.val_batches > 0, cfg.data.tokenizer == "bytes")
    if key not in memo:
        owner = Path(spec.path).stem if spec.path else spec.study
        if spec.metric not in numbers:
            memo[key] = metric_error(owner, "objective.metric", spec.metric, numbers)
        else:
            every = logged_metrics(cfg, evaluate=spec.evaluate, numeric=False, suite=spec.eval_suite)
            bad = [m for m in spec.metrics if m not in every]
            memo[key] = metric_error(owner, "metrics", bad[0], every) if bad else None
    return memo[key]


def validate_trials(spec: Any, memory: int | None = None) -> None:
    """Load and check the run config of every trial (:func:`candidates`), its evaluation settings when the spec
    evaluates (plainly or with a suite), and the metric names; raise ``ValueError`` with one line at the first bad one. ``memory``: the
    bytes a trial may use (default: this machine's, see :func:`famlab.config.trainable.check_sizes`)."""
    owner = Path(spec.path).stem if spec.path else spec.study
    memo: dict[tuple, str | None] = {}
    checked: set[tuple] = set()  # the seed changes no check but its own range
    for params in candidates(spec):
        overrides = spec.trial_overrides(params)
        try:
            cfg = load_run_config(spec.preset, overrides)
            key = tuple(o for o in overrides if not o.startswith("seed="))
            if key not in checked:
                checked.add(key)
                check_trainable(cfg, memory)
                if spec.evaluates:
                    load_run_config(spec.preset, overrides + spec.eval_overrides_list())
        except ValueError as err:
            shown = ", ".join(f"{k}={v}" for k, v in params.items())
            raise ValueError(f"{owner}: trial ({shown}) has a bad run config: {err}") from None
        if bad := check_metrics(spec, cfg, memo):
            raise ValueError(bad)
