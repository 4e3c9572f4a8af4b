"""Shared by the sweep tests: a spec file in a temporary folder, and checks on a finished grid."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import optuna
import pytest
import yaml
from helpers import TINY
from optuna.trial import TrialState

from famlab.sweep import make_storage


def write_spec(tmp_path: Path, name: str = "t", **fields) -> str:
    spec = {
        "study": name,
        "preset": "tiny",
        "overrides": dict(TINY),
        "grid": {"model.attention": ["bswa", "fam"], "model.mem_segment": [0, 1]},
        "seeds": [0],
        "objective": {"metric": "val/loss", "direction": "minimize"},
        "profiles": {"tiny": {}},
    }
    for key, value in fields.items():
        if value is None:
            spec.pop(key, None)
        elif key == "overrides":
            spec["overrides"].update(value)
        else:
            spec[key] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def load(url: str, spec) -> optuna.Study:
    return optuna.load_study(study_name=spec.study_name, storage=make_storage(url))


def assert_grid_done_once(study: optuna.Study, spec) -> list:
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    points = Counter(tuple(sorted(t.params.items())) for t in complete)
    expected = {tuple(sorted(p.items())) for p in spec.grid_points()}
    assert set(points) == expected, "holes in the grid"
    assert all(n == 1 for n in points.values()), f"duplicates: {points}"
    for t in complete:
        run_dir = Path(t.user_attrs["run_dir"])
        assert (run_dir / "final_metrics.json").exists() and (run_dir / "config.yaml").exists()
        assert t.value == pytest.approx(t.user_attrs["m.val/loss"])
    return complete
