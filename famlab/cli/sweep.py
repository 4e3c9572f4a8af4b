"""``famlab sweep {run,status,worker} SPEC``: the sweep command's parser and what each action does."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SWEEP_ACTIONS = ("run", "status", "worker", "submit")


def _sweep_parser() -> argparse.ArgumentParser:
    from famlab.sweep import STORAGE_ENV

    parser = argparse.ArgumentParser(
        prog="famlab sweep",
        description="Run or inspect an Optuna sweep. `run` starts workers on the spec's study (creating it "
        "if needed, resuming it otherwise), prints a line per trial start and end, then the ablation table; "
        "`status` lists the trials and the best one (it creates nothing: a missing store or study prints "
        "`no trials yet` and exits 0); "
        "`worker` is one worker (what `run --workers N` starts); `submit` submits --workers workers as a SLURM "
        "job array (submitit) on a shared storage (PostgreSQL or journal:PATH).",
    )
    parser.add_argument("action", choices=SWEEP_ACTIONS)
    parser.add_argument("spec", help="a spec name from sweeps/ or a path to a YAML spec")
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


def sweep_main(argv: list[str]) -> int:
    """``famlab sweep {run,status,worker} SPEC``; ``famlab sweep SPEC`` means run."""
    import os

    from famlab.analysis import ablation_text, claims_text, status_table
    from famlab.sweep import (
        STORAGE_ENV,
        WorkerError,
        default_storage,
        load_spec,
        make_storage,
        missing_lines,
        open_study,
        redact,
        run_sweep,
        work,
    )

    if argv and argv[0] not in SWEEP_ACTIONS and not argv[0].startswith("-"):
        argv = ["run", *argv]
    args = _sweep_parser().parse_args(argv)
    if bad := _sweep_args_error(args):
        print(f"famlab: error: {bad}", file=sys.stderr)
        return 2
    try:
        spec = load_spec(args.spec, args.profile, validate_runs=args.action != "status")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    storage = args.storage or os.environ.get(STORAGE_ENV) or default_storage(spec, args.out_root)
    if args.action == "status" and (gone := missing_store(spec, storage)):
        print(gone)  # never create a store or a study to say there is none
        return 0
    if args.action == "submit":  # then, with --wait, what `run` prints
        import optuna

        from famlab.sweep.slurm import submit_command, wait_for

        code, array = submit_command(spec, storage if args.storage or os.environ.get(STORAGE_ENV) else None, args)
        if code or not args.wait:
            return code
        wait_for(array)
        study = optuna.load_study(study_name=spec.study_name, storage=make_storage(storage))
    if args.action in ("run", "worker"):
        try:  # a spec that no longer matches its stored study: one line, before any trial starts
            study = open_study(spec, make_storage(storage, heartbeat=args.heartbeat, grace=args.grace))
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
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
        )
    status = status_table(spec, storage)
    print(status)
    finished = args.action in ("run", "submit")
    table = ablation_text(spec, storage) if finished else ""
    if table:
        print(f"\n{table}")
        claims = claims_text(spec, storage)
        if claims:
            print(f"\n{claims}")
    if args.action == "status" and status.endswith("no trials yet"):
        return 0
    if args.action == "status":
        import optuna

        study = optuna.load_study(study_name=spec.study_name, storage=make_storage(storage))
    missing = missing_lines(study, spec)  # each point that failed by itself, and what is missing: one line each
    for line in missing:
        print(line, file=sys.stderr if finished else sys.stdout)
    return 1 if missing and finished else 0
