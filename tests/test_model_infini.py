"""Infini-attention (``attention="infini"``, famlab.model.memory.infini; arXiv 2404.07143): the layer-major path
(cumulative sum over blocks, or the delta rule's scan) and streaming equal the reference loop; causality; a
state continues exactly; the memory read and update are the paper's formulas (by hand, token by token); the gate
at -inf is BSWA; the memory reaches every earlier block and stop-gradient cuts it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    STREAM_CHUNKS,
    assert_causal,
    assert_close,
    assert_paths_agree,
    assert_state_continues,
    assert_state_size_constant,
    assert_streaming_matches,
    make_model,
    random_switch_test,
    stream,
    tiny_cfg,
    tokens,
)
from hypothesis import strategies as st
from test_model_paths import receptive_field

from famlab.model import FamLM
from famlab.model.init import INIT_SCHEMES
from famlab.model.memory import InfiniMemory, SegmentMemory, memory_kinds
from famlab.model.positions import token_cos_sin


def infini_model(dtype=torch.float64, seed=0, **changes) -> FamLM:
    model = make_model(tiny_cfg(attention="infini", **{"mem_segment": 0, "n_kv_heads": 2, **changes}), seed, dtype)
    with torch.no_grad():  # gates away from 0, one per head: memory-heavy and local-heavy heads
        for i, layer in enumerate(model.layers):
            layer.infini_beta.copy_(torch.linspace(-1.5, 1.5, model.cfg.n_heads) + 0.3 * i)
    return model


def test_infini_has_the_segment_and_the_compressive_memory():
    cfg = tiny_cfg(attention="infini")
    assert [type(k) for k in memory_kinds(cfg)] == [SegmentMemory, InfiniMemory]
    assert cfg.effective_fam_len == 0 and cfg.window is None  # fam_len and txl_window are ignored
    model = infini_model()
    assert [tuple(layer.infini_beta.shape) for layer in model.layers] == [(4,), (4,)]
    with pytest.raises(ValueError, match="impl=.wave. needs FAM"):
        model(tokens(model.cfg, 1, 9), impl="wave")


@pytest.mark.parametrize("scheme", sorted(INIT_SCHEMES))
def test_every_init_scheme_starts_the_gates_at_zero(scheme):
    model = FamLM(tiny_cfg(attention="infini"))
    with torch.no_grad():
        for layer in model.layers:
            layer.infini_beta.fill_(3.0)
    model.reset_parameters(scheme)
    assert all(torch.equal(layer.infini_beta, torch.zeros(4)) for layer in model.layers)


@pytest.mark.parametrize("delta", [False, True])
@pytest.mark.parametrize("stop_grad", [False, True])
@pytest.mark.parametrize("m", [0, 1])
@pytest.mark.parametrize("impl", ["fast", "layer_major"])
def test_fast_equals_reference(impl, m, stop_grad, delta):
    model = infini_model(mem_segment=m, stop_grad=stop_grad, infini_delta_rule=delta)
    toks = tokens(model.cfg, 2, 5 * model.cfg.block_size + 3)  # a partial last block
    g_ref = assert_paths_agree(model, toks, tol=1e-10, impl=impl)
    assert all(g.abs().sum() > 0 for g in g_ref.values())


@pytest.mark.parametrize("delta", [False, True])
@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_causal(impl, delta):
    assert_causal(infini_model(n_layers=3, infini_delta_rule=delta), impl)


@pytest.mark.parametrize("chunks", STREAM_CHUNKS)
@pytest.mark.parametrize("delta", [False, True])
def test_streaming_equals_parallel(chunks, delta):
    assert_streaming_matches(infini_model(mem_segment=1, infini_delta_rule=delta), chunks, tol=1e-10)


def test_streaming_state_size_is_constant():

    def check_state(state):
        ls = state.layers[0]
        assert ls.infini_mem.shape == (1, 2, 8, 8) and ls.infini_k.shape[2] == 0

    assert_state_size_constant(infini_model(dtype=torch.float32), check_state)


@pytest.mark.parametrize("delta", [False, True])
def test_state_continues_exactly(delta):
    """A parallel forward's state continues with step (mid-block, through a saved state) and with another
    parallel forward: logits, and gradients through the undetached state, equal one long forward."""

    def check_prefill(state):
        assert state.layers[0].infini_k.shape[2] == 2  # the partial block's pre-RoPE keys

    assert_state_continues(infini_model(mem_segment=1, infini_delta_rule=delta), tol=1e-10, check_prefill=check_prefill)


def by_hand(model: FamLM, x: torch.Tensor, delta: bool) -> torch.Tensor:
    """One layer (m = 0) token by token from the paper's formulas, in plain loops: per head h (kv head g),
    A_dot = causal softmax within the block; A_mem = s(q) M / (s(q) z) with M, z over the earlier complete
    blocks' tokens (0 before any); A = sig(beta_h) A_mem + (1 - sig(beta_h)) A_dot; then M += s(k)^T (v - [delta:
    s(k) M_old / (s(k) z_old)]), z += s(k) per token of a complete block. s = ELU + 1, q and k before RoPE."""
    layer, cfg = model.layers[0], model.cfg
    B, H, G, D = cfg.block_size, cfg.n_heads, cfg.kv_heads, cfg.head_dim
    b, T, _ = x.shape
    cos, sin = token_cos_sin(cfg, 0, T, None, x.device, x.dtype)
    q, k, v, qk_raw = layer.qkv_raw(x, cos, sin)
    q_raw, k_raw = qk_raw[:, :H], qk_raw[:, H:]
    s = lambda t: F.elu(t) + 1  # noqa: E731
    out = torch.zeros(b, T, H, D, dtype=x.dtype)
    for i in range(b):
        for h in range(H):
            g, gate = h // (H // G), torch.sigmoid(layer.infini_beta[h])
            mem, norm = torch.zeros(D, D, dtype=x.dtype), torch.zeros(D, dtype=x.dtype)
            for start in range(0, T, B):
                stop = min(start + B, T)
                for t in range(start, stop):
                    scores = torch.stack([q[i, h, t] @ k[i, g, u] / math.sqrt(D) for u in range(start, t + 1)])
                    a_dot = scores.softmax(0) @ v[i, g, start : t + 1]
                    sq = s(q_raw[i, h, t])
                    a_mem = torch.zeros(D, dtype=x.dtype) if start == 0 else (sq @ mem) / (sq @ norm)
                    out[i, t, h] = gate * a_mem + (1 - gate) * a_dot
                if stop - start == B:  # a complete block enters the memory
                    old_mem, old_norm = mem.clone(), norm.clone()
                    for u in range(start, stop):
                        sk, val = s(k_raw[i, g, u]), v[i, g, u]
                        if delta and start > 0:
                            val = val - (sk @ old_mem) / (sk @ old_norm)
                        mem = mem + torch.outer(sk, val)
                        norm = norm + sk
    return layer.finish(out.reshape(b, T, H * D), x)


@pytest.mark.parametrize("delta", [False, True])
def test_memory_is_the_papers_formula_by_hand(delta):
    model = infini_model(n_layers=1, n_kv_heads=2, infini_delta_rule=delta)
    x = torch.randn(2, 3 * model.cfg.block_size + 5, model.cfg.d_model, dtype=torch.float64)
    want = by_hand(model, x, delta)
    for impl in ["fast", "reference"]:
        assert_close(model.forward_embeds(x, impl=impl)[0], want, tol=1e-10, what=f"{impl} vs by hand")
    other = infini_model(n_layers=1, n_kv_heads=2, infini_delta_rule=not delta)
    other.load_state_dict(model.state_dict())  # negative control: the other rule differs after block 2
    assert (other.forward_embeds(x)[0] - want)[:, 2 * model.cfg.block_size :].abs().amax(-1).min() > 1e-6


@pytest.mark.parametrize("m", [0, 1])
def test_gate_at_minus_infinity_is_bswa(m):
    """beta = -inf: A = A_dot, BSWA with the same m (fast, reference and streaming). Negative control: at the
    chosen init (beta = 0) every block differs from BSWA; at beta = +inf the first block reads the empty
    memory, 0 (the layer's output is its FF on the residual alone)."""
    model = infini_model(mem_segment=m)
    bswa = FamLM(model.cfg.replace(attention="bswa")).to(torch.float64).eval()
    extra = bswa.load_state_dict(model.state_dict(), strict=False).unexpected_keys
    assert sorted(extra) == ["layers.0.infini_beta", "layers.1.infini_beta"]
    toks = tokens(model.cfg, 2, 4 * model.cfg.block_size + 3)
    want = bswa(toks)
    with torch.no_grad():
        for layer in model.layers:
            layer.infini_beta.zero_()
    assert (model(toks) - want).abs().amax(-1).min() > 1e-6
    with torch.no_grad():
        for layer in model.layers:
            layer.infini_beta.fill_(-math.inf)
    for impl in ["fast", "reference"]:
        assert_close(model(toks, impl=impl), want, tol=1e-12, what=f"{impl} at beta=-inf")
    assert_close(stream(model, toks, [3, 5]), want, tol=1e-12, what="stream at beta=-inf")
    one = infini_model(n_layers=1)
    with torch.no_grad():
        one.layers[0].infini_beta.fill_(math.inf)
    x = torch.randn(2, one.cfg.block_size, one.cfg.d_model, dtype=torch.float64)
    assert_close(one.forward_embeds(x)[0], one.layers[0].finish(torch.zeros_like(x), x), tol=1e-12, what="+inf")


@pytest.mark.parametrize("delta", [False, True])
def test_memory_reaches_every_earlier_block_and_stop_grad_cuts_it(delta):
    """One layer, m = 0: output t depends on every earlier token (BSWA m=0: its own block only). Stop-gradient
    cuts the gradient to the own block, the forward unchanged."""
    B, T = 4, 10  # blocks 0 and 1 in the memory of the partial block 2
    cfg = tiny_cfg(attention="infini", mem_segment=0, n_layers=1, block_size=B, infini_delta_rule=delta)
    model = make_model(cfg, dtype=torch.float64)
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    own = torch.tensor([[s // B == t // B and s <= t for s in range(T)] for t in range(T)])
    for impl in ["fast", "reference"]:
        assert torch.equal(receptive_field(model, T, impl), causal), impl
    sg = FamLM(cfg.replace(stop_grad=True)).to(torch.float64).eval()
    sg.load_state_dict(model.state_dict())
    x = torch.randn(1, T, cfg.d_model, dtype=torch.float64)
    assert torch.equal(sg.forward_embeds(x)[0], model.forward_embeds(x)[0])
    for impl in ["fast", "reference"]:
        assert torch.equal(receptive_field(sg, T, impl), own), impl


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-5), (torch.bfloat16, 0.1)])
def test_dtypes_match_fp32(dtype, tol):
    ref = infini_model(dtype=torch.float32)
    toks = tokens(ref.cfg, 2, 29)
    other = FamLM(ref.cfg).to(dtype).eval()
    other.load_state_dict(ref.state_dict())
    out = other(toks)
    assert out.dtype == dtype
    assert_close(out.float(), ref(toks), tol=tol, what=str(dtype))
    assert_close(stream(other, toks, [5]).float(), out.float(), tol=tol / 10 if dtype == torch.float64 else tol)


SWITCHES = dict(
    mem_segment=st.integers(0, 2),
    block_size=st.integers(1, 7),
    stop_grad=st.booleans(),
    infini_delta_rule=st.booleans(),
)


@random_switch_test(SWITCHES)
def test_random_switches_fast_reference_stream_agree(sw, T, chunk, seed):
    model = infini_model(seed=seed, **sw)
    toks = tokens(model.cfg, 2, T, seed=seed)
    assert_paths_agree(model, toks, tol=1e-10, chunks=[chunk, chunk + 2], what=str(sw))


def test_training_runs_and_learns_the_gates(tmp_path):
    """A tiny Lightning run (PassKey, delta rule) finishes with finite losses; the saved model is infini and its
    gates moved from their init 0 (they get a gradient and the optimizer steps them)."""
    from tiny_runs import tiny, train_losses

    from famlab.train import load_model, train

    extra = ["model.attention=infini", "model.mem_segment=0", "model.infini_delta_rule=true", "train.max_steps=3"]
    run_dir = train(tiny(tmp_path, *extra))
    losses = train_losses(run_dir)
    assert sorted(losses) == [1, 2, 3] and all(math.isfinite(v) for v in losses.values())
    model, _ = load_model(run_dir)
    assert model.cfg.attention == "infini" and model.cfg.infini_delta_rule
    assert all(layer.infini_beta.abs().min() > 0 for layer in model.layers)
