"""The sweep's Optuna store: stale trials without a heartbeat, leases on a journal file, and studies that refuse
a changed spec."""

from __future__ import annotations

import time

import optuna
import pytest
from optuna.trial import TrialState
from sweep_helpers import assert_grid_done_once, load, write_spec

from famlab.cli import sweep_main as main
from famlab.sweep import load_spec, make_storage, open_study, run_sweep


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


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_journal_trial_whose_lease_lapses_goes_stale_and_one_renewed_does_not(tmp_path):
    from famlab.sweep.journal import LEASE_ATTR

    spec = load_spec(write_spec(tmp_path, grid={"model.mem_segment": [0, 1]}))
    url = f"journal:{tmp_path / 'j' / 'study.journal'}"
    storage = make_storage(url, heartbeat=1, grace=2)
    study = open_study(spec, storage)
    alive, dead = study.ask(), study.ask()  # two RUNNING trials; only the first one's worker renews its lease
    for _ in range(7):
        storage.record_heartbeat(alive._trial_id)
        time.sleep(0.5)
    optuna.storages.fail_stale_trials(study)  # what every worker does before it starts a trial
    trials = {t.number: t for t in load(url, spec).trials}  # read by another process's storage
    assert trials[alive.number].state == TrialState.RUNNING  # negative control: a renewed lease keeps it
    assert trials[dead.number].state == TrialState.FAIL and trials[dead.number].user_attrs["stale"]
    assert trials[dead.number].user_attrs["fail_reason"].startswith("worker died (no heartbeat since ")
    (retry,) = [t for t in trials.values() if t.state == TrialState.WAITING]  # its point, queued again
    assert retry.system_attrs["grid_id"] == trials[dead.number].system_attrs["grid_id"]
    assert LEASE_ATTR in trials[alive.number].system_attrs and LEASE_ATTR not in retry.system_attrs


def test_status_of_a_missing_journal_creates_nothing(tmp_path, capsys):
    path = write_spec(tmp_path)
    journal = tmp_path / "none" / "study.journal"
    assert main(["status", path, "--storage", f"journal:{journal}"]) == 0
    assert capsys.readouterr().out.strip() == f"study t-tiny: no trials yet (no store at {journal})"
    assert not journal.parent.exists()
