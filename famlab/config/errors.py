"""The one error format of famlab's configuration, and what every config class shares: the field checks and
:class:`CheckedDataclass` (``from_dict``/``to_dict``/``replace`` that reject unknown keys).

A bad value raises ``ValueError("<owner>.<key>=<value>!r is not allowed: expected <allowed>")``; the owner
is a class name (``ModelConfig``, ``DataConfig``) or a run section (``train``, ``logger``, ``lora``, ``run``).
The run loader rewrites class-name owners to the section's dotted key and raises :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import fields
from typing import Any, Self


class ConfigError(ValueError):
    """A bad run configuration: the message is one line naming the dotted key."""


def config_error(owner: str, key: str, value: Any, allowed: str) -> ValueError:
    """The one error format for bad config values: names the key, the value and what is allowed."""
    return ValueError(f"{owner}.{key}={value!r} is not allowed: expected {allowed}")


def unknown_key_error(owner: str, key: str, valid: list[str]) -> ValueError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"{owner} has no key {key!r}{hint}; valid keys: {', '.join(valid)}")


def reject_unknown_keys(owner: str, data: dict[str, Any], valid: list[str] | tuple[str, ...]) -> None:
    """Reject keys of ``data`` not in ``valid``, suggesting the closest valid one."""
    for key in data:
        if key not in valid:
            raise unknown_key_error(owner, str(key), list(valid))


def check_keys(cls: type, data: dict[str, Any]) -> None:
    """Reject keys that are not fields of dataclass ``cls``, suggesting the closest valid one."""
    reject_unknown_keys(cls.__name__, data, [f.name for f in fields(cls)])


class CheckedDataclass:
    """Base of a config dataclass built from mappings: unknown keys are rejected with a suggestion."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Build from a mapping, rejecting unknown keys with a suggestion."""
        check_keys(cls, data)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Self:
        """A checked copy with ``changes``; list fields are copied, not shared."""
        return self.from_dict({**self.to_dict(), **changes})


def is_int(value: Any) -> bool:
    """An integer, and not a bool (YAML's ``true`` must not pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or float, and not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


# The field checks below read ``getattr(obj, key)`` so each config's ``__post_init__`` is a list of one-line
# rules; each raises :func:`config_error` naming ``owner.key``.


def check_int(owner: str, obj: Any, key: str, minimum: int, expected: str | None = None) -> None:
    """An integer >= ``minimum``; ``expected`` replaces the default wording of what is allowed."""
    value = getattr(obj, key)
    if not (is_int(value) and value >= minimum):
        raise config_error(owner, key, value, expected or f"an integer >= {minimum}")


def is_finite(value: Any) -> bool:
    """A number that is neither infinite nor NaN (and not a bool)."""
    return is_number(value) and math.isfinite(value)


def check_number(
    owner: str,
    obj: Any,
    key: str,
    low: float,
    high: float | None = None,
    open_low: bool = False,
    open_high: bool = False,
) -> None:
    """A finite number >= ``low`` (> with ``open_low``) and, if given, <= ``high`` (< with ``open_high``).
    The message says "finite" when the value is an infinity or NaN."""
    value = getattr(obj, key)
    ok = is_finite(value) and (value > low if open_low else value >= low)
    ok = ok and (high is None or (value < high if open_high else value <= high))
    if not ok:
        bounds = f"{'>' if open_low else '>='} {low}"
        if high is not None:
            bounds += f" and {'<' if open_high else '<='} {high}"
        kind = "a finite number" if is_number(value) and not math.isfinite(value) else "a number"
        raise config_error(owner, key, value, f"{kind} {bounds}")


def check_finite(owner: str, obj: Any) -> None:
    """Every float of a config dataclass is finite: each field whose value is a float, and each float in a
    list field (nested lists too). The generic last check of every config's ``__post_init__``, so a new float
    field is covered without a rule of its own (its range still needs one)."""

    def bad(value: Any) -> bool:
        if isinstance(value, list | tuple):
            return any(bad(v) for v in value)
        return isinstance(value, float) and not math.isfinite(value)

    for f in fields(obj):
        value = getattr(obj, f.name)
        if bad(value):
            allowed = "finite numbers" if isinstance(value, list | tuple) else "a finite number"
            raise config_error(owner, f.name, value, allowed)


def check_choice(owner: str, obj: Any, key: str, allowed: tuple[str, ...]) -> None:
    value = getattr(obj, key)
    if value not in allowed:
        raise config_error(owner, key, value, "one of " + ", ".join(allowed))


def check_flag(owner: str, obj: Any, key: str) -> None:
    value = getattr(obj, key)
    if not isinstance(value, bool):
        raise config_error(owner, key, value, "true or false")
