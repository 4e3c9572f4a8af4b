"""The Recurrent Memory Transformer (``attention="rmt"``, famlab.model.memory.rmt; arXiv 2207.06881): the fast
path and streaming equal the reference loop; causality; a state continues exactly; the memory carries
information across blocks (and nothing else does); truncated BPTT really cuts the gradient."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    STREAM_CHUNKS,
    assert_causal,
    assert_close,
    assert_paths_agree,
    assert_state_continues,
    assert_state_size_constant,
    assert_streaming_matches,
    make_model,
    param_grads,
    random_switch_test,
    stream,
    tiny_cfg,
    tokens,
)
from hypothesis import strategies as st

from famlab.model import FamLM
from famlab.model.init import INIT_SCHEMES
from famlab.model.memory import RmtMemory, SegmentMemory, memory_kinds
from famlab.model.paths.rmt import reference_mask


def rmt_cfg(**changes):
    return tiny_cfg(attention="rmt", **{"mem_segment": 0, "n_kv_heads": 2, "rmt_mem_tokens": 3, **changes})


def rmt_model(dtype=torch.float64, **changes) -> FamLM:
    return make_model(rmt_cfg(**changes), dtype=dtype)


def test_rmt_has_its_memory_and_one_parameter_more():
    cfg = rmt_cfg()
    assert [type(k) for k in memory_kinds(cfg)] == [SegmentMemory, RmtMemory]  # the segment is empty (m = 0)
    assert cfg.effective_fam_len == 0  # fam_len is ignored
    model, bswa = FamLM(cfg), FamLM(cfg.replace(attention="bswa"))
    assert model.rmt_memory.shape == (3, cfg.d_model)
    assert model.num_params() == bswa.num_params() + 3 * cfg.d_model
    with pytest.raises(ValueError, match="impl='wave'"):
        model(tokens(cfg, 1, 9), impl="wave")


@pytest.mark.parametrize("scheme", list(INIT_SCHEMES))
def test_every_init_scheme_initialises_the_memory(scheme):
    model = FamLM(rmt_cfg())
    with torch.no_grad():
        model.rmt_memory.fill_(float("nan"))
    model.reset_parameters(scheme)
    assert torch.isfinite(model.rmt_memory).all() and model.rmt_memory.std() > 0


def test_reference_mask_is_causal_over_read_block_write():
    """The rules (read: read causally; tokens: all read, block causally; write: all read and block, write
    causally) are the official decoder's causal LM over [memory | segment | memory]."""
    M, nb = 3, 5
    assert torch.equal(reference_mask(M, nb, "cpu"), torch.tril(torch.ones(2 * M + nb, 2 * M + nb, dtype=torch.bool)))


@pytest.mark.parametrize("sw", [{}, {"stop_grad": True}, {"rmt_bptt_depth": 1}, {"rmt_mem_tokens": 1}])
@pytest.mark.parametrize("impl", ["fast", "layer_major"])
def test_fast_equals_reference(impl, sw):
    model = rmt_model(**sw)
    toks = tokens(model.cfg, 2, 5 * model.cfg.block_size + 3)  # a partial last block
    g_ref = assert_paths_agree(model, toks, tol=1e-10, impl=impl)
    assert all(g.abs().sum() > 0 for g in g_ref.values())


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_causal(impl):
    assert_causal(rmt_model(n_layers=3), impl)


@pytest.mark.parametrize("chunks", STREAM_CHUNKS)
def test_streaming_equals_parallel(chunks):
    assert_streaming_matches(rmt_model(), chunks, tol=1e-10)


def test_streaming_state_size_is_constant():
    model = rmt_model(dtype=torch.float32)
    M = model.cfg.rmt_mem_tokens

    def check_state(state):
        ls = state.layers[0]
        assert ls.rmt_k.shape[2] == M and ls.blk_k.shape[2] == 0 and ls.rmt_mem.shape == (1, M, model.cfg.d_model)

    assert_state_size_constant(model, check_state)


def test_state_continues_exactly():
    """A parallel forward's state continues with step (also mid-block, through a saved state) and with
    another parallel forward: logits, and gradients through the undetached state, equal one long forward."""
    model = rmt_model()

    def check_prefill(state):
        assert state.layers[0].blk_k.shape[2] == 2 and state.layers[1].rmt_mem is None  # layer 0 holds the memory

    assert_state_continues(model, tol=1e-10, check_prefill=check_prefill)
    toks = tokens(model.cfg, 2, 7 * model.cfg.block_size + 3)
    with pytest.raises(ValueError, match="block boundary"):
        model(toks[:, :2], state=model(toks[:, :3], return_state=True)[1])


def receptive_field(model: FamLM, T: int, impl: str) -> torch.Tensor:
    """[T, T] bool: does output t depend on input s? One backward per output row (of a random projection of
    it; test_model_paths' full Jacobian takes d times as many, minutes through RMT's sequential blocks)."""
    x = torch.randn(1, T, model.cfg.d_model, dtype=torch.float64, requires_grad=True)
    h = model.forward_embeds(x, impl=impl)[0][0]  # [T, d]
    w = torch.randn(h.shape, generator=torch.Generator().manual_seed(3), dtype=h.dtype)
    rows = [torch.autograd.grad((h[t] * w[t]).sum(), x, retain_graph=True)[0][0] for t in range(T)]
    return torch.stack(rows).abs().sum(-1) > 0  # [T, T]


def test_receptive_field_is_unbounded_through_the_memory_only():
    """One layer: an output depends on every earlier token (through the memory chain), never on a later
    one. Negative control: BSWA with m = 0 (same weights, no memory) sees its own block only; and with the
    memory's transitions cut (bptt depth 0), the gradient stays in the block while the forward is unchanged."""
    B, T = 4, 14
    cfg = rmt_cfg(n_layers=1, block_size=B)
    rmt = make_model(cfg, dtype=torch.float64)
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    own = torch.tensor([[s // B == t // B and s <= t for s in range(T)] for t in range(T)])
    for impl in ["fast", "reference"]:
        assert torch.equal(receptive_field(rmt, T, impl), causal), impl
    bswa = FamLM(cfg.replace(attention="bswa")).to(torch.float64).eval()
    bswa.load_state_dict({k: v for k, v in rmt.state_dict().items() if k != "rmt_memory"})
    assert torch.equal(receptive_field(bswa, T, "fast"), own)
    cut = FamLM(cfg.replace(rmt_bptt_depth=0)).to(torch.float64).eval()
    cut.load_state_dict(rmt.state_dict())
    x = torch.randn(1, T, cfg.d_model, dtype=torch.float64)
    assert torch.equal(cut.forward_embeds(x)[0], rmt.forward_embeds(x)[0])
    for impl in ["fast", "reference"]:
        assert torch.equal(receptive_field(cut, T, impl), own), impl


def test_differs_from_bswa_and_the_memory_is_the_normed_write_rows():
    """Every block reads memory rows (so even block 0 differs from BSWA m=0), and block 1's memory is the
    last layer's write rows of block 0 after the final norm: feeding that memory as a fresh state's memory
    reproduces block 1."""
    model = rmt_model()
    bswa = FamLM(model.cfg.replace(attention="bswa")).to(torch.float64).eval()
    bswa.load_state_dict({k: v for k, v in model.state_dict().items() if k != "rmt_memory"})
    B, M = model.cfg.block_size, model.cfg.rmt_mem_tokens
    toks = tokens(model.cfg, 2, 2 * B)
    out = model(toks)
    assert (out - bswa(toks)).abs().amax(-1).min() > 1e-6
    x = model.tok_emb(toks[:, :B])
    h = torch.cat([model.rmt_memory.expand(2, -1, -1), x, model.rmt_memory.expand(2, -1, -1)], 1)
    from famlab.model.positions import rope_for, token_positions

    cos, sin = rope_for(model.cfg, token_positions(-M, 2 * M + B, "cpu"), None, h.dtype)
    for layer in model.layers:
        q, k, v = layer.qkv(h, cos, sin)
        attn = torch.nn.functional.scaled_dot_product_attention(
            q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), is_causal=True
        )
        h = layer.finish(attn.transpose(1, 2).flatten(2), h)
    mem = model.norm_f(h[:, M + B :])
    state = model.init_state(2)
    _, state = model.step(toks[:, :B], state)
    assert_close(state.layers[0].rmt_mem, mem, tol=1e-12, what="memory after block 0")


def last_block_grad(model, impl: str, n_blk: int) -> torch.Tensor:
    """|d loss(last block) / d embeddings|, summed per block: [n_blk]."""
    B = model.cfg.block_size
    x = model.tok_emb(tokens(model.cfg, 2, n_blk * B)).detach().requires_grad_(True)
    h, _ = model.forward_embeds(x, impl=impl)
    model.logits(h)[:, -B:].square().sum().backward()
    return x.grad.abs().view(2, n_blk, B, -1).sum((0, 2, 3))


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_truncated_bptt_cuts_the_gradient(impl, depth):
    """A loss on the last of 6 blocks reaches the embeddings of the last depth+1 blocks (depth memory
    transitions) and exactly none before. Negative control: with depth -1 every block gets a gradient.
    The forward values do not depend on the depth."""
    n = 6
    full = rmt_model()
    cut = FamLM(full.cfg.replace(rmt_bptt_depth=depth)).to(torch.float64).eval()
    cut.load_state_dict(full.state_dict())
    g_full, g_cut = last_block_grad(full, impl, n), last_block_grad(cut, impl, n)
    assert (g_full > 0).all(), g_full
    reach = n - 1 - depth  # the first block still reached
    assert (g_cut[:reach] == 0).all() and (g_cut[reach:] > 0).all(), g_cut
    toks = tokens(full.cfg, 2, n * full.cfg.block_size)
    assert torch.equal(full(toks, impl=impl), cut(toks, impl=impl))


def test_stop_grad_is_depth_zero():
    model = rmt_model(stop_grad=True)
    zero = FamLM(model.cfg.replace(stop_grad=False, rmt_bptt_depth=0)).to(torch.float64).eval()
    zero.load_state_dict(model.state_dict())
    toks = tokens(model.cfg, 2, 4 * model.cfg.block_size + 1)
    a, b = model(toks), zero(toks)
    assert torch.equal(a, b)
    g_a, g_b = param_grads(model, a), param_grads(zero, b)
    assert all(torch.equal(g_a[name], g_b[name]) for name in g_a)
    assert (last_block_grad(model, "fast", 4)[:3] == 0).all()


def test_bf16_runs_and_is_close_to_fp32():
    ref = rmt_model(dtype=torch.float32)
    toks = tokens(ref.cfg, 2, 29)
    other = FamLM(ref.cfg).to(torch.bfloat16).eval()
    other.load_state_dict(ref.state_dict())
    out = other(toks)
    assert out.dtype == torch.bfloat16
    assert_close(out.float(), ref(toks), tol=0.1, what="bf16")
    assert_close(stream(other, toks, [5]).float(), out.float(), tol=0.1, what="bf16 stream")


def test_position_offset_moves_memory_rows_with_the_tokens():
    """The random position offset shifts tokens and memory rows alike: in fp64, an offset changes the
    logits only by rounding (RoPE sees the same distances); the state from ``initial_state`` streams equal."""
    model = rmt_model()
    toks = tokens(model.cfg, 2, 3 * model.cfg.block_size + 2)
    offset = torch.tensor([3.0, 1000.0], dtype=torch.float64)
    state = model.initial_state(2, pos_offset=offset, dtype=torch.float64)
    shifted = model(toks, state=state)
    assert_close(shifted, model(toks), tol=1e-9, what="offset")
    logits, _ = model.step(toks, model.initial_state(2, pos_offset=offset, dtype=torch.float64))
    assert_close(logits, shifted, tol=1e-10, what="offset stream")


SWITCHES = dict(
    rmt_mem_tokens=st.integers(1, 4),
    block_size=st.integers(1, 7),
    rmt_bptt_depth=st.integers(-1, 3),
    stop_grad=st.booleans(),
)


@random_switch_test(SWITCHES)
def test_random_switches_fast_reference_stream_agree(sw, T, chunk, seed):
    model = make_model(rmt_cfg(**sw), seed=seed, dtype=torch.float64)
    toks = tokens(model.cfg, 2, T, seed=seed)
    assert_paths_agree(model, toks, tol=1e-10, chunks=[chunk, chunk + 2], what=str(sw))


def test_a_tiny_training_run_learns(tmp_path):
    """`famlab train` with attention=rmt (PassKey, Lightning): the loss falls."""
    from tiny_runs import tiny, train_losses

    from famlab.train import train

    overrides = ["model.attention=rmt", "model.mem_segment=0", "model.rmt_bptt_depth=2"]
    losses = train_losses(train(tiny(tmp_path, *overrides, "train.max_steps=16", "train.lr=3e-3")))
    assert sorted(losses) == list(range(1, 17))
    first, last = sum(losses[s] for s in (1, 2, 3)) / 3, sum(losses[s] for s in (14, 15, 16)) / 3
    assert last < first - 0.3, (first, last)
