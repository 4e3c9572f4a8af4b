"""The lines a sweep worker prints while it works: one when a trial starts, one when it ends.

::

    [w2] trial 3/12 start  model.fam_len=16 seed=1
    [w2] trial 3/12 done   model.fam_len=16 seed=1 -> val/loss 2.41 (25 s)
    [w1] trial 4/12 FAIL   model.fam_len=32 seed=0: famlab train exited with 1: ... (3 s; queued again)
    [w1] trial 4/12 start  model.fam_len=32 seed=0 (retry 1 of 2)
    [w2] trial 5/12 start  model.fam_len=32 seed=1 (re-run: the worker of its last try died; resumes trial 7's run at step 500)

``k/N`` is the point (a grid point x seed, or a search trial with its retries) out of the sweep's N
(grid size x seeds, or ``n_trials``); ``[wI]`` is the worker's index when ``famlab sweep run --workers N``
starts several. Plain text, flushed at once, on stdout (a terminal or a log file alike).
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

import optuna

from famlab.sweep.points import n_points
from famlab.sweep.spec import SweepSpec


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
        self.say(f"{self.head(trial, trial.params, 'done')} -> {self.spec.metric} {value:.4g} ({seconds:.0f} s)")

    def failed(self, trial: optuna.Trial, reason: str, seconds: float, *, retried: bool) -> None:
        then = "queued again" if retried else "no retries left"
        self.say(f"{self.head(trial, trial.params, 'FAIL')}: {one_line(reason)} ({seconds:.0f} s; {then})")

    def pruned(self, trial: optuna.Trial, reason: str, seconds: float) -> None:
        word = "skip" if "duplicate_of" in trial.user_attrs else "pruned"
        self.say(f"{self.head(trial, trial.params, word)}: {one_line(reason)} ({seconds:.0f} s)")
