"""``famlab sweep submit`` on a real one-node SLURM cluster (tests/slurm.py): a job array of workers finishes
a grid once on PostgreSQL; a cancelled task's trial is given back at once and resumed from its checkpoint by
the other task; and the refusals (SQLite, bad SLURM settings) that need no cluster."""

from __future__ import annotations

import json
import re
import time

import pytest
from optuna.trial import TrialState
from sweep_helpers import assert_grid_done_once, load, write_spec

from famlab.cli import main
from famlab.runs import RunDir
from famlab.sweep import load_spec
from famlab.sweep.ranks import RUN_DIR_ENV
from famlab.sweep.slurm import sbatch_option, slurm_options, time_minutes, wait_for
from famlab.train import RUN_DIR_ENV as TRAIN_RUN_DIR_ENV


@pytest.fixture(scope="module")
def slurm():
    from slurm import SlurmCluster

    mp = pytest.MonkeyPatch()
    cluster = SlurmCluster()
    mp.setenv("SLURM_CONF", str(cluster.conf))  # sbatch, squeue and scancel (and submitit) find it
    yield cluster
    mp.undo()
    cluster.stop()


def _submitted_array(out: str) -> str:
    found = re.search(r"as SLURM job array (\d+) ", out)
    assert found, out
    return found.group(1)


def test_two_workers_as_a_job_array_finish_the_grid_once_on_postgres(tmp_path, slurm, postgres, capsys):
    path = write_spec(tmp_path, name="sl")  # 2 x 2 points, seconds each
    spec, url, runs = load_spec(path), postgres.new_database(), tmp_path / "runs"
    argv = ["sweep", "submit", path, "--storage", url, "--workers", "2", "--out-root", str(runs), "--heartbeat", "2"]
    argv += ["--partition", "debug", "--time", "0:10:00", "--cpus-per-worker", "1", "--sbatch=--comment=famlab-test"]
    code = main([*argv, "--wait"])
    out, err = capsys.readouterr()
    array = _submitted_array(out)
    logs = "\n".join(p.read_text() for p in (runs / "slurm" / spec.study_name).glob("*.out"))
    assert code == 0, err + logs + slurm.logs()
    assert "complete: 4" in out and "incomplete" not in err
    complete = assert_grid_done_once(load(url, spec), spec)
    assert {t.user_attrs["slurm_job"] for t in complete} == {f"{array}_0", f"{array}_1"}  # both tasks worked
    script = next((runs / "slurm" / spec.study_name).glob("*_submission.sh")).read_text()
    for line in ("--partition=debug", "--time=10", "--cpus-per-task=1", "--comment=famlab-test", "--array=0-1%2"):
        assert f"#SBATCH {line}" in script, script
    folder = runs / "slurm" / spec.study_name
    assert all(postgres.password.encode() not in f.read_bytes() for f in folder.iterdir())  # only in the env


def test_a_cancelled_task_gives_its_trial_back_and_the_other_resumes_it(tmp_path, slurm, capsys):
    """SIGTERM (scancel, or a preemption): the trial saves a checkpoint of its step, the task gives it back, the
    other task resumes it from there. No periodic checkpoints: the one the retry resumes from is SIGTERM's."""
    # long enough that an idle machine does not finish the run between its tenth step and the cancel
    overrides = {"train.max_steps": 400, "train.val_every": 50, "train.checkpoint_every": 0, "train.log_every": 1}
    path = write_spec(tmp_path, name="cx", grid={"model.mem_segment": [0, 1]}, overrides=overrides)
    spec, runs = load_spec(path), tmp_path / "runs"
    url = f"journal:{tmp_path / 'shared' / 'study.journal'}"
    # a long grace: on a busy machine a late lease must not make the other task take the trial as stale
    # before the cancelled task gives it back itself (which is what this test checks)
    argv = ["sweep", "submit", path, "--storage", url, "--workers", "2", "--out-root", str(runs), "--heartbeat", "2"]
    assert main([*argv, "--grace", "60"]) == 0
    array = _submitted_array(capsys.readouterr().out)
    study = None

    def victim():  # a task ten steps into a trial, while the other task is alive
        nonlocal study
        if study is None and (tmp_path / "shared" / "study.journal").exists():
            study = load(url, spec)
        if study is None:
            return None
        tasks = slurm.tasks(array)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            job, run = t.user_attrs.get("slurm_job"), t.user_attrs.get("run_dir")
            others = [k for k, state in tasks.items() if k != job and state == "RUNNING"]
            if job and run and others and len([r for r in RunDir(run).read_metrics() if "train/loss" in r]) >= 10:
                return t, job, RunDir(run)
        return None

    end = time.time() + 180
    while (found := victim()) is None:
        assert time.time() < end, f"no trial ten steps in on a task: {slurm.tasks(array)}\n{slurm.logs()}"
        time.sleep(0.2)
    trial, job, run = found
    assert main(["sweep", "status", path, "--storage", url, "--out-root", str(runs)]) == 0
    assert f"trial {trial.number} on SLURM job {job} (" in capsys.readouterr().out  # who runs it
    slurm.run("scancel", job)
    wait_for(array, poll=1.0)

    trials = load(url, spec).trials
    logs = "\n".join(p.read_text() for p in (runs / "slurm" / spec.study_name).glob("*.out"))
    cancelled = trials[trial.number]
    assert cancelled.state == TrialState.FAIL, logs
    assert cancelled.user_attrs["fail_reason"] == "worker stopped by SLURM (SIGTERM: cancelled or preempted)"
    complete = assert_grid_done_once(load(url, spec), spec)
    (retry,) = [t for t in complete if t.params == trial.params]
    assert retry.user_attrs["slurm_job"] != job  # the other task took it ...
    step, _ = run.newest_periodic_checkpoint()  # saved at SIGTERM (checkpoint_every=0)
    assert 10 <= step < 400 and not run.final_metrics_path.exists()
    assert retry.user_attrs["started_from"] == {"trial": trial.number, "run_dir": str(run), "step": step}  # ... from it
    assert retry.user_attrs.get("stale_retries") == 1 and retry.user_attrs.get("retry", 0) == 0  # no retry used up


def test_the_time_limit_signal_checkpoints_the_trial_and_requeues_the_task(tmp_path, slurm, capsys):
    """SIGUSR2 is what SLURM sends `signal_delay_s` before a task's time limit (submitit's --signal): sent here
    by scancel, at once. No periodic checkpoints: the one the retry resumes from is the signal's."""
    overrides = {"train.max_steps": 150, "train.val_every": 50, "train.checkpoint_every": 0, "train.log_every": 1}
    path = write_spec(tmp_path, name="tl", grid={"model.mem_segment": [0, 1]}, overrides=overrides)
    spec, runs = load_spec(path), tmp_path / "runs"
    url = f"journal:{tmp_path / 'shared' / 'study.journal'}"
    argv = ["sweep", "submit", path, "--storage", url, "--workers", "2", "--out-root", str(runs), "--heartbeat", "2"]
    assert main(argv) == 0
    array = _submitted_array(capsys.readouterr().out)

    def victim():  # a task ten steps into a trial
        if not (tmp_path / "shared" / "study.journal").exists():
            return None
        for t in load(url, spec).get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            job, run = t.user_attrs.get("slurm_job"), t.user_attrs.get("run_dir")
            if job and run and len([r for r in RunDir(run).read_metrics() if "train/loss" in r]) >= 10:
                return t, job, RunDir(run)
        return None

    end = time.time() + 180
    while (found := victim()) is None:
        assert time.time() < end, f"no trial ten steps in: {slurm.tasks(array)}\n{slurm.logs()}"
        time.sleep(0.2)
    trial, job, run = found
    slurm.run("scancel", "--signal=USR2", job)
    wait_for(array, poll=1.0)

    logs = "\n".join(p.read_text() for p in (runs / "slurm" / spec.study_name).glob("*.out"))
    stopped = load(url, spec).trials[trial.number]
    assert stopped.user_attrs["fail_reason"] == "worker stopped by SLURM (SIGUSR2: time limit)", logs
    step, _ = run.newest_periodic_checkpoint()  # saved by the signal (checkpoint_every=0)
    assert 10 <= step < 150 and not run.final_metrics_path.exists()
    complete = assert_grid_done_once(load(url, spec), spec)
    (retry,) = [t for t in complete if t.params == trial.params]
    assert retry.user_attrs["started_from"] == {"trial": trial.number, "run_dir": str(run), "step": step}
    assert f"sweep worker {job}: time limit near; trials given back: [{trial.number}]; requeued" in logs
    assert logs.count(f"sweep worker {job} (task ") == 2  # the task started again after its requeue


def test_a_two_device_trial_takes_its_ranks_from_slurm(tmp_path, slurm, capsys):
    """train.devices=2 (DDP on CPU, gloo) in a job-array worker: the trial's ranks are the two tasks of a job step
    (srun), so Lightning uses its SLURMEnvironment (world size 2 from SLURM, nothing launched by Lightning), both
    ranks write one run directory, and the trial completes. `famlab train` outside SLURM records
    LightningEnvironment instead (tests/test_train_run.py::test_ddp_two_processes_on_cpu)."""
    overrides = {"train.devices": 2, "train.strategy": "ddp", "train.accelerator": "cpu", "train.max_steps": 4}
    overrides |= {"train.val_every": 2, "train.checkpoint_every": 2}
    path = write_spec(tmp_path, name="dd", grid={"model.mem_segment": [1]}, overrides=overrides)
    spec, runs = load_spec(path), tmp_path / "runs"
    url = f"journal:{tmp_path / 'shared' / 'study.journal'}"
    argv = ["sweep", "submit", path, "--storage", url, "--workers", "1", "--out-root", str(runs), "--heartbeat", "2"]
    assert main([*argv, "--cpus-per-worker", "1"]) == 2  # one CPU cannot hold two ranks: refused, nothing submitted
    assert "cpus_per_worker=1 is less than the trials' train.devices=2" in capsys.readouterr().err
    code = main([*argv, "--cpus-per-worker", "2", "--wait"])
    out, err = capsys.readouterr()
    array = _submitted_array(out)
    logs = "\n".join(p.read_text() for p in (runs / "slurm" / spec.study_name).glob("*.out"))
    (trial,) = assert_grid_done_once(load(url, spec), spec)
    assert code == 0, err + logs + slurm.logs()
    run = RunDir(trial.user_attrs["run_dir"])
    assert list(run.path.parent.iterdir()) == [run.path]  # rank 1 wrote into rank 0's run, made none of its own
    distributed = json.loads(run.provenance_path.read_text())["distributed"]
    assert distributed["cluster_environment"] == "SLURMEnvironment", distributed
    assert distributed["strategy"] == "DDPStrategy" and distributed["world_size"] == 2
    slurm_record = distributed["slurm"]
    assert slurm_record["ntasks"] == "2" and slurm_record["ntasks_per_node"] == "2"
    assert slurm_record["step_id"] not in (None, "batch")  # a step of its own in ...
    assert trial.user_attrs["slurm_job"] in (array, f"{array}_0")  # ... the worker's job (one task: no array)
    final = run.read_final_metrics()
    assert final["step"] == 4 and all(r["step"] <= 4 for r in run.read_metrics())


def test_the_worker_and_famlab_train_agree_on_the_run_dir_variable():
    assert RUN_DIR_ENV == TRAIN_RUN_DIR_ENV


@pytest.mark.parametrize(
    "extra,message",
    [
        ([], "sweep submit needs a storage every node reaches"),
        (["--storage", "sqlite:///x.db"], "SQLite cannot be shared by workers on several nodes"),
        (["--storage", "journal:j", "--time", "soon"], "time='soon': expected minutes"),
        (["--storage", "journal:j", "--gpus-per-worker", "-1"], "gpus_per_worker=-1 is not allowed"),
        (["--storage", "journal:j", "--sbatch", "qos high"], "sbatch option 'qos high'"),
    ],
)
def test_submit_refuses_in_one_line(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.delenv("FAMLAB_STORAGE", raising=False)
    monkeypatch.chdir(tmp_path)
    path = write_spec(tmp_path)
    assert main(["sweep", "submit", path, "--workers", "2", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not any(tmp_path.glob("j*")) and not (tmp_path / "runs").exists()  # nothing made, nothing submitted


def test_a_spec_profile_slurm_section_is_checked_and_overridden_by_the_command_line(tmp_path, capsys):
    section = {"partition": "gpu", "time": "1-00:00:00", "gpus_per_worker": 4, "sbatch": ["--qos=high"]}
    spec = load_spec(write_spec(tmp_path, profiles={"tiny": {"slurm": section}}))
    opts = slurm_options(spec, partition="short", time="90", sbatch=["--exclusive"])
    assert (opts.partition, opts.time, opts.gpus_per_worker) == ("short", 90, 4)
    assert opts.sbatch == {"qos": "high", "exclusive": True}
    params = opts.executor_parameters("famlab-t", 8)
    assert params["gpus_per_node"] == 4 and params["array_parallelism"] == 8 and params["partition"] == "short"
    bad = write_spec(tmp_path, profiles={"tiny": {"slurm": {"partitoin": "gpu"}}})
    assert main(["sweep", "run", bad, "--out-root", str(tmp_path / "runs")]) == 2
    assert "partitoin" in capsys.readouterr().err


@pytest.mark.parametrize(
    "value,minutes",
    [(30, 30), ("30", 30), ("1:30", 2), ("2:00:00", 120), ("1-0", 1440), ("1-02:03", 1563), ("0:0:59", 1)],
)
def test_slurm_time_limits_in_minutes(value, minutes):
    assert time_minutes(value) == minutes


@pytest.mark.parametrize("value", ["", "x", "1:2:3:4", 0, -5, True, "0:00"])
def test_bad_slurm_time_limits(value):
    with pytest.raises(ValueError):
        time_minutes(value)


def test_sbatch_options():
    assert sbatch_option("--qos=high") == ("qos", "high")
    assert sbatch_option("#SBATCH --mail-type=END") == ("mail_type", "END")
    assert sbatch_option("exclusive") == ("exclusive", True)
    with pytest.raises(ValueError):
        sbatch_option("-N 2")
