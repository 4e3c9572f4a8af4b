"""The long-context suite in sweeps and runs: a spec's ``eval_suite`` (checked up front, run by the worker after
training, its metrics an objective), ``famlab eval`` and ``famlab eval --suite`` keeping each other's final
metrics, the suite in wandb, and the analysis of a suite sweep (heatmaps side by side, effective lengths)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from optuna.trial import TrialState
from sweep_helpers import load, write_spec
from test_train_loggers import no_wandb_network  # noqa: F401  (a fixture)

from famlab import analysis as fa
from famlab.cli import main
from famlab.config import load_run_config
from famlab.config.metrics import NIAH_TASKS, RULER_TASKS, SUITES, logged_metrics, suite_metrics
from famlab.runs import RunDir
from famlab.sweep import default_storage, load_spec, run_sweep, validate_trials
from famlab.sweep.spec import dot_value

pytestmark = pytest.mark.usefixtures("one_thread")

# PassKey as symbols at 64 tokens: the suite's symbol samples need no corpus
SYMBOLS = {"data.task": "passkey", "data.tokenizer": "symbols", "data.seq_len": 64, "data.val_batches": 0}
SMALL_SUITE = {
    "data.passkey_eval_lengths": [1, 2],
    "data.passkey_eval_depth_buckets": 2,
    "data.passkey_eval_samples": 2,
}
SMALL = [f"{k}={dot_value(v)}" for k, v in SMALL_SUITE.items()]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ----------------------------------------------------------------------------------------------
# the spec key and the metric names


def test_the_declared_tasks_are_the_ones_the_suite_runs():
    from famlab.eval import suite
    from famlab.eval.suite.ruler import TASKS

    assert tuple(TASKS) == RULER_TASKS and set(NIAH_TASKS) < set(RULER_TASKS)
    assert suite.SUITES is SUITES


@pytest.mark.parametrize("value", ["rulr", 3, True, ["niah"]])
def test_eval_suite_must_be_a_suite(tmp_path, capsys, value):
    path = write_spec(tmp_path, eval_suite=value)
    assert main(["sweep", "run", path, "--out-root", str(tmp_path / "runs")]) == 2
    err = one_line_error(capsys)
    assert f"t.eval_suite={value!r} is not allowed: expected one of niah, ruler, mqar, lm-position, all" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("value", [-0.1, 1.5, "high", True, [0.5]])
def test_eval_suite_threshold_must_be_a_score(tmp_path, capsys, value):
    path = write_spec(tmp_path, eval_suite="niah", eval_suite_threshold=value)
    assert main(["sweep", "run", path, "--out-root", str(tmp_path / "runs")]) == 2
    err = one_line_error(capsys)
    assert f"t.eval_suite_threshold={value!r} is not allowed: expected a number in [0, 1]" in err
    assert not (tmp_path / "runs").exists()


def test_the_suite_threshold_reaches_famlab_eval(tmp_path):
    plain = load_spec(write_spec(tmp_path, eval_suite="niah"), validate_runs=False)
    assert plain.eval_suite_threshold is None and plain.suite_args() == ["--suite", "niah"]  # eval's default
    spec = load_spec(write_spec(tmp_path, eval_suite="niah", eval_suite_threshold=0.5), validate_runs=False)
    assert spec.suite_args() == ["--suite", "niah", "--threshold", "0.5"]  # a sweep's run: the next test


def test_suite_metric_names_are_checked_like_other_eval_metrics(tmp_path, capsys):
    objective = {"metric": "eval/ruler/effective_length", "direction": "maximize"}
    # without eval_suite no trial writes it: refused up front, with the names that are allowed
    path = write_spec(tmp_path, overrides=SYMBOLS, objective=objective)
    assert main(["sweep", "run", path, "--out-root", str(tmp_path / "runs")]) == 2
    err = one_line_error(capsys)
    assert "t.objective.metric='eval/ruler/effective_length' is not a metric the trials write" in err
    # with it, the objective, a task's effective length and the heatmap's path (a table column) are allowed
    metrics = ["eval/ruler/tasks/vt/effective_length_x", "eval/ruler/heatmap", "eval/ruler/score"]
    ok = write_spec(tmp_path, overrides=SYMBOLS, objective=objective, eval_suite="ruler", metrics=metrics)
    validate_trials(load_spec(ok, validate_runs=False))
    # a string is no objective; a member the suite does not run is no metric
    for bad, field in (("eval/ruler/csv", "objective"), ("eval/mqar/score", "objective")):
        value = {"metric": bad, "direction": "maximize"}
        path = write_spec(tmp_path, overrides=SYMBOLS, objective=value, eval_suite="ruler")
        with pytest.raises(ValueError, match=f"t.{field}.metric='{bad}' is not a metric the trials write"):
            validate_trials(load_spec(path, validate_runs=False))
    # lm-position reads byte-level text: a symbols run has no eval/lm-position/bpb, a byte run has it
    symbols = load_run_config("tiny", [f"{k}={v}" for k, v in SYMBOLS.items()])
    assert "eval/lm-position/bpb" not in logged_metrics(symbols, suite="all")
    assert "eval/lm-position/bpb" in logged_metrics(load_run_config("tiny"), suite="all")
    # the suite's evaluation settings are checked like evaluate's
    bad = write_spec(tmp_path, overrides=SYMBOLS, eval_suite="niah", eval_overrides={"data.passkey_eval_samples": 0})
    with pytest.raises(ValueError, match="has a bad run config: .*passkey_eval_samples=0"):
        validate_trials(load_spec(bad, validate_runs=False))


def test_the_long_context_suite_spec_loads_at_both_profiles():
    tiny = load_spec("long_context_suite", "tiny")
    assert tiny.eval_suite == "niah" and tiny.evaluate and tiny.eval_suite_threshold == 0.5
    assert tiny.metric == "eval/niah/tasks/niah_passkey/effective_length"
    assert tiny.preset == "passkey_demo" and list(tiny.grid["variant"]) == ["M0", "M1", "M2", "FAM"]
    assert {tiny.variants[v]["model.attention"] for v in ("M0", "M1", "M2")} == {"bswa"}
    assert tiny.variants["FAM"] == {"model.attention": "fam", "model.mem_segment": 0}
    memory_kinds = load_spec("memory_kinds", "tiny")  # the same training recipe as memory_kinds' tiny profile
    assert tiny.overrides == memory_kinds.overrides and tiny.eval_overrides == memory_kinds.eval_overrides
    assert load_spec("long_context_suite", "paper", validate_runs=False).eval_suite == "ruler"


# ----------------------------------------------------------------------------------------------
# famlab eval and famlab eval --suite on one run


@pytest.fixture
def symbol_run(tmp_path):
    args = ["train", "preset=tiny", f"out_dir={tmp_path}", "name=s", "train.max_steps=2", "model.d_model=32"]
    args += [f"{k}={v}" for k, v in SYMBOLS.items()]
    args += ["train.checkpoint_every=0", "train.val_every=0", "logger.wandb=disabled", "train.accelerator=cpu"]
    assert main(args) == 0
    (run_dir,) = (tmp_path / "s").iterdir()
    return run_dir


def eval_section(run_dir: Path) -> dict:
    return json.loads((run_dir / "final_metrics.json").read_text())["eval"]


def test_plain_eval_and_suite_keep_each_others_final_metrics(symbol_run, capsys):
    run = str(symbol_run)
    plain_keys = {"task", "checkpoint", "csv", "accuracy", "digit_accuracy"}
    # plain first, then the suite: the plain entries stay as they were
    assert main(["eval", run, *SMALL, "--device", "cpu"]) == 0
    plain = eval_section(symbol_run)
    assert set(plain) == plain_keys
    assert main(["eval", run, *SMALL, "--device", "cpu", "--suite", "niah"]) == 0
    both = eval_section(symbol_run)
    assert {k: both[k] for k in plain_keys} == plain and set(both) == plain_keys | {"niah"}
    niah = both["niah"]
    # then plain again (other settings): its numbers are replaced, the suite's section stays
    fewer = ["data.passkey_eval_lengths=[1]", "data.passkey_eval_samples=1", "data.passkey_eval_depth_buckets=2"]
    assert main(["eval", run, *fewer, "--device", "cpu"]) == 0
    again = eval_section(symbol_run)
    assert again["niah"] == niah and set(again) == plain_keys | {"niah"}
    assert pd.read_csv(again["csv"]).shape[0] == 2  # the new table: 1 length x 2 depth buckets
    # a second suite adds its section and keeps both
    assert main(["eval", run, *SMALL, "--device", "cpu", "--suite", "mqar"]) == 0
    last = eval_section(symbol_run)
    assert last["niah"] == niah and {k: last[k] for k in plain_keys} == {k: again[k] for k in plain_keys}
    assert set(last) == plain_keys | {"niah", "mqar"}
    # and the names a sweep reads are the ones famlab.config.metrics declares for these evaluations
    flat = {k for k in RunDir(symbol_run).read_flat_final_metrics() if k.startswith("eval/")}
    cfg = load_run_config("tiny", [f"{k}={v}" for k, v in SYMBOLS.items()])
    declared = set(logged_metrics(cfg, evaluate=True, numeric=False)) | set(
        suite_metrics("niah", "symbols", numeric=False) + suite_metrics("mqar", "symbols", numeric=False)
    )
    assert flat == {k for k in declared if k.startswith("eval/")}


def test_the_suite_goes_into_the_runs_wandb_run(no_wandb_network, tmp_path, capsys):  # noqa: F811
    args = ["train", "preset=tiny", f"out_dir={tmp_path}", "name=wb", "train.max_steps=2", "model.d_model=32"]
    args += [f"{k}={v}" for k, v in SYMBOLS.items()]
    args += ["train.checkpoint_every=0", "train.val_every=0", "logger.wandb=offline", "train.accelerator=cpu"]
    assert main(args) == 0
    (run_dir,) = (tmp_path / "wb").iterdir()
    run_id = RunDir(run_dir).wandb_id()
    capsys.readouterr()
    assert main(["eval", str(run_dir), *SMALL, "--device", "cpu", "--suite", "niah"]) == 0
    assert f"wandb: logged to run {run_id} " in capsys.readouterr().out
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all((p / f"run-{run_id}.wandb").is_file() for p in runs)  # the same run, resumed
    media = runs[-1] / "files" / "media"
    (image,) = (media / "images").glob("eval/niah/heatmap_*.png")
    heatmap = run_dir / "eval" / "niah_heatmap.png"
    assert image.read_bytes()[:4] == b"\x89PNG" and image.stat().st_size == pytest.approx(heatmap.stat().st_size, 0.5)
    (table,) = (media / "table").glob("eval/niah/table_*.table.json")
    logged = json.loads(table.read_text())
    csv = pd.read_csv(run_dir / "eval" / "niah.csv")
    assert logged["columns"] == list(csv.columns) and len(logged["data"]) == len(csv)
    # the summary: every number of the suite's final metrics, under the names a sweep reads
    records = (runs[-1] / f"run-{run_id}.wandb").read_bytes()
    final = RunDir(run_dir).read_flat_final_metrics()
    numbers = {k: v for k, v in final.items() if k.startswith("eval/niah/") and isinstance(v, int | float)}
    assert len(numbers) == 6 + 3 * len(NIAH_TASKS) and all(summary_value(records, k) == v for k, v in numbers.items())
    assert summary_value(records, "eval/mqar/score") is None  # negative control: a suite that did not run


def summary_value(records: bytes, key: str):
    """A summary value in an offline run's ``.wandb`` file (protobuf records, uncompressed; this wandb has no
    reader for them): the SummaryItem's ``key`` followed by its ``value_json`` (field 16: bytes 0x82 0x01, then
    its length, short here); None when the key is not there."""
    found = re.search(re.escape(key.encode()) + rb"\x82\x01([\x00-\x7f])", records)
    if found is None:
        return None
    start = found.end()
    return json.loads(records[start : start + found.group(1)[0]])


# ----------------------------------------------------------------------------------------------
# a sweep with a suite, and its analysis


def test_a_sweep_runs_the_suite_and_the_notebook_shows_it(tmp_path):
    from famlab import report

    variants = {"M0": {"model.attention": "bswa", "model.mem_segment": 0}, "FAM": {"model.attention": "fam"}}
    path = write_spec(
        tmp_path,
        "long_context_suite",
        overrides={**SYMBOLS, "train.max_steps": 2, "train.val_every": 0},
        grid={"variant": ["M0", "FAM"]},
        variants=variants,
        eval_suite="niah",
        eval_suite_threshold=0.25,  # not famlab eval's 0.85: the trials' summaries must say 0.25
        eval_overrides=SMALL_SUITE,
        objective={"metric": "eval/niah/effective_length", "direction": "maximize"},
        metrics=["eval/niah/score", "eval/niah/tasks/niah_single_digits/effective_length_x"],
        table={"columns": "variant"},
    )
    spec = load_spec(path)
    url = default_storage(spec, tmp_path / "runs")
    run_sweep(spec, url, workers=1, out_root=tmp_path / "runs", heartbeat=2)
    trials = load(url, spec).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        run = RunDir(t.user_attrs["run_dir"])
        final = run.read_flat_final_metrics()
        assert t.value == final["eval/niah/effective_length"] == t.user_attrs["m.eval/niah/effective_length"]
        assert final["eval/niah/threshold"] == 0.25
        assert (run.eval_dir / "niah_heatmap.png").exists() and not run.eval_path.exists()  # no plain eval
        stored = pd.DataFrame(t.user_attrs["suite_table"])
        pd.testing.assert_frame_equal(stored, pd.read_csv(run.eval_dir / "niah.csv"), check_dtype=False)

    res = fa.load_sweep(path, "tiny", storage=url)
    # the effective-length table: each setting's number is its trial's (one seed), the average first
    table = fa.effective_length_table(res, formatted=False)
    assert list(table.index) == ["M0", "FAM"] and list(table.columns) == ["average", *NIAH_TASKS]
    for t in trials:
        row = table.loc[t.params["variant"]]
        assert row["average"] == t.user_attrs["m.eval/niah/effective_length_x"]
        for task in NIAH_TASKS:
            assert row[task] == t.user_attrs[f"m.eval/niah/tasks/{task}/effective_length_x"]
    # the heatmaps: one row per task, one column per setting, each the trial's score by depth and length
    fig = fa.plot_suite_heatmaps(res)
    shown = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.get_title() for ax in shown] == [f"{v}: {task}" for task in NIAH_TASKS for v in ("M0", "FAM")]
    for ax in shown:
        variant, task = ax.get_title().split(": ")
        (trial,) = [t for t in trials if t.params["variant"] == variant]
        rows = pd.DataFrame(trial.user_attrs["suite_table"])
        expected = rows[rows.task == task].pivot_table(index="depth", columns="length_x", values="score")
        np.testing.assert_allclose(ax.get_images()[0].get_array(), expected.to_numpy())

    # the notebook runs against this store and shows both
    out = tmp_path / "executed.ipynb"
    params = {"storage": url, "profile": "tiny", "spec": path}
    report.execute(Path(report.__file__).parents[2] / "analysis" / "long_context_suite.ipynb", out, params)
    import nbformat

    cells = nbformat.read(out, as_version=4).cells
    outputs = [o for c in cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(str(o.get("data", {}).get("text/plain", "")) + str(o.get("text", "")) for o in outputs)
    assert "effective length (x training)" in text and "niah_single_uuid" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2  # the heatmaps, and more


def test_the_analysis_averages_seeds_and_orders_settings_as_the_spec():
    from analysis_store import synthetic

    def table(score: float) -> list[dict]:  # one task with a needle, one without (vt: no depth, not drawn)
        rows = [
            {"member": "ruler", "task": "niah_single_digits", "length": 128 * x, "length_x": x, "depth": d}
            | {"score": score * x + d}
            for x in (1, 2)
            for d in (0.25, 0.75)
        ]
        return rows + [{"member": "ruler", "task": "vt", "length": 128, "length_x": 1, "depth": None, "score": 1.0}]

    rows = []
    for i, variant in enumerate(["FAM", "M2", "M0"]):  # stored out of the spec's order
        for seed, eff in ((0, 1.0 + i), (1, 2.0 + i)):
            rows.append(
                {"variant": variant, "seed": seed, "suite_table": table(0.1 * seed + i)}
                | {
                    "eval/ruler/effective_length_x": eff,
                    "eval/ruler/tasks/niah_single_digits/effective_length_x": 2 * eff,
                }
                | {"eval/ruler/tasks/vt/effective_length_x": 0.0, "eval/ruler/effective_length": 128 * eff}
            )
    res = synthetic("long_context_suite", rows, ["variant"], profile="paper")  # the ruler suite (tiny: niah)
    means = fa.effective_length_table(res, formatted=False)
    assert list(means.index) == ["M0", "M2", "FAM"]  # the spec's grid order
    assert list(means.columns) == ["average", "niah_single_digits", "vt"]
    np.testing.assert_allclose(means.loc["M0"], [3.5, 7.0, 0.0])  # seeds 0 and 1 of i = 2
    np.testing.assert_allclose(means.loc["FAM"], [1.5, 3.0, 0.0])
    shown = fa.effective_length_table(res)
    assert shown.loc["FAM", "average"].startswith("1.5 ± ") and set(shown["n"]) == {2}
    fig = fa.plot_suite_heatmaps(res)
    drawn = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.get_title() for ax in drawn] == [
        "M0: niah_single_digits",
        "M2: niah_single_digits",
        "FAM: niah_single_digits",
    ]
    # FAM (i = 0): the mean over seeds of score*x + depth, score = 0.1 * seed: rows depth, columns length_x
    expected = [[0.05 * x + d for x in (1, 2)] for d in (0.25, 0.75)]
    np.testing.assert_allclose(drawn[2].get_images()[0].get_array(), expected)
