"""The lines a sweep worker prints while it works: one when a trial starts, one when it ends.

::

    [w2] trial 3/12 start  model.fam_len=16 seed=1
    [w2] trial 3/12 done   model.fam_len=16 seed=1 -> val/loss 2.41 (25 s; 5 of 12 done, about 2 min left)
    [w1] trial 4/12 FAIL   model.fam_len=32 seed=0: famlab train exited with 1: ... (3 s; queued again)
    [w1] trial 4/12 start  model.fam_len=32 seed=0 (retry 1 of 2)
    [w2] trial 5/12 start  model.fam_len=32 seed=1 (re-run: the worker of its last try died; resumes trial 7's run at step 500)

``k/N`` is the point (a grid point x seed, or a search trial with its retries) out of the sweep's N
(grid size x seeds, or ``n_trials``); ``[wI]`` is the worker's index when ``famlab sweep run --workers N``
starts several. Plain text, flushed at once, on stdout (a terminal or a log file alike). A done line
ends with how many points are done and an estimate of the time left (the points not done x the mean
duration of the completed trials / the workers: this one and the trials running elsewhere), instead of a live bar: several
worker processes write to one terminal, which a redrawn bar would garble.
"""

from __future__ import annotations

import sys
from statistics import mean
from typing import Any, TextIO

import optuna
from optuna.trial import TrialState

from famlab.sweep.points import n_points
from famlab.sweep.spec import SweepSpec


def duration_text(seconds: float) -> str:
    """45 s, 12 min, 3.5 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def one_line(text: str) -> str:
    return " ".join(str(text).split())


class TrialLines:
    """Prints a worker's trial lines (``label``: its index when there are several, else "")."""

    def __init__(self, spec: SweepSpec, label: str = "", stream: TextIO | None = None):
        self.spec, self.stream = spec, stream
        self.prefix = f"[{label}] " if label else ""
        self.total = n_points(spec)
        self.positions: dict[int, int] = {}

    def say(self, text: str) -> None:
        print(self.prefix + text, file=self.stream or sys.stdout, flush=True)

    def position(self, trial: optuna.Trial, params: dict[str, Any]) -> int:
        """The trial's point, counted from 1: its place in the grid, or among the search's points."""
        if trial.number not in self.positions:
            if self.spec.grid is not None:
                grid = self.spec.grid_points()
                pos = next((i + 1 for i, p in enumerate(grid) if p == params), 0)
            else:
                key = int(trial.user_attrs.get("retry_of", trial.number))
                keys = {int(t.user_attrs.get("retry_of", t.number)) for t in trial.study.get_trials(deepcopy=False)}
                pos = sorted(k for k in keys if k <= key).index(key) + 1 if key in keys else trial.number + 1
            self.positions[trial.number] = pos
        return self.positions[trial.number]

    def head(self, trial: optuna.Trial, params: dict[str, Any], word: str) -> str:
        return f"trial {self.position(trial, params)}/{self.total} {word:<6} {params_text(params)}"

    def start(self, trial: optuna.Trial, params: dict[str, Any], note: str = "") -> None:
        marks = []
        retry = int(trial.user_attrs.get("retry", 0))
        if retry:
            marks.append(f"retry {retry} of {self.spec.max_retries}")
        if trial.user_attrs.get("stale_retries"):
            marks.append("re-run: the worker of its last try died")
        if note:  # where it starts: famlab.sweep.resume
            marks.append(note)
        self.say(self.head(trial, params, "start") + (f" ({'; '.join(marks)})" if marks else ""))

    def done(self, trial: optuna.Trial, value: float, seconds: float) -> None:
        left = self.time_left(trial, seconds)
        self.say(f"{self.head(trial, trial.params, 'done')} -> {self.spec.metric} {value:.4g} ({seconds:.0f} s{left})")

    def time_left(self, trial: optuna.Trial, seconds: float) -> str:
        """``; k of N done, about T left``: this trial counted as done (it is not yet COMPLETE in the store)."""
        try:
            others = trial.study.get_trials(deepcopy=False)
        except Exception:  # a busy store: the line without the estimate
            return ""
        complete = [t for t in others if t.state == TrialState.COMPLETE and t.number != trial.number]
        done = len({str(t.params) for t in complete} | {str(trial.params)})
        durations = [t.duration.total_seconds() for t in complete if t.duration is not None] + [seconds]
        # this worker (about to take the next point) and every other running one
        running = 1 + sum(1 for t in others if t.state == TrialState.RUNNING and t.number != trial.number)
        remaining = max(0, self.total - done)
        if remaining == 0:
            return f"; {done} of {self.total} done"
        return f"; {done} of {self.total} done, about {duration_text(remaining * mean(durations) / running)} left"

    def failed(self, trial: optuna.Trial, reason: str, seconds: float, *, retried: bool) -> None:
        then = "queued again" if retried else "no retries left"
        self.say(f"{self.head(trial, trial.params, 'FAIL')}: {one_line(reason)} ({seconds:.0f} s; {then})")

    def pruned(self, trial: optuna.Trial, reason: str, seconds: float) -> None:
        word = "skip" if "duplicate_of" in trial.user_attrs else "pruned"
        self.say(f"{self.head(trial, trial.params, word)}: {one_line(reason)} ({seconds:.0f} s)")
