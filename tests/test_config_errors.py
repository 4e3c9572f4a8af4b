"""famlab.config.errors: the one error format, unknown keys, the shared field checks; config stays plain data."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import pytest

from famlab.config import (
    ConfigError,
    check_choice,
    check_flag,
    check_int,
    check_keys,
    check_number,
    config_error,
    is_int,
    is_number,
    unknown_key_error,
)


@dataclass
class Box:
    size: int = 1
    ratio: float = 0.5
    kind: str = "a"
    on: bool = True


def test_config_error_names_owner_key_value_and_allowed():
    err = config_error("DataConfig", "task", "foo", "one of passkey, text")
    assert type(err) is ValueError
    assert str(err) == "DataConfig.task='foo' is not allowed: expected one of passkey, text"
    assert issubclass(ConfigError, ValueError)


def test_unknown_key_error_suggests_the_closest_key_only_when_close():
    assert str(unknown_key_error("Box", "sise", ["size", "kind"])) == (
        "Box has no key 'sise' (did you mean 'size'?); valid keys: size, kind"
    )
    assert str(unknown_key_error("Box", "zzz", ["size", "kind"])) == "Box has no key 'zzz'; valid keys: size, kind"
    check_keys(Box, {"size": 2, "on": False})
    with pytest.raises(ValueError, match=r"^Box has no key 'rati' \(did you mean 'ratio'\?\); valid keys: size, "):
        check_keys(Box, {"size": 2, "rati": 1.0})


@pytest.mark.parametrize("value, integer, number", [(3, True, True), (2.5, False, True), (True, False, False)])
def test_bools_are_neither_integers_nor_numbers(value, integer, number):
    assert (is_int(value), is_number(value)) == (integer, number)
    assert not is_number("1")


@pytest.mark.parametrize(
    "check, box, message",
    [
        (lambda b: check_int("o", b, "size", 1), Box(size=0), "o.size=0 is not allowed: expected an integer >= 1"),
        (
            lambda b: check_int("o", b, "size", 1),
            Box(size=True),
            "o.size=True is not allowed: expected an integer >= 1",
        ),
        (lambda b: check_int("o", b, "size", 1, "an integer > 0"), Box(size=0), "expected an integer > 0"),
        (lambda b: check_number("o", b, "ratio", 0.0, open_low=True), Box(ratio=0), "o.ratio=0 is not allowed: "),
        (lambda b: check_number("o", b, "ratio", 0.0, open_low=True), Box(ratio=0), "expected a number > 0.0"),
        (lambda b: check_number("o", b, "ratio", 0.0, 1.0), Box(ratio=1.5), "expected a number >= 0.0 and <= 1.0"),
        (lambda b: check_number("o", b, "ratio", 0), Box(ratio=-1), "expected a number >= 0"),
        (
            lambda b: check_choice("o", b, "kind", ("a", "b")),
            Box(kind="c"),
            "o.kind='c' is not allowed: expected one of a, b",
        ),
        (lambda b: check_flag("o", b, "on"), Box(on=1), "o.on=1 is not allowed: expected true or false"),
    ],
)
def test_field_checks_reject_with_one_wording(check, box, message):
    with pytest.raises(ValueError) as err:
        check(box)
    assert message in str(err.value)


def test_field_checks_accept_values_at_the_bounds():
    box = Box(size=1, ratio=1.0, kind="b", on=False)
    check_int("o", box, "size", 1)
    check_number("o", box, "ratio", 0.0, 1.0)
    check_number("o", Box(ratio=0.0), "ratio", 0.0)
    check_choice("o", box, "kind", ("a", "b"))
    check_flag("o", box, "on")


def test_config_is_plain_data_without_torch_or_other_famlab_packages():
    code = (
        "import sys, famlab.config\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'torch'"
        " or (m.startswith('famlab.') and not m.startswith('famlab.config')))\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=True)
    assert out.stdout.strip() == "[]"
