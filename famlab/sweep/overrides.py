"""Sweeps from the command line: a spec with ``key=value`` overrides for every trial, and a grid spec made
from ``famlab train -m`` (Hydra's multirun syntax: ``model.fam_len=2,4,8 seed=0,1``).

Both end as an ordinary :class:`SweepSpec` that the sweep machinery runs as it runs ``sweeps/*.yaml``:

* :func:`with_overrides`: ``famlab sweep run SPEC train.max_steps=50`` sets the key in every trial. A key the
  sweep varies (a grid or search key, ``seed``, or a key a variant sets) is refused: the grid would silently
  win over it. The study becomes ``<study>.<hash of the overrides>`` (unless ``study`` is given), so a changed
  run config never lands in the study of the spec's own runs.
* :func:`multirun_spec`: the base overrides and the comma lists as a grid (``seed`` lists are the replicate
  seeds); it is written as YAML to ``<out_root>/sweeps/<study>/multirun.yaml`` next to its SQLite store and
  loaded with :func:`load_spec`, so ``famlab sweep status|run|dashboard`` take that file as their SPEC and
  running the same command again resumes the same study.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from famlab.config import ConfigError
from famlab.sweep.spec import STUDY_NAME, SweepSpec, load_spec, validate_trials

MULTIRUN_PROFILE = "multirun"


def parse_value(item: str) -> tuple[str, Any]:
    """``"train.lr=1e-3"`` -> ``("train.lr", 0.001)`` (the value read as YAML, as run overrides are)."""
    from omegaconf import OmegaConf

    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected key=value (e.g. train.max_steps=50)")
    try:
        value = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={raw}"]))["v"]
    except Exception:  # a malformed value (e.g. an unclosed bracket)
        raise ConfigError(f"override {item!r}: the value is not valid YAML") from None
    return key, value


def digest(data: Any) -> str:
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:8]


def varied_keys(spec: SweepSpec) -> dict[str, str]:
    """Every run key a trial's parameters set, with why: ``{"model.fam_len": "the grid", ...}``."""
    out = {key: "the grid" if spec.grid is not None else "the search space" for key in spec.varied}
    out["seed"] = f"the spec's seeds {spec.seeds}"
    for name in (spec.grid or {}).get("variant", []):
        for key in spec.variants.get(name, {}):
            out.setdefault(key, f"variant {name}")
    out.pop("variant", None)
    return out


def with_overrides(spec: SweepSpec, items: list[str], study: str | None = None, *, check: bool = True) -> SweepSpec:
    """``spec`` with ``items`` (``key=value``; ``preset=NAME`` picks the base preset) set in every trial and
    (``check``) every trial's run config checked. Raises :class:`ConfigError` (one line) for a varied key."""
    parsed = dict(parse_value(item) for item in items)
    varied = varied_keys(spec)
    for key, value in parsed.items():
        if key in varied:
            raise ConfigError(
                f"{key}={value!r}: {key} is varied by {varied[key]} of sweep {spec.study}; "
                "override only keys the sweep does not vary (or edit the spec)"
            )
    preset = parsed.pop("preset", spec.preset)
    if not isinstance(preset, str) or not preset:
        raise ConfigError(f"preset={preset!r}: expected a preset name or a YAML path")
    if study is not None and not STUDY_NAME.fullmatch(study):
        raise ConfigError(f"--study {study!r}: expected a simple name: letters, digits, _, - and . (not leading)")
    name = study or (f"{spec.study}.{digest([preset, parsed])}" if items else spec.study)
    new = dataclasses.replace(spec, preset=preset, overrides={**spec.overrides, **parsed}, study=name)
    if check:
        validate_trials(new)
    return new


def multirun_spec(base: list[str], grid: dict[str, list], out_root: str | Path = "runs") -> SweepSpec:
    """A grid spec of ``base`` overrides (``key=value``, ``preset=`` among them) x ``grid`` (``{key: values}``;
    ``seed`` values are the replicate seeds), written next to its store and loaded as every spec is. The study
    is the base run's name and a hash of the whole command: ``tiny-fam-1a2b3c4d``."""
    from famlab.config import load_run_config

    parsed = dict(parse_value(item) for item in base)
    preset = parsed.pop("preset", None) or ""
    grid = dict(grid)
    seeds = grid.pop("seed", None) or [parsed.get("seed", 0)]
    parsed.pop("seed", None)
    cfg = load_run_config(preset or None, [b for b in base if not b.startswith(("preset=", "seed="))])
    study = f"{cfg.run_name}-{digest([preset, parsed, grid, seeds])}"
    command = " ".join(["famlab train -m", *base, *(f"{k}={','.join(map(str, v))}" for k, v in grid.items())])
    raw = {
        "study": study,
        "description": command,
        "preset": preset,
        "overrides": parsed,
        # only seeds vary: one unnamed variant (a grid needs a key), run once per seed
        "variants": {} if grid else {"base": {}},
        "grid": grid or {"variant": ["base"]},
        "seeds": seeds,
        "objective": {
            "metric": "val/loss" if cfg.data.val_batches > 0 else "train/loss_recent_mean",
            "direction": "minimize",
        },
        "max_retries": 0,
        "profiles": {MULTIRUN_PROFILE: {}},
    }
    path = Path(out_root) / "sweeps" / study / "multirun.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    from omegaconf import OmegaConf

    path.write_text(OmegaConf.to_yaml(OmegaConf.create(raw)))
    return load_spec(str(path), MULTIRUN_PROFILE)
