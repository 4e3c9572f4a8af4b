"""FamState (famlab.model.state): its (de)serialisation for checkpoints, and the initial state."""

from __future__ import annotations

import pytest
import torch
from helpers import VARIANTS, assert_close, make_model, tiny_cfg, tokens

from famlab.model import FamState, state_from_dict, state_to, state_to_dict


@pytest.mark.parametrize("attention", VARIANTS)
def test_state_round_trips_through_a_checkpoint_dict(attention, tmp_path):
    cfg = tiny_cfg(attention=attention, mem_segment=2, fam_prev_blocks=2)
    model = make_model(cfg)
    toks = tokens(cfg, 2, 5 * cfg.block_size)
    offset = torch.tensor([0.0, 123.5], dtype=torch.float64)
    _, state = model(toks[:, : 3 * cfg.block_size], state=model.initial_state(2, pos_offset=offset), return_state=True)
    path = tmp_path / "state.pt"
    torch.save(state_to_dict(state), path)
    back = state_from_dict(torch.load(path, weights_only=True))
    assert isinstance(back, FamState)
    assert (back.pos, back.fam_fresh) == (state.pos, state.fam_fresh) and torch.equal(back.pos_offset, offset)
    for a, b in zip(back.layers, state.layers):
        for name, t in vars(b).items():
            assert (getattr(a, name) is None) == (t is None)
            if t is not None:
                assert torch.equal(getattr(a, name), t) and not getattr(a, name).requires_grad
    rest = toks[:, 3 * cfg.block_size :]
    assert_close(model(rest, state=back), model(rest, state=state), tol=0, what="continued from the copy")
    assert state_to(back, torch.device("cpu")) is back  # already there: no copy
    assert state_to_dict(None) is None and state_from_dict(None) is None


def test_initial_state_with_given_fams():
    cfg = tiny_cfg(attention="fam", fam_zero_residual=True)
    model = make_model(cfg)
    fresh = model.init_state(2)
    assert fresh.fam_fresh and fresh.pos == 0 and fresh.pos_offset is None
    fams = [torch.randn(2, cfg.fam_len, cfg.d_model) for _ in range(cfg.n_layers)]
    given = model.initial_state(2, fams=fams)
    assert not given.fam_fresh  # a given FAM is not the learned start: no zero-residual rule
    for ls, fam, ls0 in zip(given.layers, fams, fresh.layers):
        assert torch.equal(ls.fam, fam) and ls.fam_k.shape == ls0.fam_k.shape
        assert not torch.equal(ls.fam_k, ls0.fam_k)
    toks = tokens(cfg, 2, 2 * cfg.block_size)
    assert not torch.allclose(model(toks, state=given), model(toks), atol=1e-3)
