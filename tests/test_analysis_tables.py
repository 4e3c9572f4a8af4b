"""famlab.analysis tables: THE ablation table (mean ± 95% t-interval over seeds), famlab beside the
paper, agreement, evaluation tables, Markdown/LaTeX export and the cost table; by hand on synthetic
results and against the real tiny sweep store (tests/analysis_store.py)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from analysis_store import store, synthetic, synthetic_trials, write_bench_file  # noqa: F401

from famlab import analysis as fa
from famlab import paper
from famlab.sweep import load_spec

SPEC_DOC = ("shared/spec/transformerfam.md", "../shared/spec/transformerfam.md", "/work/shared/spec/transformerfam.md")


def test_mean_ci_text():
    agg = fa.aggregate(pd.DataFrame({"k": [1, 1, 2, 3, 3], "x": [2.8, 2.8466, 5.0, 1.0, 41.0]}), "k", ["x"])
    text = fa.format_mean_ci(agg)
    half1 = 12.706204736 * np.std([2.8, 2.8466], ddof=1) / math.sqrt(2)  # 0.296
    assert text.loc[1, "x"] == f"{2.8233:.2f} ± {half1:.2f}" == "2.82 ± 0.30"
    assert text.loc[2, "x"] == "5" and text.loc[3, "x"] == "21 ± 254" and text["n"].tolist() == [2, 1, 2]


def test_a_repeated_setting_and_seed_counts_once():
    """Two COMPLETE trials of the same point and seed (a retried point both workers finished) must
    not weigh twice: the first counts, with a warning naming the repeat."""
    rows = [
        {"number": 0, "model.fam_pos": "last", "seed": 0, "objective": 2.0, "val/loss": 2.0},
        {"number": 1, "model.fam_pos": "last", "seed": 1, "objective": 2.2, "val/loss": 2.2},
        {"number": 2, "model.fam_pos": "zero", "seed": 0, "objective": 2.5, "val/loss": 2.5},
        {"number": 3, "model.fam_pos": "last", "seed": 1, "objective": 9.0, "val/loss": 9.0},  # the repeat
    ]
    res = synthetic("fam_position", rows, ["model.fam_pos"])
    with pytest.warns(UserWarning, match=r"trials \[3\] repeat a completed setting and seed"):
        table = fa.ablation_table(res)
    assert table.loc["last", ("val/loss", "n")] == 2
    assert table.loc["last", ("val/loss", "mean")] == pytest.approx(2.1)


def test_agreement_with_table_11_by_hand():
    losses = {"M0": 3.0, "M1": 2.5, "M2": 2.6, "FAM": 2.4}
    res = synthetic(
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
    assert agr.loc["Isabelle", "spearman rho"] == pytest.approx(1.0)
    assert (
        agr.loc["Isabelle", "direction agrees with the paper"]
        == "yes (Spearman rho=+1.00 over 4 settings; same best setting (FAM))"
    )
    assert "agree" not in agr.columns  # the bare True/False column is gone: the words say what agrees
    # Quality: 27.8, 26.3, 26.7, 27.9 -> ranks 3, 1, 2, 4 vs famlab 1, 3, 2, 4
    assert agr.loc["Quality", "spearman rho"] == pytest.approx(fa.spearman([1, 3, 2, 4], [3, 1, 2, 4]))
    assert agr.loc["Isabelle", "famlab FAM - best BSWA"] == pytest.approx(2.4 - 2.5)
    assert agr.loc["Isabelle", "paper FAM - best BSWA"] == pytest.approx(73.6 - 72.6)
    assert agr.loc["Quality", "direction agrees with the paper"].startswith("yes (Spearman rho=+0.20 over 4 settings")
    assert (agr["FAM vs BSWA agrees with the paper"] == "yes").all() and agr.loc["PG-19", "famlab best"] == "FAM"
    # negative control: famlab's order reversed (M0 best, FAM worst) disagrees, and says why
    reversed_losses = {"M0": 2.4, "M1": 2.6, "M2": 2.5, "FAM": 3.0}
    rows = [{"variant": v, "seed": 0, "objective": x, "val/loss": x} for v, x in reversed_losses.items()]
    flipped = fa.paper_agreement(synthetic("memory_segment", rows, ["variant"]))
    assert (
        flipped.loc["Isabelle", "direction agrees with the paper"]
        == "no (Spearman rho=-1.00 over 4 settings; best setting differs: famlab M0, paper FAM)"
    )
    assert (flipped["FAM vs BSWA agrees with the paper"] == "no").all()
    claims = fa.paper_claims(res)
    # FAM wins and the best BSWA is M1 of M0..M2 on the means, but one seed gives no interval
    assert claims["verdict"].tolist() == ["inconclusive", "inconclusive"]
    assert claims["effect"].iloc[0] == "FAM - M1: +0.1 (n=1: no interval)"


def test_fam_length_matches_paper_rows_by_ratio():
    res = synthetic(
        "fam_length",  # tiny profile: B = 64, so L_F 4 / 16 / 64 sit where the paper's 64 / 256 / 1024 do
        [{"model.fam_len": lf, "seed": 0, "objective": x, "val/loss": x} for lf, x in [(4, 2.0), (16, 2.1), (64, 2.2)]],
        ["model.fam_len"],
    )
    table = fa.paper_table(res)
    assert table[("paper Table 5", "L_F")].tolist() == [64, 256, 1024]
    assert table[("paper Table 5", "Qasper")].tolist() == [7.2, 5.1, 5.3]
    claims = fa.paper_claims(res)
    assert claims["verdict"].tolist() == ["inconclusive"]  # the smallest L_F is best, on one seed
    assert claims["famlab"].tolist() == ["best L_F by val/loss (seed means): 4 of [4, 16, 64]"]


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
    res = synthetic("passkey", rows, ["variant"])
    table = fa.eval_table(res)
    assert list(table.index) == [256, 1024] and list(table.columns) == ["M1", "M1_SG", "FAM_M0"]
    assert table.loc[1024, "M1"] == pytest.approx((0.25 + 0.5) / 2)  # per-seed depth means, then seeds
    assert table.loc[256, "M1"] == pytest.approx((1.0 + 0.75) / 2) and table.loc[1024, "FAM_M0"] == 0.75
    agg = fa.eval_aggregate(res)
    assert agg.loc[(1024, "M1"), ("accuracy", "n")] == 2
    assert agg.loc[(1024, "M1"), ("accuracy", "std")] == pytest.approx(np.std([0.25, 0.5], ddof=1))
    claims = fa.paper_claims(res)
    # FAM best at 1024 and M1_SG (0) <= M1 beyond 256 on the means; M1_SG and FAM_M0 ran one seed
    assert claims["verdict"].tolist() == ["inconclusive"] * 3
    assert claims["famlab"].iloc[0] == "accuracy at length 1024 (seed means): FAM 0.75, best BSWA (M1) 0.375"


def test_markdown_and_latex_export(tmp_path):
    res = synthetic(
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


def test_tables_equal_dataframe_aggregates(store):  # noqa: F811
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


def test_columns_shaped_table_and_eval_from_store(store):  # noqa: F811
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
    assert {"FAM wins (famlab)", "FAM wins (paper)", "FAM vs BSWA agrees with the paper"} <= set(agr.columns)
    assert agr["FAM wins (paper)"].all()


def test_missing_study_is_a_message_not_an_error(tmp_path):
    res = fa.load_sweep("passkey", "tiny", storage=f"sqlite:///{tmp_path / 'none.db'}")
    assert not res.ok and "No results for study 'passkey-tiny'" in res.summary()
    assert "famlab sweep run passkey --profile tiny" in res.summary()
    assert fa.ablation_table(res).empty and fa.paper_table(res).empty and fa.all_tables(res) == {}
    assert fa.plot_ablation(res) is None and fa.plot_eval(res) is None
    assert "No results" in fa.load_sweep("no_such_spec", "tiny").summary()


def test_cost_table_from_bench_files(tmp_path):
    write_bench_file(
        tmp_path / "bench_1.json", "20260101-000000", 512, {"bswa": 0.1, "fam": 0.2}, {"bswa": 10, "fam": 12}
    )
    write_bench_file(tmp_path / "bench_2.json", "20260102-000000", 512, {"bswa": 0.3, "fam": 0.33}, None)
    write_bench_file(
        tmp_path / "bench_3.json", "20260102-000000", 1024, {"bswa": 0.5, "fam": 0.6}, {"bswa": 20, "fam": 30}
    )
    table = fa.cost_table(fa.load_bench(tmp_path))
    assert list(table.index) == [512, 1024]
    # the newest file wins per quantity; a --no-memory file keeps the older memory number
    assert table.loc[512, ("step time ms", "bswa")] == pytest.approx(300.0)
    assert table.loc[512, ("peak memory MB", "fam")] == 12
    assert table.loc[1024, ("FAM / BSWA", "step time")] == pytest.approx(1.2)
    assert table.loc[1024, ("FAM / BSWA", "peak memory")] == pytest.approx(1.5)


def test_ablation_text_is_what_sweep_run_prints(store):  # noqa: F811
    spec = load_spec(store["fam"], "tiny", validate_runs=False)
    text = fa.ablation_text(spec, store["url"])
    header, columns, *rows = text.splitlines()
    assert header == "fam_length (tiny): minimize val/loss; mean ± 95% t-interval over seeds"
    res = fa.load_sweep(spec, "tiny", storage=store["url"])
    cells = fa.format_mean_ci(fa.ablation_table(res))
    assert len(rows) == 3 and rows[0].split() == ["model.fam_len"]  # the index name's own line
    for row, (lf, cell) in zip(rows[1:], cells["val/loss"].items()):
        assert row.split()[0] == str(lf) and cell in row and row.split()[-1] == "2"
    assert "±" in cells["val/loss"].iloc[0]  # two seeds: an interval, not a bare mean
    assert fa.ablation_text(load_spec("passkey", "tiny", validate_runs=False), store["url"]) == ""


def _spec_doc_table(title: str) -> pd.DataFrame:
    """A Markdown table of the spec document, the first after the line starting with ``title``."""
    path = next((p for p in map(Path, SPEC_DOC) if p.exists()), None)
    if path is None:
        pytest.skip("the spec document (shared/spec/transformerfam.md) is not in this checkout")
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = []
    for line in lines[start + 1 :]:
        if rows and not line.startswith("|"):
            break
        if line.startswith("|") and not set(line) <= set("|-: "):
            rows.append([c.strip() for c in line.strip("|").split("|")])
    return pd.DataFrame(rows[1:], columns=rows[0]).set_index(rows[0][0])


def test_paper_tables_match_the_spec_document():
    t5 = _spec_doc_table("Table 5")
    ours = paper.TABLE_5.frame()
    assert [int(v) for v in t5.index] == list(ours.index)
    for task in ours.columns:
        assert t5[task].astype(float).tolist() == ours[task].tolist(), task
    t11 = _spec_doc_table("Table 11")  # tasks down, variants across in the document
    ours = paper.TABLE_11.frame()
    assert list(t11.columns) == list(ours.index) and list(t11.index) == list(ours.columns)
    assert (t11.astype(float).T.to_numpy() == ours.to_numpy()).all()


def test_paper_cost_ratios():
    cost = fa.paper_cost_table()
    assert cost.loc[26_000, "FAM / BSWA memory"] == pytest.approx(4.5 / 4.4)
    assert cost.loc[258_000, "FAM / BSWA time"] == pytest.approx(154.9 / 154.1)
    assert cost["FAM / BSWA memory"].between(1.005, 1.023).all()  # the paper's own 0.5-2.3%


@pytest.mark.parametrize(
    "name", [p.stem for p in (Path(__file__).parents[1] / "sweeps").glob("*.yaml") if p.stem != "lr_search"]
)
def test_every_spec_tabulates(name, tmp_path):
    spec = load_spec(name, "tiny", validate_runs=False)
    df = synthetic_trials(spec)
    df.attrs["params"] = spec.varied
    res = fa.SweepResults(spec, "sqlite:///synthetic.db", df, params=spec.varied)
    tables = fa.all_tables(res)
    assert {"ablation", "paper"} <= set(tables)
    ablation = fa.ablation_table(res)
    assert len(ablation) == math.prod(len(v) for v in spec.grid.values())
    assert (ablation[(spec.metric, "n")] == 2).all()
    by_hand = df.groupby(spec.varied)[spec.metric].mean()
    for setting, mean in by_hand.items():
        assert ablation.loc[setting, (spec.metric, "mean")] == pytest.approx(mean)
    assert ("agreement" in tables) == (name in paper.BY_STUDY)
    assert len(tables.get("claims", [])) == len(fa.spec_claims(spec))
    assert ("eval" in tables) == spec.evaluate
    written = fa.export_tables(tables, tmp_path, prefix=name)
    assert {p.name for p in written} == {f"{name}_{t}.{ext}" for t in tables for ext in ("md", "tex")}
