"""The feedback memory segment (``attention="fm"``, famlab.model.memory.feedback; TransformerFAM App. C.2):
the layer-major block loop and streaming equal the reference loop; causality; a state continues exactly;
the memory holds the layer's outputs (not its inputs: then it would be BSWA) and reaches back without bound."""

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
    random_switch_test,
    tiny_cfg,
    tokens,
)
from hypothesis import strategies as st
from test_model_paths import receptive_field

from famlab.model import FamLM
from famlab.model.memory import FeedbackMemory, memory_kinds


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
    g_ref = assert_paths_agree(model, toks, tol=1e-10, impl=impl)
    assert all(g.abs().sum() > 0 for g in g_ref.values())


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_causal(impl):
    model = fm_model(n_layers=3, mem_segment=1)
    assert_causal(model, impl)


@pytest.mark.parametrize("chunks", STREAM_CHUNKS)
def test_streaming_equals_parallel(chunks):
    assert_streaming_matches(fm_model(), chunks, tol=1e-10)


def test_streaming_state_size_is_constant():
    model = fm_model(dtype=torch.float32)
    B, m = model.cfg.block_size, model.cfg.mem_segment

    def check_state(state):
        ls = state.layers[0]
        assert ls.mem_k.shape[2] == m * B and ls.fm_k.shape[2] == 0  # the ring: m blocks of outputs' K/V

    assert_state_size_constant(model, check_state)


def test_state_continues_exactly():
    """A parallel forward's state continues with step (also mid-block, through a saved state) and with
    another parallel forward: logits, and gradients through the undetached state, equal one long forward."""

    def check_prefill(state):
        assert state.layers[0].fm_k.shape[2] == 2  # the partial block's output K/V

    assert_state_continues(fm_model(), tol=1e-10, check_prefill=check_prefill)


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
SWITCHES = dict(
    mem_segment=st.integers(1, 3),
    block_size=st.integers(1, 7),
    stop_grad=st.booleans(),
)


@random_switch_test(SWITCHES)
def test_random_switches_fast_reference_stream_agree(sw, T, chunk, seed):
    model = make_model(tiny_cfg(attention=KIND, **sw), seed=seed, dtype=torch.float64)
    toks = tokens(model.cfg, 2, T, seed=seed)
    assert_paths_agree(model, toks, tol=1e-10, chunks=[chunk, chunk + 2], what=str(sw))
