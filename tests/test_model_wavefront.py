"""The wavefront path (famlab.model.paths.wavefront): equal to the reference with every parameter random,
continues a state like the layer-major path, and runs for ``impl="fast"`` exactly where it applies."""

from __future__ import annotations

import pytest
import torch
import torch.nn.utils.prune
from helpers import assert_close, make_model, param_grads, tiny_cfg, tokens

from famlab.model.paths import wavefront
from famlab.train.regularizers import draw_pos_offset

# ---------------------------------------------------------------- the wavefront path


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("ff", ["gelu", "swiglu"])
def test_wave_equals_reference_with_every_parameter_random(norm, bias, ff):
    """The wavefront stacks the layers' weights and folds the norms' scale and shift into the next
    matmul: with every parameter (norm weights and biases included) random, in training mode with a
    random position offset, it matches the reference in logits and every gradient (fp64)."""
    cfg = tiny_cfg(
        attention="fam", norm=norm, bias=bias, ff=ff, n_layers=3, mem_segment=2, fam_prev_blocks=2, n_kv_heads=2
    )
    model = make_model(cfg, dtype=torch.float64).train()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    toks = tokens(cfg, 3, 6 * cfg.block_size + 5)
    torch.manual_seed(7)
    offset = draw_pos_offset(3)  # a random position offset, as in training
    assert offset.abs().sum() > 0
    outs = {
        impl: model(toks, impl=impl, state=model.initial_state(3, pos_offset=offset)) for impl in ("wave", "reference")
    }
    assert_close(outs["wave"], outs["reference"], tol=1e-10, what="logits")
    g_wave, g_ref = param_grads(model, outs["wave"]), param_grads(model, outs["reference"])
    assert g_wave.keys() == g_ref.keys()
    for name in g_ref:
        assert_close(g_wave[name], g_ref[name], tol=1e-10, what=f"grad {name}")


@pytest.mark.parametrize("m,P,first_blocks", [(1, 1, 1), (2, 3, 1), (3, 2, 2), (0, 2, 3)])
def test_wave_continues_a_state_like_layer_major(m, P, first_blocks):
    """From a state left by a first window (memory and FAM history still filling up), the wavefront
    gives the layer-major path's logits and leaves the same state, field by field; streaming then
    continues from it."""
    cfg = tiny_cfg(attention="fam", mem_segment=m, fam_prev_blocks=P, n_layers=3)
    model = make_model(cfg, dtype=torch.float64)
    B = cfg.block_size
    toks = tokens(cfg, 2, first_blocks * B + 4 * B + 3)
    first, rest = toks[:, : first_blocks * B], toks[:, first_blocks * B :]
    results = {}
    for impl in ("wave", "layer_major"):
        _, state = model(first, impl=impl, return_state=True)
        logits, state = model(rest, impl=impl, state=state, return_state=True)
        results[impl] = (logits, state)
    (l_wave, s_wave), (l_lm, s_lm) = results["wave"], results["layer_major"]
    assert_close(l_wave, l_lm, tol=1e-10, what="logits")
    assert (s_wave.pos, s_wave.fam_fresh) == (s_lm.pos, s_lm.fam_fresh)
    for i, (a, b) in enumerate(zip(s_wave.layers, s_lm.layers)):
        for field in ("mem_k", "mem_v", "blk_k", "blk_v", "fam", "fam_k", "fam_v"):
            ta, tb = getattr(a, field), getattr(b, field)
            assert ta.shape == tb.shape, f"layer {i} {field}: {tuple(ta.shape)} != {tuple(tb.shape)}"
            if ta.numel():
                assert_close(ta, tb, tol=1e-10, what=f"layer {i} {field}")
    more = tokens(cfg, 2, B + 2, seed=5)
    assert_close(model.step(more, s_wave)[0], model.step(more, s_lm)[0], tol=1e-10, what="streamed on")


def test_fast_picks_the_wavefront_for_fam_only_where_it_applies(monkeypatch):
    calls = []
    real = wavefront.forward
    monkeypatch.setattr(wavefront, "forward", lambda model, x, state: calls.append(1) or real(model, x, state))
    fam = make_model(tiny_cfg(attention="fam"))
    toks = tokens(fam.cfg, 1, 20)
    fam(toks)
    assert calls == [1]
    for attention in ("bswa", "txl", "full"):
        make_model(tiny_cfg(attention=attention))(toks)
    make_model(tiny_cfg(attention="fam", fam_len=0))(toks)
    assert calls == [1]
    # a wrapped linear (as peft's LoRA makes) keeps FAM on the layer-major path, as does a compiled scan
    wrapped = make_model(tiny_cfg(attention="fam"))
    wrapped.layers[0].wo = torch.nn.Sequential(wrapped.layers[0].wo)
    wrapped(toks)
    assert calls == [1]
    with pytest.raises(ValueError, match="impl='wave' needs FAM"):
        wrapped(toks, impl="wave")
    # the wavefront reads weights instead of calling modules: hooks (pruning and weight norm recompute
    # the weight in a pre-hook), a norm without weights or layers that disagree on biases fall back
    for change in ("hook", "prune", "norm_without_weight", "one_norm_bias"):
        model = make_model(tiny_cfg(attention="fam", n_layers=2), dtype=torch.float64)
        layer = model.layers[1]
        if change == "hook":
            layer.wqkv.register_forward_hook(lambda mod, inp, out: 1.5 * out)
        elif change == "prune":
            torch.nn.utils.prune.random_unstructured(layer.ff.up, "weight", amount=0.5)
        elif change == "norm_without_weight":
            layer.norm1 = torch.nn.LayerNorm(model.cfg.d_model, elementwise_affine=False, dtype=torch.float64)
        else:
            layer.norm2 = torch.nn.LayerNorm(model.cfg.d_model, dtype=torch.float64)
            torch.nn.init.normal_(layer.norm2.bias)
        assert_close(model(toks), model(toks, impl="reference"), tol=1e-10, what=change)
        with pytest.raises(ValueError, match="impl='wave' needs FAM"):
            model(toks, impl="wave")
    assert calls == [1]
    with pytest.raises(ValueError, match="impl='wave' needs FAM"):
        make_model(tiny_cfg(attention="bswa"))(toks, impl="wave")
