"""Shell completion of the ``famlab`` command (argcomplete): verbs and options from the parsers, and

* ``key=value`` settings: every dotted run-config key (``model.fam_len=``), then a key's values where they
  are a closed set (``model.attention=fam``, ``preset=tiny``, true/false);
* sweep specs: the names in ``sweeps/`` (``famlab sweep run fam_length``).

Activate it with ``eval "$(famlab completion bash)"`` (or zsh/fish), or argcomplete's
``eval "$(register-python-argcomplete famlab)"``.
"""

from __future__ import annotations

import argparse
from typing import Any

SHELLS = ("bash", "zsh", "fish")


def run_keys() -> list[str]:
    """Every dotted key of the run config: ``model.fam_len``, ..., ``seed``, plus ``preset``."""
    from famlab.config import RunConfig
    from famlab.config.schema import leaf_keys, sections, structured_schema

    keys = leaf_keys(structured_schema(RunConfig), list(sections(RunConfig)))
    return sorted({*keys, "preset"})


def key_values(key: str) -> list[str]:
    """The values of ``key`` worth completing (a closed set), else []."""
    import dataclasses
    import typing

    from famlab.config import RunConfig, preset_names
    from famlab.config import data as d
    from famlab.config import model as m
    from famlab.config import run as r
    from famlab.config.schema import sections

    closed = {
        "preset": preset_names(),
        "model.attention": m.ATTENTION_KINDS,
        "model.fam_pos": m.FAM_POSITIONS,
        "model.fam_init": m.FAM_INITS,
        "model.init": m.INIT_SCHEMES,
        "data.task": d.TASKS,
        "logger.wandb": r.WANDB_MODES,
        "train.optimizer": r.TRAIN_OPTIMIZERS,
        "train.schedule": r.TRAIN_SCHEDULES,
        "train.precision": r.TRAIN_PRECISIONS,
        "train.compile": r.TRAIN_COMPILE,
    }
    if key in closed:
        return list(closed[key])
    section, _, leaf = key.partition(".")
    cls = sections(RunConfig).get(section)
    if cls is not None and leaf:
        hints = typing.get_type_hints(cls)
        if any(f.name == leaf for f in dataclasses.fields(cls)) and hints.get(leaf) is bool:
            return ["true", "false"]
    return []


def complete_setting(prefix: str, **_: Any) -> list[str]:
    """argcomplete completer of a ``key=value`` argument."""
    if "=" in prefix:
        key, _, typed = prefix.partition("=")
        return [f"{key}={v}" for v in key_values(key) if v.startswith(typed)]
    keys = [k for k in run_keys() if k.startswith(prefix)]
    sections = sorted({k.split(".")[0] + "." for k in keys if "." in k})
    if len(sections) > 1 and "." not in prefix:  # first the sections (model., data., ...) and plain keys
        return [*sections, *(f"{k}=" for k in keys if "." not in k)]
    return [f"{k}=" for k in keys]


def complete_spec(prefix: str, **_: Any) -> list[str]:
    """argcomplete completer of a sweep spec: its name in ``sweeps/`` (a path completes as a path)."""
    from famlab.resources import spec_names

    return [name for name in spec_names() if name.startswith(prefix)]


def add_completion_parser(sub: Any) -> None:
    p = sub.add_parser(
        "completion",
        help="print the shell code that completes famlab's verbs, specs and settings",
        description='Print shell completion code (argcomplete). Use: eval "$(famlab completion bash)" in ~/.bashrc '
        '(zsh, fish alike), or eval "$(register-python-argcomplete famlab)".',
    )
    p.add_argument("shell", nargs="?", default="bash", choices=SHELLS)


def completion_code(shell: str) -> str:
    from argcomplete import shellcode

    return shellcode(["famlab"], shell=shell)


def autocomplete(parser: argparse.ArgumentParser, **kwargs: Any) -> None:
    """Answer a completion request (the shell sets ``_ARGCOMPLETE``) and exit; nothing otherwise."""
    import os

    if "_ARGCOMPLETE" in os.environ:
        import argcomplete

        argcomplete.autocomplete(parser, **kwargs)
