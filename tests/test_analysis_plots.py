"""famlab.analysis plots: what is drawn (axes, labels, lines, points and their values) on
synthetic results where the numbers are known."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from analysis_store import synthetic, synthetic_trials, write_bench_file  # noqa: E402

from famlab import analysis as fa  # noqa: E402
from famlab.runs import RunDir  # noqa: E402
from famlab.sweep import load_spec  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def fam_position() -> fa.SweepResults:
    values = {("last", 0): 2.0, ("last", 1): 2.2, ("float", 0): 2.4, ("float", 1): 2.4, ("zero", 0): 2.5}
    rows = [{"model.fam_pos": p, "seed": s, "objective": x, "val/loss": x} for (p, s), x in values.items()]
    return synthetic("fam_position", rows, ["model.fam_pos"])


def test_ablation_plot_draws_means_intervals_seeds_and_the_paper():
    res = fam_position()
    fig = fa.plot_ablation(res)
    ours, theirs = fig.axes
    assert ours.get_xlabel() == "FAM positions"
    assert ours.get_ylabel() == "validation loss (nats/token) (lower is better)"
    assert [t.get_text() for t in ours.get_xticklabels()] == ["last", "float", "zero"]  # the spec's grid order
    (errorbar,) = ours.containers
    mean_line, _, (bars,) = errorbar.lines
    assert mean_line.get_ydata().tolist() == pytest.approx([2.1, 2.4, 2.5])
    seeds = ours.collections[-1].get_offsets()
    assert sorted(np.asarray(seeds)[:, 1].tolist()) == pytest.approx([2.0, 2.2, 2.4, 2.4, 2.5])
    # the interval: t(0.975, 1) * std / sqrt(2) for 'last'; zero height for 'zero' (a single seed)
    half = [abs(seg[1][1] - seg[0][1]) / 2 for seg in bars.get_segments()]
    assert half == pytest.approx([12.706204736 * np.std([2.0, 2.2], ddof=1) / np.sqrt(2), 0.0, 0.0])
    # the paper panel: Table 7's PG-19 and Isabelle, each centred on its mean
    assert theirs.get_title() == "paper Table 7 (1B)"
    by_label = {line.get_label(): line.get_ydata() for line in theirs.lines if not line.get_label().startswith("_")}
    assert set(by_label) == {"PG-19 (mean 47.5)", "Isabelle (mean 73.0)"}
    assert by_label["Isabelle (mean 73.0)"] == pytest.approx(np.array([73.6, 73.4, 72.1]) - np.mean([73.6, 73.4, 72.1]))


def test_ablation_plot_without_paper_numbers_and_on_a_log_axis():
    rows = [
        {"model.fam_len": lf, "seed": 0, "objective": x, "val/loss": x} for lf, x in ((1, 2.3), (4, 2.2), (32, 2.4))
    ]
    res = synthetic("fam_length", rows, ["model.fam_len"])
    fig = fa.plot_ablation(res)
    assert len(fig.axes) == 2  # L_F 4 (of B = 64) sits at the paper's 64: the paper panel is there
    assert fig.axes[0].get_xscale() == "log" and fig.axes[0].lines[0].get_xdata().tolist() == [1.0, 4.0, 32.0]
    rows = [{"model.random_pos_offset": v, "seed": 0, "objective": 2.0, "val/loss": 2.0} for v in (True, False)]
    (only,) = fa.plot_ablation(synthetic("position_offset", rows, ["model.random_pos_offset"])).axes
    assert only.get_xscale() == "linear" and only.get_xlabel() == "random position offset"


def test_grid_plot_has_a_panel_per_column_value_and_a_line_per_hue():
    spec = load_spec("block_size", "tiny", validate_runs=False)
    df = synthetic_trials(spec)
    df.attrs["params"] = spec.varied
    res = fa.SweepResults(spec, "sqlite:///synthetic.db", df, params=spec.varied)
    fig = fa.plot_ablation(res)  # three varied parameters: the grid plot
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["attention=bswa", "attention=fam"]
    mems = spec.grid["model.mem_segment"]
    for ax, attention in zip(panels, spec.grid["model.attention"]):
        assert ax.get_xlabel() == "block size $B$ (tokens)"
        means = [c.lines[0] for c in ax.containers]  # each errorbar's data line
        assert [line.get_label() for line in ax.containers] == [f"m={m}" for m in mems]
        for line, m in zip(means, mems):
            sub = df[(df["model.attention"] == attention) & (df["model.mem_segment"] == m)]
            expected = sub.groupby("model.block_size")["val/loss"].mean()
            assert line.get_xdata().tolist() == expected.index.tolist()
            assert line.get_ydata().tolist() == pytest.approx(expected.tolist())


def test_eval_plot_draws_each_setting_by_length_and_the_training_length():
    spec = load_spec("passkey", "tiny", validate_runs=False)
    df = synthetic_trials(spec)
    df.attrs["params"] = spec.varied
    res = fa.SweepResults(spec, "sqlite:///synthetic.db", df, params=spec.varied)
    fig = fa.plot_eval(res, "accuracy")
    (ax,) = fig.axes
    table = fa.eval_table(res, "accuracy")
    curves = {line.get_label(): line for line in ax.lines if not line.get_label().startswith("training length")}
    assert list(curves) == list(table.columns)
    for setting, line in curves.items():
        assert line.get_xdata().tolist() == table.index.tolist()
        assert line.get_ydata().tolist() == pytest.approx(table[setting].tolist())
    seq_len = fa.run_setting(res, "data.seq_len")
    (marker,) = [line for line in ax.lines if line.get_label() == f"training length ({seq_len})"]
    assert marker.get_xdata()[0] == seq_len
    assert ax.get_ylim() == pytest.approx((-0.03, 1.03)) and ax.get_xlabel() == "filler length (tokens)"


def test_curves_plot_averages_seeds_per_step(tmp_path):
    rows = []
    for lf, seed, losses in ((1, 0, (3.0, 2.0)), (1, 1, (3.2, 2.4)), (4, 0, (2.8, 1.9))):
        run = RunDir(tmp_path / f"lf{lf}-s{seed}")
        for step, loss in zip((50, 100), losses):
            run.append_metrics({"step": step, "val/loss": loss})
        run.append_metrics({"step": 100, "train/loss": 9.0})  # another key: not drawn
        rows.append({"model.fam_len": lf, "seed": seed, "objective": losses[-1], "val/loss": losses[-1]})
        rows[-1]["run_dir"] = str(run.path)
    res = synthetic("fam_length", rows, ["model.fam_len"])
    (ax,) = fa.plot_curves(res).axes
    assert [line.get_label() for line in ax.lines] == ["1", "4"]
    assert ax.lines[0].get_xdata().tolist() == [50, 100]
    assert ax.lines[0].get_ydata().tolist() == pytest.approx([3.1, 2.2])
    assert ax.lines[1].get_ydata().tolist() == pytest.approx([2.8, 1.9])
    assert ax.get_xlabel() == "training step" and ax.get_ylabel() == "validation loss (nats/token)"
    res.trials["run_dir"] = None
    assert fa.plot_curves(res) is None  # no run directories: nothing to draw


def test_cost_plot_draws_bench_and_paper(tmp_path):
    write_bench_file(
        tmp_path / "bench_1.json", "20260101-000000", 512, {"bswa": 0.1, "fam": 0.11}, {"bswa": 10, "fam": 11}
    )
    write_bench_file(tmp_path / "bench_2.json", "20260101-000001", 1024, {"bswa": 0.2, "fam": 0.23}, None)
    fig = fa.plot_cost(fa.load_bench(tmp_path))
    time_ax, mem_ax, paper_mem, paper_time = fig.axes
    times = {line.get_label(): line.get_ydata().tolist() for line in time_ax.lines}
    assert list(times) == ["bswa", "fam"]
    assert times["bswa"] == pytest.approx([100.0, 200.0]) and times["fam"] == pytest.approx([110.0, 230.0])
    fam_mem = {line.get_label(): line.get_ydata() for line in mem_ax.lines}["fam"]
    assert fam_mem[0] == 11 and np.isnan(fam_mem[1])  # measured at 512 only
    assert [line.get_ydata().tolist() for line in paper_time.lines][1] == [16.5, 21.2, 40.7, 77.2, 154.9]
    assert paper_mem.get_title().startswith("paper Tables 13/14: inference memory (FAM within 2.3% of BSWA)")
    empty = fa.plot_cost(pd.DataFrame())
    assert [t.get_text() for t in empty.axes[0].texts] == ["no bench results"]


def test_nothing_to_plot_is_none(tmp_path):
    res = fa.load_sweep("passkey", "tiny", storage=f"sqlite:///{tmp_path / 'none.db'}")
    assert fa.plot_ablation(res) is None and fa.plot_eval(res) is None and fa.plot_curves(res) is None
    assert fa.plot_grid(fam_position()) is None  # one varied parameter: no grid
    assert fa.plot_eval(fam_position()) is None  # no evaluation rows


SPECS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "sweeps").glob("*.yaml") if p.stem != "lr_search")


@pytest.mark.parametrize("name", SPECS)
def test_every_spec_plots_each_setting(name):
    spec = load_spec(name, "tiny", validate_runs=False)
    df = synthetic_trials(spec)
    df.attrs["params"] = spec.varied
    res = fa.SweepResults(spec, "sqlite:///synthetic.db", df, params=spec.varied)
    fig = fa.plot_ablation(res)
    means = [c.lines[0] for ax in fig.axes for c in ax.containers]  # every errorbar's data line
    assert sum(len(line.get_xdata()) for line in means) == math.prod(len(v) for v in spec.grid.values())
    if spec.evaluate:
        (ax,) = fa.plot_eval(res).axes
        drawn = [line for line in ax.lines if not line.get_label().startswith("training length")]
        assert len(drawn) == len(fa.eval_table(res).columns)
