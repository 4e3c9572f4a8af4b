"""``famlab train -m KEY=A,B,C ...``: Hydra's multirun syntax, run as a sweep.

Each override is read by Hydra's own override parser (so ``a,b,c``, ``range(0,3)`` and ``choice(a,b)``
mean what they mean to Hydra); the ones with several values make the grid, the rest the base config
(:func:`famlab.sweep.overrides.multirun_spec`). The sweep then runs exactly like ``famlab sweep run``:
an Optuna study with its SQLite store under ``<out_dir>/sweeps/<study>/``, a line per trial, the tables at
the end.
"""

from __future__ import annotations

import sys
from typing import Any

from famlab.config import ConfigError


def split_sweeps(items: list[str]) -> tuple[list[str], dict[str, list[Any]]]:
    """``["preset=tiny", "model.fam_len=2,4", "seed=0,1"]`` -> (base ``key=value`` items, ``{key: values}``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    base: list[str] = []
    grid: dict[str, list[Any]] = {}
    for item in items:
        try:
            (override,) = parser.parse_overrides([item])
        except HydraException as err:
            raise ConfigError(f"override {item!r}: {' '.join(str(err).split())[:200]}") from None
        key = override.key_or_group
        if not override.is_sweep_override():
            base.append(item)
            continue
        values = list(override.sweep_iterator())
        bad = [v for v in values if not (v is None or isinstance(v, bool | int | float | str))]
        if bad or not values:
            raise ConfigError(f"{item}: a multirun sweeps scalar values (numbers, strings, true/false, null)")
        if key in grid:
            raise ConfigError(f"{key}: swept twice ({item}); give its values once")
        grid[key] = values
    return base, grid


def has_sweep(items: list[str]) -> str | None:
    """The first override that Hydra reads as several values (``model.fam_len=2,4``), else None."""
    try:
        _, grid = split_sweeps(items)
    except ConfigError:
        return None
    return next((f"{k}={','.join(map(str, v))}" for k, v in grid.items()), None)


def multirun_main(items: list[str], *, workers: int = 1, threads: int | None = None) -> int:
    """Build the grid spec, run it with the sweep machinery, print the tables; the exit status of
    ``famlab sweep run`` (0 every point complete, 1 some missing, 2 bad settings)."""
    from famlab.cli.sweep import report
    from famlab.sweep import default_storage, run_sweep
    from famlab.sweep.overrides import multirun_spec, parse_value

    try:
        base, grid = split_sweeps(items)
        if not grid:
            raise ConfigError("-m: no override has several values (e.g. model.fam_len=2,4,8 seed=0,1)")
        out_root = dict(parse_value(b) for b in base).get("out_dir", "runs")
        spec = multirun_spec(base, grid, out_root)
    except ValueError as err:
        print(f"famlab: error: {err}", file=sys.stderr)
        return 2
    storage = default_storage(spec, out_root)
    root = "" if out_root == "runs" else f" --out-root {out_root}"
    print(f"multirun: famlab sweep status {spec.path} --profile {spec.profile}{root}", flush=True)
    run_sweep(spec, storage, workers=workers, out_root=out_root, threads=threads)
    return report(spec, storage, "run")
