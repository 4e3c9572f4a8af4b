"""The feedback memory segment (``attention="fm"``, famlab.model.memory.feedback; TransformerFAM App. C.2):
the layer-major block loop and streaming equal the reference loop; causality; a state continues exactly;
the memory holds the layer's outputs (not its inputs: then it would be BSWA) and reaches back without bound."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_causal, assert_close, make_model, param_grads, stream, tiny_cfg, tokens
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_model_paths import receptive_field

from famlab.model import FamLM
from famlab.model.memory import FeedbackMemory, memory_kinds
from famlab.model.state import state_from_dict, state_to_dict


def fm_model(dtype=torch.float64, **changes) -> FamLM:
    return make_model(tiny_cfg(attention="fm", **{"mem_segment": 2, "n_kv_heads": 2, **changes}), dtype=dtype)


def test_fm_has_the_feedback_memory_only():
    kinds = memory_kinds(tiny_cfg(attention="fm"))
    assert [type(k) for k in kinds] == [FeedbackMemory]
    assert tiny_cfg(attention="fm").effective_fam_len == 0  # fam_len is ignored, as by bswa
    with pytest.raises(ValueError, match="impl='wave'|wavefront"):
        fm_model()(tokens(tiny_cfg(), 1, 9), impl="wave")


@pytest.mark.parametrize("stop_grad", [False, True])
@pytest.mark.parametrize("m", [1, 2])
@pytest.mark.parametrize("impl", ["fast", "layer_major"])
def test_fast_equals_reference(impl, m, stop_grad):
    model = fm_model(mem_segment=m, stop_grad=stop_grad)
    toks = tokens(model.cfg, 2, 5 * model.cfg.block_size + 3)  # a partial last block
    fast, ref = model(toks, impl=impl), model(toks, impl="reference")
    assert_close(fast, ref, tol=1e-10, what="logits")
    g_fast, g_ref = param_grads(model, fast), param_grads(model, ref)
    for name in g_ref:
        assert_close(g_fast[name], g_ref[name], tol=1e-10, what=f"grad {name}")
    assert all(g.abs().sum() > 0 for g in g_ref.values())


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_causal(impl):
    model = fm_model(n_layers=3, mem_segment=1)
    assert_causal(model, impl)


@pytest.mark.parametrize("chunks", [[1], [5], [17], [3, 11, 2]])
def test_streaming_equals_parallel(chunks):
    model = fm_model()
    toks = tokens(model.cfg, 2, 6 * model.cfg.block_size + 5)
    assert_close(stream(model, toks, chunks), model(toks), tol=1e-10, what=f"chunks {chunks}")


def test_streaming_state_size_is_constant():
    model = fm_model(dtype=torch.float32)
    B, m = model.cfg.block_size, model.cfg.mem_segment
    state, sizes = model.init_state(1), []
    for i in range(40):
        _, state = model.step(tokens(model.cfg, 1, 5, seed=i), state)
        if i > 10 and state.pos % B == 0:
            ls = state.layers[0]
            assert ls.mem_k.shape[2] == m * B and ls.fm_k.shape[2] == 0  # the ring: m blocks of outputs' K/V
            sizes.append(sum(t.numel() for ls in state.layers for t in vars(ls).values() if t is not None))
    assert state.pos == 200 and len(sizes) > 1 and len(set(sizes)) == 1, sizes


def test_state_continues_exactly():
    """A parallel forward's state continues with step (also mid-block, through a saved state) and with
    another parallel forward: logits, and gradients through the undetached state, equal one long forward."""
    model = fm_model()
    B = model.cfg.block_size
    toks = tokens(model.cfg, 2, 7 * B + 3)
    whole = model(toks)
    a = 3 * B + 2
    first, state = model(toks[:, :a], return_state=True)
    assert state.layers[0].fm_k.shape[2] == 2  # the partial block's output K/V
    rest, _ = model.step(toks[:, a:], state_from_dict(state_to_dict(state)))
    assert_close(torch.cat([first, rest], 1), whole, tol=1e-10, what="parallel + step")
    a = 3 * B
    first, state = model(toks[:, :a], return_state=True)
    rest = model(toks[:, a:], state=state)
    both = torch.cat([first, rest], 1)
    assert_close(both, whole, tol=1e-10, what="parallel + parallel")
    g_both, g_whole = param_grads(model, both), param_grads(model, whole)
    for name in g_whole:
        assert_close(g_both[name], g_whole[name], tol=1e-10, what=f"grad {name}")


@pytest.mark.parametrize("m", [1, 2])
def test_differs_from_bswa_after_the_first_block(m):
    """Negative control: with the layer's inputs in the memory, fm would be BSWA. Same weights: equal on
    the first block (no memory yet) and on a single-block sequence, different from the second block on."""
    fm = fm_model(mem_segment=m)
    bswa = FamLM(fm.cfg.replace(attention="bswa")).to(torch.float64).eval()
    bswa.load_state_dict(fm.state_dict())
    B = fm.cfg.block_size
    one = tokens(fm.cfg, 2, B)
    assert_close(fm(one), bswa(one), tol=1e-12, what="single block")
    toks = tokens(fm.cfg, 2, 3 * B + 1)
    out_fm, out_bswa = fm(toks), bswa(toks)
    assert_close(out_fm[:, :B], out_bswa[:, :B], tol=1e-12, what="first block")
    for blk in range(1, 3):
        rows = slice(blk * B, (blk + 1) * B)
        assert (out_fm[:, rows] - out_bswa[:, rows]).abs().amax(-1).min() > 1e-6, f"block {blk} equals bswa"


def test_receptive_field_is_unbounded_through_the_outputs():
    """One layer, m=1: BSWA's output t reaches back one block; fm's reaches every earlier token (block
    t-1's outputs read block t-2's, ...). Stop-gradient cuts it to the own block, the forward unchanged."""
    B, T = 4, 14
    cfg = tiny_cfg(attention="fm", mem_segment=1, n_layers=1, block_size=B)
    fm = make_model(cfg, dtype=torch.float64)
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for impl in ["fast", "reference"]:
        assert torch.equal(receptive_field(fm, T, impl), causal), impl
    sg = FamLM(cfg.replace(stop_grad=True)).to(torch.float64).eval()
    sg.load_state_dict(fm.state_dict())
    x = torch.randn(1, T, cfg.d_model, dtype=torch.float64)
    assert torch.equal(sg.forward_embeds(x)[0], fm.forward_embeds(x)[0])
    own = torch.tensor([[s // B == t // B and s <= t for s in range(T)] for t in range(T)])
    for impl in ["fast", "reference"]:
        assert torch.equal(receptive_field(sg, T, impl), own), impl


KIND = "fm"
SWITCHES = st.fixed_dictionaries(
    dict(
        mem_segment=st.integers(1, 3),
        block_size=st.integers(1, 7),
        stop_grad=st.booleans(),
        n_kv_heads=st.sampled_from([None, 1, 2]),
        ff=st.sampled_from(["gelu", "swiglu"]),
        norm=st.sampled_from(["layernorm", "rmsnorm"]),
        tie_embeddings=st.booleans(),
    )
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sw=SWITCHES, T=st.integers(1, 30), chunk=st.integers(1, 9), seed=st.integers(0, 3))
def test_random_switches_fast_reference_stream_agree(sw, T, chunk, seed):
    model = make_model(tiny_cfg(attention=KIND, **sw), seed=seed, dtype=torch.float64)
    toks = tokens(model.cfg, 2, T, seed=seed)
    fast, ref = model(toks), model(toks, impl="reference")
    assert_close(fast, ref, tol=1e-10, what=f"fast vs reference {sw}")
    g_fast, g_ref = param_grads(model, fast), param_grads(model, ref)
    for name in g_ref:
        assert_close(g_fast[name], g_ref[name], tol=1e-10, what=f"grad {name} {sw}")
    assert_close(stream(model, toks, [chunk, chunk + 2]), fast, tol=1e-10, what=f"stream vs fast {sw}")
