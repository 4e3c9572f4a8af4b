"""Sweep specs: the shipped ones resolve, bad ones are refused before any trial runs, claims are kept."""

from __future__ import annotations

import pytest
import yaml
from sweep_helpers import write_spec

from famlab.cli import sweep_main as main
from famlab.resources import spec_file, spec_names
from famlab.sweep import load_spec


@pytest.mark.parametrize("name", spec_names())
def test_shipped_specs_resolve_for_every_profile(name):
    path = spec_file(name)
    profiles = yaml.safe_load(path.read_text())["profiles"]
    assert {"tiny", "paper"} <= set(profiles)
    for profile in profiles:
        # by name, as `famlab sweep run NAME` does; every trial's run config is checked (against a node big enough
        # for the paper profiles) in test_sweep_validate_config.py
        spec = load_spec(name, profile, validate_runs=False)
        assert spec.path == str(path)
        assert spec.grid_points() if spec.grid is not None else spec.space


def test_claims_are_kept_as_given_and_a_profile_replaces_them(tmp_path):
    claims = [{"id": "fam_beats_bswa", "metric": "val/loss", "better": "fam", "than": "bswa"}]
    tiny_claims = [{"id": "tiny_only", "kind": "monotone"}]
    path = write_spec(tmp_path, claims=claims, profiles={"tiny": {"claims": tiny_claims}, "paper": {}})
    assert load_spec(path, "paper").claims == claims
    assert load_spec(path, "tiny").claims == tiny_claims
    assert load_spec(write_spec(tmp_path)).claims == []


@pytest.mark.parametrize("claims", [{"id": "x"}, ["fam beats bswa"], "fam beats bswa"])
def test_claims_must_be_a_list_of_mappings(tmp_path, claims):
    with pytest.raises(ValueError, match="claims=.* is not allowed.*a list of mappings"):
        load_spec(write_spec(tmp_path, claims=claims))


def test_search_spec_resolves_its_space(tmp_path):
    path = write_spec(
        tmp_path,
        grid=None,
        search={
            "sampler": "random",
            "pruner": "threshold",
            "prune_above": 3.0,
            "n_trials": 5,
            "space": {
                "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                "model.fam_len": {"type": "int", "low": 1, "high": 4},
            },
        },
    )
    spec = load_spec(path)
    assert (spec.grid, spec.sampler, spec.pruner, spec.n_trials, spec.prune_above) == (
        None,
        "random",
        "threshold",
        5,
        3.0,
    )
    assert sorted(spec.varied) == ["model.fam_len", "train.lr"]
    assert spec.space["train.lr"].log and spec.space["model.fam_len"].type == "int"


@pytest.mark.parametrize(
    "search,message",
    [
        ({"sampler": "cmaes", "space": {"train.lr": {"type": "float", "low": 0.1, "high": 1}}}, "sampler='cmaes'"),
        ({"pruner": "threshold", "space": {"train.lr": {"type": "float", "low": 0.1, "high": 1}}}, "prune_above=None"),
        ({"space": {"train.lr": {"type": "float", "low": 1, "high": 0.1}}}, "numbers low < high"),
        ({"space": {}}, "search.space=.*at least one parameter"),
    ],
)
def test_bad_search_rejected(tmp_path, search, message):
    with pytest.raises(ValueError, match=message):
        load_spec(write_spec(tmp_path, grid=None, search=search))


@pytest.mark.parametrize(
    "fields,message",
    [
        (dict(gird={"model.fam_len": [1]}), "no key 'gird' \\(did you mean 'grid'\\?\\)"),
        (dict(grid={"model.fam_lenn": [1, 2]}), "model.fam_lenn.*did you mean model.fam_len"),
        (dict(grid={}), "grid=\\{\\} is not allowed"),
        (dict(grid={"model.fam_len": []}), "grid.model.fam_len=\\[\\] is not allowed"),
        (dict(grid={"model.attention": ["bswa", "sliding"]}), "attention='sliding'"),
        (dict(objective={"metric": "val/loss", "direction": "up"}), "direction='up'"),
        (dict(grid={"variant": ["M9"]}, variants={"M0": {"model.mem_segment": 0}}), "variant='M9'"),
        (dict(trial_timeout=0), "trial_timeout=0 is not allowed.*seconds > 0"),
        (dict(trial_timeout="1h"), "trial_timeout='1h'"),
    ],
)
def test_bad_spec_rejected_before_any_trial(tmp_path, fields, message, capsys):
    path = write_spec(tmp_path, **fields)
    with pytest.raises(ValueError, match=message):
        load_spec(path)
    assert main(["run", path, "--out-root", str(tmp_path / "runs")]) == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # no store, no trial directory


def test_variants_expand_to_overrides(tmp_path):
    path = write_spec(
        tmp_path,
        grid={"variant": ["M1", "M1_SG"]},
        variants={"M1": {"model.mem_segment": 1}, "M1_SG": {"model.mem_segment": 1, "model.stop_grad": True}},
    )
    spec = load_spec(path)
    overrides = spec.trial_overrides({"variant": "M1_SG", "seed": 3})
    assert "model.stop_grad=true" in overrides and "model.mem_segment=1" in overrides and "seed=3" in overrides
