"""Sweep workers against real SQLite stores: every trial is a real (tiny) ``famlab train`` process, killed
workers, stale trials, retries, timeouts, pruning and wandb grouping."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import sqlalchemy.exc
import yaml
from optuna.trial import TrialState
from sweep_helpers import assert_grid_done_once, load, write_spec

from famlab.sweep import load_spec, make_storage, run_sweep, worker_command


@pytest.fixture
def start_workers():
    """Start sweep workers as separate processes; any still alive when the test ends (it failed)
    are killed with their training children, so they never load the rest of the suite."""
    started = []

    def start(spec, url, out_root, n, heartbeat=1, grace=4):
        cmd = worker_command(spec, out_root, heartbeat=heartbeat, grace=grace, threads=1)
        env = {**os.environ, "FAMLAB_STORAGE": url}
        procs = [subprocess.Popen(cmd, env=env) for _ in range(n)]
        started.extend(procs)
        return procs

    yield start
    for p in started:
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.kill()  # its famlab train child dies with it (PR_SET_PDEATHSIG)
            p.wait()


def _wait(predicate, timeout=120.0, what=""):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _snapshot(study):
    return {
        t.number: (t.value, t.user_attrs["run_dir"], t.datetime_complete)
        for t in study.get_trials(states=(TrialState.COMPLETE,))
    }


@pytest.mark.parametrize("store", ["sqlite", "journal"])
def test_killed_worker_trial_is_detected_and_rerun(tmp_path, start_workers, store):
    seeds = [0, 1] if store == "sqlite" else [0]  # 8 points; the journal's run is shorter: 4
    spec = load_spec(write_spec(tmp_path, seeds=seeds, overrides={"train.max_steps": 100, "train.val_every": 50}))
    url = f"sqlite:///{tmp_path / 'study.db'}" if store == "sqlite" else f"journal:{tmp_path / 'study.journal'}"
    optuna.create_study(study_name=spec.study_name, storage=make_storage(url), load_if_exists=True)
    victim, survivor = start_workers(spec, url, tmp_path / "runs", 2)
    study = load(url, spec)
    victim_tag = f":{victim.pid}"

    def victim_running(trials):
        return any(
            t.state == TrialState.RUNNING and t.user_attrs.get("worker", "").endswith(victim_tag) for t in trials
        )

    def victim_frozen_mid_trial_after_a_completed_one():
        # Freeze the victim before looking: a trial seen RUNNING could otherwise finish between the
        # look and the kill, leaving the victim between trials with nothing to go stale.
        if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
            return False
        victim.send_signal(signal.SIGSTOP)
        try:
            if victim_running(study.get_trials(deepcopy=False)):
                return True
        # frozen while holding the SQLite write lock: "database is locked", which optuna may wrap
        except (sqlalchemy.exc.OperationalError, optuna.exceptions.StorageInternalError):
            pass
        victim.send_signal(signal.SIGCONT)
        return False

    _wait(victim_frozen_mid_trial_after_a_completed_one, what="a completed trial and one running on the victim")
    victim.send_signal(signal.SIGKILL)  # first: frozen, it may hold the SQLite write lock
    victim.wait()
    before = _snapshot(study)
    assert survivor.wait(timeout=300) == 0
    stale = [
        t for t in study.trials if t.state == TrialState.FAIL and t.user_attrs.get("worker", "").endswith(victim_tag)
    ]
    assert len(stale) == 1, "the killed worker's trial was not marked failed"
    assert_grid_done_once(study, spec)  # ... and its grid point was re-run by the survivor
    after = _snapshot(study)
    assert {n: after[n] for n in before} == before  # completed results untouched


def test_worker_whose_trial_was_failed_as_stale_goes_on(tmp_path, start_workers):
    """A worker whose heartbeat came late (here: frozen past the grace period) finds its trial
    failed as stale by another process. It used to crash with optuna's "Cannot tell a FAIL trial";
    it must drop that trial, run the retry, and finish the grid."""
    spec = load_spec(write_spec(tmp_path, grid={"model.attention": ["bswa"]}, overrides={"train.max_steps": 60}))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name=spec.study_name, storage=make_storage(url), load_if_exists=True)
    (worker,) = start_workers(spec, url, tmp_path / "runs", 1, heartbeat=1, grace=3)
    study = optuna.load_study(study_name=spec.study_name, storage=make_storage(url, heartbeat=1, grace=3))

    def running():
        return any(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False))

    _wait(running, what="a running trial")
    worker.send_signal(signal.SIGSTOP)  # no heartbeats now; its training child runs on
    try:
        time.sleep(5)  # past the grace period
        optuna.storages.fail_stale_trials(study)  # what any other worker does before its next trial
    finally:
        worker.send_signal(signal.SIGCONT)
    assert worker.wait(timeout=300) == 0
    trials = study.get_trials(deepcopy=False)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].number == 0, [(t.number, t.state) for t in trials]
    retry = assert_grid_done_once(study, spec)
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(retry[0]) == 0  # re-queued


def test_killed_sweep_restarts_without_rerunning_completed_points(tmp_path, start_workers):
    spec = load_spec(write_spec(tmp_path, overrides={"train.max_steps": 60, "train.val_every": 30}))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name=spec.study_name, storage=make_storage(url), load_if_exists=True)
    workers = start_workers(spec, url, tmp_path / "runs", 2)
    study = load(url, spec)
    _wait(lambda: len(_snapshot(study)) >= 1, what="a completed trial")
    for w in workers:  # the whole sweep dies
        w.send_signal(signal.SIGKILL)
        w.wait()
    done_before = _snapshot(study)
    run_sweep(spec, url, workers=1, out_root=tmp_path / "runs", heartbeat=1, grace=4)
    after = _snapshot(study)
    assert {n: after[n] for n in done_before} == done_before  # untouched
    assert_grid_done_once(study, spec)


def test_diverging_trial_fails_once_and_the_rest_of_the_grid_completes(tmp_path):
    """Divergence is deterministic (famlab train exits 3): retrying the same config would diverge again,
    so the point fails once even with retries left. Bounded retries of a retriable failure (a run past its
    trial_timeout) are tested below."""
    path = write_spec(
        tmp_path,
        grid={"train.lr": [0.003, 1.0e30]},  # 1e30 diverges: famlab train stops at the NaN loss, exit 3
        max_retries=2,
    )
    spec = load_spec(path)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    run_sweep(spec, url, workers=1, out_root=tmp_path / "runs")
    study = load(url, spec)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 1  # not retried, although max_retries=2
    assert failed[0].params["train.lr"] == 1.0e30
    reason = failed[0].user_attrs["fail_reason"]
    assert "diverged, not retried" in reason and "non-finite training loss" in reason, reason
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert [t.params["train.lr"] for t in complete] == [0.003]


def test_trial_past_its_timeout_is_killed_and_failed(tmp_path):
    """A hung run (here: one far too long for its limit) must not hold the sweep forever."""
    path = write_spec(
        tmp_path,
        grid={"model.mem_segment": [1]},
        overrides={"train.max_steps": 100_000, "train.val_every": 100_000},
        trial_timeout=8,
        max_retries=1,
    )
    spec = load_spec(path)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    start = time.monotonic()
    run_sweep(spec, url, workers=1, out_root=tmp_path / "runs")
    assert time.monotonic() - start < 120  # two tries of about 8 s each, not 100k steps
    failed = load(url, spec).trials
    assert [t.state for t in failed] == [TrialState.FAIL, TrialState.FAIL]  # the try and one retry
    assert all("trial_timeout" in t.user_attrs["fail_reason"] for t in failed)
    left = subprocess.run(["pgrep", "-f", f"out_dir={tmp_path}"], capture_output=True, text=True).stdout
    assert left == "", "the timed-out famlab train process is still alive"


def test_search_whose_every_run_fails_stops_after_its_trials_and_retries(tmp_path):
    """A search point that failed its last retry counts as done: a spec whose every run fails (here:
    each run is past its trial_timeout) ends after n_trials x (1 + max_retries) runs, not never."""
    path = write_spec(
        tmp_path,
        grid=None,
        search={
            "sampler": "random",
            "n_trials": 2,
            "space": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        },
        overrides={"train.max_steps": 100_000, "train.val_every": 100_000},
        trial_timeout=5,
        max_retries=1,
    )
    spec = load_spec(path)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    # in a process of its own: a runaway sweep fails this test instead of hanging the suite
    cmd = [
        sys.executable,
        "-m",
        "famlab.cli",
        "sweep",
        "run",
        path,
        "--storage",
        url,
        "--out-root",
        str(tmp_path / "runs"),
    ]
    done = subprocess.run(cmd, timeout=180, capture_output=True, text=True)
    assert done.returncode == 1  # the study is not complete: each failed point in a line, then what is missing
    assert done.stderr.count("FAILED train.lr=") == 2 and "incomplete: 0 of 2 search trials complete" in done.stderr
    trials = load(url, spec).trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 4  # 2 points, each tried twice
    assert Counter(t.user_attrs.get("retry", 0) for t in trials) == {0: 2, 1: 2}


def test_search_spec_reports_intermediate_values_and_prunes(tmp_path):
    path = write_spec(
        tmp_path,
        grid=None,
        search={
            "sampler": "random",
            "pruner": "threshold",
            "prune_above": 0.5,  # every tiny run's validation loss is far above: pruned at the first report
            "n_trials": 2,
            "space": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        },
        overrides={"train.max_steps": 400, "train.val_every": 5},
    )
    spec = load_spec(path)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    t0 = time.time()
    run_sweep(spec, url, workers=1, out_root=tmp_path / "runs")
    study = load(url, spec)
    assert [t.state for t in study.trials] == [TrialState.PRUNED, TrialState.PRUNED]
    for t in study.trials:
        assert t.intermediate_values, "no intermediate values reported"
        assert not (Path(t.user_attrs["run_dir"]) / "final_metrics.json").exists()  # killed mid-run
    assert time.time() - t0 < 60


def test_each_trial_is_a_wandb_run_grouped_by_study_and_tagged(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    path = write_spec(tmp_path, name="wb", grid={"model.mem_segment": [1]}, overrides={"logger.wandb": "offline"})
    spec = load_spec(path)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    run_sweep(spec, url, workers=1, out_root=tmp_path / "runs")
    (trial,) = load(url, spec).get_trials(states=(TrialState.COMPLETE,))
    run_dir = Path(trial.user_attrs["run_dir"])
    logger = yaml.safe_load((run_dir / "config.yaml").read_text())["logger"]
    assert logger["group"] == spec.study_name  # wandb group = the study
    assert {"model.mem_segment=1", "seed=0"} <= set(logger["tags"])  # tagged with the varied parameters
    assert logger["name"] == f"{spec.study_name}-trial{trial.number}"
    files = list((run_dir / "wandb").rglob("*.wandb"))  # a real offline run, carrying them
    assert files, "no offline wandb run"
    data = b"".join(f.read_bytes() for f in files)
    assert spec.study_name.encode() in data and b"model.mem_segment=1" in data


def test_a_point_two_workers_both_started_is_run_by_one(tmp_path, monkeypatch):
    """Two workers that pick the same grid point at once can each miss the other at the first check
    (params are written one at a time). The second look, a poll later, prunes the higher number;
    negative control: without a trial on the point, the same run is not pruned."""
    import famlab.sweep.worker as worker_mod

    spec = load_spec(write_spec(tmp_path, grid={"model.mem_segment": [1]}, overrides={"train.max_steps": 400}))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name=spec.study_name, storage=make_storage(url))
    real = worker_mod._duplicate_of
    calls = []

    def first_check_misses(trial, params):
        calls.append(trial.number)
        return None if len(calls) == 1 else real(trial, params)

    monkeypatch.setattr(worker_mod, "_duplicate_of", first_check_misses)
    other = study.ask(
        {
            "model.mem_segment": optuna.distributions.CategoricalDistribution([1]),
            "seed": optuna.distributions.CategoricalDistribution([0]),
        }
    )  # another worker's, RUNNING
    mine = study.ask()
    with pytest.raises(optuna.TrialPruned, match=f"already taken by trial {other.number}"):
        worker_mod.run_trial(mine, spec, tmp_path / "runs", poll=0.2)
    assert len(calls) == 2 and mine.number > other.number
    study.tell(mine, state=TrialState.PRUNED)  # as study.optimize records it
    study.tell(other, state=TrialState.FAIL)  # the point is free again: the control runs to the end
    calls.clear()
    control = study.ask()
    value = worker_mod.run_trial(control, spec, tmp_path / "runs", poll=0.2)
    assert value > 0 and len(calls) == 2
