"""``famlab sweep submit``: N sweep workers as one SLURM job array, submitted through submitit.

Each array task is one worker (:func:`famlab.sweep.worker.work`) on the study in a shared storage: a
PostgreSQL URL, or a ``journal:PATH`` file on a file system every node mounts (SQLite is refused: its
locks do not hold across nodes). Before submitting, the study is created and every lost point queued
again (what ``famlab sweep run`` does before it starts workers, once, from one process).

* **Settings**: the spec profile's ``slurm:`` section (``partition``, ``account``, ``time``,
  ``gpus_per_worker``, ``cpus_per_worker``, ``mem``, ``sbatch``: extra sbatch options, ``setup``: shell
  lines run before the worker, e.g. ``module load cuda``), each overridden by its command-line option.
* **Credentials** never go into a file: a storage URL with a password reaches the jobs through
  ``$FAMLAB_STORAGE`` in the submitting environment (sbatch exports it); other URLs travel in the job.
* **Trials** record their task (``slurm_job``: ``ARRAYID_TASK``), shown by ``famlab sweep status``. A trial
  of ``train.devices=D > 1`` runs as the D tasks of a job step in its worker's job, its ranks Lightning's
  ``SLURMEnvironment``'s (:mod:`famlab.sweep.ranks`): ``cpus_per_worker`` must be at least D.
* **Signals**: SLURM sends SIGTERM when a task is cancelled or preempted, and (submitit's
  ``--signal``) SIGUSR2 ``signal_delay_s`` before its time limit. Either way the trial first saves a
  checkpoint of its current step and exits (:mod:`famlab.train.signals`; the task waits for it, at SIGTERM
  at most ``term_wait`` seconds, within SLURM's ``KillWait``), then the task gives it back (failed as stale
  with the reason, its point queued again without using up ``max_retries``), so any worker resumes it
  from that checkpoint (:mod:`famlab.sweep.resume`); at SIGUSR2 submitit requeues the task itself, which
  then goes on working. A task killed
  without a signal (a node failure) leaves its trial to go stale after ``--grace`` seconds.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import fail_stale_trials
from optuna.trial import TrialState

from famlab.config import config_error, reject_unknown_keys
from famlab.sweep.journal import JOURNAL_PREFIX, journal_file
from famlab.sweep.points import requeue
from famlab.sweep.ranks import most_devices
from famlab.sweep.spec import SLURM_KEYS, STORAGE_ENV, SweepSpec, load_spec, redact
from famlab.sweep.storage import make_storage, open_study, requeue_stale
from famlab.sweep.worker import slurm_job_id, work

DEFAULT_TIME_MIN = 24 * 60  # submitit's own default is 5 minutes
TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")  # minutes, M:S, H:M:S, D-H, D-H:M, D-H:M:S


def time_minutes(value: Any) -> int:
    """A SLURM time limit (minutes as a number, or ``[D-]H:M[:S]`` / ``M:S``) in whole minutes (rounded up)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = TIME.fullmatch(str(value).strip()) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"time={value!r}: expected minutes (an integer > 0) or [D-]HH:MM[:SS]")
    days, a, b, c = (int(x) if x else None for x in m.groups())
    if days is None and b is not None and c is None:  # M:S
        seconds = a * 60 + b
    elif days is None and b is None:  # minutes
        seconds = a * 60
    else:  # H:M[:S], D-H[:M[:S]]
        seconds = (days or 0) * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    if seconds <= 0:
        raise ValueError(f"time={value!r}: expected a time limit > 0")
    return -(-seconds // 60)


@dataclass
class SlurmOptions:
    partition: str | None = None
    account: str | None = None
    time: int = DEFAULT_TIME_MIN  # minutes
    gpus_per_worker: int = 0
    cpus_per_worker: int = 1
    mem: str | None = None  # sbatch --mem, e.g. 64G
    sbatch: dict[str, Any] = field(default_factory=dict)  # extra sbatch options: {"qos": "high", "exclusive": True}
    setup: list[str] = field(default_factory=list)
    signal_delay_s: int = 120  # SIGUSR2 this long before the time limit

    def executor_parameters(self, name: str, workers: int) -> dict[str, Any]:
        params: dict[str, Any] = {
            "job_name": name,
            "time": self.time,
            "nodes": 1,
            "ntasks_per_node": 1,
            "cpus_per_task": self.cpus_per_worker,
            "array_parallelism": workers,
            "signal_delay_s": self.signal_delay_s,
            "additional_parameters": dict(self.sbatch),
            "setup": list(self.setup),
        }
        if self.gpus_per_worker:
            params["gpus_per_node"] = self.gpus_per_worker
        for key in ("partition", "account", "mem"):
            if getattr(self, key) is not None:
                params[key] = getattr(self, key)
        return params


def sbatch_option(line: str) -> tuple[str, Any]:
    """``--qos=high`` / ``qos=high`` / ``--exclusive`` -> (``qos``, ``high``) / (``exclusive``, True)."""
    text = line.strip().removeprefix("#SBATCH").strip().removeprefix("--")
    key, eq, value = text.partition("=")
    if not re.fullmatch(r"[a-z][a-z0-9-]*", key):
        raise ValueError(f"sbatch option {line!r}: expected --name=value or --flag (long sbatch options)")
    return key.replace("-", "_"), (value if eq else True)


def slurm_options(spec: SweepSpec, **given: Any) -> SlurmOptions:
    """The spec profile's ``slurm:`` section with the command line's options over it (None: not given);
    ``sbatch`` and ``setup`` from both are joined. A bad value raises ValueError with one line."""
    section = dict(spec.slurm or {})
    owner = f"{Path(spec.path).stem}.profiles.{spec.profile}.slurm"
    reject_unknown_keys(owner, section, SLURM_KEYS)
    merged = {**section, **{k: v for k, v in given.items() if v is not None and k not in ("sbatch", "setup")}}
    opts = SlurmOptions()
    for key in ("partition", "account", "mem"):
        if merged.get(key) is not None:
            if not isinstance(merged[key], str | int) or isinstance(merged[key], bool) or not str(merged[key]):
                raise config_error(owner, key, merged[key], "a name")
            setattr(opts, key, str(merged[key]))
    for key, low in (("gpus_per_worker", 0), ("cpus_per_worker", 1), ("signal_delay_s", 1)):
        if key in merged:
            value = merged[key]
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
                raise config_error(owner, key, value, f"an integer >= {low}")
            setattr(opts, key, value)
    if "time" in merged:
        try:
            opts.time = time_minutes(merged["time"])
        except ValueError as err:
            raise ValueError(f"{owner}.{err}") from None
    lines = [*(section.get("sbatch") or []), *(given.get("sbatch") or [])]
    setup = [*(section.get("setup") or []), *(given.get("setup") or [])]
    if not all(isinstance(x, str) for x in [*lines, *setup]):
        raise config_error(owner, "sbatch", lines, "a list of sbatch options (strings) and setup lines")
    opts.sbatch = dict(sbatch_option(line) for line in lines)
    opts.setup = setup
    return opts


def release_trials(spec: SweepSpec, storage_url: str, job: str, why: str) -> list[int]:
    """Fail the RUNNING trials of SLURM task ``job`` as stale (``why`` in their fail_reason) and queue their
    points again: another worker resumes each from its checkpoint now, not after the grace period."""
    storage = make_storage(storage_url)
    study = optuna.load_study(study_name=spec.study_name, storage=storage)
    released = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get("slurm_job") != job:
            continue
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            storage.set_trial_user_attr(trial._trial_id, "stale", True)
            storage.set_trial_user_attr(trial._trial_id, "fail_reason", f"worker stopped by SLURM ({why})")
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                requeue_stale(study, storage.get_trial(trial._trial_id))
                released.append(trial.number)
    return released


def child_pids(pid: int) -> list[int]:
    """The live child processes of ``pid`` (from /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, ...
            if int(fields[1]) == pid and fields[0] != "Z":
                kids.append(int(stat.parent.name))
    return kids


def stop_children(sig: int, timeout: float) -> None:
    """Send ``sig`` to this process's children (its trial's ``famlab train``: it saves a checkpoint of its
    current step and exits, :mod:`famlab.train.signals`) and wait for them, at most ``timeout`` seconds."""
    kids = child_pids(os.getpid())
    for pid in kids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    end = time.monotonic() + timeout
    while kids and time.monotonic() < end:
        time.sleep(0.2)
        alive = set(child_pids(os.getpid()))
        kids = [pid for pid in kids if pid in alive]


@dataclass
class SweepWorkerJob:
    """What each array task runs (pickled by submitit): one sweep worker. ``storage`` None: from $FAMLAB_STORAGE."""

    spec_path: str
    profile: str
    storage: str | None
    out_root: str
    heartbeat: int
    grace: int | None
    threads: int
    stop_wait: float = 60.0  # seconds the trial may take to save its checkpoint at the time-limit signal
    term_wait: float = 20.0  # the same at SIGTERM: SLURM kills KillWait seconds later (30 by default)

    def storage_url(self) -> str:
        url = self.storage or os.environ.get(STORAGE_ENV)
        if not url:
            raise RuntimeError(f"no storage: export {STORAGE_ENV} before `famlab sweep submit` (sbatch passes it on)")
        return url

    def __call__(self, index: int) -> str:
        url, job = self.storage_url(), slurm_job_id()
        spec = load_spec(self.spec_path, self.profile, validate_runs=False)

        def on_sigterm(signum: int, frame: Any) -> None:  # cancelled or preempted: give the trial back now
            stop_children(signal.SIGTERM, self.term_wait)  # once its trial saved a checkpoint of its step
            released = release_trials(spec, url, job, f"{signal.Signals(signum).name}: cancelled or preempted")
            print(f"sweep worker {job}: {signal.Signals(signum).name}; trials given back: {released}", flush=True)
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, on_sigterm)  # submitit only logs SIGTERM
        print(f"sweep worker {job} (task {index}): study {spec.study_name} in {redact(url)}", flush=True)
        work(
            spec, url, Path(self.out_root), heartbeat=self.heartbeat, grace=self.grace, threads=self.threads, label=job
        )
        return f"worker {job}: nothing left to run"

    def checkpoint(self, index: int) -> Any:
        """submitit calls this on SIGUSR2 (the time limit is near): the trial saves a checkpoint of its current
        step and stops, this task gives it back, then is requeued and goes on with the study's work (that
        trial too, if no other worker took it first, from that checkpoint)."""
        import submitit

        spec = load_spec(self.spec_path, self.profile, validate_runs=False)
        job = slurm_job_id()
        stop_children(signal.SIGUSR2, self.stop_wait)  # SLURM signalled it too: sent again, it is the same request
        released = release_trials(spec, self.storage_url(), job, "SIGUSR2: time limit")
        print(f"sweep worker {job}: time limit near; trials given back: {released}; requeued", flush=True)
        return submitit.helpers.DelayedSubmission(self, index)


def shared_storage(url: str) -> str | None:
    """Why a storage URL cannot be shared by SLURM workers on several nodes (one line), else None."""
    if url.startswith("sqlite"):
        return (
            f"{redact(url)}: SQLite cannot be shared by workers on several nodes; give --storage "
            "journal:PATH (a file on a shared file system) or a PostgreSQL URL ($FAMLAB_STORAGE)"
        )
    return None


def submit(
    spec: SweepSpec,
    storage_url: str,
    workers: int,
    out_root: Path,
    options: SlurmOptions,
    *,
    heartbeat: int = 60,
    grace: int | None = None,
    threads: int | None = None,
    retry_failed: bool = False,
) -> tuple[str, Path]:
    """Create the study, queue its lost points again, submit ``workers`` tasks; returns (array job id, log folder)."""
    import submitit

    out_root = out_root.resolve()
    if (journal := journal_file(storage_url)) is not None:
        storage_url = f"{JOURNAL_PREFIX}{journal}"  # absolute: the tasks may start in another folder
    study = open_study(spec, make_storage(storage_url, heartbeat=heartbeat, grace=grace))
    fail_stale_trials(study)
    for line in requeue(study, spec, retry_failed=retry_failed):
        print(line, flush=True)
    folder = out_root / "slurm" / spec.study_name
    executor = submitit.SlurmExecutor(folder=folder, python=shlex.quote(sys.executable))
    executor.update_parameters(**options.executor_parameters(f"famlab-{spec.study_name}", workers))
    secret = redact(storage_url) != storage_url  # a password: only through the environment
    job = SweepWorkerJob(
        spec.path, spec.profile, None if secret else storage_url, str(out_root), heartbeat, grace, threads or 1
    )
    job.stop_wait = max(10.0, options.signal_delay_s - 30.0)  # what is left then: leaving and requeueing
    before = os.environ.get(STORAGE_ENV)
    os.environ[STORAGE_ENV] = storage_url  # sbatch exports the submitting environment to the tasks
    try:
        jobs = executor.map_array(job, range(workers))
    finally:
        if before is None:
            os.environ.pop(STORAGE_ENV, None)
        else:
            os.environ[STORAGE_ENV] = before
    return jobs[0].job_id.split("_")[0], folder


def submit_command(spec: SweepSpec, storage_url: str | None, args: Any) -> tuple[int, str]:
    """``famlab sweep submit``'s checks (one line and exit status 2 each) and submission: (exit status, array id)."""

    def error(text: str, code: int = 2) -> tuple[int, str]:
        print(f"famlab: error: {text}", file=sys.stderr)
        return code, ""

    if storage_url is None:
        return error(
            "sweep submit needs a storage every node reaches: --storage journal:PATH (a file on a shared "
            f"file system) or a PostgreSQL URL (or ${STORAGE_ENV})"
        )
    if why := shared_storage(storage_url):
        return error(why)
    given = {k: getattr(args, k) for k in ("partition", "account", "time", "gpus_per_worker", "cpus_per_worker", "mem")}
    try:
        options = slurm_options(spec, **given, sbatch=args.sbatch)
    except ValueError as err:
        return error(str(err))
    devices = most_devices(spec)
    if devices > options.cpus_per_worker:  # a trial's ranks are the tasks of a job step (famlab.sweep.ranks)
        return error(
            f"cpus_per_worker={options.cpus_per_worker} is less than the trials' train.devices={devices}: each "
            f"rank of a trial is a SLURM task with a CPU of its own (give --cpus-per-worker {devices} or more)"
        )
    if shutil.which("sbatch") is None:
        return error("sbatch not found: run `famlab sweep submit` where SLURM's commands are (a login node)")
    try:
        array, folder = submit(
            spec,
            storage_url,
            args.workers,
            Path(args.out_root),
            options,
            heartbeat=args.heartbeat,
            grace=args.grace,
            threads=args.threads or options.cpus_per_worker,
            retry_failed=args.retry_failed,
        )
    except ValueError as err:  # a spec that no longer matches its stored study
        return error(str(err))
    except (subprocess.CalledProcessError, RuntimeError, OSError) as err:
        return error(f"submission failed: {' '.join(str(err).split())[:400]}", 1)
    print(
        f"submitted {args.workers} worker(s) for study {spec.study_name} in {redact(storage_url)} as SLURM job "
        f"array {array} (logs: {folder})",
        flush=True,
    )
    return 0, array


def wait_for(array_id: str, poll: float = 5.0) -> None:
    """Until no task of the job array is pending or running (``squeue``; needs no accounting database)."""
    squeue = shutil.which("squeue") or "squeue"
    while True:
        out = subprocess.run([squeue, "-h", "-r", "-j", array_id, "-o", "%i %T"], capture_output=True, text=True)
        if (out.returncode == 0 and not out.stdout.strip()) or "Invalid job id" in out.stderr:
            return  # none left, or the array is gone from the controller's memory
        time.sleep(poll)
