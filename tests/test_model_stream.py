"""Streaming (FamLM.step, famlab.model.paths.stream) equals the parallel forward; states returned by the
parallel paths continue exactly and hold only their own memory; the streaming state stays constant."""

from __future__ import annotations

import pytest
import torch
from helpers import VARIANTS, assert_close, make_model, stream, tiny_cfg, tokens

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


@pytest.mark.parametrize(
    "attention,impl", [(a, "fast") for a in (*VARIANTS, "fm", "block_recurrent")] + [("fam", "layer_major")]
)
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
