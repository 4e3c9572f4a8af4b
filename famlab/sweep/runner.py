"""Running a sweep on one machine: one worker in this process, or N worker processes on one study.

Before its workers start, a run queues every lost point again (:func:`famlab.sweep.points.requeue`;
with ``retry_failed`` also the points that used up ``max_retries``), so rerunning a sweep finishes
every point that is not COMPLETE. A worker that dies is reported in one line, not raised: whether the
sweep succeeded is whether its study is complete (:func:`famlab.sweep.points.missing_lines`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from optuna.storages import fail_stale_trials

from famlab.sweep.points import n_points, requeue
from famlab.sweep.spec import STORAGE_ENV, SweepSpec, default_storage, redact
from famlab.sweep.storage import make_storage, open_study
from famlab.sweep.worker import WorkerError, die_with_parent, work


def run_sweep(
    spec: SweepSpec,
    storage_url: str | None = None,
    *,
    workers: int = 1,
    out_root: str | Path = "runs",
    heartbeat: int = 10,
    grace: int | None = None,
    threads: int | None = None,
    retry_failed: bool = False,
    worker_args: list[str] = (),
) -> str:
    """Start ``workers`` worker processes on one study and wait for them. Returns the storage URL.
    ``worker_args``: more arguments of each ``famlab sweep worker`` (the command line's overrides)."""
    if workers < 1 or (threads is not None and threads < 1):
        raise ValueError(f"workers={workers} and threads={threads}: each must be an integer >= 1")
    storage_url = storage_url or os.environ.get(STORAGE_ENV) or default_storage(spec, out_root)
    out_root = Path(out_root).resolve()
    threads = threads or 1  # tiny CPU runs slow down badly when threads oversubscribe the cores
    study = open_study(spec, make_storage(storage_url, heartbeat=heartbeat, grace=grace))  # create it once, here
    print(
        f"sweep: study {spec.study_name} in {redact(storage_url)} ({len(study.trials)} trial(s) so far), "
        f"{n_points(spec)} {'points' if spec.grid is not None else 'search trials'}, {workers} worker(s)",
        flush=True,
    )
    fail_stale_trials(study)  # a dead sweep's trials, past their grace period: queued again now
    for line in requeue(study, spec, retry_failed=retry_failed):
        print(line, flush=True)
    if workers == 1:
        try:
            work(spec, storage_url, out_root, heartbeat=heartbeat, grace=grace, threads=threads)
        except WorkerError as err:
            print(f"sweep {spec.study_name}: worker stopped: {err}", file=sys.stderr, flush=True)
        return storage_url
    cmd = [*worker_command(spec, out_root, heartbeat=heartbeat, grace=grace, threads=threads), *worker_args]
    env = {**os.environ, STORAGE_ENV: storage_url}  # in the environment: never in a process list
    procs = [
        subprocess.Popen([*cmd, "--worker-index", str(i + 1)], env=env, preexec_fn=die_with_parent)
        for i in range(workers)
    ]
    for i, proc in enumerate(procs):
        code = proc.wait()
        if code:
            how = f"killed by {_signal_name(-code)}" if code < 0 else f"exited with {code}"
            print(f"sweep {spec.study_name}: worker {i + 1} (pid {proc.pid}) {how}", file=sys.stderr, flush=True)
    return storage_url


def worker_command(spec: SweepSpec, out_root: Path, *, heartbeat: int, grace: int | None, threads: int) -> list[str]:
    """The command of one worker; the storage URL comes from $FAMLAB_STORAGE."""
    cmd = [sys.executable, "-m", "famlab.cli", "sweep", "worker", spec.path, "--profile", spec.profile]
    cmd += ["--out-root", str(out_root), "--heartbeat", str(heartbeat), "--threads", str(threads)]
    return cmd + (["--grace", str(grace)] if grace else [])


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
