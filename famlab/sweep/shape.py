"""The structure of a sweep spec's YAML, checked before anything reads it: the file parses, is a mapping, and
every section has its type (``profiles`` a mapping of mappings, ``grid`` a mapping, ``preset`` a name, ...).

Pure data like :mod:`famlab.sweep.spec`, which calls :func:`read_spec_yaml` then :func:`check_shape`; each
error is one ``ValueError`` line naming the spec and the key (``famlab sweep`` prints it and exits 2). The
values inside (a grid's lists, the search space, the run configs of the trials) are checked by ``spec``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from famlab.config import config_error

MAPPINGS = ("overrides", "grid", "variants", "search", "objective", "table", "eval_overrides", "notebook")
TEXTS = ("study", "description", "paper", "preset")


def read_spec_yaml(path: Path) -> Any:
    """The spec file's YAML as plain data (interpolations resolved); a file that does not parse raises one line."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as e:  # YAML syntax, tabs, undecodable bytes, a bad ${...}
        why = " ".join(str(e).split("\n")[0].split())
        raise ValueError(f"sweep spec {str(path)!r} does not parse: {type(e).__name__}: {why}") from None


def check_section(owner: str, key: str, value: Any) -> None:
    """One top-level (or profile-level) entry of the spec has the type its key needs; null means absent."""
    if value is None:
        return
    if key in MAPPINGS and not isinstance(value, dict):
        raise config_error(owner, key, value, "a mapping")
    if key in TEXTS and not isinstance(value, str):
        raise config_error(owner, key, value, "a string")
    if key == "variants":
        for name, sub in value.items():
            if not isinstance(sub, dict | None):
                raise config_error(owner, f"variants.{name}", sub, "a mapping of run settings")
    if key == "search" and not isinstance(value.get("space", {}), dict | None):
        raise config_error(owner, "search.space", value["space"], "a mapping of parameters")
    if key in ("seeds", "metrics", "claims") and not isinstance(value, list):
        raise config_error(owner, key, value, "a list of mappings" if key == "claims" else "a list")
    if key == "seeds" and not all(isinstance(s, int) and not isinstance(s, bool) for s in value):
        raise config_error(owner, key, value, "a non-empty list of integers")
    if key == "metrics" and not all(isinstance(m, str) for m in value):
        raise config_error(owner, key, value, "a list of metric names")
    if key == "evaluate" and not isinstance(value, bool):
        raise config_error(owner, key, value, "true or false")


def check_shape(owner: str, raw: Any) -> None:
    """The spec (already read) is a mapping whose sections, and each profile's, have their types."""
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{owner}: a sweep spec must be a non-empty mapping, got {type(raw).__name__}")
    profiles = raw.get("profiles")
    if profiles is not None and not isinstance(profiles, dict):
        raise config_error(owner, "profiles", profiles, "a mapping of profile names (tiny, paper) to settings")
    for name, prof in (profiles or {}).items():
        if prof is not None and not isinstance(prof, dict):
            raise config_error(owner, f"profiles.{name}", prof, "a mapping of settings (or nothing)")
        for key, value in (prof or {}).items():
            check_section(f"{owner}.profiles.{name}", key, value)
    for key, value in raw.items():
        check_section(owner, key, value)
