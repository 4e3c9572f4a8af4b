"""FamLM correctness: the fast path, the reference loop and streaming agree; masks are exactly the
spec's; switches do what they say."""

from __future__ import annotations

import pytest
import torch
import torch.nn.utils.prune
from helpers import VARIANTS, assert_close, make_model, param_grads, stream, tiny_cfg, tokens
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from famlab.config import ModelConfig
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


def test_training_extras_identical_in_fast_and_reference():
    """RPO and RSP are drawn once, before the paths split: same seed -> same logits."""
    cfg = tiny_cfg(attention="fam", random_pos_offset=True, rsp_prob=0.5)
    model = make_model(cfg).train()
    toks = tokens(cfg, 4, 3 * cfg.block_size + 1)
    model(toks)  # saves a state for RSP
    saved = model.rsp_state.clone()
    for seed in range(4):
        torch.manual_seed(seed)
        fast = model(toks)
        model.rsp_state.copy_(saved)
        torch.manual_seed(seed)
        ref = model(toks, impl="reference")
        model.rsp_state.copy_(saved)
        assert_close(fast, ref, tol=1e-4, what=f"seed {seed}")


# ---------------------------------------------------------------- 2. causality


@pytest.mark.parametrize("attention", VARIANTS)
@pytest.mark.parametrize("impl", ["fast", "layer_major", "reference"])
def test_causal(attention, impl):
    cfg = tiny_cfg(attention=attention, mem_segment=1, fam_prev_blocks=2, n_layers=3)
    model = make_model(cfg, dtype=torch.float64)
    T = 4 * cfg.block_size + 5
    toks = tokens(cfg, 1, T)
    base = model(toks, impl=impl)
    for j in [0, 5, cfg.block_size - 1, cfg.block_size, 2 * cfg.block_size + 3, T - 1]:
        changed = toks.clone()
        changed[0, j] = (changed[0, j] + 1) % cfg.vocab_size
        out = model(changed, impl=impl)
        assert torch.equal(out[:, :j], base[:, :j]), f"token {j} changed an earlier logit"
        assert not torch.allclose(out[:, j], base[:, j]), f"token {j} did not change its own logit"


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


# ---------------------------------------------------------------- 5. streaming == parallel


@pytest.mark.parametrize("attention", VARIANTS)
@pytest.mark.parametrize("chunks", [[1], [3, 5], [11, 2, 7], [17]])
def test_streaming_equals_parallel(attention, chunks):
    cfg = tiny_cfg(attention=attention, mem_segment=2, fam_prev_blocks=2, txl_window=11)
    model = make_model(cfg)
    toks = tokens(cfg, 2, 9 * cfg.block_size + 5)
    assert_close(stream(model, toks, chunks), model(toks), what=f"{attention} chunks {chunks}")


@pytest.mark.parametrize("attention", VARIANTS)
def test_parallel_then_step_continues(attention):
    """forward(..., return_state=True) leaves a state that step() continues exactly; and the
    parallel forward can continue from a block-aligned state (stateful training)."""
    cfg = tiny_cfg(attention=attention, mem_segment=2, fam_prev_blocks=2)
    model = make_model(cfg)
    toks = tokens(cfg, 2, 7 * cfg.block_size + 3)
    whole = model(toks)
    a = 3 * cfg.block_size + 2
    first, state = model(toks[:, :a], return_state=True)
    rest, _ = model.step(toks[:, a:], state)
    assert_close(torch.cat([first, rest], 1), whole, what="parallel + step")
    a = 3 * cfg.block_size
    first, state = model(toks[:, :a], return_state=True)
    rest = model(toks[:, a:], state=state.detach())
    assert_close(torch.cat([first, rest], 1), whole, what="parallel + parallel")


@pytest.mark.parametrize("attention,impl", [(a, "fast") for a in VARIANTS] + [("fam", "layer_major")])
def test_returned_state_holds_only_its_own_memory(attention, impl):
    """A state returned by a parallel forward (a prefill, a carried training window) holds its
    tensors' bytes and no more: no slice of the chunk's per-layer K/V keeps the whole chunk alive."""
    cfg = tiny_cfg(attention=attention, mem_segment=1)
    model = make_model(cfg)
    toks = tokens(cfg, 2, 30 * cfg.block_size + 2)
    logits, state = model(toks, impl=impl, return_state=True)
    held = {}
    for ls in state.layers:
        for t in vars(ls).values():
            if isinstance(t, torch.Tensor):
                held[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
                assert t.untyped_storage().nbytes() == t.nbytes, (attention, t.shape)
    own = sum(t.nbytes for ls in state.layers for t in vars(ls).values() if isinstance(t, torch.Tensor))
    assert sum(held.values()) <= own
    rest, _ = model.step(toks[:, :5], state)  # the compacted state still continues exactly
    whole = model(torch.cat([toks, toks[:, :5]], 1))
    assert_close(torch.cat([logits, rest], 1), whole, what="compacted state + step")


@pytest.mark.parametrize("attention", ["bswa", "fam"])
def test_compiled_forward_returns_a_compact_state(attention):
    """Stateful training with the whole model compiled (train.compile=model) asks for the state of every
    window: the compaction runs outside the graph, and the windows equal the eager ones."""
    cfg = tiny_cfg(attention=attention, mem_segment=1)
    eager, compiled = make_model(cfg), make_model(cfg)
    compiled.compile(backend="aot_eager")
    toks = tokens(cfg, 2, 6 * cfg.block_size)
    states = {"eager": None, "compiled": None}
    for w in range(3):
        window = toks[:, w * 2 * cfg.block_size : (w + 1) * 2 * cfg.block_size]
        outs = {}
        for name, model in (("eager", eager), ("compiled", compiled)):
            outs[name], state = model(window, state=states[name], return_state=True)
            states[name] = state.detach()
        assert_close(outs["compiled"], outs["eager"], what=f"window {w}")
        for ls in states["compiled"].layers:
            assert all(
                t.untyped_storage().nbytes() == t.nbytes for t in vars(ls).values() if isinstance(t, torch.Tensor)
            )


@pytest.mark.parametrize("attention", ["bswa", "txl", "fam"])
def test_streaming_state_size_is_constant(attention):
    cfg = tiny_cfg(attention=attention, mem_segment=2)
    model = make_model(cfg)
    state = model.init_state(1)
    sizes = []
    for i in range(40):
        _, state = model.step(tokens(cfg, 1, 5, seed=i), state)
        if i % cfg.block_size == 0 and i > 10:
            sizes.append(
                sum(t.numel() for ls in state.layers for t in vars(ls).values() if isinstance(t, torch.Tensor))
            )
    assert state.pos == 200 and len(set(sizes)) == 1, sizes


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


# ---------------------------------------------------------------- 7. training-only extras


def test_random_pos_offset_only_in_training():
    cfg = tiny_cfg(attention="fam", random_pos_offset=True)
    model = make_model(cfg)
    no_rpo = FamLM(cfg.replace(random_pos_offset=False))
    no_rpo.load_state_dict(model.state_dict())
    toks = tokens(cfg, 8, 20)
    evaluated = model.eval()(toks)
    assert torch.equal(evaluated, model(toks))  # deterministic in eval
    torch.manual_seed(0)
    trained = model.train()(toks)
    assert not torch.equal(trained, evaluated)  # offsets change fp32 rounding
    assert_close(trained, evaluated, tol=5e-2, what="an offset only changes rounding")
    torch.manual_seed(0)
    assert torch.equal(no_rpo.train()(toks), evaluated)  # nothing random without RPO/RSP


def test_random_state_passing_only_in_training():
    cfg = tiny_cfg(attention="fam", rsp_prob=1.0)
    model = make_model(cfg)
    toks = tokens(cfg, 3, 4 * cfg.block_size)
    fresh = model.eval()(toks)
    model.train()
    first = model(toks)  # no saved state yet: starts from the prompt
    assert_close(first, fresh, what="first training call")
    _, state = model.eval()(toks, return_state=True)
    saved = torch.stack([ls.fam[0] for ls in state.layers])
    assert torch.equal(model.rsp_state, saved) and not model.rsp_state.requires_grad
    assert torch.equal(model.eval()(toks), fresh)  # eval ignores the saved state
    second = model.train()(toks)  # P(RSP) = 1: starts from the saved state
    assert not torch.allclose(second, fresh, atol=1e-3)
    model.rsp_prob = 0.0  # a schedule can switch it off
    assert torch.equal(model(toks), fresh)


def test_random_state_passing_saves_the_final_fam_of_a_carried_window_too():
    # stateful training: the second window continues the first's state; RSP keeps the FAM at the end
    # of the latest training call (the spec: "at the end of each training step"), not the first's
    cfg = tiny_cfg(attention="fam", rsp_prob=0.5, random_pos_offset=False)
    model = make_model(cfg).train()
    toks = tokens(cfg, 2, 2 * cfg.block_size)
    torch.manual_seed(1)
    _, first = model(toks, return_state=True)
    assert torch.equal(model.rsp_state, torch.stack([ls.fam[0] for ls in first.layers]))
    _, second = model(toks, state=first.detach(), return_state=True)
    carried = torch.stack([ls.fam[0] for ls in second.layers])
    assert not torch.allclose(carried, torch.stack([ls.fam[0] for ls in first.layers]))
    assert torch.equal(model.rsp_state, carried) and not model.rsp_state.requires_grad


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
    cfg = cfg.replace(random_pos_offset=True)
    model = make_model(cfg, dtype=torch.float64).train()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    toks = tokens(cfg, 3, 6 * cfg.block_size + 5)
    outs = {}
    for impl in ("wave", "reference"):
        torch.manual_seed(7)  # the same random position offset for both
        outs[impl] = model(toks, impl=impl)
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
    real = FamLM._wave
    monkeypatch.setattr(FamLM, "_wave", lambda self, x, state: calls.append(1) or real(self, x, state))
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
