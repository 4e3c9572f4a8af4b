"""What a sweep promises (sweeps/README.md): bad search spaces and settings are refused in one line before
any trial; an unexpected error never loops; a dead worker's point is always run again, on a rerun too,
without using up the point's own retries; a point that failed by itself is reported and rerun on request;
one dead worker does not fail a sweep whose every point completed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from sweep_helpers import assert_grid_done_once, load, write_spec

from famlab.cli import main
from famlab.sweep import default_storage, load_spec, make_storage, open_study

LR = {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}


def _search(space: dict, n_trials: int = 4) -> dict:
    return {"sampler": "random", "pruner": "none", "n_trials": n_trials, "space": space}


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path):
    """A fresh study store: a SQLite file, or a database on the real PostgreSQL server."""
    if request.param == "postgres":
        return request.getfixturevalue("postgres").new_database()
    return f"sqlite:///{tmp_path / 'study.db'}"


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    "param,message",
    [
        ({**LR, "step": 0.001}, "train.lr.step=0.001 is not allowed: expected no step with log: true"),
        ({"type": "float", "low": 0.0, "high": 1e-2, "log": True}, "train.lr.low=0.0 .*> 0 with log: true"),
        ({"type": "float", "low": 1e-2, "high": 1e-2}, "numbers low < high"),
        ({"type": "int", "low": 1.5, "high": 4}, "integers low < high"),
        ({"type": "float", "low": 1e-4, "high": 1e-2, "step": -1}, "train.lr.step=-1"),
        ({"type": "uniform", "low": 1e-4, "high": 1e-2}, "train.lr.type='uniform'.*float, int, categorical"),
        ({"type": "categorical"}, "train.lr.choices=None .*non-empty list"),
        ({"type": "categorical", "choices": [[1, 2]]}, "train.lr.choices=.*numbers, strings"),
        ({"low": 1e-4, "high": 1e-2}, "train.lr.type=None"),
    ],
)
def test_bad_search_space_is_one_line_and_exit_2(tmp_path, capsys, param, message):
    path = write_spec(tmp_path, grid=None, search=_search({"train.lr": param}))
    assert main(["sweep", "run", path, "--out-root", str(tmp_path / "runs")]) == 2
    assert re.search(message, _one_error_line(capsys))
    assert not (tmp_path / "runs").exists()  # no store, no trial


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_changed_distribution_in_an_existing_study_is_refused_before_any_trial(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    spec = load_spec(write_spec(tmp_path, grid=None, search=_search({"train.lr": LR})))
    study = open_study(spec, make_storage(url))
    trial = study.ask()
    trial.suggest_float("train.lr", 1e-4, 1e-2, log=True)
    study.tell(trial, 1.0)
    linear = write_spec(tmp_path, grid=None, search=_search({"train.lr": {**LR, "log": False}}))
    assert main(["sweep", "run", linear, "--storage", url, "--out-root", str(tmp_path / "runs")]) == 2
    assert "has trials with search.space.train.lr" in _one_error_line(capsys)
    assert len(load(url, spec).trials) == 1


WORKER = """
import sys
from pathlib import Path
import famlab.sweep.storage
from famlab.sweep import Param, load_spec, work
spec = load_spec(sys.argv[1])
spec.space["train.lr"] = Param("float", 1e-4, 1e-2, log=True, step=0.001)  # what Optuna refuses in suggest_float
famlab.sweep.storage.check_space = lambda study, spec: None  # as if the checks up front had missed it
work(spec, sys.argv[2], Path(sys.argv[3]), heartbeat=1)
"""


def test_worker_meeting_an_unexpected_suggest_error_stops_instead_of_looping(tmp_path, store_url):
    path = write_spec(tmp_path, grid=None, search=_search({"train.lr": LR}))
    url = store_url
    cmd = [sys.executable, "-c", WORKER, path, url, str(tmp_path / "runs")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)  # it used to loop: 370 trials in 30 s
    assert done.returncode != 0
    assert "WorkerError" in done.stderr and "this worker stops" in done.stderr
    assert "failed as stale" not in done.stderr
    trials = load(url, load_spec(path)).trials
    assert [t.state for t in trials] == [TrialState.FAIL]
    assert "unexpected ValueError" in trials[0].user_attrs["fail_reason"]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_point_gone_stale_five_times_is_still_completed_by_a_rerun(tmp_path, capsys, store_url):
    path = write_spec(tmp_path, grid={"model.mem_segment": [0, 1]})
    spec, url = load_spec(path), store_url
    study = open_study(spec, make_storage(url, heartbeat=1, grace=1))
    study.ask()  # the sampler stamps its grid point; its worker dies before a heartbeat
    time.sleep(2.5)
    optuna.storages.fail_stale_trials(study)  # marked, failed, queued again
    first, retry = study.trials
    assert first.state == TrialState.FAIL and first.user_attrs["stale"]
    assert first.user_attrs["fail_reason"].startswith("worker died (no heartbeat since ")
    assert retry.state == TrialState.WAITING and retry.system_attrs["grid_id"] == first.system_attrs["grid_id"]
    assert retry.user_attrs["retry"] == 0  # a dead worker does not use up the point's own retries
    trial = study.ask()  # the retry's worker dies too ...
    trial.set_user_attr("stale", True)
    study.tell(trial, state=TrialState.FAIL)
    for _ in range(3):  # ... and three more, and (as famlab did after the third) nobody queues the point again
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.FAIL, user_attrs={"stale": True}, system_attrs=dict(first.system_attrs)
            )
        )
    assert not any(t.state == TrialState.WAITING for t in study.trials)
    assert main(["sweep", "run", path, "--storage", url, "--out-root", str(tmp_path / "runs")]) == 0
    out, err = capsys.readouterr()
    assert "queued again: " in out and "incomplete" not in err
    assert "worker died (no heartbeat since " in out  # the status table says why the stale trials failed
    assert_grid_done_once(load(url, spec), spec)


def test_a_point_that_failed_by_itself_is_reported_and_rerun_with_retry_failed(tmp_path, capsys):
    variants = {"ok": {}, "bad": {"train.lr": 1.0e30}}  # 1e30 diverges: famlab train exits 3, not retried
    path = write_spec(tmp_path, grid={"variant": ["ok", "bad"]}, variants=variants, max_retries=1)
    spec, runs = load_spec(path), str(tmp_path / "runs")
    assert main(["sweep", "run", path, "--out-root", runs]) == 1
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if line.startswith("FAILED ")]
    assert len(failed) == 1 and "variant=bad" in failed[0] and "1 time(s)" in failed[0]  # max_retries=1 unused
    assert "diverged, not retried" in failed[0] and "non-finite training loss" in failed[0]
    assert "--retry-failed" in failed[0]
    assert "incomplete: 1 of 2 grid points (x seed) complete (1 failed)" in err
    url = default_storage(spec, runs)
    assert main(["sweep", "run", path, "--out-root", runs]) == 1  # no budget left: nothing runs again
    assert len(load(url, spec).trials) == 2
    assert main(["sweep", "status", path, "--out-root", runs]) == 0
    assert "FAILED variant=bad" in capsys.readouterr().out
    spec_data = yaml.safe_load(Path(path).read_text())
    spec_data["variants"]["bad"] = {"train.lr": 0.003}  # the cause fixed
    Path(path).write_text(yaml.safe_dump(spec_data))
    assert main(["sweep", "run", path, "--out-root", runs, "--retry-failed"]) == 0
    out, err = capsys.readouterr()
    assert "queued again: variant=bad" in out and "FAILED" not in err
    complete = load(url, spec).get_trials(states=(TrialState.COMPLETE,))
    assert sorted(t.params["variant"] for t in complete) == ["bad", "ok"]


def test_one_sigkilled_worker_does_not_fail_a_sweep_that_completed(tmp_path, capfd, store_url):
    path = write_spec(tmp_path, overrides={"train.max_steps": 20, "train.val_every": 10})  # 4 points
    spec, runs, url = load_spec(path), tmp_path / "runs", store_url
    study_seen: dict = {}
    killed: list[int] = []

    def kill_one_worker():  # the first worker seen running a trial: SIGKILL, mid-trial
        end = time.time() + 120
        while time.time() < end and not killed:
            time.sleep(0.5)
            try:
                study_seen.setdefault("s", load(url, spec))
                running = study_seen["s"].get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            except Exception:  # not created yet, or locked
                continue
            pids = [int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in running if "worker" in t.user_attrs]
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    code = main(
        [
            "sweep",
            "run",
            path,
            "--workers",
            "2",
            "--storage",
            url,
            "--out-root",
            str(runs),
            "--heartbeat",
            "1",
            "--grace",
            "4",
        ]
    )
    killer.join()
    out, err = capfd.readouterr()
    assert killed, "no worker was killed"
    assert code == 0, err
    assert f"(pid {killed[0]}) killed by SIGKILL" in err and "Traceback" not in err
    assert "complete: " in out and "incomplete" not in err  # the status table, and nothing missing
    study = load(url, spec)
    assert_grid_done_once(study, spec)
    stale = [t for t in study.trials if t.user_attrs.get("stale")]
    assert all(t.user_attrs["fail_reason"].startswith("worker died (no heartbeat since ") for t in stale)


@pytest.mark.parametrize("study", ["../../escape", "", "a/b", ".hidden", "x y"])
def test_study_must_be_a_simple_name(tmp_path, capsys, study):
    path = write_spec(tmp_path, study=study)
    assert main(["sweep", "run", path, "--out-root", str(tmp_path / "runs")]) == 2
    err = _one_error_line(capsys)
    assert "study=" in err and "a simple name" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "escape").exists()


@pytest.mark.parametrize("flag", [["--workers", "0"], ["--workers", "-2"], ["--threads", "-1"], ["--grace", "0"]])
def test_workers_and_threads_must_be_positive(tmp_path, capsys, flag):
    path = write_spec(tmp_path)
    assert main(["sweep", "run", path, "--out-root", str(tmp_path / "runs"), *flag]) == 2
    assert f"--{flag[0][2:]} {flag[1]}: expected an integer >= 1" in _one_error_line(capsys)
    assert not (tmp_path / "runs").exists()


def test_the_worker_reads_famlab_trains_divergence_status():
    from famlab.sweep.worker import TRAIN_EXIT_DIVERGED
    from famlab.train.stops import EXIT_DIVERGED

    assert TRAIN_EXIT_DIVERGED == EXIT_DIVERGED
