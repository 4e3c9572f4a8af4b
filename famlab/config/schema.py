"""A nested config dataclass as an OmegaConf schema: unknown-key checks, merging, and building the dataclasses.

Generic over the root dataclass (:class:`famlab.config.RunConfig` in practice, passed in by the caller, so this
module does not import it and ``RunConfig.from_dict`` can use it): a root field whose type is a dataclass is a
*section* (``model``, ``data``, ...); every other root field is a plain key (``seed``, ``name``, ...).

* Every key the user gives is checked against the schema *before* merging, so an unknown key gives one line
  naming the full dotted key and the closest valid one.
* Type errors from OmegaConf and range errors from the dataclasses' ``__post_init__`` are re-raised as
  one-line :class:`ConfigError`\\ s naming the dotted key (the CLI prints it and exits 2).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from typing import Any

from famlab.config.errors import ConfigError
from famlab.config.foreign import foreign_hint


def one_line(msg: Any) -> str:
    """The first line of a message, whitespace collapsed."""
    return " ".join(str(msg).split("\n")[0].split())


def sections(root: type) -> dict[str, type]:
    """The root's dataclass-typed fields, in field order: ``{"model": ModelConfig, ...}``."""
    hints = typing.get_type_hints(root)
    return {f.name: hints[f.name] for f in dataclasses.fields(root) if dataclasses.is_dataclass(hints[f.name])}


@functools.cache
def structured_schema(root: type) -> Any:
    """The OmegaConf schema of ``root``, made once per process (about 0.1 s each): shared, so read it or merge
    it (``OmegaConf.merge`` copies), never change it."""
    from omegaconf import OmegaConf

    return OmegaConf.structured(root)


def leaf_keys(schema: Any, section_names: list[str]) -> list[str]:
    """Every dotted key of the schema: ``model.fam_len``, ..., ``seed``."""
    out = []
    for key in schema:
        out += [f"{key}.{sub}" for sub in schema[key]] if key in section_names else [key]
    return out


def check_user_keys(root: type, schema: Any, data: Any, source: str) -> None:
    """Reject keys of ``data`` (a nested mapping) that the schema lacks, suggesting the closest."""
    names = [k for k in sections(root) if k in schema]
    all_keys = leaf_keys(schema, names)

    def walk(node: Any, prefix: str) -> None:
        if not isinstance(node, dict):
            return
        for key, value in node.items():
            full = f"{prefix}{key}"
            if prefix == "" and key in names:
                if value is None:
                    continue
                if not isinstance(value, dict):
                    raise ConfigError(f"{full}: expected a mapping of {key} settings, got {value!r}{source}")
                walk(value, full + ".")
            elif full not in all_keys:
                foreign = foreign_hint(full, value, all_keys)  # a Lightning/Hydra name: famlab's name for it
                if foreign:
                    raise ConfigError(f"{foreign[0]}: unknown key; {foreign[1]}{source}")
                pool = [k for k in all_keys if k.startswith(prefix)] if prefix else all_keys + names
                # a section's key given without its section ("lr=1" -> train.lr) before spelling matches
                close = [] if prefix else [k for k in all_keys if k.endswith(f".{key}")][:1]
                close = close or difflib.get_close_matches(full, pool, n=1, cutoff=0.6)
                if not close and prefix:
                    close = difflib.get_close_matches(full, all_keys, n=1, cutoff=0.6)
                if close and close[0] in names and isinstance(value, dict) and value:
                    sub = next(iter(value))  # "modl.fam_len" -> "did you mean model.fam_len?"
                    if f"{close[0]}.{sub}" in all_keys:
                        full, close = f"{full}.{sub}", [f"{close[0]}.{sub}"]
                hint = f"; did you mean {close[0]}?" if close else ""
                raise ConfigError(f"{full}: unknown key{hint}{source}")
            else:
                check_user_type(schema, full, value, source)

    walk(data, "")


def check_user_type(schema: Any, key: str, value: Any, source: str = "") -> None:
    """What OmegaConf would convert or merge silently: a list where one value belongs (or the reverse), and a
    flag given as anything but true/false (OmegaConf reads ``2`` as true)."""
    from omegaconf import ListConfig
    from omegaconf.nodes import BooleanNode

    parent_key, _, leaf = key.rpartition(".")
    try:
        node = (schema[parent_key] if parent_key else schema)._get_node(leaf)
    except Exception:  # not a schema key: the unknown-key check reports it
        return
    if value is None:
        return  # OmegaConf refuses None for a key that is not optional, naming it
    if isinstance(node, ListConfig):
        allowed = None if isinstance(value, list | tuple) else "a list, e.g. [1, 2]"
    elif isinstance(node, BooleanNode):
        allowed = None if isinstance(value, bool) else "true or false"
    else:
        allowed = "a single value, not a list or mapping" if isinstance(value, list | tuple | dict) else None
    if allowed:
        raise ConfigError(f"{key}={value!r} is not allowed: expected {allowed}{source}")


def is_text_key(schema: Any, key: str) -> bool:
    """Whether the dotted ``key`` is a string field of the schema."""
    from omegaconf import OmegaConf
    from omegaconf.nodes import StringNode

    try:
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(schema, parent_key) if parent_key else schema
        return isinstance(parent._get_node(leaf), StringNode)
    except Exception:  # not a schema key: the unknown-key check reports it
        return False


def merge_layers(root: type, layers: list[tuple[dict[str, Any], str]] | list[dict[str, Any]]) -> Any:
    """schema <- each layer (checked for unknown keys first) -> merged DictConfig.

    A layer is a nested mapping, or ``(mapping, source)`` where ``source`` ends every error message
    (e.g. ``" (in preset tiny)"``).
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    schema = structured_schema(root)
    merged = schema
    for layer in layers:
        data, source = layer if isinstance(layer, tuple) else (layer, "")
        if not data:
            continue
        check_user_keys(root, schema, data, source)
        try:
            merged = OmegaConf.merge(merged, data)
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", None) or "config"
            value = getattr(e, "value", None)
            raise ConfigError(f"{key}={value!r}: {one_line(getattr(e, 'msg', e))}{source}") from None
    return merged


def build_config(root: type, merged: Any) -> Any:
    """Merged DictConfig -> ``root`` instance, every section validated; errors name the dotted key."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        plain = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "config"
        raise ConfigError(f"{key}: {one_line(getattr(e, 'msg', e))}") from None
    built = {}
    for name, cls in sections(root).items():
        try:
            built[name] = cls(**plain.pop(name))
        except (ValueError, TypeError) as e:
            msg = one_line(e)
            for prefix in (f"{cls.__name__}.", f"{name}."):
                if msg.startswith(prefix):
                    msg = f"{name}." + msg[len(prefix) :]
                    break
            else:
                msg = f"{name}: {msg}"
            raise ConfigError(msg) from None
    try:
        return root(**built, **plain)
    except (ValueError, TypeError) as e:
        msg = one_line(e)
        raise ConfigError(msg[4:] if msg.startswith("run.") else msg) from None
