"""One sweep worker: it takes trials from the study and runs each as ``famlab train`` (and
``famlab eval``, and ``famlab eval --suite``) child processes, until nothing is left to start or to wait for.

* One trial = one ``famlab train`` in its own process (a crash or OOM kills the trial, not the
  worker), dying with its worker (``PR_SET_PDEATHSIG``). Its run directory, exit status, log tail
  and every final metric are stored on the trial as user attributes.
* The worker reports the validation metric from the run's ``metrics.jsonl`` as intermediate values
  while the run trains, so pruners work; a pruned run is killed.
* Where two workers could still land on one grid point (a re-run after a failure), a trial that
  finds another live or completed trial on its point prunes itself at once (the lower trial number
  wins), so no point is trained twice.
* A trial that fails by itself (non-zero exit, NaN objective, past ``trial_timeout``) is re-queued
  at most ``max_retries`` times; the rest of the sweep goes on. Stale trials (a dead worker's) are
  failed and re-queued by the storage (:mod:`famlab.sweep.storage`), without using up that budget.
* An unexpected error (a bug, Optuna refusing a parameter) fails the trial with its reason and stops
  the worker (``WorkerError``): it is never taken for another worker's takeover, so it never loops.
* A retry starts from its point's earlier attempt: that attempt's finished run (its result is kept), else
  its newest periodic checkpoint (``famlab train resume=``; :mod:`famlab.sweep.resume`).
* A worker keeps going while there is queued work, and waits while other workers' trials run (they
  may die and come back as retries), so N workers together finish every grid point exactly once.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, fail_stale_trials
from optuna.trial import TrialState

from famlab.runs import RunDir, csv_records
from famlab.sweep.points import failed_by_itself, is_stale, points
from famlab.sweep.progress import TrialLines
from famlab.sweep.ranks import launch, plain_env, trial_devices
from famlab.sweep.resume import start_of, trial_folder
from famlab.sweep.spec import SweepSpec, dot_value
from famlab.sweep.storage import make_storage, open_study

# `famlab train`'s exit status for a non-finite training loss (famlab.train.stops.EXIT_DIVERGED; a test
# holds the two equal): the same config and seed diverge again, so such a trial is not retried unchanged
TRAIN_EXIT_DIVERGED = 3
# `famlab train`'s (and `famlab eval`'s) exit status for bad settings: the same settings are refused again
TRAIN_EXIT_BAD_SETTINGS = 2


class TrialFailed(Exception):
    """A trial that failed by itself (bad value, crash, NaN): recorded, maybe retried, never fatal.
    ``deterministic``: it would fail the same way again (divergence, settings famlab train refuses), so it is not retried."""

    def __init__(self, message: str, deterministic: bool = False):
        super().__init__(message)
        self.deterministic = deterministic


class WorkerError(RuntimeError):
    """An unexpected error in a trial: the trial is failed with its reason and the worker stops."""


def die_with_parent() -> None:
    """``preexec_fn`` of a child process: the kernel kills it when its parent dies (runs between fork and exec)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _suggest(trial: optuna.Trial, spec: SweepSpec) -> dict[str, Any]:
    if spec.grid is not None:
        params = {k: trial.suggest_categorical(k, v) for k, v in spec.grid.items()}
        params["seed"] = trial.suggest_categorical("seed", spec.seeds)
        return params
    params = {}
    for key, p in spec.space.items():
        if p.type == "float":
            params[key] = trial.suggest_float(key, p.low, p.high, log=p.log, step=p.step)
        elif p.type == "int":
            params[key] = trial.suggest_int(key, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            params[key] = trial.suggest_categorical(key, p.choices)
    params["seed"] = spec.seeds[0]
    return params


def _duplicate_of(trial: optuna.Trial, params: dict[str, Any]) -> int | None:
    """Another trial on the same point that completed, or runs with a lower number."""
    for other in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
        if other.number == trial.number or other.params != params:
            continue
        if other.state == TrialState.COMPLETE or other.number < trial.number:
            return other.number
    return None


def _run_child(
    cmd: list[str],
    log_path: Path,
    env: dict[str, str],
    on_poll: Callable[[], None] | None = None,
    poll: float = 1.0,
    deadline: float | None = None,
) -> int:
    """Run a child process that dies with us, logging to ``log_path``; ``on_poll()`` runs every
    ``poll`` seconds while it lives and may raise to stop it (the child is killed). Past
    ``deadline`` (a ``time.monotonic()`` value) the child is killed and ``TrialFailed`` raised."""
    with log_path.open("a") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent, env=env)
        try:
            while proc.poll() is None:
                time.sleep(poll)
                if on_poll is not None:
                    on_poll()
                if deadline is not None and time.monotonic() > deadline and proc.poll() is None:
                    what = "eval" if "eval" in cmd else "train"
                    raise TrialFailed(f"famlab {what} still running when trial_timeout ran out: killed")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return proc.returncode


def slurm_job_id() -> str:
    """This process's SLURM job: ``ARRAYJOB_TASK`` for a job-array task, else the job id."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", "")


def _log_tail(log_path: Path, lines: int = 3) -> str:
    tail = log_path.read_text(errors="replace").strip().splitlines()[-lines:]
    return " | ".join(tail)[-500:]


def run_trial(
    trial: optuna.Trial,
    spec: SweepSpec,
    out_root: Path,
    *,
    threads: int = 1,
    poll: float = 1.0,
    lines: TrialLines | None = None,
) -> float:
    """Train one run (and evaluate it if the spec says so) in child processes; store its results
    on the trial; return the objective. ``lines`` prints the trial's start line."""
    params = _suggest(trial, spec)
    dup = _duplicate_of(trial, params)
    if dup is not None:
        trial.set_user_attr("duplicate_of", dup)
        raise optuna.TrialPruned(f"grid point already taken by trial {dup}")
    start = start_of(trial, params, spec, out_root)
    if lines is not None:
        lines.start(trial, params, note=start.describe() if start else "")
    trial_dir = trial_folder(out_root, spec, trial.number)
    trial_dir.mkdir(parents=True, exist_ok=True)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    if os.environ.get("SLURM_JOB_ID"):  # `famlab sweep status` shows it for running trials
        trial.set_user_attr("slurm_job", slurm_job_id())
    tags = [f"{k}={v}" for k, v in params.items()]
    famlab = [sys.executable, "-m", "famlab.cli"]
    cmd = [
        *famlab,
        "train",
        f"preset={spec.preset}",
        *spec.trial_overrides(params),
        f"out_dir={trial_dir}",
        f"name={spec.study}",
        f"logger.group={spec.study_name}",
        f"logger.name={spec.study_name}-trial{trial.number}",
        f"logger.tags={dot_value(tags)}",
    ]
    log_path = trial_dir / "train.log"
    # the run never needs the study's credentials, nor (one process) SLURM's task variables: famlab.sweep.ranks
    env = plain_env(threads)
    seen: dict[str, Any] = {"run_dir": None, "offset": 0, "step": -1}
    if start is not None:  # said in the trial's train.log and its attributes (see famlab.sweep.resume)
        trial.set_user_attr("started_from", {"trial": start.of, "run_dir": str(start.run), "step": start.step})
        with log_path.open("a") as log:
            log.write(f"famlab sweep: trial {trial.number} {start.describe()} ({start.checkpoint or start.run})\n")
        cmd += [f"resume={start.checkpoint}"] if start.checkpoint else []
    trial.set_user_attr("command", " ".join(["famlab", *cmd[3:]]))

    def report_progress() -> None:  # intermediate values from the run's metrics.jsonl, for pruners
        if not seen.get("rechecked"):
            # Two workers that pick the same point within milliseconds can each check before the
            # other's params are all written; a second look, once both are, leaves one of them.
            seen["rechecked"] = True
            again = _duplicate_of(trial, params)
            if again is not None:
                trial.set_user_attr("duplicate_of", again)
                raise optuna.TrialPruned(f"grid point already taken by trial {again}")
        seen["run_dir"] = seen["run_dir"] or RunDir.newest_under(trial_dir)
        if seen["run_dir"] is None:
            return
        if "run_dir" not in trial.user_attrs:
            trial.set_user_attr("run_dir", str(seen["run_dir"]))
        rows, seen["offset"] = seen["run_dir"].read_new_metrics(seen["offset"])
        for row in rows:
            value, step = row.get(spec.metric), row.get("step")
            if isinstance(value, int | float) and isinstance(step, int) and step > seen["step"]:
                trial.report(float(value), step)
                seen["step"] = step
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at step {step} ({spec.metric}={value:.4g})")

    deadline = time.monotonic() + spec.trial_timeout if spec.trial_timeout else None
    if start is not None and start.complete:  # its earlier attempt's run finished: its result, not a new run
        code, seen["run_dir"] = 0, start.run
        report_progress()  # the second look for a duplicate
    else:
        # inside a SLURM job, a trial of several devices runs as the tasks of a job step (famlab.sweep.ranks)
        devices = trial_devices(spec.preset, spec.trial_overrides(params))
        train_cmd, train_env = launch(cmd, devices, threads, trial_dir, spec.study)
        code = _run_child(train_cmd, log_path, train_env, on_poll=report_progress, poll=poll, deadline=deadline)
    run_dir: RunDir | None = seen["run_dir"] or RunDir.newest_under(trial_dir)
    if run_dir is not None:
        trial.set_user_attr("run_dir", str(run_dir))
    if code == TRAIN_EXIT_DIVERGED:
        raise TrialFailed(f"diverged, not retried (the same config diverges again): {_log_tail(log_path)}", True)
    if code == TRAIN_EXIT_BAD_SETTINGS:
        raise TrialFailed(f"bad settings, not retried (famlab train refuses them again): {_log_tail(log_path)}", True)
    if code != 0:
        raise TrialFailed(f"famlab train exited with {code}: {_log_tail(log_path)}")
    if run_dir is None or not run_dir.is_complete():
        raise TrialFailed(f"no final_metrics.json under {trial_dir}")
    reused = start is not None and start.complete  # an earlier attempt's finished run: its evaluations too
    if spec.evaluate:
        if not (reused and run_dir.eval_path.exists()):
            _evaluate(famlab, run_dir, [], spec, trial_dir, env, poll, deadline)
        if run_dir.eval_path.exists():
            trial.set_user_attr("eval_table", csv_records(run_dir.eval_path))
    if spec.eval_suite is not None:  # after the plain evaluation: each keeps the other's final metrics
        suite_csv = run_dir.eval_dir / f"{spec.eval_suite}.csv"
        if not (reused and suite_csv.exists()):
            _evaluate(famlab, run_dir, spec.suite_args(), spec, trial_dir, env, poll, deadline)
        if suite_csv.exists():
            trial.set_user_attr("suite_table", csv_records(suite_csv))
    metrics = run_dir.read_flat_final_metrics()
    for key, value in metrics.items():
        trial.set_user_attr(f"m.{key}", value)
    value = metrics.get(spec.metric)
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise TrialFailed(f"objective {spec.metric}={value!r} is not a finite number")
    return float(value)


def _evaluate(
    famlab: list[str],
    run_dir: RunDir,
    extra: list[str],
    spec: SweepSpec,
    trial_dir: Path,
    env: dict[str, str],
    poll: float,
    deadline: float | None,
) -> None:
    """``famlab eval RUN <eval_overrides> --device cpu [--suite S]`` as a child process logging to ``eval.log``;
    ``TrialFailed`` if it fails (for good where it refused the settings). The options go after the settings:
    argparse takes no positional settings after an option's value."""
    eval_cmd = [*famlab, "eval", str(run_dir), *spec.eval_overrides_list(), "--device", "cpu", *extra]
    code = _run_child(eval_cmd, trial_dir / "eval.log", env, poll=poll, deadline=deadline)
    if code != 0:
        tail = _log_tail(trial_dir / "eval.log")
        if code == TRAIN_EXIT_BAD_SETTINGS:
            raise TrialFailed(f"bad evaluation settings, not retried (famlab eval refuses them again): {tail}", True)
        raise TrialFailed(f"famlab eval exited with {code}: {tail}")


def _retry_failed(spec: SweepSpec) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """Queue a self-failed trial again, at most ``max_retries`` times (stale ones are queued by the
    storage's heartbeat callback instead)."""

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if not failed_by_itself(trial) or trial.user_attrs.get("deterministic"):
            return
        tries = int(trial.user_attrs.get("retry", 0))
        if tries < spec.max_retries:
            origin = trial.user_attrs.get("retry_of", trial.number)
            # like RetryHeartbeatStaleTrialCallback: keep the sampler's system attrs (GridSampler's
            # grid_id: enqueue_trial would drop it and GridSampler.after_trial needs it) and fix the params
            study.add_trial(
                optuna.trial.create_trial(
                    state=TrialState.WAITING,
                    params=trial.params,
                    distributions=trial.distributions,
                    user_attrs={"retry": tries + 1, "retry_of": origin},
                    system_attrs={**trial.system_attrs, "fixed_params": trial.params},
                )
            )

    return callback


def _work_left(study: optuna.Study, spec: SweepSpec) -> tuple[bool, bool]:
    """(something to start now, other trials still running)."""
    trials = study.get_trials(deepcopy=False)
    waiting = any(t.state == TrialState.WAITING for t in trials)
    running = any(t.state == TrialState.RUNNING for t in trials)
    if spec.grid is not None:  # GridSampler stamps each trial with its grid point (retries keep it)
        started = {t.system_attrs["grid_id"] for t in trials if "grid_id" in t.system_attrs}
        return waiting or len(started) < len(spec.grid_points()), running
    # a search point counts once it completed, was pruned, is running, or failed for good (its last
    # retry failed too): otherwise a spec whose every run fails would start new points forever
    counted = ("complete", "pending", "failed")
    done = sum(1 for p in points(study, spec) if p.state(spec) in counted and p.last.state != TrialState.WAITING)
    return waiting or done < spec.n_trials, running


def _taken_over(study: optuna.Study, number: int | None) -> bool:
    """Whether trial ``number`` was failed as stale by another worker (marked by the storage)."""
    if number is None:
        return False
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    return trial is not None and trial.state.is_finished() and is_stale(trial)


def work(
    spec: SweepSpec,
    storage_url: str,
    out_root: Path,
    *,
    heartbeat: int = 10,
    grace: int | None = None,
    threads: int = 1,
    label: str = "",
    storage: BaseStorage | None = None,
    runner: Callable[..., float] = run_trial,
) -> None:
    """One worker: run trials until the study has nothing left to start or to wait for. It prints a
    line when a trial starts and when it ends (:mod:`famlab.sweep.progress`; ``label``: the worker's
    index, printed before each line, when several run). ``storage``: the store of ``storage_url`` already
    made (by default made here); ``runner``: what runs a trial (:func:`run_trial`'s arguments; the workers
    benchmark, :mod:`famlab.bench.workers`, passes one that trains nothing)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = storage or make_storage(storage_url, heartbeat=heartbeat, grace=grace)
    study = open_study(spec, storage)
    lines = TrialLines(spec, label)

    current: dict[str, int] = {}  # the number of the trial this worker runs now

    def objective(trial: optuna.Trial) -> float:
        current["number"] = trial.number
        t0 = time.monotonic()
        try:
            value = runner(trial, spec, out_root, threads=threads, lines=lines)
        except TrialFailed as err:
            trial.set_user_attr("fail_reason", str(err))
            if err.deterministic:
                trial.set_user_attr("deterministic", True)
            # as _retry_failed decides
            retried = not err.deterministic and int(trial.user_attrs.get("retry", 0)) < spec.max_retries
            lines.failed(trial, str(err), time.monotonic() - t0, retried=retried)
            raise
        except optuna.TrialPruned as err:
            lines.pruned(trial, str(err), time.monotonic() - t0)
            raise
        except Exception as err:  # a bug, or Optuna refusing a parameter: fail the trial, say why
            with contextlib.suppress(Exception):  # (a trial another worker failed as stale takes no attrs)
                trial.set_user_attr("fail_reason", f"unexpected {type(err).__name__}: {err}")
            with contextlib.suppress(Exception):
                lines.failed(trial, f"unexpected {type(err).__name__}: {err}", time.monotonic() - t0, retried=False)
            raise
        lines.done(trial, value, time.monotonic() - t0)
        return value

    while True:
        fail_stale_trials(study)
        start_now, others_running = _work_left(study, spec)
        if start_now:
            current.clear()
            try:
                study.optimize(objective, n_trials=1, catch=(TrialFailed,), callbacks=[_retry_failed(spec)])
            except Exception as err:
                if not _taken_over(study, current.get("number")):
                    number = current.get("number")
                    raise WorkerError(
                        f"trial {number} failed with an unexpected {type(err).__name__}: {err}; this worker stops"
                    ) from err
                # Another worker failed this trial as stale (its heartbeat came late: a busy machine,
                # a database locked by a frozen process) and queued its point again, so optuna can no
                # longer record it ("Cannot tell a FAIL trial"). The training child is killed; go on.
                warnings.warn(
                    f"trial {current['number']} was failed as stale by another worker while this one ran "
                    "it (late heartbeats); its point runs again as a retry",
                    stacklevel=1,
                )
        elif others_running:
            time.sleep(max(1.0, heartbeat / 2))
        else:
            return
