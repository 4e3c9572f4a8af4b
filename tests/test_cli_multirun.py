"""Sweeps from the command line: ``famlab train -m`` (Hydra's multirun syntax) and ``famlab sweep run SPEC
key=value``, both through the sweep machinery (an Optuna study, per-trial lines, the tables)."""

from __future__ import annotations

import optuna
import pytest
from sweep_helpers import load, write_spec
from tiny_runs import TINY

from famlab.cli import main
from famlab.cli.multirun import split_sweeps
from famlab.config import ConfigError, load_run_config_file
from famlab.runs import RunDir
from famlab.sweep import default_storage, load_spec
from famlab.sweep.overrides import with_overrides

FAST = [*TINY, "train.max_steps=2", "data.batch_size=2"]


def test_hydra_syntax_splits_into_base_and_grid():
    base, grid = split_sweeps(
        ["preset=tiny", "model.fam_len=2,4,8", "seed=range(0,2)", "data.passkey_eval_lengths=[1,2]"]
    )
    assert base == ["preset=tiny", "data.passkey_eval_lengths=[1,2]"]  # a bracketed list is one value
    assert grid == {"model.fam_len": [2, 4, 8], "seed": [0, 1]}
    with pytest.raises(ConfigError, match="swept twice"):
        split_sweeps(["seed=0,1", "seed=2,3"])


def test_train_multirun_runs_the_grid_as_a_sweep(tmp_path, capsys):
    out = tmp_path / "runs"
    argv = ["train", "-m", "preset=tiny", *FAST, "model.fam_len=1,2", "seed=0,1", f"out_dir={out}"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert text.count(" done ") == 4 and "trial 4/4" in text  # the sweep's per-trial lines
    assert "complete: 4" in text and "model.fam_len" in text.split("mean ±")[-1]  # status and ablation tables
    (spec_file,) = (out / "sweeps").glob("*/multirun.yaml")
    spec = load_spec(str(spec_file), "multirun")
    assert spec.grid == {"model.fam_len": [1, 2]} and spec.seeds == [0, 1]
    study = load(default_storage(spec, out), spec)
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert sorted((t.params["model.fam_len"], t.params["seed"]) for t in done) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    for t in done:  # each trial trained the base config with its own point
        cfg = load_run_config_file(RunDir(t.user_attrs["run_dir"]).config_path)
        assert (cfg.model.fam_len, cfg.seed, cfg.train.max_steps) == (t.params["model.fam_len"], t.params["seed"], 2)
    # the same command again resumes its study: nothing is trained twice
    assert main(argv) == 0
    assert " start " not in capsys.readouterr().out
    assert len(load(default_storage(spec, out), spec).trials) == 4


def test_train_multirun_of_seeds_only(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["train", "-m", "preset=tiny", *FAST, "seed=3,4", f"out_dir={out}"]) == 0
    assert "complete: 2" in capsys.readouterr().out
    (spec_file,) = (out / "sweeps").glob("*/multirun.yaml")
    assert load_spec(str(spec_file), "multirun").seeds == [3, 4]


def test_multirun_mistakes_are_one_line(tmp_path, capsys):
    out = f"out_dir={tmp_path}"
    assert main(["train", "-m", "preset=tiny", "model.fam_len=2", out]) == 2  # nothing to sweep
    assert "no override has several values" in capsys.readouterr().err
    assert main(["train", "-m", "preset=tiny", "model.fam_lenn=2,4", out]) == 2  # a typo is caught before any run
    err = capsys.readouterr().err
    assert "model.fam_lenn" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "sweeps").exists() or not list((tmp_path / "sweeps").glob("*/*.db"))
    # without -m a comma list says how to sweep; a plain bad value keeps its own message (negative control)
    assert main(["train", "preset=tiny", "model.fam_len=2,4"]) == 2
    assert "sweep only with -m" in capsys.readouterr().err
    assert main(["train", "preset=tiny", "model.fam_len=x"]) == 2
    assert "sweep only with -m" not in capsys.readouterr().err


def test_sweep_run_with_overrides_applies_them_to_every_trial(tmp_path, capsys):
    path = write_spec(tmp_path, grid={"model.attention": ["bswa", "fam"]}, overrides={"train.max_steps": 1})
    out = tmp_path / "runs"
    assert main(["sweep", "run", path, "train.max_steps=3", "--out-root", str(out), "model.d_model=16"]) == 0
    text = capsys.readouterr().out
    spec = with_overrides(load_spec(path), ["train.max_steps=3", "model.d_model=16"])
    assert spec.study.startswith("t.") and spec.study in text  # a study of its own
    trials = load(default_storage(spec, out), spec).trials
    assert len(trials) == 2
    for t in trials:
        cfg = load_run_config_file(RunDir(t.user_attrs["run_dir"]).config_path)
        assert (cfg.train.max_steps, cfg.model.d_model) == (3, 16)
        assert RunDir(t.user_attrs["run_dir"]).read_final_metrics()["step"] == 3
    # the spec's own study was not touched (negative control)
    own = load_spec(path)
    assert own.study_name not in optuna.get_all_study_names(default_storage(spec, out))
    assert main(["sweep", "status", path, "train.max_steps=3", "model.d_model=16", "--out-root", str(out)]) == 0
    assert "complete: 2" in capsys.readouterr().out


@pytest.mark.parametrize(
    "override, why",
    [("model.attention=fam", "the grid"), ("seed=5", "seeds"), ("model.mem_segment=2", "variant M1")],
)
def test_sweep_override_of_a_varied_key_is_one_line(tmp_path, capsys, override, why):
    variants = {"M1": {"model.mem_segment": 1}, "M2": {"model.mem_segment": 2}}
    path = write_spec(tmp_path, grid={"model.attention": ["bswa"], "variant": ["M1", "M2"]}, variants=variants)
    assert main(["sweep", "run", path, override, "--out-root", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and override.split("=")[0] in err and why in err
    assert not (tmp_path / "runs").exists()
    # a key the sweep does not vary is accepted (negative control)
    spec = with_overrides(load_spec(path), ["train.lr=0.01"])
    assert spec.overrides["train.lr"] == 0.01 and spec.study != load_spec(path).study


def test_sweep_override_with_a_bad_value_is_one_line(tmp_path, capsys):
    path = write_spec(tmp_path, grid={"model.attention": ["bswa"]})
    assert main(["sweep", "run", path, "train.max_steps=-1", "--out-root", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.max_steps=-1" in err
