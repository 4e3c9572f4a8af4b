"""Random position offset (RPO) and random state passing (RSP): drawn outside the model, only in training,
through FamLM.initial_state."""

from __future__ import annotations

import math

import torch
from helpers import assert_close, make_model, tiny_cfg, tokens, two_training_calls

from famlab.model import FamLM
from famlab.train.regularizers import (
    RandomStatePassing,
    draw_pos_offset,
    training_start,
    upgrade_checkpoint,
)


def test_offsets_differ_per_sequence_and_half_are_zero():
    torch.manual_seed(0)
    off = draw_pos_offset(4000)
    assert off.dtype == torch.float64 and off.shape == (4000,)
    zero = off == 0
    assert 0.45 < zero.float().mean() < 0.55
    nonzero = off[~zero]
    assert len(set(nonzero.tolist())) == len(nonzero)  # every sequence its own offset
    assert nonzero.min() > 0 and nonzero.max() < 2 * math.pi * 1e4
    assert nonzero.max() > 0.9 * 2 * math.pi * 1e4  # spread over the whole range


def test_the_model_draws_nothing_in_training():
    """state=None means init_state in train and eval mode alike: no random draw, the same logits."""
    cfg = tiny_cfg(attention="fam", random_pos_offset=True, rsp_prob=1.0)
    model = make_model(cfg)
    toks = tokens(cfg, 4, 20)
    evaluated = model.eval()(toks)
    rng = torch.random.get_rng_state()
    trained = model.train()(toks)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert torch.equal(trained, evaluated)


def test_random_pos_offset_changes_only_rounding():
    cfg = tiny_cfg(attention="fam", random_pos_offset=True)
    model = make_model(cfg).train()
    rsp = RandomStatePassing(cfg)
    toks = tokens(cfg, 8, 20)
    evaluated = model(toks)
    torch.manual_seed(0)
    start = training_start(model, rsp, 8)
    assert start.pos_offset is not None and (start.pos_offset == 0).any() and (start.pos_offset != 0).any()
    trained = model(toks, state=start)
    assert not torch.equal(trained, evaluated)  # offsets change fp32 rounding
    assert_close(trained, evaluated, tol=5e-2, what="an offset only changes rounding")
    no_rpo = FamLM(cfg.replace(random_pos_offset=False)).train()
    no_rpo.load_state_dict(model.state_dict())
    assert training_start(no_rpo, rsp, 8).pos_offset is None  # nothing random without RPO


def test_draws_in_the_same_order_and_count_as_before():
    """The offset (rand(2, b), float64) first, then the RSP coin (rand(())) only with P(RSP) > 0 and a
    remembered FAM: one seed, one training run."""
    cfg = tiny_cfg(attention="fam", random_pos_offset=True, rsp_prob=0.5)
    model = make_model(cfg)
    rsp = RandomStatePassing(cfg)
    torch.manual_seed(3)
    u, v = torch.rand(2, 5, dtype=torch.float64)
    after_offset = torch.random.get_rng_state()
    torch.manual_seed(3)
    start = training_start(model, rsp, 5)  # nothing remembered yet: no coin
    assert torch.equal(start.pos_offset, u * 2 * math.pi * 1e4 * v.round())
    assert torch.equal(torch.random.get_rng_state(), after_offset)
    _, final = model(tokens(cfg, 5, 2 * cfg.block_size), return_state=True)
    rsp.remember(final)
    torch.manual_seed(3)
    torch.rand(2, 5, dtype=torch.float64)
    coin = torch.rand(())
    after_coin = torch.random.get_rng_state()
    torch.manual_seed(3)
    start = training_start(model, rsp, 5)
    assert torch.equal(torch.random.get_rng_state(), after_coin)
    assert start.fam_fresh == bool(coin >= 0.5)
    rsp.prob = 0.0  # a schedule switched it off: no coin
    torch.manual_seed(3)
    training_start(model, rsp, 5)
    assert torch.equal(torch.random.get_rng_state(), after_offset)


def test_random_state_passing_starts_from_the_remembered_fam():
    cfg = tiny_cfg(attention="fam", rsp_prob=1.0, fam_zero_residual=True)
    model = make_model(cfg).train()
    rsp = RandomStatePassing(cfg)
    toks = tokens(cfg, 3, 4 * cfg.block_size)
    fresh = model(toks)
    first_start = training_start(model, rsp, 3)  # nothing remembered yet: the learned initial FAM
    assert first_start.fam_fresh
    first, final = model(toks, state=first_start, return_state=True)
    assert torch.equal(first, fresh)
    rsp.remember(final)
    saved = torch.stack([ls.fam[0] for ls in final.layers])
    assert torch.equal(rsp.state, saved) and not rsp.state.requires_grad and bool(rsp.valid)
    start = training_start(model, rsp, 3)  # P(RSP) = 1
    assert not start.fam_fresh  # no zero-residual rule for this start
    for ls, fam in zip(start.layers, saved):
        assert torch.equal(ls.fam, fam.expand(3, -1, -1))
    second = model(toks, state=start)
    assert not torch.allclose(second, fresh, atol=1e-3)
    # the zero-residual rule would have changed the first FAM update (seen from block 1 on): not applied
    with_rule = model(toks, state=type(start)(start.pos, start.pos_offset, True, start.layers))
    assert torch.equal(with_rule[:, : cfg.block_size], second[:, : cfg.block_size])
    assert not torch.allclose(with_rule[:, cfg.block_size :], second[:, cfg.block_size :], atol=1e-4)
    assert torch.equal(model.eval()(toks), fresh)  # eval ignores the remembered state
    rsp.prob = 0.0  # a schedule can switch it off
    assert training_start(model, rsp, 3).fam_fresh


def test_remembers_the_final_fam_of_a_carried_window_too():
    # stateful training: the second window continues the first's state; RSP keeps the FAM at the end
    # of the latest training call (the spec: "at the end of each training step"), not the first's
    cfg = tiny_cfg(attention="fam", rsp_prob=0.5)
    model = make_model(cfg).train()
    rsp = RandomStatePassing(cfg)
    toks = tokens(cfg, 2, 2 * cfg.block_size)
    _, first = model(toks, state=training_start(model, rsp, 2), return_state=True)
    rsp.remember(first)
    assert torch.equal(rsp.state, torch.stack([ls.fam[0] for ls in first.layers]))
    _, second = model(toks, state=first.detach(), return_state=True)
    rsp.remember(second)
    carried = torch.stack([ls.fam[0] for ls in second.layers])
    assert not torch.allclose(carried, torch.stack([ls.fam[0] for ls in first.layers]))
    assert torch.equal(rsp.state, carried)
    off = RandomStatePassing(cfg.replace(rsp_prob=0.0))  # the config's P(RSP) = 0: nothing remembered
    off.remember(second)
    assert not bool(off.valid) and not off.needs_final_state


def test_training_start_identical_in_fast_and_reference():
    """RPO and RSP are drawn once, before the paths split: the same start gives the same logits."""
    cfg = tiny_cfg(attention="fam", random_pos_offset=True, rsp_prob=0.5)
    model = make_model(cfg).train()
    rsp = RandomStatePassing(cfg)
    toks = tokens(cfg, 4, 3 * cfg.block_size + 1)
    _, final = model(toks, return_state=True)
    rsp.remember(final)
    starts = set()
    for seed in range(6):
        torch.manual_seed(seed)
        start = training_start(model, rsp, 4)
        starts.add(start.fam_fresh)
        assert_close(model(toks, state=start), model(toks, impl="reference", state=start), tol=1e-4, what=f"{seed}")
    assert starts == {True, False}


def test_old_rsp_buffers_load_where_they_live_now():
    cfg = tiny_cfg(attention="fam", rsp_prob=0.5)
    model = make_model(cfg)
    old = {f"model.{k}": v for k, v in model.state_dict().items()}
    old["model.rsp_state"] = torch.randn(cfg.n_layers, cfg.fam_len, cfg.d_model)
    old["model.rsp_valid"] = torch.tensor(True)
    upgrade_checkpoint(old)
    assert "model.rsp_state" not in old and torch.equal(old["rsp.valid"], torch.tensor(True))
    rsp = RandomStatePassing(cfg)
    rsp.load_state_dict({k.removeprefix("rsp."): v for k, v in old.items() if k.startswith("rsp.")})
    assert torch.equal(rsp.state, old["rsp.state"]) and bool(rsp.valid)
    # a converted folder or state dict that still has the model's old buffers loads into FamLM
    legacy = dict(model.state_dict(), rsp_state=rsp.state, rsp_valid=rsp.valid)
    fresh = FamLM(cfg)
    fresh.load_state_dict(legacy)  # strict
    assert torch.equal(fresh.tok_emb.weight, model.tok_emb.weight)


def test_the_training_module_draws_the_start_in_training_only(tmp_path):
    """Wired into the LightningModule: a training call starts from RPO + RSP (from the second call on,
    the FAM the first left), remembers its final FAM; validation starts from init_state."""
    module, batch, seen = two_training_calls(tmp_path, "model.random_pos_offset=true", "model.rsp_prob=1")
    (start0, final0), (start1, _) = seen
    b = batch["input"].shape[0]
    assert start0.pos_offset.shape == (b,) and start0.fam_fresh  # nothing remembered before the first call
    assert not start1.fam_fresh and torch.equal(start1.layers[0].fam[0], final0.layers[0].fam[0].detach())
    module.eval()  # as in validation
    with torch.no_grad():
        module.train_loss(batch)
    assert seen[-1][0] is None  # the model's init_state
