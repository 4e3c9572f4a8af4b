"""Several workers on one study, on SQLite, on a journal file and on a real PostgreSQL server on loopback:
every grid point once."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState
from sweep_helpers import assert_grid_done_once, load, write_spec

from famlab.sweep import load_spec, run_sweep


@pytest.mark.parametrize("store", ["sqlite", "journal"])
def test_two_workers_finish_grid_exactly_once(tmp_path, store):
    # 2 x 2 x 2 seeds = 8 points (the journal's run is shorter: 4)
    spec = load_spec(write_spec(tmp_path, seeds=[0, 1] if store == "sqlite" else [0]))
    url = f"sqlite:///{tmp_path / 'study.db'}" if store == "sqlite" else f"journal:{tmp_path / 'study.journal'}"
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
