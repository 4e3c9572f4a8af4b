"""``famlab sweep {run,status,worker,dashboard} SPEC [key=value ...]``: the sweep command's parser and what each
action does. ``key=value`` overrides go into every trial (:func:`famlab.sweep.overrides.with_overrides`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SWEEP_ACTIONS = ("run", "status", "worker", "submit", "dashboard")


def sweep_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The parser of ``famlab sweep`` (``add_help=False``: a parent of the main parser's ``sweep``, for completion)."""
    from famlab.cli.complete import complete_setting, complete_spec
    from famlab.sweep import STORAGE_ENV

    parser = argparse.ArgumentParser(
        prog="famlab sweep",
        add_help=add_help,
        description="Run or inspect an Optuna sweep. `run` starts workers on the spec's study (creating it "
        "if needed, resuming it otherwise), prints a line per trial start and end, then the ablation table; "
        "`status` lists the trials and the best one (it creates nothing: a missing store or study prints "
        "`no trials yet` and exits 0); "
        "`worker` is one worker (what `run --workers N` starts); `submit` submits --workers workers as a SLURM "
        "job array (submitit) on a shared storage (PostgreSQL or journal:PATH); "
        "`dashboard` starts optuna-dashboard on the study's store (pip install -e '.[dashboard]').",
        epilog="examples:\n  famlab sweep run memory_segment --workers 2\n"
        "  famlab sweep run fam_length train.max_steps=50 train.val_every=25   (a study of its own)\n"
        "  famlab sweep submit memory_segment --profile paper --workers 16 --storage journal:/shared/ms.journal\n"
        "  famlab sweep dashboard fam_length --port 8081",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=SWEEP_ACTIONS)
    parser.add_argument("spec", help="a spec name from sweeps/ or a path to a YAML spec").completer = complete_spec
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="run settings for every trial (not a key the sweep varies); the study becomes <study>.<hash>",
    ).completer = complete_setting
    parser.add_argument(
        "--study", default=None, help="the study name (default: the spec's, <study>.<hash> with overrides)"
    )
    parser.add_argument("--profile", default="tiny", help="the spec profile: tiny (CPU) or paper (cluster)")
    parser.add_argument(
        "--storage",
        default=None,
        help=f"Optuna storage: an SQLAlchemy URL or journal:PATH (default: ${STORAGE_ENV} or SQLite)",
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine (submit: SLURM tasks)")
    parser.add_argument("--out-root", default="runs", help="trial run directories and the default SQLite store")
    parser.add_argument("--heartbeat", type=int, default=10, help="heartbeat interval in seconds")
    parser.add_argument("--grace", type=int, default=None, help="seconds without heartbeat before a trial is stale")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per trial (default 1)")
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="run: queue again the points that failed by themselves max_retries times (a new budget)",
    )
    parser.add_argument(
        "--worker-index", type=int, default=None, help="worker: its index, printed before its lines (set by run)"
    )
    parser.add_argument("--port", type=int, default=8080, help="dashboard: the HTTP port (default 8080)")
    parser.add_argument("--host", default="127.0.0.1", help="dashboard: the address to listen on")
    parser.add_argument("--dry-run", action="store_true", help="dashboard: print the command, start nothing")
    slurm = parser.add_argument_group("submit (SLURM; each overrides the spec profile's slurm: section)")
    slurm.add_argument("--partition", default=None)
    slurm.add_argument("--account", default=None)
    slurm.add_argument("--time", default=None, help="each worker's time limit: minutes or [D-]HH:MM[:SS] (24:00:00)")
    slurm.add_argument("--gpus-per-worker", type=int, default=None)
    slurm.add_argument("--cpus-per-worker", type=int, default=None)
    slurm.add_argument("--mem", default=None, help="memory per worker (sbatch --mem), e.g. 64G")
    slurm.add_argument(
        "--sbatch", action="append", default=None, help="an extra sbatch option, e.g. --sbatch=--qos=high"
    )
    slurm.add_argument("--wait", action="store_true", help="wait until every task ended, then print the status")
    return parser


def _sweep_args_error(args: argparse.Namespace) -> str | None:
    for name in ("workers", "threads", "heartbeat", "grace", "worker_index"):
        value = getattr(args, name)
        if value is not None and value < 1:
            return f"--{name} {value}: expected an integer >= 1"
    return None


def missing_store(spec, storage: str) -> str | None:
    """``sweep status``: one line when the store (a SQLite file) or the study in it does not exist, else None.
    Opens nothing that would create either."""
    from famlab.analysis import study_names
    from famlab.analysis.frames import store_file_missing
    from famlab.sweep import redact

    if (path := store_file_missing(storage)) is not None:
        return f"study {spec.study_name}: no trials yet (no store at {path})"
    if spec.study_name not in study_names(storage):
        return f"study {spec.study_name}: no trials yet (no such study in {redact(storage)})"
    return None


def _fail(err: object) -> int:
    """A bad argument, spec or store: one line, exit 2."""
    print(f"famlab: error: {' '.join(str(err).split())}", file=sys.stderr)
    return 2


def sweep_main(argv: list[str]) -> int:
    """``famlab sweep {run,status,worker,dashboard} SPEC [key=value ...]``; ``famlab sweep SPEC`` means run."""
    import os

    from famlab.runs import RunDir
    from famlab.sweep import (
        STORAGE_ENV,
        WorkerError,
        default_storage,
        load_spec,
        make_storage,
        open_study,
        redact,
        run_sweep,
        work,
    )
    from famlab.sweep.overrides import with_overrides
    from famlab.sweep.urls import normalize_storage, storage_problem

    if argv and argv[0] not in SWEEP_ACTIONS and not argv[0].startswith("-"):
        argv = ["run", *argv]
    args = sweep_parser().parse_intermixed_args(argv)
    if bad := _sweep_args_error(args):
        return _fail(bad)
    try:
        spec = load_spec(args.spec, args.profile, validate_runs=False)
        spec = with_overrides(spec, args.overrides, args.study, check=args.action in ("run", "worker", "submit"))
    except ValueError as err:
        return _fail(err)
    storage = normalize_storage(args.storage or os.environ.get(STORAGE_ENV) or default_storage(spec, args.out_root))
    if args.action in ("run", "worker", "submit") and (bad := RunDir.writable_problem(args.out_root, "--out-root")):
        return _fail(bad)  # trials write their run directories there
    if bad := storage_problem(storage):
        return _fail(bad)
    if args.action in ("status", "dashboard") and (gone := missing_store(spec, storage)):
        print(gone)  # never create a store or a study to say there is none
        return 0 if args.action == "status" else 1
    if args.action == "dashboard":
        return dashboard(storage, args.host, args.port, dry_run=args.dry_run)
    if args.action == "submit":  # then, with --wait, what `run` prints
        from famlab.sweep.slurm import submit_command, wait_for

        code, array = submit_command(spec, storage if args.storage or os.environ.get(STORAGE_ENV) else None, args)
        if code or not args.wait:
            return code
        wait_for(array)
    if args.action in ("run", "worker"):
        try:  # a spec that no longer matches its stored study: one line, before any trial starts
            open_study(spec, make_storage(storage, heartbeat=args.heartbeat, grace=args.grace))
        except ValueError as err:
            return _fail(err)
    if args.action == "worker":
        threads = args.threads or 1
        if args.worker_index is None:  # started by hand or by a job script (`run` says this once for all)
            print(f"sweep worker: study {spec.study_name} in {redact(storage)}", flush=True)
        try:
            work(
                spec,
                storage,
                Path(args.out_root).resolve(),
                heartbeat=args.heartbeat,
                grace=args.grace,
                threads=threads,
                label=f"w{args.worker_index}" if args.worker_index else "",
            )
        except WorkerError as err:
            print(f"famlab: error: {err}", file=sys.stderr)
            return 1
        return 0
    if args.action == "run":
        run_sweep(
            spec,
            storage,
            workers=args.workers,
            out_root=args.out_root,
            heartbeat=args.heartbeat,
            grace=args.grace,
            threads=args.threads,
            retry_failed=args.retry_failed,
            worker_args=[*args.overrides, *(["--study", args.study] if args.study else [])],
        )
    return report(spec, storage, args.action)


def report(spec, storage: str, action: str) -> int:
    """After ``run`` (or for ``status``): the status table, the ablation table and the claims (run), then a
    line per missing point; 1 when a run left points missing."""
    from famlab.analysis import ablation_text, claims_text, status_table
    from famlab.sweep import make_storage, missing_lines

    status = status_table(spec, storage)
    print(status)
    finished = action in ("run", "submit")
    table = ablation_text(spec, storage) if finished else ""
    if table:
        print(f"\n{table}")
        claims = claims_text(spec, storage)
        if claims:
            print(f"\n{claims}")
    if action == "status" and status.endswith("no trials yet"):
        return 0
    import optuna

    study = optuna.load_study(study_name=spec.study_name, storage=make_storage(storage))
    missing = missing_lines(study, spec)  # each point that failed by itself, and what is missing: one line each
    for line in missing:
        print(line, file=sys.stderr if finished else sys.stdout)
    return 1 if missing and finished else 0


def dashboard_command(storage: str, host: str, port: int) -> list[str]:
    """``optuna-dashboard STORAGE --host HOST --port PORT`` (the script next to this Python, else on PATH)."""
    import shutil

    script = Path(sys.executable).parent / "optuna-dashboard"
    exe = str(script) if script.exists() else shutil.which("optuna-dashboard") or "optuna-dashboard"
    return [exe, storage, "--host", host, "--port", str(port)]


def dashboard(storage: str, host: str, port: int, *, dry_run: bool = False) -> int:
    """``famlab sweep dashboard``: optuna-dashboard on the study's store, until Ctrl-C (``dry_run``: print it)."""
    import importlib.util
    import shlex
    import subprocess

    from famlab.sweep import redact

    cmd = dashboard_command(storage, host, port)
    shown = shlex.join([*cmd[:1], redact(storage), *cmd[2:]])
    if dry_run:
        print(shown)
        return 0
    if importlib.util.find_spec("optuna_dashboard") is None:
        print("famlab: error: optuna-dashboard is not installed: pip install -e '.[dashboard]' (or make dashboard)")
        return 2
    print(f"dashboard: http://{host}:{port} ({shown}; Ctrl-C stops it)", flush=True)
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 0
