"""Every float of the run configuration is finite and in range: each float key (found by introspecting the
config dataclasses, so a new one is covered without a new test) rejects inf, -inf and NaN with the one-line
``key=value is not allowed: expected ...`` error; the per-key ranges; valid values still pass."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest

from famlab.config import ConfigError, RunConfig, load_run_config, preset_names
from famlab.config.schema import sections


def _holds_float(hint: typing.Any) -> bool:
    if hint is float:
        return True
    return any(_holds_float(arg) for arg in typing.get_args(hint))


def _default(f: dataclasses.Field) -> typing.Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def float_keys() -> list[tuple[str, bool]]:
    """(dotted key, is a list) of every field that holds floats: annotated float (``float``, ``float | None``,
    ``list[float]``) or whose default is a float or a list of numbers (``recall_eval_gaps: list``)."""
    out = []
    owners = [(f"{name}.", cls) for name, cls in sections(RunConfig).items()] + [("", RunConfig)]
    for prefix, cls in owners:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                continue
            default = _default(f)
            is_list = isinstance(default, list)
            numbers = is_list and default and all(isinstance(v, int | float) for v in default)
            if _holds_float(hints[f.name]) or isinstance(default, float) or numbers:
                out.append((prefix + f.name, is_list))
    return out


FLOAT_KEYS = float_keys()


def test_introspection_finds_the_float_keys():
    keys = {k for k, _ in FLOAT_KEYS}
    expected = {
        "train.lr",
        "train.eps",
        "train.weight_decay",
        "train.grad_clip",
        "train.min_lr_ratio",
        "train.betas",
        "model.norm_eps",
        "model.rope_base",
        "model.rsp_prob",
        "lora.alpha",
        "lora.dropout",
        "data.adaptive_factor",
        "data.text_repeat_weight",
        "data.recall_eval_gaps",
        "data.passkey_eval_lengths",
    }
    assert expected <= keys, expected - keys
    assert "train.max_steps" not in keys and "model.d_model" not in keys


def _yaml(value: float, is_list: bool, key: str) -> str:
    text = {math.inf: ".inf", -math.inf: "-.inf"}.get(value, ".nan")
    if key == "train.betas":
        return f"[{text},0.9]"
    return f"[{text}]" if is_list else text


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("key, is_list", FLOAT_KEYS, ids=[k for k, _ in FLOAT_KEYS])
def test_every_float_key_rejects_non_finite_values(key, is_list, value):
    override = f"{key}={_yaml(value, is_list, key)}"
    with pytest.raises(ConfigError) as err:
        load_run_config("tiny", [override])
    msg = str(err.value)
    assert msg.startswith(f"{key}=") and " is not allowed: expected " in msg and "\n" not in msg, msg


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=inf", "train.lr=inf is not allowed: expected a finite number > 0.0"),
        ("train.eps=inf", "train.eps=inf is not allowed: expected a finite number > 0.0 and <= 1.0"),
        ("train.eps=2.0", "train.eps=2.0 is not allowed: expected a number > 0.0 and <= 1.0"),
        ("train.weight_decay=inf", "train.weight_decay=inf is not allowed: expected a finite number >= 0.0"),
        ("train.grad_clip=inf", "train.grad_clip=inf is not allowed: expected a finite number >= 0.0"),
        ("model.norm_eps=-1", "model.norm_eps=-1.0 is not allowed: expected a number > 0.0 and < 1.0"),
        ("model.norm_eps=0", "model.norm_eps=0.0 is not allowed: expected a number > 0.0 and < 1.0"),
        ("model.norm_eps=1", "model.norm_eps=1.0 is not allowed: expected a number > 0.0 and < 1.0"),
        ("model.norm_eps=nan", "model.norm_eps=nan is not allowed: expected a finite number > 0.0 and < 1.0"),
        ("model.rope_base=inf", "model.rope_base=inf is not allowed: expected a finite number > 1.0"),
        ("model.rope_base=1", "model.rope_base=1.0 is not allowed: expected a number > 1.0"),
        ("lora.alpha=inf", "lora.alpha=inf is not allowed: expected a number > 0, or null for alpha = rank"),
        ("data.recall_eval_gaps=[1,.inf]", "data.recall_eval_gaps=[1, inf] is not allowed: expected finite numbers"),
        ("data.text_repeat_weight=.inf", "data.text_repeat_weight=inf is not allowed: expected a finite number >= 0"),
    ],
)
def test_range_and_finiteness_messages(override, message):
    with pytest.raises(ConfigError) as err:
        load_run_config("tiny", [override])
    assert str(err.value) == message


def test_valid_values_pass():
    cfg = load_run_config(
        "tiny",
        [
            "train.lr=1e6",  # absurd but finite: divergence is the run's to detect, not the config's
            "train.eps=1e-8",
            "train.weight_decay=0",
            "train.grad_clip=0",
            "model.norm_eps=1e-6",
            "model.rope_base=500000",
            "lora.alpha=16",
            "data.recall_eval_gaps=[0,0.5,1]",
        ],
    )
    assert cfg.train.lr == 1e6 and cfg.model.norm_eps == 1e-6 and cfg.lora.alpha == 16
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    for name in preset_names():  # every shipped preset is finite and in range
        load_run_config(name, [])
