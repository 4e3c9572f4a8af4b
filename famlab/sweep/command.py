"""``famlab sweep {run,status,worker} SPEC``: the sweep's own argument parser (famlab/cli.py hands it
everything after ``sweep``; ``python -m famlab.sweep`` runs it too, as worker processes do)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from famlab.sweep.results import ablation_table, status_table
from famlab.sweep.runner import run_sweep
from famlab.sweep.spec import STORAGE_ENV, default_storage, load_spec
from famlab.sweep.storage import make_storage, open_study
from famlab.sweep.worker import work

ACTIONS = ("run", "status", "worker")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in ACTIONS and not argv[0].startswith("-"):
        argv = ["run", *argv]  # `famlab sweep SPEC` means run
    parser = argparse.ArgumentParser(
        prog="famlab sweep",
        description="Run or inspect an Optuna sweep. `run` starts workers on the spec's study (creating it "
        "if needed, resuming it otherwise) and prints the ablation table; `status` lists the trials; "
        "`worker` is one worker (what `run --workers N` and SLURM jobs start).",
    )
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument("spec", help="a spec name from sweeps/ or a path to a YAML spec")
    parser.add_argument("--profile", default="tiny", help="the spec profile: tiny (CPU) or paper (cluster)")
    parser.add_argument("--storage", default=None, help=f"Optuna storage URL (default: ${STORAGE_ENV} or SQLite)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    parser.add_argument("--out-root", default="runs", help="trial run directories and the default SQLite store")
    parser.add_argument("--heartbeat", type=int, default=10, help="heartbeat interval in seconds")
    parser.add_argument("--grace", type=int, default=None, help="seconds without heartbeat before a trial is stale")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per trial (default 1)")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec, args.profile, validate_runs=args.action != "status")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    storage = args.storage or os.environ.get(STORAGE_ENV) or default_storage(spec, args.out_root)
    if args.action in ("run", "worker"):
        try:  # a spec that no longer matches its stored study: one line, before any trial starts
            open_study(spec, make_storage(storage, heartbeat=args.heartbeat, grace=args.grace))
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    if args.action == "worker":
        threads = args.threads or 1
        work(spec, storage, Path(args.out_root).resolve(), heartbeat=args.heartbeat, grace=args.grace, threads=threads)
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
        )
    print(status_table(spec, storage))
    table = ablation_table(spec, storage)
    if args.action == "run" and len(table):
        print(f"\n{spec.study} ({spec.profile}): {spec.direction} {spec.metric}; mean ± std over seeds")
        print(table.to_string())
    return 0
