"""famlab.config.schema: any nested config dataclass as an OmegaConf schema (sections, merging, dotted errors)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from famlab.config import ConfigError, config_error
from famlab.config.schema import build_config, leaf_keys, merge_layers, sections, structured_schema


@dataclass
class Inner:
    width: int = 2
    label: str = "x"

    def __post_init__(self) -> None:
        if self.width < 1:
            raise config_error("Inner", "width", self.width, "an integer >= 1")


@dataclass
class Outer:
    inner: Inner = dataclasses.field(default_factory=Inner)
    seed: int = 0
    note: str | None = None


def test_sections_are_the_dataclass_fields():
    assert sections(Outer) == {"inner": Inner}
    assert leaf_keys(structured_schema(Outer), ["inner"]) == ["inner.width", "inner.label", "seed", "note"]


def test_layers_merge_in_order_into_the_dataclasses():
    built = build_config(
        Outer, merge_layers(Outer, [{"inner": {"width": 3}}, ({"seed": 5, "inner": {"width": 4}}, "")])
    )
    assert built == Outer(inner=Inner(width=4), seed=5)


@pytest.mark.parametrize(
    "layer, message",
    [
        ({"inner": {"widht": 3}}, "inner.widht: unknown key; did you mean inner.width? (in test)"),
        ({"width": 3}, "width: unknown key; did you mean inner.width? (in test)"),
        ({"inner": 3}, "inner: expected a mapping of inner settings, got 3 (in test)"),
        ({"seed": "abc"}, "seed='abc': Value 'abc' of type 'str' could not be converted to Integer (in test)"),
    ],
)
def test_merge_errors_name_the_dotted_key_and_source(layer, message):
    with pytest.raises(ConfigError) as err:
        merge_layers(Outer, [(layer, " (in test)")])
    assert str(err.value) == message


def test_section_errors_use_the_section_name_not_the_class():
    with pytest.raises(ConfigError) as err:
        build_config(Outer, merge_layers(Outer, [{"inner": {"width": 0}}]))
    assert str(err.value) == "inner.width=0 is not allowed: expected an integer >= 1"
