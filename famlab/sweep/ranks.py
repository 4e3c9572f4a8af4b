"""How a sweep worker launches a trial's ``famlab train``: one process, or, inside a SLURM job, the trial's
ranks as the tasks of one job step (``srun``), so Lightning takes them from SLURM's environment.

* **One process** (outside SLURM, or ``train.devices`` 1, or -1 "all", which the worker cannot count): the
  trial sees none of SLURM's variables (Lightning would take the worker's task for its own: its ranks, its
  requeue on signals); with ``devices > 1`` Lightning launches the other ranks itself.
* **A job step** (inside a SLURM job, ``train.devices=D > 1`` on one node): ``srun --overlap --nodes=1
  --ntasks=D --ntasks-per-node=D --cpus-per-task=C --kill-on-bad-exit=1 famlab train ...``. Lightning's
  ``SLURMEnvironment`` then gives each task its rank (``SLURM_PROCID``, ``SLURM_LOCALID``) and the world size
  (``SLURM_NTASKS``), launching nothing; the run records it (``provenance.json``: ``distributed``).

  - ``--overlap``: the step shares the CPUs of the worker's own step (the worker only polls while its trial
    runs), so the job needs D CPUs, not D + 1 (``famlab sweep submit`` checks ``cpus_per_worker >= D``);
    ``C`` is the job's CPUs per task divided among the D ranks (at least 1).
  - The run directory is made here and passed to every rank as ``FAMLAB_RUN_DIR`` (ranks started by srun are
    peers: each would otherwise make its own); rank 0 writes its config and provenance.
  - ``MASTER_ADDR=127.0.0.1``: the ranks share this node, and Lightning's default (the first *name* in
    ``SLURM_NODELIST``) need not resolve; ``MASTER_PORT``: a free port (Lightning's default comes from the job
    id, the same for two trials of one job, one after the other, while the first's port may linger).
  - Signals: SLURM signals every step of a cancelled, preempted or time-limited job, this one too; and srun
    forwards SIGTERM, SIGUSR1 and SIGUSR2 sent to it (``famlab sweep submit``'s worker does) to the ranks.
  - A killed srun (a pruned trial, a trial past its timeout, a dying worker's ``PR_SET_PDEATHSIG``) takes
    its ranks with it: SLURM ends a step whose srun is gone (seen on the test cluster within seconds).
  - GPUs: the step asks for none; the job's (``gpus_per_worker``) are shared by the overlapping steps, and
    Lightning puts rank r on the node's GPU r (untested here: the test cluster has CPUs only).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from famlab.config import load_run_config
from famlab.runs import RunDir
from famlab.sweep.spec import STORAGE_ENV, SweepSpec

RUN_DIR_ENV = "FAMLAB_RUN_DIR"  # famlab.train.run's: the run directory a rank writes to, made by its launcher
SRUN = "srun"


def in_slurm_job() -> bool:
    return bool(os.environ.get("SLURM_JOB_ID"))


def trial_devices(preset: str, overrides: list[str]) -> int:
    """``train.devices`` of a trial's run config (-1: all of the node's)."""
    return load_run_config(preset, overrides).train.devices


def most_devices(spec: SweepSpec) -> int:
    """The largest ``train.devices`` among a spec's trials (those :func:`famlab.sweep.validate.candidates` checks)."""
    from famlab.sweep.validate import candidates

    return max(trial_devices(spec.preset, spec.trial_overrides(p)) for p in candidates(spec))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plain_env(threads: int) -> dict[str, str]:
    """The environment of a one-process trial: no study credentials, no SLURM or submitit variables."""
    env = {k: v for k, v in os.environ.items() if k != STORAGE_ENV and not k.startswith(("SLURM_", "SUBMITIT_"))}
    return env | {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)}


def launch(
    train_cmd: list[str], devices: int, threads: int, trial_dir: Path, run_name: str
) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run ``train_cmd`` (``python -m famlab.cli train ...``) as a trial of
    ``devices`` devices: as it is, or as the D tasks of a job step in this SLURM job (see the module's doc)."""
    if devices <= 1 or not in_slurm_job():
        return train_cmd, plain_env(threads)
    cpus = int(os.environ.get("SLURM_CPUS_PER_TASK") or threads)
    per_rank = max(1, cpus // devices)
    run = RunDir.create(trial_dir, run_name)  # where `famlab train` would make it: <out_dir>/<name>/<stamp>
    env = {k: v for k, v in os.environ.items() if k != STORAGE_ENV and not k.startswith("SUBMITIT_")}
    env |= {
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": str(max(1, threads // devices)),
        RUN_DIR_ENV: str(run.path),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    srun = [
        SRUN,
        "--overlap",
        "--nodes=1",
        f"--ntasks={devices}",
        f"--ntasks-per-node={devices}",
        f"--cpus-per-task={per_rank}",
        "--kill-on-bad-exit=1",
        "--unbuffered",
    ]
    return [*srun, *train_cmd], env
