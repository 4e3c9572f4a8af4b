"""Optuna sweeps against real stores: SQLite files and a real PostgreSQL server on loopback.

Every trial is a real (tiny) ``famlab train`` process, so these tests check the whole chain."""

from __future__ import annotations

import json
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
from helpers import TINY
from optuna.trial import TrialState

from famlab.sweep import (
    SWEEP_DIR,
    default_storage,
    load_spec,
    main,
    make_storage,
    open_study,
    run_sweep,
    worker_command,
)


def write_spec(tmp_path: Path, name: str = "t", **fields) -> str:
    spec = {
        "study": name,
        "preset": "tiny",
        "overrides": dict(TINY),
        "grid": {"model.attention": ["bswa", "fam"], "model.mem_segment": [0, 1]},
        "seeds": [0],
        "objective": {"metric": "val/loss", "direction": "minimize"},
        "profiles": {"tiny": {}},
    }
    for key, value in fields.items():
        if value is None:
            spec.pop(key, None)
        elif key == "overrides":
            spec["overrides"].update(value)
        else:
            spec[key] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def load(url: str, spec) -> optuna.Study:
    return optuna.load_study(study_name=spec.study_name, storage=make_storage(url))


def assert_grid_done_once(study: optuna.Study, spec) -> list:
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    points = Counter(tuple(sorted(t.params.items())) for t in complete)
    expected = {tuple(sorted(p.items())) for p in spec.grid_points()}
    assert set(points) == expected, "holes in the grid"
    assert all(n == 1 for n in points.values()), f"duplicates: {points}"
    for t in complete:
        run_dir = Path(t.user_attrs["run_dir"])
        assert (run_dir / "final_metrics.json").exists() and (run_dir / "config.yaml").exists()
        assert t.value == pytest.approx(t.user_attrs["m.val/loss"])
    return complete


# ---------------------------------------------------------------- specs


@pytest.mark.parametrize("path", sorted(SWEEP_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_specs_resolve_for_every_profile(path):
    profiles = yaml.safe_load(path.read_text())["profiles"]
    assert {"tiny", "paper"} <= set(profiles)
    for profile in profiles:
        spec = load_spec(str(path), profile)  # resolves every trial's run config
        assert spec.grid_points() if spec.grid is not None else spec.space


@pytest.mark.parametrize(
    "fields,message",
    [
        (dict(gird={"model.fam_len": [1]}), "no key 'gird' \\(did you mean 'grid'\\?\\)"),
        (dict(grid={"model.fam_lenn": [1, 2]}), "model.fam_lenn.*did you mean model.fam_len"),
        (dict(grid={}), "grid=\\{\\} is not allowed"),
        (dict(grid={"model.fam_len": []}), "grid.model.fam_len=\\[\\] is not allowed"),
        (dict(grid={"model.attention": ["bswa", "sliding"]}), "attention='sliding'"),
        (dict(objective={"metric": "val/loss", "direction": "up"}), "direction='up'"),
        (dict(grid={"variant": ["M9"]}, variants={"M0": {"model.mem_segment": 0}}), "variant='M9'"),
        (dict(trial_timeout=0), "trial_timeout=0 is not allowed.*seconds > 0"),
        (dict(trial_timeout="1h"), "trial_timeout='1h'"),
    ],
)
def test_bad_spec_rejected_before_any_trial(tmp_path, fields, message, capsys):
    path = write_spec(tmp_path, **fields)
    with pytest.raises(ValueError, match=message):
        load_spec(path)
    assert main(["run", path, "--out-root", str(tmp_path / "runs")]) == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # no store, no trial directory


def test_variants_expand_to_overrides(tmp_path):
    path = write_spec(
        tmp_path,
        grid={"variant": ["M1", "M1_SG"]},
        variants={"M1": {"model.mem_segment": 1}, "M1_SG": {"model.mem_segment": 1, "model.stop_grad": True}},
    )
    spec = load_spec(path)
    overrides = spec.trial_overrides({"variant": "M1_SG", "seed": 3})
    assert "model.stop_grad=true" in overrides and "model.mem_segment=1" in overrides and "seed=3" in overrides


# ---------------------------------------------------------------- many workers, real stores


def test_two_sqlite_workers_finish_grid_exactly_once(tmp_path):
    spec = load_spec(write_spec(tmp_path, seeds=[0, 1]))  # 2 x 2 x 2 seeds = 8 points
    url = f"sqlite:///{tmp_path / 'study.db'}"
    run_sweep(spec, url, workers=2, out_root=tmp_path / "runs", heartbeat=2)
    study = load(url, spec)
    complete = assert_grid_done_once(study, spec)
    assert len({t.user_attrs["worker"] for t in complete}) == 2  # both workers took trials
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)


def test_three_postgres_workers_finish_grid_exactly_once(tmp_path, postgres):
    spec = load_spec(write_spec(tmp_path, name="pg", seeds=[0, 1]))
    url = postgres.new_database()
    run_sweep(spec, url, workers=3, out_root=tmp_path / "runs", heartbeat=2)
    complete = assert_grid_done_once(load(url, spec), spec)
    assert len({t.user_attrs["worker"] for t in complete}) == 3


def test_cli_never_prints_the_password(tmp_path, postgres, capfd):
    spec_path = write_spec(tmp_path, name="pw", grid={"model.attention": ["bswa"]})
    url = postgres.new_database()
    assert main(["run", spec_path, "--storage", url, "--out-root", str(tmp_path / "runs")]) == 0
    out, err = capfd.readouterr()
    assert postgres.password not in out + err
    assert "***" in out and "COMPLETE" in out


# ---------------------------------------------------------------- crashes


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


def test_killed_worker_trial_is_detected_and_rerun(tmp_path, start_workers):
    spec = load_spec(write_spec(tmp_path, seeds=[0, 1], overrides={"train.max_steps": 100, "train.val_every": 50}))
    url = f"sqlite:///{tmp_path / 'study.db'}"
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


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_trial_killed_before_its_first_heartbeat_goes_stale_and_is_rerun(tmp_path):
    """A worker killed between creating its trial (RUNNING) and starting its heartbeat thread
    leaves a trial with no heartbeat at all; it must go stale after the grace period, or every
    other worker would wait for it forever."""
    spec = load_spec(write_spec(tmp_path, grid={"model.mem_segment": [0, 1]}))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = open_study(spec, make_storage(url, heartbeat=1, grace=5))  # as a worker opens it
    orphan = study.ask()  # what study.optimize does first; a dead worker never gets further
    assert "grid_id" in study.trials[0].system_attrs
    optuna.storages.fail_stale_trials(study)
    assert study.trials[0].state == TrialState.RUNNING  # young: its worker may still be starting
    time.sleep(5.5)
    optuna.storages.fail_stale_trials(study)
    trials = study.trials
    assert trials[orphan.number].state == TrialState.FAIL
    assert [t.state for t in trials[1:]] == [TrialState.WAITING]  # queued again, same grid point
    assert trials[1].system_attrs["grid_id"] == trials[0].system_attrs["grid_id"]
    run_sweep(spec, url, workers=1, out_root=tmp_path / "runs", heartbeat=1, grace=5)  # returns: no wait forever
    assert_grid_done_once(load(url, spec), spec)


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


def test_failing_trial_is_retried_a_bounded_number_of_times(tmp_path):
    path = write_spec(
        tmp_path,
        grid={"train.lr": [0.003, 1.0e30]},  # 1e30 diverges: NaN validation loss
        max_retries=2,
    )
    spec = load_spec(path)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    run_sweep(spec, url, workers=1, out_root=tmp_path / "runs")
    study = load(url, spec)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 1 + 2  # the first try and two retries
    assert all(t.params["train.lr"] == 1.0e30 for t in failed)
    assert all("not a finite number" in t.user_attrs["fail_reason"] for t in failed)
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


def test_a_grid_study_refuses_a_changed_grid_or_direction(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    open_study(load_spec(write_spec(tmp_path, grid={"model.mem_segment": [1, 2]})), make_storage(url))
    open_study(load_spec(write_spec(tmp_path, grid={"model.mem_segment": [1, 2]})), make_storage(url))  # resume: fine
    more_seeds = write_spec(tmp_path, grid={"model.mem_segment": [1, 2]}, seeds=[0, 1])
    assert main(["run", more_seeds, "--storage", url, "--out-root", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "was created with the grid" in err and "'seed': [0, 1]" in err and "new study name" in err
    flipped = write_spec(
        tmp_path, grid={"model.mem_segment": [1, 2]}, objective={"metric": "val/loss", "direction": "maximize"}
    )
    with pytest.raises(ValueError, match="created to minimize its objective"):
        open_study(load_spec(flipped), make_storage(url))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("config.yaml"))  # no trial ran


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
    cmd = [sys.executable, "-m", "famlab.sweep", "run", path, "--storage", url, "--out-root", str(tmp_path / "runs")]
    subprocess.run(cmd, check=True, timeout=180, capture_output=True)
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


def test_status_table_lists_trials(tmp_path, capsys):
    path = write_spec(tmp_path, grid={"model.attention": ["bswa", "fam"]})
    out_root = tmp_path / "runs"
    assert main(["run", path, "--out-root", str(out_root), "--threads", "2"]) == 0
    capsys.readouterr()
    for t in load(default_storage(load_spec(path), out_root), load_spec(path)).trials:  # --threads reached each run
        prov = json.loads((Path(t.user_attrs["run_dir"]) / "provenance.json").read_text())
        assert prov["threads"] == {"torch": 2, "OMP_NUM_THREADS": "2"}
    assert main(["status", path, "--out-root", str(out_root)]) == 0
    out = capsys.readouterr().out
    assert "complete: 2" in out and "bswa" in out and "fam" in out


def test_famlab_cli_dispatches_sweep(tmp_path):
    path = write_spec(tmp_path, grid={"model.attention": ["bswa"]})
    out = subprocess.run(
        [sys.executable, "-m", "famlab.cli", "sweep", "status", path, "--out-root", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "no trials yet" in out


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
