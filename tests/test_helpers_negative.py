"""Negative controls for the shared model-test helpers (tests/helpers.py): each helper passes on a correct
model and raises AssertionError, from the check meant to catch it, when one path of the model is off by a
little (1e-3 in the logits or in the gradients: far above the 1e-10 the fp64 tests allow, far below a crash
or a NaN), when the state grows, or when a saved state loses one field."""

from __future__ import annotations

import re

import helpers
import pytest
import torch
from helpers import (
    STREAM_CHUNKS,
    assert_paths_agree,
    assert_state_continues,
    assert_state_size_constant,
    assert_streaming_matches,
    make_model,
    tiny_cfg,
    tokens,
)
from torch import nn

from famlab.model import FamLM
from famlab.model.state import state_to_dict

OFF = 1e-3


def fm_model() -> FamLM:
    """A model whose state matters in every path (the feedback memory, gradients through the state)."""
    return make_model(tiny_cfg(attention="fm", mem_segment=2, n_kv_heads=2), dtype=torch.float64)


class Perturbed(nn.Module):
    """``model`` with one path off: ``reference`` (its logits + 1e-3), ``reference_grad`` (the same logits,
    gradients 1 + 1e-3 times), ``step`` (streamed logits + 1e-3) or ``state_grad`` (a parallel forward that
    continues a state does not backpropagate into it); ``None``: no path off."""

    def __init__(self, model: FamLM, off: str | None):
        super().__init__()
        self.model, self.off, self.cfg = model, off, model.cfg

    def init_state(self, batch_size: int):
        return self.model.init_state(batch_size)

    def forward(self, toks, *, impl="fast", state=None, return_state=False):
        if self.off == "state_grad" and state is not None:
            state = state.detach()
        out = self.model(toks, impl=impl, state=state, return_state=return_state)
        if impl == "reference" and self.off == "reference":
            return out + OFF
        if impl == "reference" and self.off == "reference_grad":
            return out.detach() + (out - out.detach()) * (1 + OFF)  # equal values, scaled gradient
        return out

    def step(self, toks, state):
        logits, state = self.model.step(toks, state)
        return (logits + OFF if self.off == "step" else logits), state


def test_every_helper_passes_on_the_unperturbed_wrapper():
    """The controls below fail because of the perturbation, not because of the wrapper."""
    model = Perturbed(fm_model(), None)
    toks = tokens(model.cfg, 2, 5 * model.cfg.block_size + 3)
    g_ref = assert_paths_agree(model, toks, tol=1e-10, chunks=[3, 5])
    assert all(g.abs().sum() > 0 for g in g_ref.values())
    for chunks in STREAM_CHUNKS:
        assert_streaming_matches(model, chunks, tol=1e-10)
    assert_state_continues(model, tol=1e-10)
    seen = []
    assert_state_size_constant(fm_model().float(), seen.append)
    assert len(seen) > 1


@pytest.mark.parametrize("off,match", [("reference", "fast vs reference"), ("reference_grad", "grad ")])
@pytest.mark.parametrize("impl", ["fast", "layer_major"])
def test_paths_agree_catches_an_off_reference(impl, off, match):
    model = Perturbed(fm_model(), off)
    toks = tokens(model.cfg, 2, 5 * model.cfg.block_size + 3)
    with pytest.raises(AssertionError, match=match.replace("fast", impl)):
        assert_paths_agree(model, toks, tol=1e-10, impl=impl)


def test_paths_agree_catches_an_off_stream_only_when_asked_to_stream():
    model = Perturbed(fm_model(), "step")
    toks = tokens(model.cfg, 2, 17)
    assert_paths_agree(model, toks, tol=1e-10)
    with pytest.raises(AssertionError, match="stream vs fast"):
        assert_paths_agree(model, toks, tol=1e-10, chunks=[3, 5])


@pytest.mark.parametrize("chunks", STREAM_CHUNKS)
def test_streaming_matches_catches_an_off_step(chunks):
    with pytest.raises(AssertionError, match=re.escape(f"chunks {chunks}")):
        assert_streaming_matches(Perturbed(fm_model(), "step"), chunks, tol=1e-10)


def test_state_size_constant_catches_a_growing_state():
    """Full attention keeps every token's K/V: its streaming state grows by a block per block."""
    with pytest.raises(AssertionError):
        assert_state_size_constant(make_model(tiny_cfg(attention="full")))


def test_state_size_constant_runs_the_callers_check():
    def check_state(state):
        assert state.layers[0].fm_k.shape[2] == 1, "a complete block's outputs left in the partial block"

    with pytest.raises(AssertionError, match="partial block"):
        assert_state_size_constant(fm_model().float(), check_state)


@pytest.mark.parametrize("off,match", [("step", "parallel \\+ step"), ("state_grad", "grad ")])
def test_state_continues_catches_an_off_continuation(off, match):
    """``state_grad``: the logits of the continued forward are exact, only the gradient check can see it."""
    with pytest.raises(AssertionError, match=match):
        assert_state_continues(Perturbed(fm_model(), off), tol=1e-10)


def test_state_continues_runs_the_callers_check():
    def check_prefill(state):
        assert state.layers[0].fm_k.shape[2] == 0, "the partial block is held"

    with pytest.raises(AssertionError, match="the partial block is held"):
        assert_state_continues(fm_model(), tol=1e-10, check_prefill=check_prefill)


@pytest.mark.parametrize(
    "attention,m,field",
    [
        ("fm", 1, "fm_k"),
        ("sum_fam", 1, "fam"),
        ("rmt", 0, "rmt_mem"),  # rmt's blocks meet through its memory only
        ("infini", 1, "infini_mem"),
        ("block_recurrent", 1, "brt_state"),
    ],
)
def test_state_continues_catches_a_saved_state_that_loses_a_field(monkeypatch, attention, m, field):
    """A save that drops the kind's own memory (it comes back as zeros: dropping the key outright would be
    a TypeError at load, not a wrong continuation). Without the saved-state round trip nothing is lost."""

    def lossy_state_to_dict(state):
        data = state_to_dict(state)
        for ls in data["layers"]:
            if ls[field] is not None:
                ls[field] = torch.zeros_like(ls[field])
        return data

    monkeypatch.setattr(helpers, "state_to_dict", lossy_state_to_dict)
    model = make_model(tiny_cfg(attention=attention, mem_segment=m, n_kv_heads=2), dtype=torch.float64)
    with pytest.raises(AssertionError, match="parallel \\+ step"):
        assert_state_continues(model, tol=1e-10)
    assert_state_continues(model, tol=1e-10, through_saved_state=False)
