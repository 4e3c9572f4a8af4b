"""A retry starts where its point's dead attempt stopped (famlab.sweep.resume): from its last periodic
checkpoint, with the result an uninterrupted run gets; or, when that attempt's run had finished, with
that run's result and no training at all."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState
from sweep_helpers import load, write_spec

from famlab.config import load_run_config, run_config_to_yaml
from famlab.runs import RunDir
from famlab.sweep import load_spec, make_storage, run_sweep, worker_command
from famlab.sweep.resume import start_of

OVERRIDES = {"train.max_steps": 80, "train.val_every": 10, "train.checkpoint_every": 10, "train.log_every": 1}


@pytest.fixture
def worker(tmp_path):
    """One sweep worker process on a spec's SQLite study (killed at the end if the test left it alive)."""
    started = []

    def start(spec, url):
        cmd = worker_command(spec, tmp_path / "runs", heartbeat=1, grace=3, threads=1)
        proc = subprocess.Popen(cmd, env={**os.environ, "FAMLAB_STORAGE": url})
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()


def _wait_for(predicate, what, timeout=180.0):
    end = time.time() + timeout
    while time.time() < end:
        found = predicate()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _study(tmp_path, name):
    spec = load_spec(write_spec(tmp_path, name=name, grid={"model.mem_segment": [1]}, overrides=OVERRIDES))
    return spec, f"sqlite:///{tmp_path / f'{name}.db'}"


def test_a_killed_trial_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_run(tmp_path, worker):
    spec, url = _study(tmp_path, "cut")
    runs = tmp_path / "runs"
    first = runs / spec.study_name / "trial-0000"
    proc = worker(spec, url)
    _wait_for(lambda: list(first.glob("*/*/checkpoints/step*.ckpt")), "the first periodic checkpoint")
    (train,) = _children(proc.pid)  # its famlab train process: frozen, so it cannot finish before the kill
    os.kill(train, signal.SIGSTOP)
    killed_run = RunDir.newest_under(first)
    step, _ = killed_run.newest_periodic_checkpoint()
    assert 10 <= step < 80 and not killed_run.final_metrics_path.exists()  # interrupted mid-run
    proc.kill()  # the worker dies mid-trial; its training child dies with it
    proc.wait()

    run_sweep(spec, url, workers=1, out_root=runs, heartbeat=1, grace=3)  # the rerun
    trials = load(url, spec).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    retry = trials[1]
    assert retry.user_attrs["started_from"] == {"trial": 0, "run_dir": str(killed_run), "step": step}
    assert f"resume={killed_run.path}/checkpoints/step{step:08d}.ckpt" in retry.user_attrs["command"]
    log = (runs / spec.study_name / "trial-0001" / "train.log").read_text()
    assert f"resumes trial 0's run at step {step}" in log
    resumed = RunDir(retry.user_attrs["run_dir"])
    assert resumed != killed_run
    trained = sorted(r["step"] for r in resumed.read_metrics() if "train/loss" in r)
    assert trained == list(range(step + 1, 81))  # the steps after the checkpoint, not from step 0

    spec_u, url_u = _study(tmp_path, "whole")  # the same point, never interrupted
    run_sweep(spec_u, url_u, workers=1, out_root=runs)
    (whole,) = load(url_u, spec_u).trials
    assert "started_from" not in whole.user_attrs  # negative control: a first attempt starts at step 0
    assert retry.value == pytest.approx(whole.value, rel=1e-6)
    assert retry.user_attrs["m.train/loss"] == pytest.approx(whole.user_attrs["m.train/loss"], rel=1e-6)


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_a_trial_killed_after_its_run_finished_keeps_that_result(tmp_path, worker, store, request):
    spec, url = _study(tmp_path, "done")
    if store == "postgres":
        url = request.getfixturevalue("postgres").new_database()
    runs = tmp_path / "runs"
    first = runs / spec.study_name / "trial-0000"
    proc = worker(spec, url)
    run = _wait_for(lambda: RunDir.newest_under(first), "the run directory")
    proc.send_signal(signal.SIGSTOP)  # the worker freezes; its training child goes on to the end
    _wait_for(run.final_metrics_path.exists, "final_metrics.json")
    proc.kill()  # killed before it recorded the result
    proc.wait()
    assert run.is_complete()
    assert load(url, spec).trials[0].state == TrialState.RUNNING

    run_sweep(spec, url, workers=1, out_root=runs, heartbeat=1, grace=3)
    trials = load(url, spec).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    retry = trials[1]
    assert retry.user_attrs["run_dir"] == str(run)  # that run's result ...
    assert retry.value == pytest.approx(run.read_final_metrics()["val/loss"])
    assert retry.user_attrs["started_from"] == {"trial": 0, "run_dir": str(run), "step": 0}
    retry_dir = runs / spec.study_name / "trial-0001"
    assert RunDir.newest_under(retry_dir) is None  # ... and no second training run
    assert "keeps the finished run of trial 0" in (retry_dir / "train.log").read_text()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_an_earlier_attempt_with_another_run_config_is_not_resumed(tmp_path):
    """Negative control for resuming: an earlier attempt of the point whose run config differs (the spec
    changed in between, e.g. before `--retry-failed`) is no start; with the same config it is."""
    spec, url = _study(tmp_path, "changed")
    study = optuna.create_study(study_name=spec.study_name, storage=make_storage(url))  # no GridSampler: by hand
    params = {"model.mem_segment": 1, "seed": 0}
    old = study.ask({k: CategoricalDistribution([v]) for k, v in params.items()})
    run = tmp_path / "runs" / spec.study_name / "trial-0000" / "t" / "20260101-000000"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step00000010.ckpt").write_bytes(b"")  # never read here
    (run / "config.yaml").write_text(run_config_to_yaml(load_run_config(spec.preset, spec.trial_overrides(params))))
    study.tell(old, state=TrialState.FAIL)
    new = study.ask({k: CategoricalDistribution([v]) for k, v in params.items()})
    start = start_of(new, params, spec, tmp_path / "runs")
    assert start is not None and (start.of, start.step, start.checkpoint.parent.parent) == (0, 10, run)
    spec.overrides["train.lr"] = 0.01  # the spec changed since that attempt
    assert start_of(new, params, spec, tmp_path / "runs") is None
