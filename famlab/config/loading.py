"""Loading a run configuration: presets, dotlist overrides, run files and checkpoints, merged with OmegaConf.

Merge order: the structured schema (:class:`RunConfig`'s dataclass defaults) <- the preset YAML
(``famlab/config/presets/<name>.yaml``, or a path) <- dotlist overrides (``train.lr=1e-3``). Every layer is
checked for unknown keys before it is merged (:mod:`famlab.config.schema`); every error is one line naming the
dotted key (:class:`ConfigError`; the CLI prints it and exits 2).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from famlab.config.errors import ConfigError
from famlab.config.run import RunConfig
from famlab.config.schema import build_config, is_text_key, merge_layers, one_line, structured_schema

PRESET_DIR = Path(__file__).with_name("presets")


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
    close = difflib.get_close_matches(str(preset), preset_names(), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
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
    """schema <- preset YAML <- dotlist overrides -> a validated :class:`RunConfig`.

    ``preset``: a name in ``famlab/config/presets`` (``tiny``, ``small``, ``paper``), a YAML path, or None
    (dataclass defaults). Raises :class:`ConfigError` (a ``ValueError``) with a one-line message.
    """
    from omegaconf import OmegaConf

    overrides = list(overrides)
    picked = [o for o in overrides if o.startswith("preset=")]
    if picked:  # "preset=NAME" among the overrides selects the preset (the last one wins)
        overrides = [o for o in overrides if not o.startswith("preset=")]
        preset = picked[-1].split("=", 1)[1] or None
    layers: list[tuple[dict[str, Any], str]] = []
    name = ""
    if preset:
        path = preset_path(preset)
        name = path.stem
        try:
            data = OmegaConf.to_container(OmegaConf.load(path)) or {}
        except Exception as e:
            raise ConfigError(f"preset {str(path)!r}: {one_line(e)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"preset {str(path)!r}: expected a mapping at the top level")
        layers.append((data, f" (in preset {name})"))
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
