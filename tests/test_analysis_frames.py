"""famlab.analysis.frames against a real tiny sweep store (tests/analysis_store.py): trials and
run directories as tidy frames, and the text ``famlab sweep`` prints."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from analysis_store import store  # noqa: F401  (the fixture)

from famlab import analysis as fa
from famlab.runs import RunDir
from famlab.sweep import load_spec


def test_load_study_tidy_frame(store):  # noqa: F811
    df = fa.load_study(store["url"], "fam_length-tiny")
    assert len(df) == 4 and set(df["state"]) == {"COMPLETE"}
    assert list(df.columns[:6]) == ["study", "number", "state", "model.fam_len", "seed", "objective"]
    for col in ["val/loss", "val/bits_per_token"]:
        assert col in df.columns, col
    for col in ["wall_time_s", "duration_s", "run_dir", "worker", "command"]:
        assert df[col].notna().all(), col
    assert (df["objective"] == df["val/loss"]).all()
    assert sorted(zip(df["model.fam_len"], df["seed"])) == [(1, 0), (1, 1), (4, 0), (4, 1)]
    for _, trial in df.iterrows():  # the metrics are the run's own final metrics
        final = RunDir(trial["run_dir"]).read_flat_final_metrics()
        assert trial["val/loss"] == pytest.approx(final["val/loss"])
    assert df.attrs["params"] == ["model.fam_len"]
    both = fa.load_study(store["url"])  # every study of the storage
    assert set(both["study"]) == {"fam_length-tiny", "memory_segment-tiny"} and len(both) == 6
    assert set(fa.study_names(store["url"])) == {"fam_length-tiny", "memory_segment-tiny"}
    again = fa.load_studies([(store["url"], "memory_segment-tiny")])
    assert len(again) == 2 and isinstance(again["eval_table"].iloc[0], list)
    with_config = fa.load_study(store["url"], "fam_length-tiny", config=True)
    assert (with_config["model.fam_len"] == df["model.fam_len"]).all()
    assert set(with_config["model.attention"]) == {"fam"}  # from each run's config.yaml


def test_reading_never_creates_a_store(tmp_path):
    url = f"sqlite:///{tmp_path / 'nothing.db'}"
    assert fa.load_study(url).empty and fa.study_names(url) == [] and fa.trials_frame(_spec(), url).empty
    assert not (tmp_path / "nothing.db").exists()


def _spec():
    return load_spec("fam_length", "tiny", validate_runs=False)


def test_trials_frame_and_status_table(store):  # noqa: F811
    spec = load_spec(store["fam"], "tiny", validate_runs=False)
    df = fa.trials_frame(spec, store["url"])
    assert list(df.columns[:6]) == ["number", "state", "model.fam_len", "seed", "objective", "duration_s"]
    assert list(df.columns[-3:]) == ["retry_of", "fail_reason", "run_dir"]
    assert {"val/loss", "val/bits_per_token", "wall_time_s"} <= set(df.columns)
    assert "eval_table" not in df.columns and "study" not in df.columns
    text = fa.status_table(spec, store["url"])
    head, columns, *rows = text.splitlines()
    assert head == "study fam_length-tiny (complete: 4)"
    # fail_reason is shown only when some trial failed
    assert columns.split() == ["number", "state", "model.fam_len", "seed", "objective", "duration_s"]
    *rows, best = rows
    assert len(rows) == 4 and all(r.split()[1] == "COMPLETE" for r in rows)
    top = df.loc[df["objective"].idxmin()]
    assert best.startswith(f"best: trial {int(top['number'])} model.fam_len={int(top['model.fam_len'])} ")
    for row, objective in zip(rows, df["objective"]):
        assert float(row.split()[4]) == pytest.approx(objective, rel=1e-5)
    other = load_spec("passkey", "tiny", validate_runs=False)
    assert fa.status_table(other, store["url"]) == "study passkey-tiny: no trials yet"


def test_load_runs_outside_a_sweep(store):  # noqa: F811
    res = fa.load_sweep(store["mem"], "tiny", storage=store["url"])
    runs = fa.load_runs([Path(d) for d in res.complete["run_dir"]])
    assert len(runs) == 2 and set(runs["state"]) == {"COMPLETE"}
    by_dir = runs.set_index("run_dir")
    for _, trial in res.complete.iterrows():
        run = by_dir.loc[trial["run_dir"]]
        assert run["model.attention"] == ("fam" if trial["variant"] == "FAM" else "bswa")
        assert run["val/loss"] == pytest.approx(trial["val/loss"]) and run["seed"] == trial["seed"]
        assert run["eval/accuracy"] == pytest.approx(trial["eval/accuracy"])
        assert len(run["eval_table"]) == len(trial["eval_table"])
        assert run["duration_s"] == pytest.approx(run["wall_time_s"])
    found = fa.load_runs(store["tmp"] / "runs")  # a folder is searched for run directories
    assert len(found) == 6
    agg = fa.aggregate(found, ["model.attention", "model.fam_len"], ["val/loss"])
    assert agg[("val/loss", "n")].sum() == 6


def test_a_run_without_final_metrics_is_incomplete(tmp_path):
    run = RunDir(tmp_path / "r" / "20260101-000000")
    run.path.mkdir(parents=True)
    run.config_path.write_text("seed: 3\nmodel:\n  fam_len: 4\n")
    run.append_metrics({"step": 10, "val/loss": 2.5})
    (row,) = fa.load_runs(tmp_path).to_dict(orient="records")
    assert row["state"] == "INCOMPLETE" and row["seed"] == 3 and row["model.fam_len"] == 4
    assert pd.isna(row["objective"]) and row["eval_table"] is None


def test_read_curves_follow_metrics_jsonl(store):  # noqa: F811
    res = fa.load_sweep(store["fam"], "tiny", storage=store["url"])
    curves = fa.read_curves(res.complete, "val/loss")
    assert set(curves.columns) == {"model.fam_len", "seed", "step", "val/loss"}
    for _, trial in res.complete.iterrows():
        logged = [r for r in RunDir(trial["run_dir"]).read_metrics() if "val/loss" in r and "step" in r]
        mine = curves[(curves["model.fam_len"] == trial["model.fam_len"]) & (curves["seed"] == trial["seed"])]
        assert logged and mine["step"].tolist() == [r["step"] for r in logged]
        assert mine["val/loss"].tolist() == [r["val/loss"] for r in logged]


def test_read_curves_skip_a_half_written_line(tmp_path):
    run = RunDir(tmp_path)
    run.append_metrics({"step": 1, "val/loss": 3.0})
    with run.metrics_path.open("a") as f:
        f.write(json.dumps({"step": 2, "val/loss": 2.0})[:10])  # a run still writing
    df = pd.DataFrame({"run_dir": [str(tmp_path)], "seed": [0]})
    assert fa.read_curves(df).to_dict(orient="records") == [{"seed": 0, "step": 1, "val/loss": 3.0}]


def test_eval_frame_one_row_per_evaluation_row(store):  # noqa: F811
    res = fa.load_sweep(store["mem"], "tiny", storage=store["url"])
    long = fa.eval_frame(res.complete)
    assert len(long) == sum(len(t) for t in res.complete["eval_table"])
    assert {"variant", "seed", "gap", "accuracy"} <= set(long.columns)
    assert set(long["variant"]) == {"M1", "FAM"}
