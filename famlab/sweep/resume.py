"""Where a trial starts: from its point's earlier attempt, when one got somewhere.

A point's attempt can die mid-run (a killed or preempted worker, a time limit, a crash); its retry is
another trial, with a run directory of its own. Before it trains, the retry looks at the earlier attempts
of its point (the study's failed trials with the same parameters, newest first), at the run directory each
recorded (``run_dir``, else the newest run under its ``trial-NNNN`` folder of this ``out_root``):

* a run that finished training (``final_metrics.json``, not stopped early: ``RunDir.is_complete``) is
  kept: the retry takes its result instead of training again (its attempt died after the run ended);
* else the newest periodic checkpoint (``checkpoints/step########.ckpt``, every ``train.checkpoint_every``
  steps: a spec sets it in its ``overrides``, per profile) is where the retry resumes (``famlab train
  resume=CKPT``), in a new run directory whose steps continue from it; a resumed run's losses equal an
  uninterrupted run's, so the point's result does not depend on how often its workers died.

Only runs of the same run config count (model, data, train, lora and seed, as ``config.yaml`` has them):
a point whose spec changed since (``--retry-failed`` after a fix) starts from step 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from famlab.config import load_run_config
from famlab.runs import RunDir
from famlab.sweep.spec import SweepSpec

SAME_RUN_KEYS = ("model", "data", "train", "lora", "seed")  # what makes two runs the same run


@dataclass
class Start:
    """What a trial starts from: an earlier attempt's run (``of``: its trial number) that is complete
    (``checkpoint`` None), or its checkpoint at ``step``."""

    of: int
    run: RunDir
    checkpoint: Path | None = None
    step: int = 0

    @property
    def complete(self) -> bool:
        return self.checkpoint is None

    def describe(self) -> str:
        if self.complete:
            return f"keeps the finished run of trial {self.of}"
        return f"resumes trial {self.of}'s run at step {self.step}"


def trial_folder(out_root: Path, spec: SweepSpec, number: int) -> Path:
    """The folder of a trial's run directory: ``<out_root>/<study>-<profile>/trial-NNNN``."""
    return out_root / spec.study_name / f"trial-{number:04d}"


def earlier_runs(
    trial: optuna.Trial, params: dict[str, Any], spec: SweepSpec, out_root: Path
) -> list[tuple[int, RunDir]]:
    """The run directories of the earlier attempts of this trial's point, newest first."""
    runs = []
    for other in trial.study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if other.number >= trial.number or other.params != params:
            continue
        recorded = other.user_attrs.get("run_dir")
        run = RunDir(recorded) if recorded and RunDir(recorded).is_run() else None
        run = run or RunDir.newest_under(trial_folder(out_root, spec, other.number))
        if run is not None:
            runs.append((other.number, run))
    return sorted(runs, key=lambda item: -item[0])


def same_run(run: RunDir, want: dict[str, Any]) -> bool:
    try:
        have = run.read_config()
    except (OSError, ValueError):
        return False
    return all(have.get(k) == want.get(k) for k in SAME_RUN_KEYS)


def start_of(trial: optuna.Trial, params: dict[str, Any], spec: SweepSpec, out_root: Path) -> Start | None:
    """Where this trial starts (see the module docstring); None: from step 0."""
    runs = earlier_runs(trial, params, spec, out_root)
    if not runs:
        return None
    want = load_run_config(spec.preset, spec.trial_overrides(params)).to_dict()
    runs = [(number, run) for number, run in runs if same_run(run, want)]
    for number, run in runs:
        if run.is_complete():
            return Start(number, run)
    for number, run in runs:
        periodic = run.newest_periodic_checkpoint()
        if periodic is not None:
            return Start(number, run, checkpoint=periodic[1], step=periodic[0])
    return None
