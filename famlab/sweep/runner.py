"""Running a sweep on one machine: one worker in this process, or N worker processes on one study."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from famlab.sweep.spec import STORAGE_ENV, SweepSpec, default_storage, redact
from famlab.sweep.storage import make_storage, open_study
from famlab.sweep.worker import die_with_parent, work


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
    procs = [subprocess.Popen(cmd, env=env, preexec_fn=die_with_parent) for _ in range(workers)]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise RuntimeError(f"sweep workers exited with {codes}")
    return storage_url


def worker_command(spec: SweepSpec, out_root: Path, *, heartbeat: int, grace: int | None, threads: int) -> list[str]:
    """The command of one worker; the storage URL comes from $FAMLAB_STORAGE."""
    cmd = [sys.executable, "-m", "famlab.cli", "sweep", "worker", spec.path, "--profile", spec.profile]
    cmd += ["--out-root", str(out_root), "--heartbeat", str(heartbeat), "--threads", str(threads)]
    return cmd + (["--grace", str(grace)] if grace else [])
