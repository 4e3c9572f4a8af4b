"""Optuna sweeps over famlab training runs.

A sweep spec (``sweeps/*.yaml``, format in ``sweeps/README.md``) is data (:mod:`famlab.sweep.spec`);
the study lives in an RDB store with heartbeats (:mod:`~famlab.sweep.storage`) or a journal file with
leases (:mod:`~famlab.sweep.journal`); workers run each trial as a ``famlab train`` child process
(:mod:`~famlab.sweep.worker`, never importing the trainer), a retry from its point's last checkpoint
(:mod:`~famlab.sweep.resume`); :mod:`~famlab.sweep.runner` starts N workers on one machine,
:mod:`~famlab.sweep.slurm` submits them as a SLURM job array (submitit); ``famlab sweep`` (its parser)
lives in famlab/cli/sweep.py.
"""

from famlab.sweep.points import missing_lines, requeue
from famlab.sweep.runner import run_sweep, worker_command
from famlab.sweep.spec import (
    STORAGE_ENV,
    Param,
    SweepSpec,
    default_storage,
    load_spec,
    redact,
    spec_path,
    validate_trials,
)
from famlab.sweep.storage import SweepStorage, make_pruner, make_sampler, make_storage, open_study
from famlab.sweep.worker import TrialFailed, WorkerError, run_trial, work

__all__ = [
    "STORAGE_ENV",
    "Param",
    "SweepSpec",
    "SweepStorage",
    "TrialFailed",
    "WorkerError",
    "default_storage",
    "load_spec",
    "make_pruner",
    "make_sampler",
    "make_storage",
    "missing_lines",
    "open_study",
    "redact",
    "requeue",
    "run_sweep",
    "run_trial",
    "spec_path",
    "validate_trials",
    "work",
    "worker_command",
]
