"""FamLM's public surface: config validation, impl names, compiled FAM updates."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close, make_model, param_grads, stream, tiny_cfg, tokens

from famlab.model import FamLM

# ---------------------------------------------------------------- 8. bad config


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
    cfg = tiny_cfg(attention="fam", d_model=64, n_layers=4, fam_init="prefix", init="gpt2")
    torch.manual_seed(0)
    model = FamLM(cfg)
    assert model.layers[0].wqkv.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.layers[0].wo.weight.std().item() == pytest.approx(0.02 / (2 * 4) ** 0.5, rel=0.1)
    assert model.fam_prefix.std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.equal(model.layers[0].norm1.weight, torch.ones(64))
    with pytest.raises(KeyError):
        model.reset_parameters("no-such-scheme")
