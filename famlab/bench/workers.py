"""How far one study store carries: N sweep workers (processes) on one grid study, on PostgreSQL and on a journal
file: trials per minute, and the seconds a worker spends in storage calls per trial.

``python -m famlab.bench.workers`` (``make bench-workers``). Each configuration is a fresh study of a grid of
``--trials`` points, run by N processes, each one famlab sweep worker (:func:`famlab.sweep.worker.work`, the
same loop ``famlab sweep run`` and ``famlab sweep submit`` run) on the store famlab makes for the URL
(:func:`famlab.sweep.storage.make_storage`: PostgreSQL with Optuna's heartbeats, the journal with famlab's
leases). The trial itself is one of:

* ``noop``: suggests its grid point and returns 0 at once: trials per minute is then the store's (and the
  worker loop's) ceiling, and every second spent is overhead;
* ``train``: the real trial, a tiny ``famlab train`` of a few seconds (:func:`famlab.sweep.worker.run_trial`).

**Storage overhead per trial**: every public method of the worker's store is timed (the store as the study uses
it: Optuna wraps PostgreSQL in its trial cache, which reads only new and unfinished trials; a wrapper on the
instance, so Optuna's own isinstance checks still hold; a call made from inside another is not counted twice; the
heartbeat thread's calls count too), summed over the workers, divided by the trials completed. It includes
the worker's own reads (``fail_stale_trials``, the duplicate and work-left checks), the sampler's (GridSampler
reads every trial to find the unvisited points) and the pruner's, and the polling of a worker that waits at
the end for the others' last trials.

**Growth** (``--growth-trials``): one worker, ``noop`` trials, the storage seconds of each trial (from the start
of one trial to the start of the next) against how many trials the study already holds: what a study of many
thousands of trials costs per trial.

The workers start together (each imports and opens its store first, then waits); the clock runs from their
start until the last trial completed (a worker waiting for the others' last trials sleeps up to half a
heartbeat before it leaves: no trial's time). Trials-per-minute of ``noop`` trials on a study as short as the
default is dominated by its start (creating the study's first trials); ``storage ms/trial`` sums all threads, so
on one worker it may exceed the wall time per trial (the heartbeat thread's writes overlap the trial's). PostgreSQL: ``--postgres URL`` (a server the user runs; each configuration gets
its own study), else a throwaway server on loopback started by the tests' helper (``tests/pg.py``; the
``postgresql`` Debian package, ``make postgres``), or none (the rows are left out, said in the output).
The results: Markdown on stdout and in ``<out_dir>/workers_latest.md``, JSON beside it; the machine's load
average is recorded before and after (a shared machine's numbers are lower bounds on a quiet one's).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import io
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import yaml

from famlab.bench.common import machine_info, timestamp
from famlab.sweep.spec import load_spec
from famlab.sweep.storage import make_storage, open_study
from famlab.sweep.worker import run_trial, work

REPO = Path(__file__).resolve().parents[2]
# a tiny run (the tests' tiny settings): a few seconds of training, most of it starting Python and torch
TINY_TRIAL = {
    "data.task": "recall",
    "data.seq_len": 64,
    "data.batch_size": 4,
    "data.val_batches": 1,
    "model.block_size": 16,
    "model.d_model": 32,
    "model.fam_len": 2,
    "train.max_steps": 4,
    "train.val_every": 2,
    "train.warmup_steps": 1,
    "train.checkpoint_every": 0,
    "logger.wandb": "disabled",
}
OBJECTIVES = ("noop", "train")
COLUMNS = ["storage", "objective", "workers", "trials", "wall_s", "trials_per_min", "storage_ms_per_trial"]


class StorageClock:
    """Seconds spent in the public methods of one storage instance (all threads; outermost calls only)."""

    def __init__(self, storage: optuna.storages.BaseStorage):
        self.seconds, self.calls = 0.0, 0
        self._lock, self._depth = threading.Lock(), threading.local()
        for name in dir(optuna.storages.BaseStorage):
            if not name.startswith("_") and callable(getattr(storage, name, None)):
                setattr(storage, name, self._timed(getattr(storage, name)))

    def _timed(self, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(self._depth, "n", 0)
            self._depth.n = depth + 1
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self._depth.n = depth
                if depth == 0:
                    with self._lock:
                        self.seconds += time.perf_counter() - t0
                        self.calls += 1

        return call


def noop_trial(trial: optuna.Trial, spec: Any, out_root: Path, **_: Any) -> float:
    """A trial that trains nothing: its grid point and the check for another trial on it, as
    :func:`famlab.sweep.worker.run_trial` makes them (two workers may draw one point: the later one is pruned), 0."""
    params = {key: trial.suggest_categorical(key, values) for key, values in spec.grid.items()}
    params["seed"] = trial.suggest_categorical("seed", spec.seeds)
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)
    for other in trial.study.get_trials(deepcopy=False, states=states):
        earlier = other.state == optuna.trial.TrialState.COMPLETE or other.number < trial.number
        if other.number != trial.number and other.params == params and earlier:
            raise optuna.TrialPruned(f"grid point already taken by trial {other.number}")
    return 0.0


def write_spec(folder: Path, study: str, trials: int) -> Path:
    """A grid of ``trials`` points (2 values of model.mem_segment x trials/2 seeds) of tiny runs."""
    spec = {
        "study": study,
        "preset": "tiny",
        "overrides": dict(TINY_TRIAL),
        "grid": {"model.mem_segment": [0, 1]},
        "seeds": list(range(max(1, trials // 2))),
        "objective": {"metric": "val/loss", "direction": "minimize"},
        "profiles": {"tiny": {}},
    }
    path = folder / f"{study}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def worker_process(spec_path: str, url: str, out_root: str, objective: str, ready: Any, go: Any, out: Any) -> None:
    """One benchmark worker (a child process): open the store, wait for the start, work, report its clock."""
    spec = load_spec(spec_path, "tiny", validate_runs=False)
    # what create_study makes of it (Optuna wraps an RDB store in its trial cache): the calls famlab's code makes
    storage = optuna.storages.get_storage(make_storage(url))
    clock = StorageClock(storage)
    starts: list[tuple[int, float]] = []  # (trial number, storage seconds so far) at each trial's start
    trial_fn = noop_trial if objective == "noop" else run_trial

    def runner(trial: optuna.Trial, *args: Any, **kwargs: Any) -> float:
        starts.append((trial.number, clock.seconds))
        return trial_fn(trial, *args, **kwargs)

    ready.set()
    go.wait()
    with contextlib.redirect_stdout(io.StringIO()):  # the workers' trial lines
        work(spec, url, Path(out_root), storage=storage, runner=runner, threads=1)
    out.put({"seconds": clock.seconds, "calls": clock.calls, "starts": starts, "end": clock.seconds})


def run_config(url: str, objective: str, workers: int, trials: int, folder: Path, study: str) -> dict[str, Any]:
    """One configuration: a fresh study, ``workers`` processes, until the grid is done."""
    spec_path = write_spec(folder, study, trials)
    spec = load_spec(str(spec_path), "tiny", validate_runs=False)
    open_study(spec, make_storage(url))  # created once, before the workers race to it
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    readies = [ctx.Event() for _ in range(workers)]
    args = (str(spec_path), url, str(folder / "runs"), objective)
    procs = [ctx.Process(target=worker_process, args=(*args, r, go, out)) for r in readies]
    for p in procs:
        p.start()
    for r in readies:
        r.wait(timeout=300)
    t0 = time.time()
    go.set()
    reports = [out.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
    study_obj = optuna.load_study(study_name=spec.study_name, storage=make_storage(url))
    complete = study_obj.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    done = len(complete)
    # until the last trial completed: a worker that waits for the others' last trials sleeps up to half a
    # heartbeat before it sees there is nothing left, which is no trial's time
    wall = max((t.datetime_complete.timestamp() for t in complete), default=time.time()) - t0
    seconds = sum(r["seconds"] for r in reports)
    per_trial = per_trial_overhead(reports)
    return {
        "objective": objective,
        "workers": workers,
        "trials": done,
        "wall_s": round(wall, 2),
        "trials_per_min": round(60 * done / wall, 1),
        "storage_ms_per_trial": round(1000 * seconds / max(done, 1), 1),
        "storage_calls_per_trial": round(sum(r["calls"] for r in reports) / max(done, 1), 1),
        "per_trial_ms": per_trial,
    }


def per_trial_overhead(reports: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """(trial number, storage ms from its start to the next trial's start in the same worker)."""
    out = []
    for r in reports:
        marks = [*r["starts"], (None, r["end"])]
        out += [(a[0], round(1000 * (b[1] - a[1]), 2)) for a, b in zip(marks, marks[1:])]
    return sorted(out)


def growth(rows: list[tuple[int, float]], buckets: int = 5) -> list[dict[str, Any]]:
    """Median storage ms per trial in ``buckets`` consecutive ranges of trial numbers."""
    if not rows:
        return []
    size = -(-len(rows) // buckets)
    return [
        {
            "trials_before": chunk[0][0],
            "to": chunk[-1][0],
            "median_ms": round(statistics.median(v for _, v in chunk), 1),
        }
        for chunk in (rows[i : i + size] for i in range(0, len(rows), size))
    ]


def start_postgres() -> tuple[Any, str] | None:
    """A throwaway PostgreSQL server (the tests' helper, tests/pg.py) and a fresh database's URL, or None."""
    helper = REPO / "tests" / "pg.py"
    if not helper.exists():
        return None
    module_spec = importlib.util.spec_from_file_location("famlab_bench_pg", helper)
    pg = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(pg)
    if pg.pg_bin() is None:
        return None
    server = pg.PostgresServer()
    return server, server.new_database()


def render(res: dict[str, Any]) -> str:
    lines = [
        f"# Sweep workers on one study ({res['time']})",
        "",
        f"Machine: {res['machine']['cpu_model']}, {res['machine']['usable_cores']} usable cores; load average "
        f"{res['load_before']} before, {res['load_after']} after (a shared machine: lower bounds). "
        f"{res.get('note', '')}".rstrip(),
        "",
        "| storage | trial | workers | trials | wall s | trials/min | storage ms/trial | storage calls/trial |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['storage']} | {r['objective']} | {r['workers']} | {r['trials']} | {r['wall_s']} | "
            f"{r['trials_per_min']} | {r['storage_ms_per_trial']} | {r['storage_calls_per_trial']} |"
        )
    for name, g in res.get("growth", {}).items():
        cells = ", ".join(f"{b['trials_before']}-{b['to']}: {b['median_ms']} ms" for b in g)
        lines.append(f"\nGrowth, {name} (1 worker, noop; median storage ms per trial by trials already in the "
                     f"study): {cells}")  # fmt: skip
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m famlab.bench.workers", description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="1,2,4,8", help="worker counts, comma-separated")
    p.add_argument("--storages", default="postgres,journal", help="postgres and/or journal")
    p.add_argument("--objectives", default="noop,train", help="noop and/or train")
    p.add_argument("--trials", type=int, default=64, help="grid points of a noop study")
    p.add_argument("--train-trials", type=int, default=8, help="grid points of a train study")
    p.add_argument("--growth-trials", type=int, default=0, help="a one-worker noop study this long per storage")
    p.add_argument("--postgres", default=None, help="a PostgreSQL URL to use (default: a throwaway local server)")
    p.add_argument("--out-dir", default="bench/results", help="where workers_latest.md and the JSON go ('' = nowhere)")
    args = p.parse_args(argv)
    args.workers = [int(x) for x in args.workers.split(",")]
    args.storages = [x.strip() for x in args.storages.split(",") if x.strip()]
    args.objectives = [x.strip() for x in args.objectives.split(",") if x.strip()]
    for what, got, known in (
        ("storage", args.storages, ("postgres", "journal")),
        ("objective", args.objectives, OBJECTIVES),
    ):
        if bad := [x for x in got if x not in known]:
            p.error(f"--{what}s: {bad[0]!r} is not one of {', '.join(known)}")
    if not all(n >= 1 for n in args.workers):
        p.error("--workers: expected counts >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    res: dict[str, Any] = {"time": timestamp(), "machine": machine_info(), "load_before": list(os.getloadavg())}
    res |= {"rows": [], "growth": {}, "args": {k: v for k, v in vars(args).items() if k != "postgres"}}
    server, urls = None, {}
    if "journal" in args.storages:
        urls["journal"] = None  # a file per configuration
    if "postgres" in args.storages:
        if args.postgres:
            urls["postgres"] = args.postgres
        elif started := start_postgres():
            server, urls["postgres"] = started
        else:
            res["note"] = "No PostgreSQL server here (`make postgres`, or --postgres URL): its rows are left out."
    try:
        with tempfile.TemporaryDirectory(prefix="famlab-bench-workers-") as tmp:
            folder = Path(tmp)
            for name, base in urls.items():
                for objective in args.objectives:
                    trials = args.trials if objective == "noop" else args.train_trials
                    for n in args.workers:
                        study = f"bench_{objective}_w{n}"
                        url = base or f"journal:{folder / (study + '.journal')}"
                        row = run_config(url, objective, n, trials, folder, study)
                        res["rows"].append({"storage": name, **{k: v for k, v in row.items() if k != "per_trial_ms"}})
                        print(f"{name} {objective} workers={n}: {res['rows'][-1]}", file=sys.stderr, flush=True)
                if args.growth_trials:
                    study = "bench_growth"
                    url = base or f"journal:{folder / (study + '.journal')}"
                    row = run_config(url, "noop", 1, args.growth_trials, folder, study)
                    res["growth"][name] = growth(row["per_trial_ms"])
    finally:
        if server is not None:
            server.stop()
    res["load_after"] = list(os.getloadavg())
    text = render(res)
    print(text)
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "workers_latest.md").write_text(text)
        (out / f"workers_{res['time']}.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    return res


if __name__ == "__main__":
    main()
