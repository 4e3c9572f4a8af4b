"""The paths of FamLM (famlab.model.paths) compute one function: the layer-major and wavefront paths equal
the reference loop in logits and gradients; causality and the receptive field are exactly the spec's;
special cases coincide; stop-gradient cuts what it should."""

from __future__ import annotations

import pytest
import torch
from helpers import VARIANTS, assert_causal, assert_close, make_model, param_grads, stream, tiny_cfg, tokens
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from famlab.model import FamLM

# ---------------------------------------------------------------- 1. fast path == reference


@pytest.mark.parametrize("attention", VARIANTS)
@pytest.mark.parametrize("mem_segment", [0, 2])
@pytest.mark.parametrize("impl", ["fast", "layer_major"])  # fast: the wavefront for fam
def test_fast_equals_reference(attention, mem_segment, impl):
    cfg = tiny_cfg(attention=attention, mem_segment=mem_segment, n_kv_heads=2, fam_prev_blocks=2, txl_window=5)
    model = make_model(cfg)
    toks = tokens(cfg, 2, 5 * cfg.block_size + 3)  # a partial last block
    fast, ref = model(toks, impl=impl), model(toks, impl="reference")
    assert_close(fast, ref, what="logits")
    g_fast, g_ref = param_grads(model, fast), param_grads(model, ref)
    for name in g_ref:
        assert_close(g_fast[name], g_ref[name], what=f"grad {name}")
    assert any(g.abs().sum() > 0 for g in g_ref.values())


switches = st.fixed_dictionaries(
    dict(
        attention=st.sampled_from(VARIANTS),
        block_size=st.integers(1, 7),
        mem_segment=st.integers(0, 3),
        fam_len=st.integers(0, 4),
        fam_prev_blocks=st.integers(1, 3),
        fam_pos=st.sampled_from(["last", "float", "zero"]),
        fam_init=st.sampled_from(["prompt", "prefix"]),
        fam_zero_residual=st.booleans(),
        stop_grad=st.booleans(),
        txl_window=st.one_of(st.none(), st.integers(0, 12)),
        n_kv_heads=st.sampled_from([None, 1, 2]),
        ff=st.sampled_from(["gelu", "swiglu"]),
        norm=st.sampled_from(["layernorm", "rmsnorm"]),
        tie_embeddings=st.booleans(),
    )
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sw=switches, T=st.integers(1, 30), chunk=st.integers(1, 9), seed=st.integers(0, 3))
def test_random_switches_fast_reference_stream_agree(sw, T, chunk, seed):
    cfg = tiny_cfg(**sw)
    model = make_model(cfg, seed=seed)
    toks = tokens(cfg, 2, T, seed=seed)
    fast, ref, lm = model(toks), model(toks, impl="reference"), model(toks, impl="layer_major")
    assert_close(fast, ref, what=f"fast vs reference {sw}")
    assert_close(lm, ref, what=f"layer-major vs reference {sw}")
    g_fast, g_ref, g_lm = param_grads(model, fast), param_grads(model, ref), param_grads(model, lm)
    for name in g_ref:
        assert_close(g_fast[name], g_ref[name], what=f"grad {name} {sw}")
        assert_close(g_lm[name], g_ref[name], what=f"layer-major grad {name} {sw}")
    assert_close(stream(model, toks, [chunk, chunk + 2]), fast, what=f"stream vs fast {sw}")


# ---------------------------------------------------------------- 2. causality


@pytest.mark.parametrize("attention", VARIANTS)
@pytest.mark.parametrize("impl", ["fast", "layer_major", "reference"])
def test_causal(attention, impl):
    cfg = tiny_cfg(attention=attention, mem_segment=1, fam_prev_blocks=2, n_layers=3)
    assert_causal(make_model(cfg, dtype=torch.float64), impl)


# ---------------------------------------------------------------- 3. exact receptive field


def receptive_field(model: FamLM, T: int, impl: str) -> torch.Tensor:
    """[T, T] bool: does output t depend on input s (non-zero Jacobian block)?"""
    x = torch.randn(1, T, model.cfg.d_model, dtype=torch.float64, requires_grad=True)

    def f(inp):
        return model.forward_embeds(inp, impl=impl)[0][0]  # [T, d]

    jac = torch.autograd.functional.jacobian(f, x)  # [T, d, 1, T, d]
    return jac.abs().sum(dim=(1, 2, 4)) > 0


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize(
    "attention,m,window", [("bswa", 0, None), ("bswa", 1, None), ("bswa", 2, None), ("txl", 1, None), ("txl", 2, 5)]
)
def test_exact_receptive_field_one_layer(attention, m, window, impl):
    B, T = 4, 18
    cfg = tiny_cfg(attention=attention, mem_segment=m, n_layers=1, block_size=B, txl_window=window)
    model = make_model(cfg, dtype=torch.float64)
    got = receptive_field(model, T, impl)
    w = cfg.window
    expected = torch.zeros(T, T, dtype=torch.bool)
    for t in range(T):
        for s in range(T):
            same_block = s // B == t // B and s <= t
            in_memory = t // B - m <= s // B < t // B
            if in_memory and w is not None:
                in_memory = t - s <= w  # txl: per-token window over the memory
            expected[t, s] = same_block or in_memory
    assert torch.equal(got, expected), f"\n{got.int()}\n!=\n{expected.int()}"


def test_fam_receptive_field_reaches_back_through_memory():
    """One FAM layer with m=0: output t depends on every earlier token (through the FAM)."""
    cfg = tiny_cfg(attention="fam", mem_segment=0, n_layers=1, block_size=4, fam_len=2)
    got = receptive_field(make_model(cfg, dtype=torch.float64), 14, "fast")
    assert torch.equal(got, torch.tril(torch.ones(14, 14, dtype=torch.bool)))


# ---------------------------------------------------------------- 4. special cases coincide


@pytest.mark.parametrize("m", [0, 2])
def test_fam_with_zero_fam_len_equals_bswa(m):
    fam = make_model(tiny_cfg(attention="fam", fam_len=0, mem_segment=m))
    bswa = FamLM(tiny_cfg(attention="bswa", mem_segment=m)).eval()
    bswa.load_state_dict(fam.state_dict())
    toks = tokens(fam.cfg, 2, 29)
    assert torch.equal(fam(toks), bswa(toks))
    fam_with = make_model(tiny_cfg(attention="fam", fam_len=2, mem_segment=m))
    assert not torch.allclose(fam_with(toks), bswa(toks), atol=1e-3)


def test_bswa_with_whole_sequence_memory_equals_full():
    full = make_model(tiny_cfg(attention="full"))
    T = 37
    bswa = FamLM(tiny_cfg(attention="bswa", mem_segment=T // 8 + 1)).eval()
    bswa.load_state_dict(full.state_dict())
    toks = tokens(full.cfg, 2, T)
    assert_close(bswa(toks), full(toks), what="bswa(m=all) vs full")
    short = FamLM(tiny_cfg(attention="bswa", mem_segment=1)).eval()
    short.load_state_dict(full.state_dict())
    assert not torch.allclose(short(toks), full(toks), atol=1e-3)


# ---------------------------------------------------------------- 6. stop-gradient


@pytest.mark.parametrize("attention", ["bswa", "txl", "fam"])
def test_stop_grad_same_forward_no_gradient_into_memory(attention):
    B, T, m = 4, 16, 1
    cfg = tiny_cfg(attention=attention, mem_segment=m, n_layers=1, block_size=B, fam_len=0)
    plain = make_model(cfg, dtype=torch.float64)
    sg = FamLM(cfg.replace(stop_grad=True)).to(torch.float64).eval()
    sg.load_state_dict(plain.state_dict())
    x = torch.randn(1, T, cfg.d_model, dtype=torch.float64)
    assert torch.equal(plain.forward_embeds(x)[0], sg.forward_embeds(x)[0])
    for impl in ["fast", "reference"]:
        field_plain, field_sg = receptive_field(plain, T, impl), receptive_field(sg, T, impl)
        for t in range(B, T):
            mem = [s for s in range(T) if t // B - m <= s // B < t // B]
            if cfg.window is not None:
                mem = [s for s in mem if t - s <= cfg.window]
            assert field_plain[t, mem].all()
            assert not field_sg[t, mem].any(), f"{impl}: gradient reaches the memory segment of {t}"
            assert field_sg[t, t - t % B : t + 1].all()


# ---------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-5), (torch.bfloat16, 0.1)])
def test_dtypes_match_fp32(dtype, tol):
    cfg = tiny_cfg(attention="fam", n_kv_heads=2)
    ref = make_model(cfg)
    toks = tokens(cfg, 2, 29)
    other = FamLM(cfg).to(dtype).eval()
    other.load_state_dict(ref.state_dict())
    out = other(toks)
    assert out.dtype == dtype
    assert_close(out.float(), ref(toks), tol=tol, what=str(dtype))
    assert_close(stream(other, toks, [5]).float(), out.float(), tol=tol / 10 if dtype == torch.float64 else tol)


# ---------------------------------------------------------------- a memory segment longer than the sequence


@pytest.mark.parametrize("attention", ["bswa", "txl", "fam"])
@pytest.mark.parametrize("impl", ["fast", "layer_major", "reference"])
def test_a_memory_segment_longer_than_the_sequence_changes_nothing(attention, impl):
    """m = 100000 on 4 blocks reads what m = n_blocks - 1 reads (and carries the same state into a second
    chunk), without allocating memory for blocks that cannot exist (the paths cut m to what the chunk holds)."""
    from famlab.model.memory import SegmentMemory

    cfg = tiny_cfg(attention=attention, mem_segment=3)
    huge = tiny_cfg(attention=attention, mem_segment=100000, txl_window=cfg.window)
    small, big = make_model(cfg), FamLM(huge).eval()
    big.load_state_dict(small.state_dict())  # the same weights
    toks = tokens(cfg, 2, 4 * cfg.block_size)
    with torch.no_grad():
        a, state_a = small(toks, impl=impl, return_state=True)
        b, state_b = big(toks, impl=impl, return_state=True)
        # equal up to float rounding: m=100000 is cut to the 4 blocks the chunk holds (one more than any block
        # reads, so the state keeps them all), so the softmax sees one more masked block than m=3 does
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        if impl != "reference":  # the reference path returns no state
            again = tokens(cfg, 2, 3 * cfg.block_size, seed=2)  # after 4 blocks of memory: more than m=3
            a2, b2 = small(again, impl=impl, state=state_a), big(again, impl=impl, state=state_b)
            assert state_b.layers[0].mem_k.shape[2] == 4 * cfg.block_size > state_a.layers[0].mem_k.shape[2]
            assert not torch.equal(a2, b2)  # negative control: m=3 forgot the oldest block m=100000 keeps
    assert SegmentMemory.within_reach(huge, 4, 0).mem_segment == 4  # what the parallel paths pad for
    assert SegmentMemory.within_reach(cfg, 4, 0) is cfg  # a segment within reach is left as it is
