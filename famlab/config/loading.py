"""Loading a run configuration: presets, dotlist overrides, run files and checkpoints, merged with OmegaConf.

Merge order: the structured schema (:class:`RunConfig`'s dataclass defaults) <- the presets a preset's
``defaults:`` list names (each resolved the same way, first to last) <- the preset YAML
(``famlab/config/presets/<name>.yaml``, or a path; ``experiment=NAME`` is the same as ``preset=NAME``, as
Hydra users type it) <- config group choices in command-line order (``model=fam_m0``, ``data=passkey_symbols``:
``famlab/config/groups/<section>/<name>.yaml``, one section's settings each) <- dotlist overrides
(``train.lr=1e-3``). Every layer is checked for unknown keys before it is merged (:mod:`famlab.config.schema`);
every error is one line naming the dotted key (:class:`ConfigError`; the CLI prints it and exits 2).

Composition is these few merges, written here rather than through hydra-core's compose API: famlab's
overrides are OmegaConf dotlists (Hydra's grammar quotes and escapes differently, and would change what
commands users already run mean), and the strict keys with "did you mean" stay in one place.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from famlab.config.errors import ConfigError
from famlab.config.run import RunConfig
from famlab.config.schema import build_config, is_text_key, merge_layers, one_line, structured_schema

PRESET_DIR = Path(__file__).with_name("presets")
GROUP_DIR = Path(__file__).with_name("groups")
PRESET_KEYS = ("preset=", "experiment=")  # experiment=: Hydra's name for a preset that sets several groups


def group_names(section: str) -> list[str]:
    """The choices of config group ``section`` (``model``, ``data``): YAML files under ``groups/<section>/``."""
    return sorted(p.stem for p in (GROUP_DIR / section).glob("*.yaml"))


def group_sections() -> list[str]:
    return sorted(p.name for p in GROUP_DIR.iterdir() if p.is_dir())


def _closest(value: str, names: list[str]) -> str:
    close = difflib.get_close_matches(value, names, n=1)
    return f"; did you mean {close[0]}?" if close else ""


def _read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    try:
        data = OmegaConf.to_container(OmegaConf.load(path)) or {}
    except Exception as e:
        raise ConfigError(f"{what} {str(path)!r}: {one_line(e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {str(path)!r}: expected a mapping at the top level")
    return data


def group_layer(section: str, name: str) -> tuple[dict[str, Any], str]:
    """``model=fam_m0`` -> ({"model": {...}}, source) from ``groups/model/fam_m0.yaml``."""
    names = group_names(section)
    if name not in names:
        raise ConfigError(
            f"{section}={name!r}: no such {section} group (available: {', '.join(names)}){_closest(name, names)}"
        )
    data = _read_yaml_mapping(GROUP_DIR / section / f"{name}.yaml", f"{section} group")
    return {section: data}, f" (in {section} group {name})"


def preset_layers(preset: str, seen: tuple[str, ...] = ()) -> list[tuple[dict[str, Any], str]]:
    """A preset's layers: those of its ``defaults:`` presets (first to last), then its own body."""
    path = preset_path(preset)
    if str(path) in seen:
        chain = " -> ".join(Path(p).stem for p in (*seen, str(path)))
        raise ConfigError(f"preset {path.stem!r}: its defaults form a cycle ({chain})")
    data = _read_yaml_mapping(path, "preset")
    defaults = data.pop("defaults", [])
    if isinstance(defaults, str):
        defaults = [defaults]
    if not isinstance(defaults, list) or not all(isinstance(d, str) and d for d in defaults):
        raise ConfigError(
            f"preset {str(path)!r}: defaults={defaults!r} is not allowed: expected a list of preset names"
        )
    layers: list[tuple[dict[str, Any], str]] = []
    for parent in defaults:
        layers += preset_layers(parent, (*seen, str(path)))
    return [*layers, (data, f" (in preset {path.stem})")]


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(preset: str) -> Any:
    """A preset name (``famlab/config/presets/<name>.yaml``) or a path to a YAML file."""
    path = Path(preset).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    named = PRESET_DIR / f"{preset}.yaml"
    if named.is_file():
        return named
    hint = _closest(str(preset), preset_names())
    raise ConfigError(f"preset={preset!r}: no such preset (available: {', '.join(preset_names())}){hint}")


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["train.lr=1e-3", "model.attention=fam"]`` -> nested dict (values parsed as YAML)."""
    from omegaconf import OmegaConf

    for item in overrides:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(f"override {item!r}: expected key=value (e.g. train.max_steps=300)")
    try:
        parsed = OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))
    except Exception as e:  # a malformed value (e.g. an unclosed bracket)
        raise ConfigError(f"overrides {overrides!r}: {one_line(e)}") from None
    # YAML reads yes/no/on/off as booleans; a text-valued key keeps the text (name=yes, logger.wandb=off)
    schema = structured_schema(RunConfig)
    for item in overrides:
        key, raw = (part.strip() for part in item.split("=", 1))
        path = key.split(".")
        parent = parsed
        for part in path[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and isinstance(parent.get(path[-1]), bool) and is_text_key(schema, key):
            parent[path[-1]] = raw
    return parsed


def load_run_config(preset: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """schema <- preset (and its defaults) <- group choices <- dotlist overrides -> a validated :class:`RunConfig`.

    ``preset``: a name in ``famlab/config/presets`` (``tiny``, ``small``, ``paper``), a YAML path, or None
    (dataclass defaults). Raises :class:`ConfigError` (a ``ValueError``) with a one-line message.
    """
    overrides = list(overrides)
    picked = [o for o in overrides if o.startswith(PRESET_KEYS)]
    if picked:  # "preset=NAME" (or "experiment=NAME") among the overrides selects the preset (the last one wins)
        overrides = [o for o in overrides if not o.startswith(PRESET_KEYS)]
        preset = picked[-1].split("=", 1)[1] or None
    sections = group_sections()
    groups = [o.split("=", 1) for o in overrides if o.split("=", 1)[0].strip() in sections]
    overrides = [o for o in overrides if o.split("=", 1)[0].strip() not in sections]
    layers: list[tuple[dict[str, Any], str]] = []
    name = ""
    if preset:
        layers += preset_layers(preset)
        name = preset_path(preset).stem
    layers += [group_layer(section.strip(), choice.strip()) for section, choice in groups]
    user = parse_overrides(list(overrides))
    if name and "preset" not in user:
        layers.append(({"preset": name}, ""))
    layers.append((user, ""))
    return build_config(RunConfig, merge_layers(RunConfig, layers))


def run_config_to_yaml(cfg: RunConfig) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(cfg.to_dict()))


def load_run_config_dict(
    data: dict[str, Any], overrides: list[str] | tuple[str, ...] = (), source: str = ""
) -> RunConfig:
    """A config mapping (e.g. a checkpoint's ``["famlab"]["config"]``) + overrides -> RunConfig."""
    layers = [(data, f" (in {source})" if source else ""), (parse_overrides(list(overrides)), "")]
    return build_config(RunConfig, merge_layers(RunConfig, layers))


def load_run_config_file(path: Any, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """A run's resolved ``config.yaml`` (+ overrides) -> RunConfig."""
    return load_run_config_dict(read_config_file(path), overrides, str(path))


def read_config_file(path: Any) -> dict[str, Any]:
    """A run's ``config.yaml`` as a mapping; a missing, unreadable, empty or non-mapping file raises a one-line
    :class:`ConfigError` naming it."""
    from omegaconf import OmegaConf

    try:
        data = OmegaConf.to_container(OmegaConf.load(path))
    except FileNotFoundError:
        raise ConfigError(f"{str(path)!r}: no such run config") from None
    except Exception as e:  # YAML syntax, undecodable bytes, a folder, ...
        raise ConfigError(f"{str(path)!r}: not a readable run config: {type(e).__name__}: {one_line(e)}") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{str(path)!r}: a run config must be a non-empty mapping, got {type(data).__name__}")
    return data
