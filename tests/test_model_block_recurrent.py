"""The Block-Recurrent Transformer (``attention="block_recurrent"``, famlab.model.recurrent_cell; TransformerFAM
App. C.1): the layer-major path and streaming equal the reference loop (logits and gradients, fp64);
causality; a state continues exactly; the state is constant in size, carries information across blocks, is
updated only by complete blocks; the update is the paper's formula; with its read cut off the model is BSWA."""

from __future__ import annotations

import math

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
    random_switch_test,
    stream,
    tiny_cfg,
    tokens,
)
from hypothesis import strategies as st

from famlab.model import FamLM
from famlab.model.init import INIT_SCHEMES
from famlab.model.memory import RecurrentMemory, SegmentMemory, memory_kinds
from famlab.model.ops import merge_heads, sdpa
from famlab.model.recurrent_cell import RecurrentCell


def brt_model(dtype=torch.float64, **changes) -> FamLM:
    cfg = tiny_cfg(attention="block_recurrent", **{"n_layers": 3, "brt_state_len": 5, "n_kv_heads": 2, **changes})
    return make_model(cfg, dtype=dtype)


def test_kinds_cells_and_impls():
    model = brt_model(dtype=torch.float32)
    assert [type(k) for k in memory_kinds(model.cfg)] == [SegmentMemory, RecurrentMemory]
    assert model.cfg.effective_fam_len == 0  # fam_len is ignored, as by bswa
    assert [layer.brt is not None for layer in model.layers] == [False, True, False]  # default: n_layers // 2
    assert isinstance(model.layers[1].brt, RecurrentCell) and model.layers[1].brt.state0.shape == (5, 32)
    assert [layer.brt is not None for layer in brt_model(brt_layers=[2, 0]).layers] == [True, False, True]
    assert tiny_cfg(attention="block_recurrent").state_len == 8  # default S = block_size (the paper's S = W)
    with pytest.raises(ValueError, match="impl='wave'"):
        model(tokens(model.cfg, 1, 9), impl="wave")


@pytest.mark.parametrize(
    "changes",
    [
        dict(mem_segment=1),
        dict(mem_segment=0, brt_gate="lstm"),
        dict(mem_segment=2, brt_layers=[0, 2], stop_grad=True),
        dict(mem_segment=1, brt_layers=[0, 1, 2], brt_gate="lstm", ff="swiglu", norm="rmsnorm", bias=True),
    ],
)
@pytest.mark.parametrize("impl", ["fast", "layer_major"])
def test_fast_equals_reference(impl, changes):
    model = brt_model(**changes)
    toks = tokens(model.cfg, 2, 5 * model.cfg.block_size + 3)  # a partial last block
    g_ref = assert_paths_agree(model, toks, tol=1e-10, impl=impl)
    assert all(g.abs().sum() > 0 for g in g_ref.values()), [n for n, g in g_ref.items() if not g.abs().sum()]


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_causal(impl):
    assert_causal(brt_model(), impl)


@pytest.mark.parametrize("chunks", STREAM_CHUNKS)
@pytest.mark.parametrize("gate", ["fixed", "lstm"])
def test_streaming_equals_parallel(chunks, gate):
    assert_streaming_matches(brt_model(brt_gate=gate, brt_layers=[0, 1]), chunks, tol=1e-10)


def test_streaming_state_size_is_constant():
    model = brt_model(dtype=torch.float32)
    B, m, S = model.cfg.block_size, model.cfg.mem_segment, model.cfg.state_len

    def check_state(state):
        ls = state.layers[1]
        assert ls.brt_state.shape == (1, S, model.cfg.d_model) and ls.brt_k.shape[2] == 0
        assert ls.mem_k.shape[2] == m * B and state.layers[0].brt_state is None

    assert_state_size_constant(model, check_state)


def test_state_continues_exactly():
    """A parallel forward's state continues with step (also mid-block, through a saved state) and with
    another parallel forward: logits, and gradients through the undetached state, equal one long forward."""

    def check_prefill(state):
        assert state.layers[1].brt_k.shape[2] == 2  # the partial block's keys before RoPE

    assert_state_continues(brt_model(brt_gate="lstm"), tol=1e-10, check_prefill=check_prefill)


def test_a_partial_block_reads_the_state_but_does_not_update_it():
    model = brt_model()
    B = model.cfg.block_size
    toks = tokens(model.cfg, 2, 3 * B + 5)
    _, full = model(toks[:, : 3 * B], return_state=True)
    _, part = model(toks, return_state=True)
    assert torch.equal(part.layers[1].brt_state, full.layers[1].brt_state)
    _, more = model(tokens(model.cfg, 2, 4 * B), return_state=True)
    assert not torch.allclose(more.layers[1].brt_state, full.layers[1].brt_state)


def receptive_field(model: FamLM, T: int, impl: str) -> torch.Tensor:
    """[T, T] bool: does output t depend on input s? One backward pass per output (of a random projection
    of its features), where test_model_paths' Jacobian needs one per output feature."""
    x = torch.randn(1, T, model.cfg.d_model, dtype=torch.float64, requires_grad=True)
    out = model.forward_embeds(x, impl=impl)[0][0]  # [T, d]
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=out.dtype)
    rows = [torch.autograd.grad((out[t] * w[t]).sum(), x, retain_graph=True)[0][0] for t in range(T)]
    return torch.stack(rows).abs().sum(-1) > 0  # [T (outputs), T (inputs)]


def test_the_state_carries_information_across_blocks():
    """One recurrent layer, no memory segment: BSWA's output t sees its own block only; through the state it
    sees every earlier token (block i's state read blocks 0 .. i-1). Negative control: the same model with
    the state's read of the block cut (the block's values zeroed for the state) sees its own block only."""
    B, T = 4, 14
    model = brt_model(n_layers=1, mem_segment=0, block_size=B, brt_layers=[0])
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    own = torch.tensor([[s // B == t // B and s <= t for s in range(T)] for t in range(T)])
    for impl in ["fast", "reference"]:
        assert torch.equal(receptive_field(model, T, impl), causal), impl
    cell = model.layers[0].brt
    update = cell.update
    cell.update = lambda c, proj, k, v, attend: update(c, proj, k, v * 0, attend)  # the state learns nothing
    for impl in ["fast", "reference"]:
        assert torch.equal(receptive_field(model, T, impl), own), impl


def test_with_its_read_cut_off_it_is_bswa():
    """Same weights: with the cells' read projection zero the tokens never see the state, and the model is
    BSWA exactly (the plain layers are BSWA layers, the recurrent ones BSWA plus the read); with it, every
    block differs from BSWA, the first one too (it reads the learned initial state)."""
    model = brt_model(brt_layers=[0, 2])
    bswa = FamLM(model.cfg.replace(attention="bswa")).to(torch.float64).eval()
    missing = bswa.load_state_dict(model.state_dict(), strict=False)
    assert not missing.missing_keys and all(".brt." in k for k in missing.unexpected_keys)
    B = model.cfg.block_size
    toks = tokens(model.cfg, 2, 3 * B + 1)
    out, out_bswa = model(toks), bswa(toks)
    for blk in range(3):
        rows = slice(blk * B, (blk + 1) * B)
        assert (out[:, rows] - out_bswa[:, rows]).abs().amax(-1).min() > 1e-6, f"block {blk} equals bswa"
    with torch.no_grad():
        for i in (0, 2):
            model.layers[i].brt.wo.weight.zero_()
    assert_close(model(toks), out_bswa, tol=1e-12, what="read cut off")
    assert_close(model(toks, impl="reference"), out_bswa, tol=1e-12, what="read cut off (reference)")


@pytest.mark.parametrize("gate", ["fixed", "lstm"])
def test_update_is_the_papers_formula(gate):
    """One state update by hand (naive softmax): cs = LN(c) + IDs; a = [Attn(Q cs, K cs, V cs);
    Attn(Q' cs, K(X), V(X))]; c1 = g1(c, W a); c' = g2(c1, FF(LN(c1))), with fixed: c*s + z*(1 - s), s =
    sigmoid(b); lstm: c*sigmoid(W_f h + b_f + 1) + z*sigmoid(W_i h + b_i - 1)."""
    model = brt_model(brt_gate=gate)
    cell, cfg = model.layers[1].brt, model.cfg
    b, S, d, H, G, D = 2, cfg.state_len, cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim
    c = torch.randn(b, S, d, dtype=torch.float64)
    k_blk, v_blk = torch.randn(2, b, G, cfg.block_size, D, dtype=torch.float64)
    got = cell.update(c, cell.project_state(c), k_blk, v_blk, sdpa)

    def attn(q, k, v):
        k, v = k.repeat_interleave(H // G, 1), v.repeat_interleave(H // G, 1)
        return merge_heads((q @ k.transpose(-1, -2) / math.sqrt(D)).softmax(-1) @ v)

    def gated(g, old, z, h):
        if gate == "fixed":
            s = torch.sigmoid(g.bias)
            return old * s + z * (1 - s)
        return old * torch.sigmoid(g.forget(h) + 1) + z * torch.sigmoid(g.input(h) - 1)

    w = cell.wqkv.weight
    cs = torch.nn.functional.layer_norm(c, (d,), cell.norm.weight) + cell.state_pos
    q, q2, k, v = (cs @ part.T for part in w.split((H * D, H * D, G * D, G * D)))
    heads = lambda t: t.view(b, S, -1, D).transpose(1, 2)  # noqa: E731
    a = torch.cat([attn(heads(q), heads(k), heads(v)), attn(heads(q2), k_blk, v_blk)], -1)
    c1 = gated(cell.gate_attn, c, a @ cell.state_wo.weight.T, a)
    hidden = torch.nn.functional.gelu(cell.norm2(c1) @ cell.ff.up.weight.T)
    want = gated(cell.gate_ff, c1, hidden @ cell.ff.down.weight.T, hidden)
    assert_close(got, want, tol=1e-12, what=f"{gate} update")


def test_every_init_scheme_initialises_the_cells():
    """No cell parameter keeps its old value (torch.empty's garbage); the gates and state IDs follow the paper in every scheme."""
    for gate in ["fixed", "lstm"]:
        model = FamLM(tiny_cfg(attention="block_recurrent", brt_gate=gate, d_model=64, brt_layers=[0, 1]))
        for scheme in INIT_SCHEMES:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "norm" not in name:  # norms keep their own init in every scheme
                        p.fill_(float("nan"))
            model.reset_parameters(scheme)
            for name, p in model.named_parameters():
                assert torch.isfinite(p).all(), (scheme, name)
            cell = model.layers[0].brt
            assert 0.7 < cell.state_pos.std() < 1.3, scheme  # N(0, 1)
            if gate == "fixed":
                assert cell.gate_attn.bias.std() < 0.2 and cell.gate_ff.bias.std() < 0.2, scheme  # N(0, 0.1)
            else:
                assert cell.gate_ff.forget.weight.std() < 1.5 * math.sqrt(0.1 / model.cfg.ff_dim), scheme


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 0.1)])
def test_bf16_close_to_fp32(dtype, tol):
    ref = brt_model(dtype=torch.float32, brt_gate="lstm")
    toks = tokens(ref.cfg, 2, 29)
    other = FamLM(ref.cfg).to(dtype).eval()
    other.load_state_dict(ref.state_dict())
    out = other(toks)
    assert out.dtype == dtype
    assert_close(out.float(), ref(toks), tol=tol, what=str(dtype))
    assert_close(stream(other, toks, [5]).float(), out.float(), tol=tol)


KIND = "block_recurrent"
SWITCHES = dict(
    mem_segment=st.integers(0, 3),
    block_size=st.integers(1, 7),
    brt_state_len=st.integers(1, 6),
    brt_layers=st.sampled_from([None, [0], [1], [0, 1]]),
    brt_gate=st.sampled_from(["fixed", "lstm"]),
    stop_grad=st.booleans(),
)


@random_switch_test(SWITCHES)
def test_random_switches_fast_reference_stream_agree(sw, T, chunk, seed):
    model = make_model(tiny_cfg(attention=KIND, **sw), seed=seed, dtype=torch.float64)
    toks = tokens(model.cfg, 2, T, seed=seed)
    assert_paths_agree(model, toks, tol=1e-10, chunks=[chunk, chunk + 2], what=str(sw))


def test_a_tiny_training_run_learns(tmp_path):
    """``famlab train`` with block_recurrent (Lightning, the fast path): the recall task's loss goes down."""
    from tiny_runs import RECALL, tiny, train_losses

    from famlab.train import train

    extra = ["model.attention=block_recurrent", "model.brt_gate=lstm", "train.lr=3e-3"]
    cfg = tiny(tmp_path, *RECALL, *extra, "train.max_steps=30", "train.warmup_steps=3", "name=brt")
    losses = train_losses(train(cfg))
    assert sorted(losses) == list(range(1, 31)) and all(math.isfinite(v) for v in losses.values())
    first, last = (sum(losses[s] for s in steps) / 5 for steps in (range(1, 6), range(26, 31)))
    assert last < first - 0.3, (first, last)
