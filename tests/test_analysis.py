"""famlab.analysis, famlab.paper and famlab.report against a real tiny sweep store.

One module-scoped fixture runs two real tiny sweeps into one temporary SQLite store: ``fam_length``
(L_F in {1, 4} x seeds {0, 1}) and ``memory_segment`` (M1 and FAM, one seed, with a recall
evaluation stored on each trial). The report test executes the notebooks against that store with
papermill; ``passkey`` has no study there and must show the clear message instead of a traceback."""

from __future__ import annotations

import fcntl
import itertools
import json
import math
import os
import re
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import TINY

from famlab import analysis as fa
from famlab import paper, report
from famlab.sweep import load_spec, run_sweep


def _spec(tmp: Path, study: str, **fields) -> str:
    spec = {
        "study": study,
        "preset": "tiny",
        "overrides": dict(TINY),
        "objective": {"metric": "val/loss", "direction": "minimize"},
        "metrics": ["val/bits_per_token", "wall_time_s"],
        "profiles": {"tiny": {}},
        **fields,
    }
    path = tmp / f"{study}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The sweeps run once per test session: under pytest-xdist the workers share one store (the
    first builds it under a file lock, the others wait and reuse it)."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    tmp = shared / "analysis-store"
    tmp.mkdir(exist_ok=True)
    with open(shared / "analysis-store.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _build_store(tmp)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build_store(tmp: Path) -> dict:
    url = f"sqlite:///{tmp / 'store.db'}"
    info = {"url": url, "tmp": tmp, "fam": str(tmp / "fam_length.yaml"), "mem": str(tmp / "memory_segment.yaml")}
    if (tmp / "done").exists():
        return info
    fam = _spec(
        tmp,
        "fam_length",
        overrides={**TINY, "model.attention": "fam"},
        grid={"model.fam_len": [1, 4]},
        seeds=[0, 1],
        table={"rows": "model.fam_len"},
    )
    mem = _spec(
        tmp,
        "memory_segment",
        variants={
            "M1": {"model.attention": "bswa", "model.mem_segment": 1},
            "FAM": {"model.attention": "fam", "model.mem_segment": 1},
        },
        grid={"variant": ["M1", "FAM"]},
        seeds=[0],
        evaluate=True,
        eval_overrides={"data.recall_eval_gaps": [0, 1], "data.recall_eval_samples": 4},
        table={"columns": "variant"},
    )
    for path in (fam, mem):
        run_sweep(load_spec(path, "tiny"), url, workers=1, out_root=tmp / "runs", heartbeat=2)
    (tmp / "done").touch()
    return info


# ---------------------------------------------------------------- statistics (no sweep needed)


@pytest.mark.parametrize(
    ("q", "dof", "expected"),
    [(0.975, 1, 12.706204736), (0.975, 2, 4.302652730), (0.975, 4, 2.776445105), (0.975, 30, 2.042272456)]
    + [(0.995, 10, 3.169272673), (0.9, 5, 1.475884049), (0.025, 3, -3.182446305), (0.975, math.inf, 1.959963985)],
)
def test_t_quantiles_match_tables(q, dof, expected):
    assert fa.t_ppf(q, dof) == pytest.approx(expected, abs=1e-7)
    assert fa.t_cdf(expected, dof) == pytest.approx(q, abs=1e-10)


def test_mean_ci_by_hand():
    # 1, 2, 3, 4: mean 2.5, s^2 = (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3, half = t(0.975, 3) s / 2
    out = fa.mean_ci([1.0, 2.0, 3.0, 4.0, float("nan")])
    s = math.sqrt(5 / 3)
    assert out["n"] == 4 and out["mean"] == 2.5 and out["std"] == pytest.approx(s)
    assert out["ci_half"] == pytest.approx(3.182446305 * s / 2)
    assert out["ci_low"] == pytest.approx(2.5 - 3.182446305 * s / 2)
    assert out["ci_high"] == pytest.approx(2.5 + 3.182446305 * s / 2)
    one = fa.mean_ci([7.0])
    assert one["mean"] == 7.0 and one["n"] == 1 and math.isnan(one["std"]) and math.isnan(one["ci_half"])
    # 90% interval of 2 values: mean 1.5, s = 0.7071, half = t(0.95, 1) * s / sqrt(2) = 6.3138 * 0.5
    assert fa.mean_ci([1.0, 2.0], level=0.9)["ci_half"] == pytest.approx(6.313751515 * 0.5)


def test_aggregate_groups_complete_trials_and_orders_settings():
    df = pd.DataFrame(
        {
            "state": ["COMPLETE"] * 5 + ["FAIL"],
            "variant": ["M1", "M1", "FAM", "FAM", "FAM", "M1"],
            "seed": [0, 1, 0, 1, 2, 2],
            "val/loss": [2.0, 4.0, 1.0, 2.0, 6.0, 100.0],
        }
    )
    agg = fa.aggregate(df, "variant", ["val/loss"], order={"variant": ["M1", "FAM"]})
    assert list(agg.index) == ["M1", "FAM"]
    assert list(agg.columns.get_level_values("stat")) == list(fa.STATS)
    m1, f = agg.loc["M1", "val/loss"], agg.loc["FAM", "val/loss"]
    assert m1["mean"] == 3.0 and m1["n"] == 2 and m1["std"] == pytest.approx(math.sqrt(2))
    assert m1["ci_half"] == pytest.approx(12.706204736 * math.sqrt(2) / math.sqrt(2))
    assert f["mean"] == 3.0 and f["n"] == 3 and f["std"] == pytest.approx(math.sqrt(7))
    assert f["ci_half"] == pytest.approx(4.302652730 * math.sqrt(7) / math.sqrt(3))


def test_mean_ci_text():
    agg = fa.aggregate(pd.DataFrame({"k": [1, 1, 2, 3, 3], "x": [2.8, 2.8466, 5.0, 1.0, 41.0]}), "k", ["x"])
    text = fa.format_mean_ci(agg)
    half1 = 12.706204736 * np.std([2.8, 2.8466], ddof=1) / math.sqrt(2)  # 0.296
    assert text.loc[1, "x"] == f"{2.8233:.2f} ± {half1:.2f}" == "2.82 ± 0.30"
    assert text.loc[2, "x"] == "5" and text.loc[3, "x"] == "21 ± 254" and text["n"].tolist() == [2, 1, 2]


def test_spearman():
    assert fa.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert fa.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # ties: ranks (1, 2.5, 2.5, 4) vs (1, 2, 3, 4)
    r = np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1]
    assert fa.spearman([1, 5, 5, 9], [1, 2, 3, 4]) == pytest.approx(r)
    assert math.isnan(fa.spearman([1], [2])) and math.isnan(fa.spearman([1, 1], [1, 2]))


# ---------------------------------------------------------------- paper data


def test_paper_tables_transcribed():
    t11 = paper.TABLE_11.frame()
    assert list(t11.index) == ["M0", "M1", "M2", "M3", "M4", "M6", "M7", "M8", "FAM"]
    assert list(t11.columns) == list(paper.TASKS)
    assert (
        t11.loc["FAM", "Isabelle"] == 73.6 and t11.loc["M7", "Isabelle"] == 67.29 and t11.loc["M0", "NarrativeQA"] == 0
    )
    t5 = paper.TABLE_5.frame()
    assert list(t5.index) == [4, 16, 64, 256, 1024] and t5.loc[64, "Qasper"] == 7.2 and t5.loc[256, "XLSum"] == 16.0
    assert paper.TABLE_7.frame().loc["zero", "Isabelle"] == 72.1
    t8 = paper.TABLE_8.frame()
    assert t8.shape == (2, 8) and t8.loc["TXL", "GPT-3 rank"] == 59.9
    assert paper.TABLE_1.frame().loc[("24B", "FAM"), "Quality"] == 58.0
    assert paper.TABLE_2.frame().loc[("8B", "FAM"), "GPT-3 gen"] == 54.9
    assert paper.TABLE_6.frame()["XLSum"].tolist() == [15.9, 15.8, 15.7, 15.1, 16.2]
    cost = fa.paper_cost_table()
    assert cost.loc[258_000, "FAM time s"] == 154.9 and (cost["FAM / BSWA time"] < 1.02).all()


def _synthetic(spec_name: str, rows: list[dict], params: list[str]) -> fa.SweepResults:
    df = pd.DataFrame([{"study": spec_name, "state": "COMPLETE", **r} for r in rows])
    df.attrs["params"] = params
    return fa.SweepResults(load_spec(spec_name, "tiny", validate_runs=False), "sqlite:///x.db", df, params=params)


def test_a_repeated_setting_and_seed_counts_once():
    """Two COMPLETE trials of the same point and seed (a retried point both workers finished) must
    not weigh twice: the first counts, with a warning naming the repeat."""
    rows = [
        {"number": 0, "model.fam_pos": "last", "seed": 0, "objective": 2.0, "val/loss": 2.0},
        {"number": 1, "model.fam_pos": "last", "seed": 1, "objective": 2.2, "val/loss": 2.2},
        {"number": 2, "model.fam_pos": "zero", "seed": 0, "objective": 2.5, "val/loss": 2.5},
        {"number": 3, "model.fam_pos": "last", "seed": 1, "objective": 9.0, "val/loss": 9.0},  # the repeat
    ]
    res = _synthetic("fam_position", rows, ["model.fam_pos"])
    with pytest.warns(UserWarning, match=r"trials \[3\] repeat a completed setting and seed"):
        table = fa.ablation_table(res)
    assert table.loc["last", ("val/loss", "n")] == 2
    assert table.loc["last", ("val/loss", "mean")] == pytest.approx(2.1)


def test_agreement_with_table_11_by_hand():
    losses = {"M0": 3.0, "M1": 2.5, "M2": 2.6, "FAM": 2.4}
    res = _synthetic(
        "memory_segment",
        [{"variant": v, "seed": 0, "objective": x, "val/loss": x} for v, x in losses.items()],
        ["variant"],
    )
    table = fa.paper_table(res)  # settings across, (source, name) down
    assert list(table.columns) == ["M0", "M1", "M2", "FAM"]
    assert table.loc[("famlab", "val/loss")].tolist() == [3.0, 2.5, 2.6, 2.4]
    assert table.loc[("paper Table 11", "Isabelle")].tolist() == [65.0, 72.6, 72.0, 73.6]
    agr = fa.paper_agreement(res)
    # famlab scores -loss rank M0 < M2 < M1 < FAM; Isabelle ranks M0 < M2 < M1 < FAM too
    assert agr.loc["Isabelle", "spearman rho"] == pytest.approx(1.0) and agr.loc["Isabelle", "agree"]
    # Quality: 27.8, 26.3, 26.7, 27.9 -> ranks 3, 1, 2, 4 vs famlab 1, 3, 2, 4
    assert agr.loc["Quality", "spearman rho"] == pytest.approx(fa.spearman([1, 3, 2, 4], [3, 1, 2, 4]))
    assert agr.loc["Isabelle", "famlab FAM - best BSWA"] == pytest.approx(2.4 - 2.5)
    assert agr.loc["Isabelle", "paper FAM - best BSWA"] == pytest.approx(73.6 - 72.6)
    assert agr["sign agrees"].all() and agr.loc["PG-19", "famlab best"] == "FAM"
    claims = fa.paper_claims(res)
    assert claims["holds"].tolist() == [True, True]  # FAM wins; best BSWA is M1 of M0..M2


def test_fam_length_matches_paper_rows_by_ratio():
    res = _synthetic(
        "fam_length",  # tiny profile: B = 64, so L_F 4 / 16 / 64 sit where the paper's 64 / 256 / 1024 do
        [{"model.fam_len": lf, "seed": 0, "objective": x, "val/loss": x} for lf, x in [(4, 2.0), (16, 2.1), (64, 2.2)]],
        ["model.fam_len"],
    )
    table = fa.paper_table(res)
    assert table[("paper Table 5", "L_F")].tolist() == [64, 256, 1024]
    assert table[("paper Table 5", "Qasper")].tolist() == [7.2, 5.1, 5.3]
    claims = fa.paper_claims(res)
    assert claims["holds"].tolist() == [False]  # best L_F is the smallest tried: no interior optimum


def test_passkey_eval_table_and_claims_by_hand():
    def ev(accs):  # two depth buckets per length
        return [
            {"task": "passkey", "length": n, "depth": d, "n": 8, "accuracy": a, "digit_accuracy": a}
            for n, pair in zip((256, 1024), accs)
            for d, a in zip((0.25, 0.75), pair)
        ]

    rows = [
        {"variant": "M1", "seed": 0, "eval_table": ev([(1.0, 1.0), (0.5, 0.0)])},
        {"variant": "M1", "seed": 1, "eval_table": ev([(1.0, 0.5), (0.5, 0.5)])},
        {"variant": "M1_SG", "seed": 0, "eval_table": ev([(1.0, 1.0), (0.0, 0.0)])},
        {"variant": "FAM_M0", "seed": 0, "eval_table": ev([(1.0, 1.0), (1.0, 0.5)])},
    ]
    for r in rows:
        r["objective"] = r["eval/accuracy"] = float(np.mean([e["accuracy"] for e in r["eval_table"]]))
    res = _synthetic("passkey", rows, ["variant"])
    table = fa.eval_table(res)
    assert list(table.index) == [256, 1024] and list(table.columns) == ["M1", "M1_SG", "FAM_M0"]
    assert table.loc[1024, "M1"] == pytest.approx((0.25 + 0.5) / 2)  # per-seed depth means, then seeds
    assert table.loc[256, "M1"] == pytest.approx((1.0 + 0.75) / 2) and table.loc[1024, "FAM_M0"] == 0.75
    agg = fa.eval_aggregate(res)
    assert agg.loc[(1024, "M1"), ("accuracy", "n")] == 2
    assert agg.loc[(1024, "M1"), ("accuracy", "std")] == pytest.approx(np.std([0.25, 0.5], ddof=1))
    claims = fa.paper_claims(res)
    assert claims["holds"].tolist() == [True, True]  # FAM best at 1024; M1_SG (0) <= M1 beyond 256


# ---------------------------------------------------------------- export


def test_markdown_and_latex_export(tmp_path):
    res = _synthetic(
        "fam_position",
        [{"model.fam_pos": p, "seed": 0, "objective": x, "val/loss": x} for p, x in [("last", 2.0), ("zero", 2.5)]],
        ["model.fam_pos"],
    )
    table = fa.paper_table(res)
    md = fa.to_markdown(table, tmp_path / "t.md")
    lines = md.strip().splitlines()
    assert [c.strip() for c in lines[0].split("|")[1:-1]] == [
        "model.fam_pos",
        "famlab / val/loss",
        "famlab / n",
        "paper Table 7 / PG-19",
        "paper Table 7 / Isabelle",
    ]
    assert re.search(r"\|\s*last\s*\|\s*2\s*\|\s*1\s*\|\s*47\.7\s*\|\s*73\.6\s*\|", md)
    assert (tmp_path / "t.md").read_text() == md
    tex = fa.to_latex(table, tmp_path / "t.tex", caption="FAM positions", label="tab:pos")
    assert "\\begin{tabular}" in tex and "\\caption{FAM positions}" in tex and "\\label{tab:pos}" in tex
    assert "model.fam\\_pos" in tex and "73.6" in tex and "\\multicolumn{2}{c}{famlab}" in tex
    # a named column axis keeps its name in the Markdown headers (LaTeX has a header row for it)
    wide = pd.DataFrame([[2.8, 2.6]], index=pd.Index([16], name="model.block_size"), columns=["bswa", "fam"])
    wide.columns.name = "val/loss by model.attention"
    header = fa.to_markdown(wide).splitlines()[0]
    assert [c.strip() for c in header.split("|")[1:-1]] == [
        "model.block_size",
        "val/loss by model.attention: bswa",
        "val/loss by model.attention: fam",
    ]
    written = fa.export_tables(fa.all_tables(res), tmp_path / "out", prefix="fam_position")
    assert {p.name for p in written} >= {"fam_position_paper.md", "fam_position_paper.tex", "fam_position_claims.md"}


# ---------------------------------------------------------------- the real store


def test_load_study_tidy_frame(store):
    df = fa.load_study(store["url"], "fam_length-tiny")
    assert len(df) == 4 and set(df["state"]) == {"COMPLETE"}
    for col in ["study", "number", "model.fam_len", "seed", "objective", "val/loss", "val/bits_per_token"]:
        assert col in df.columns, col
    for col in ["wall_time_s", "duration_s", "run_dir", "worker", "command"]:
        assert df[col].notna().all(), col
    assert (df["objective"] == df["val/loss"]).all()
    assert sorted(zip(df["model.fam_len"], df["seed"])) == [(1, 0), (1, 1), (4, 0), (4, 1)]
    both = fa.load_study(store["url"])  # every study of the storage
    assert set(both["study"]) == {"fam_length-tiny", "memory_segment-tiny"} and len(both) == 6
    again = fa.load_studies([(store["url"], "memory_segment-tiny")])
    assert len(again) == 2 and isinstance(again["eval_table"].iloc[0], list)
    assert fa.load_study(f"sqlite:///{store['tmp'] / 'nothing.db'}").empty
    assert not (store["tmp"] / "nothing.db").exists()  # reading never creates a store


def test_tables_equal_dataframe_aggregates(store):
    res = fa.load_sweep(store["fam"], "tiny", storage=store["url"])
    assert (
        res.ok and res.varied == ["model.fam_len"] and res.metrics == ["val/loss", "val/bits_per_token", "wall_time_s"]
    )
    raw = fa.load_study(store["url"], "fam_length-tiny")
    by_hand = raw.groupby("model.fam_len")["val/loss"].agg(["mean", "std", "count"])
    agg = fa.ablation_table(res)
    assert list(agg.index) == [1, 4]
    for lf in (1, 4):
        row = agg.loc[lf, "val/loss"]
        assert row["mean"] == pytest.approx(by_hand.loc[lf, "mean"])
        assert row["std"] == pytest.approx(by_hand.loc[lf, "std"])
        assert row["n"] == 2
        assert row["ci_half"] == pytest.approx(12.706204736 * by_hand.loc[lf, "std"] / math.sqrt(2))
    table = fa.paper_table(res)
    assert list(table.index) == [1, 4]
    assert list(table.columns) == [
        ("famlab", "val/loss"),
        ("famlab", "val/bits_per_token"),
        ("famlab", "wall_time_s"),
        ("famlab", "n"),
        ("paper Table 5", "L_F"),
        ("paper Table 5", "Qasper"),
        ("paper Table 5", "Quality"),
        ("paper Table 5", "XLSum"),
    ]
    assert table[("famlab", "val/loss")].tolist() == pytest.approx(by_hand["mean"].tolist())
    bits = raw.groupby("model.fam_len")["val/bits_per_token"].mean()
    assert table[("famlab", "val/bits_per_token")].tolist() == pytest.approx(bits.tolist())
    # B = 16 in these runs: L_F 1 and 4 sit where the paper's 64 and 256 (of B = 1024) do
    assert table[("paper Table 5", "L_F")].tolist() == [64, 256]
    assert table[("paper Table 5", "XLSum")].tolist() == [15.9, 16.0]
    agr = fa.paper_agreement(res)
    assert list(agr.index) == ["Qasper", "Quality", "XLSum", "mean of tasks"] and (agr["n settings"] == 2).all()
    scores = (-by_hand["mean"]).tolist()
    assert agr.loc["Qasper", "spearman rho"] == pytest.approx(fa.spearman(scores, [7.2, 5.1]))


def test_columns_shaped_table_and_eval_from_store(store):
    res = fa.load_sweep(store["mem"], "tiny", storage=store["url"])
    table = fa.paper_table(res)
    assert list(table.columns) == ["M1", "FAM"]
    assert ("famlab", "val/loss") in table.index and ("paper Table 11", "XLSum") in table.index
    raw = res.complete.set_index("variant")
    assert table.loc[("famlab", "val/loss"), "FAM"] == pytest.approx(raw.loc["FAM", "val/loss"])
    assert table.loc[("paper Table 11", "XLSum"), "M1"] == 13.6
    ev = fa.eval_table(res)  # recall: accuracy by gap (tokens) x variant
    assert ev.index.name == "gap" and list(ev.index) == [0, 64] and list(ev.columns) == ["M1", "FAM"]
    long = fa.eval_frame(res.complete)
    for variant in ("M1", "FAM"):
        for gap in (0, 64):
            rows = long[(long["variant"] == variant) & (long["gap"] == gap)]
            assert ev.loc[gap, variant] == pytest.approx(rows["accuracy"].mean())
    agr = fa.paper_agreement(res)
    assert {"FAM wins (famlab)", "FAM wins (paper)", "sign agrees"} <= set(agr.columns)
    assert agr["FAM wins (paper)"].all()


def test_load_runs_outside_a_sweep(store):
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
    found = fa.load_runs(store["tmp"] / "runs")  # a folder is searched for run directories
    assert len(found) == 6
    agg = fa.aggregate(found, ["model.attention", "model.fam_len"], ["val/loss"])
    assert agg[("val/loss", "n")].sum() == 6


def test_missing_study_is_a_message_not_an_error(tmp_path):
    res = fa.load_sweep("passkey", "tiny", storage=f"sqlite:///{tmp_path / 'none.db'}")
    assert not res.ok and "No results for study 'passkey-tiny'" in res.summary()
    assert "famlab sweep run passkey --profile tiny" in res.summary()
    assert fa.ablation_table(res).empty and fa.paper_table(res).empty and fa.all_tables(res) == {}
    assert fa.plot_ablation(res) is None and fa.plot_eval(res) is None
    assert "No results" in fa.load_sweep("no_such_spec", "tiny").summary()


# ---------------------------------------------------------------- notebooks and report


def test_committed_notebooks_match_templates():
    for nb in report.NOTEBOOKS:
        path = report.NOTEBOOK_DIR / f"{nb.name}.ipynb"
        assert path.exists(), f"missing {path}: run `famlab report --write-notebooks`"
        on_disk = nbformat.read(path, as_version=4)
        assert on_disk == report.build_notebook(nb), f"{path} differs from its template: --write-notebooks"
        assert all(not c.get("outputs") for c in on_disk.cells if c.cell_type == "code")
        tagged = [c for c in on_disk.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1
    specs = {p.stem for p in Path(report.REPO / "sweeps").glob("*.yaml")} - {"lr_search"}
    assert specs == {nb.name for nb in report.SWEEP_NOTEBOOKS}


def _bench_file(path: Path, ts: str, seq_len: int, times: dict[str, float], mem: dict[str, float] | None) -> None:
    variants = [
        {"name": v, "attention": v, "impl": "fast", "step_time_median_s": t, "step_time_s": t, "tokens_per_s": 1 / t}
        | {"peak_mem_mb": (mem or {}).get(v)}
        for v, t in times.items()
    ]
    cfg = {"seq_len": seq_len, "batch_size": 2, "d_model": 64, "n_layers": 2, "block_size": 64}
    data = {
        "timestamp": ts,
        "config": {**cfg, "mem_segment": 1, "fam_len": 4, "dtype": "float32"},
        "variants": variants,
    }
    path.write_text(json.dumps(data))


def test_cost_table_from_bench_files(tmp_path):
    _bench_file(tmp_path / "bench_1.json", "20260101-000000", 512, {"bswa": 0.1, "fam": 0.2}, {"bswa": 10, "fam": 12})
    _bench_file(tmp_path / "bench_2.json", "20260102-000000", 512, {"bswa": 0.3, "fam": 0.33}, None)
    _bench_file(tmp_path / "bench_3.json", "20260102-000000", 1024, {"bswa": 0.5, "fam": 0.6}, {"bswa": 20, "fam": 30})
    table = fa.cost_table(fa.load_bench(tmp_path))
    assert list(table.index) == [512, 1024]
    # the newest file wins per quantity; a --no-memory file keeps the older memory number
    assert table.loc[512, ("step time ms", "bswa")] == pytest.approx(300.0)
    assert table.loc[512, ("peak memory MB", "fam")] == 12
    assert table.loc[1024, ("FAM / BSWA", "step time")] == pytest.approx(1.2)
    assert table.loc[1024, ("FAM / BSWA", "peak memory")] == pytest.approx(1.5)


def _html_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_report_executes_notebooks_and_renders_html(store, tmp_path, monkeypatch):
    bench = tmp_path / "bench"
    bench.mkdir()
    _bench_file(bench / "bench_1.json", "20260101-000000", 512, {"bswa": 0.1, "fam": 0.11}, {"bswa": 10, "fam": 11})
    _bench_file(bench / "bench_2.json", "20260101-000001", 1024, {"bswa": 0.2, "fam": 0.23}, {"bswa": 19, "fam": 21})
    out = tmp_path / "reports"
    monkeypatch.chdir(tmp_path)
    code = report.main(["--storage", store["url"], "--out", str(out), "--bench-dir", str(bench)])  # every notebook
    assert code == 0
    index = _html_text(out / "index.html")
    names = [nb.name for nb in report.NOTEBOOKS]
    assert {p.stem for p in report.NOTEBOOK_DIR.glob("*.ipynb")} == set(names)
    for name in names:
        assert f'href="{name}.html"' in index and (out / f"{name}.ipynb").exists()
        nb = nbformat.read(out / f"{name}.ipynb", as_version=4)
        errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
        assert not errors, (name, errors)
    assert "No results for study" in index  # the passkey line

    fam = _html_text(out / "fam_length.html")
    assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', fam)) >= 2  # ablation and curves
    res = fa.load_sweep("fam_length", "tiny", storage=store["url"])
    for cell in fa.format_mean_ci(fa.ablation_table(res))["val/loss"]:
        assert cell in fam  # e.g. "2.345 ± 0.12"
    for value in fa.paper_table(res)[("famlab", "val/loss")]:
        assert f"{value:.4f}" in fam
    assert "paper Table 5" in fam and "spearman rho" in fam and "interior optimum" in fam

    mem = _html_text(out / "memory_segment.html")
    assert "paper Table 11" in mem and "FAM wins (paper)" in mem
    assert len(re.findall(r"<img[^>]+data:image/png", mem)) >= 2

    passkey = _html_text(out / "passkey.html")
    assert (
        "No results for study &#x27;passkey-tiny&#x27;" in passkey or "No results for study 'passkey-tiny'" in passkey
    )
    assert "Traceback" not in passkey and "<img" not in passkey

    cost = _html_text(out / "cost.html")
    assert "<img" in cost and "FAM / BSWA" in cost and "154.9" in cost
    tables = {p.name for p in (out / "tables").iterdir()}
    assert {"fam_length_paper.md", "fam_length_paper.tex", "memory_segment_eval.md", "cost_paper.tex"} <= tables
    md = (out / "tables" / "fam_length_paper.md").read_text()
    assert "paper Table 5 / XLSum" in md


def test_cli_dispatches_report(capsys):
    from famlab.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["report", "--help"])
    assert exc.value.code == 0 and "papermill" in capsys.readouterr().out
    assert main(["report", "--only", "nope", "--out", "/tmp/famlab-report-never"]) == 2


def _synthetic_trials(spec) -> pd.DataFrame:
    """Plausible trials for every grid point of a shipped spec (2 seeds), with evaluation tables
    in the task's shape where the spec evaluates."""
    rng = np.random.default_rng(0)
    task = spec.overrides.get("data.task", "text")
    rows = []
    points = [dict(zip(spec.grid, values)) for values in itertools.product(*spec.grid.values())]
    for i, point in enumerate(points):
        for seed in (0, 1):
            value = 2.0 + 0.1 * (i % 5) + 0.01 * rng.standard_normal()
            row = {"state": "COMPLETE", **point, "seed": seed, "val/loss": value, "val/bits_per_token": value / 0.69}
            row["wall_time_s"] = 10.0 + i
            row["train/loss_recent_mean"] = value + 0.05
            if spec.evaluate and task == "passkey":
                row["eval_table"] = [
                    {"task": "passkey", "length": n, "depth": d, "n": 8, "accuracy": a, "digit_accuracy": a}
                    for n, a in ((256, 1.0), (1024, 0.5 * (i % 2)), (4096, 0.25 * (i % 3)))
                    for d in (0.25, 0.75)
                ]
                row["eval/accuracy"] = row["eval/digit_accuracy"] = 0.25 * (i % 3)
            elif spec.evaluate:
                row["eval_table"] = [
                    {"task": "text", "scope": "bucket", "position_bucket_start": s, "position_bucket_end": 2 * s or 64}
                    | {"bpb": value + 0.01 * k, "n_bytes": 10}
                    for k, s in enumerate((0, 64, 128, 256))
                ] + [{"task": "text", "scope": "overall", "position_bucket_start": 0, "bpb": value, "n_bytes": 40}]
                row["eval/bpb"] = value
            row["objective"] = row.get(spec.metric, value)
            rows.append(row)
    return pd.DataFrame(rows)


@pytest.mark.parametrize("name", [nb.name for nb in report.SWEEP_NOTEBOOKS])
def test_every_spec_analyses_without_errors(name, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = load_spec(name, "tiny", validate_runs=False)
    df = _synthetic_trials(spec)
    df.attrs["params"] = spec.varied
    res = fa.SweepResults(spec, "sqlite:///synthetic.db", df, params=spec.varied)
    tables = fa.all_tables(res)
    assert {"ablation", "paper"} <= set(tables)
    n_settings = math.prod(len(v) for v in spec.grid.values())
    assert len(fa.ablation_table(res)) == n_settings
    assert (fa.ablation_table(res)[(spec.metric, "n")] == 2).all()
    if name in paper.BY_STUDY:
        assert not tables["agreement"].empty
    if paper.CLAIMS.get(name):
        assert len(tables["claims"]) == len(paper.CLAIMS[name])
    if spec.evaluate:
        assert not tables["eval"].empty
        assert fa.plot_eval(res) is not None
    assert fa.plot_ablation(res) is not None
    fa.export_tables(tables, tmp_path, prefix=name)
    plt.close("all")


def test_txl_and_fam_prev_blocks_claims_use_the_papers_own_spread():
    # Table 8: the paper's BSWA and TXL differ by up to 2% (Qasper 5.0 vs 4.9): "about equal" allows that much
    assert paper.relative_gap(paper.TABLE_8, "TXL", "BSWA") == pytest.approx(0.02)

    def pair(b: float, t: float) -> fa.SweepResults:
        rows = [{"variant": v, "seed": 0, "objective": x, "val/loss": x} for v, x in (("BSWA", b), ("TXL", t))]
        return _synthetic("txl_vs_bswa", rows, ["variant"])

    near, far = pair(2.0, 2.03), pair(2.0, 2.1)
    assert fa.paper_claims(near)["holds"].tolist() == [True]  # 1.5% apart
    assert fa.paper_claims(far)["holds"].tolist() == [False]  # 5% apart
    # Table 6: XLSum over P = 1..6 spans 15.1-16.2, 7.0% of its mean
    assert paper.relative_spread(paper.TABLE_6, "XLSum") == pytest.approx(1.1 / 15.74)

    def sweep(losses: list[float]) -> fa.SweepResults:
        rows = [
            {"model.fam_prev_blocks": p, "seed": 0, "objective": x, "val/loss": x} for p, x in zip((1, 2, 3), losses)
        ]
        return _synthetic("fam_prev_blocks", rows, ["model.fam_prev_blocks"])

    flat, steep = sweep([2.0, 2.05, 2.1]), sweep([2.0, 2.2, 2.4])  # spread 4.9% and 18% of the mean
    assert fa.paper_claims(flat)["holds"].tolist() == [True]
    assert fa.paper_claims(steep)["holds"].tolist() == [False]
    table = fa.paper_table(flat)
    assert table[("paper Table 6", "XLSum")].tolist() == [15.9, 15.8, 15.7]  # settings down, as Table 6
