"""famlab.bench.workers at its smallest (1 and 2 journal workers, noop trials): every grid point completes once
per configuration and the table has its columns; the storage clock counts outermost calls only. No timings."""

from __future__ import annotations

import json
import time

import optuna

from famlab.bench.workers import COLUMNS, StorageClock, growth, main


def test_the_smallest_benchmark_completes_every_point_and_writes_its_table(tmp_path, capsys):
    res = main(["--workers", "1,2", "--storages", "journal", "--objectives", "noop", "--trials", "6",
                "--growth-trials", "4", "--out-dir", str(tmp_path)])  # fmt: skip
    assert [(r["storage"], r["objective"], r["workers"]) for r in res["rows"]] == [
        ("journal", "noop", 1),
        ("journal", "noop", 2),
    ]
    for row in res["rows"]:
        assert set(COLUMNS) <= set(row)
        assert row["trials"] == 6  # a 2 x 3 grid, each point once (a point two workers drew is pruned)
        assert row["storage_ms_per_trial"] > 0 and row["storage_calls_per_trial"] > 0
    assert [b["trials_before"] for b in res["growth"]["journal"]][0] == 0
    table = (tmp_path / "workers_latest.md").read_text()
    assert "| storage | trial | workers | trials | wall s | trials/min | storage ms/trial |" in table
    assert table.count("| journal | noop |") == 2 and "load average" in table
    (saved,) = tmp_path.glob("workers_*.json")
    assert json.loads(saved.read_text())["rows"] == res["rows"]
    assert table in capsys.readouterr().out


class Nested(optuna.storages.InMemoryStorage):
    def get_all_trials(self, *args, **kwargs):  # calls another public method from inside
        self.get_study_name_from_id(args[0])
        time.sleep(0.01)
        return super().get_all_trials(*args, **kwargs)


def test_the_storage_clock_counts_outermost_calls_once():
    storage = Nested()
    clock = StorageClock(storage)
    study = optuna.create_study(storage=storage)
    clock.calls, clock.seconds = 0, 0.0
    study.get_trials()
    assert clock.calls == 1 and clock.seconds >= 0.01  # get_study_name_from_id inside it not counted again
    assert isinstance(storage, optuna.storages.InMemoryStorage)  # Optuna's isinstance checks still hold


def test_growth_buckets_hold_the_median_of_their_trials():
    rows = [(n, float(n)) for n in range(10)]
    assert growth(rows, buckets=2) == [
        {"trials_before": 0, "to": 4, "median_ms": 2.0},
        {"trials_before": 5, "to": 9, "median_ms": 7.0},
    ]
