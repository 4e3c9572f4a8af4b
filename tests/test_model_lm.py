"""FamLM's public surface: config validation, impl names, compiled FAM updates."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close, make_model, param_grads, stream, tiny_cfg, tokens

from famlab.config import ModelConfig
from famlab.model import FamLM

# ---------------------------------------------------------------- 8. bad config


@pytest.mark.parametrize(
    "changes,key,value,allowed",
    [
        (dict(attention="sliding"), "attention", "'sliding'", "one of full, bswa, txl, fam"),
        (dict(block_size=0), "block_size", "0", "an integer > 0"),
        (dict(block_size=-4), "block_size", "-4", "an integer > 0"),
        (dict(mem_segment=-1), "mem_segment", "-1", "an integer >= 0"),
        (dict(fam_len=-2), "fam_len", "-2", "an integer >= 0"),
        (dict(d_model=30, n_heads=4), "n_heads", "4", "a divisor of d_model=30"),
        (dict(n_heads=4, n_kv_heads=3), "n_kv_heads", "3", "a divisor of n_heads=4"),
        (dict(fam_pos="first"), "fam_pos", "'first'", "one of last, float, zero"),
        (dict(fam_init="zeros"), "fam_init", "'zeros'", "one of prompt, prefix"),
        (dict(rsp_prob=1.5), "rsp_prob", "1.5", "a probability in [0, 1]"),
        (dict(n_layers=2.5), "n_layers", "2.5", "an integer > 0"),
    ],
)
def test_bad_config_names_key_value_and_allowed(changes, key, value, allowed):
    with pytest.raises(ValueError) as err:
        tiny_cfg(**changes)
    assert str(err.value) == f"ModelConfig.{key}={value} is not allowed: expected {allowed}"


def test_unknown_key_rejected_with_suggestion():
    with pytest.raises(ValueError, match="fam_lenn.*did you mean 'fam_len'"):
        ModelConfig.from_dict({"fam_lenn": 8})
    with pytest.raises(ValueError, match="no key 'impl'"):
        tiny_cfg().replace(impl="fast")


def test_bad_impl_rejected():
    model = make_model(tiny_cfg())
    with pytest.raises(ValueError, match="impl='slow'.*fast, wave, layer_major, reference"):
        model(tokens(model.cfg, 1, 4), impl="slow")


@pytest.mark.parametrize("unit", ["scan", "update"])
def test_compiled_fam_scan_equals_eager(unit):
    cfg = tiny_cfg(attention="fam", mem_segment=1, n_layers=1)
    eager = make_model(cfg)
    compiled = FamLM(cfg).eval()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_fam_updates(unit=unit)
    layer = vars(compiled.layers[0])
    assert ("fam_scan" in layer, "fam_update" in layer) == (unit == "scan", unit == "update")
    toks = tokens(cfg, 2, 4 * cfg.block_size + 3)
    out_e, out_c = eager(toks), compiled(toks)
    assert_close(out_c, out_e, tol=1e-5, what="compiled scan logits")
    g_e, g_c = param_grads(eager, out_e), param_grads(compiled, out_c)
    for name in g_e:
        assert_close(g_c[name], g_e[name], tol=1e-5, what=f"compiled scan grad {name}")
    with torch.no_grad():  # streaming runs fam_update once per completed block
        assert_close(stream(compiled, toks, [5]), out_e, tol=1e-5, what="compiled, streamed logits")


def test_gpt2_init_scales_residual_outputs():
    cfg = tiny_cfg(attention="fam", d_model=64, n_layers=4, fam_init="prefix")
    torch.manual_seed(0)
    model = FamLM(cfg)
    assert model.layers[0].wqkv.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.layers[0].wo.weight.std().item() == pytest.approx(0.02 / (2 * 4) ** 0.5, rel=0.1)
    assert model.fam_prefix.std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.equal(model.layers[0].norm1.weight, torch.ones(64))
    with pytest.raises(KeyError):
        model.reset_parameters("no-such-scheme")
