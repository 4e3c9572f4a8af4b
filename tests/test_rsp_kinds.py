"""Random state passing (RSP) for every memory kind with a carried memory: a training call starts from the
final memory of batch item 0 of the previous call (FAM rows, RMT's memory, Infini-attention's M and z, the
Block-Recurrent state), never from cached K/V. The reference for each kind is a model started by hand from
that memory (a copy whose learned start *is* it, or, for Infini-attention, which has no learned start, the
initial state with M and z replaced)."""

from __future__ import annotations

import copy
import dataclasses
import io

import pytest
import torch
from helpers import assert_close, make_model, tiny_cfg, tokens, two_training_calls

from famlab.model import FamLM
from famlab.model.memory import carried_fields
from famlab.train.checkpoint_io import check_fits
from famlab.train.regularizers import RandomStatePassing, training_start, upgrade_checkpoint

KIND_CONFIG = {  # tiny configs of each kind (rmt needs mem_segment=0)
    "fam": dict(attention="fam"),
    "sum_fam": dict(attention="sum_fam"),
    "rmt": dict(attention="rmt", mem_segment=0, n_kv_heads=2, rmt_mem_tokens=3),
    "infini": dict(attention="infini", n_kv_heads=2),
    "block_recurrent": dict(attention="block_recurrent", n_layers=3, brt_layers=[0, 2], brt_state_len=5),
    "block_recurrent_lstm": dict(attention="block_recurrent", n_layers=3, brt_state_len=5, brt_gate="lstm"),
}
CARRYING = list(KIND_CONFIG)
STATELESS = ("full", "bswa", "txl", "fm")


def kind_cfg(kind: str, **changes):
    return tiny_cfg(**{**KIND_CONFIG[kind], "random_pos_offset": True, "rsp_prob": 1.0, **changes})


def item(t: torch.Tensor, i: int, b: int) -> torch.Tensor:
    """Batch item i of t, for every one of b sequences."""
    return t[i : i + 1].expand(b, *t.shape[1:]).clone()


def started_by_hand(model: FamLM, final, i: int, b: int, offset) -> tuple[FamLM, object]:
    """A model and state that start b sequences from batch item i's memory in ``final``, built without RSP:
    a copy of ``model`` whose learned start is that memory (FAM: a learned prefix without the zero-residual
    rule; RMT: its first memory; Block-Recurrent: each recurrent layer's state0), or for Infini-attention
    (M = 0, z = 0 at the start, nothing learned) ``model``'s initial state with M and z replaced."""
    cfg = model.cfg
    if cfg.attention == "infini":
        state = model.initial_state(b, pos_offset=offset)
        layers = [
            dataclasses.replace(ls, infini_mem=item(f.infini_mem, i, b), infini_norm=item(f.infini_norm, i, b))
            for ls, f in zip(state.layers, final.layers)
        ]
        return model, dataclasses.replace(state, layers=layers)
    if cfg.attention in ("fam", "sum_fam"):
        ref = FamLM(cfg.replace(fam_init="prefix", fam_zero_residual=False)).train()
        missing, unexpected = ref.load_state_dict(model.state_dict(), strict=False)
        assert missing == ["fam_prefix"] and unexpected == ["fam_prompt"]
        with torch.no_grad():
            ref.fam_prefix.copy_(torch.stack([ls.fam[i] for ls in final.layers]))
    else:
        ref = copy.deepcopy(model)
        with torch.no_grad():
            if cfg.attention == "rmt":
                ref.rmt_memory.copy_(final.layers[0].rmt_mem[i])
            for layer, ls in zip(ref.layers, final.layers):
                if layer.brt is not None:
                    layer.brt.state0.copy_(ls.brt_state[i])
    return ref, ref.initial_state(b, pos_offset=offset)


def first_call(kind: str, b: int = 3, **changes):
    """A training model of ``kind`` with RSP, after one training call (3 blocks and a partial one): the model,
    its RSP, the call's final state and the next call's tokens."""
    cfg = kind_cfg(kind, **changes)
    model = make_model(cfg).train()
    rsp = RandomStatePassing(cfg)
    B = cfg.block_size
    torch.manual_seed(0)
    start = training_start(model, rsp, b)  # nothing remembered yet: the learned start, no coin
    assert start.fam_fresh
    _, final = model(tokens(cfg, b, 3 * B + 3, seed=1), state=start, return_state=True)
    rsp.remember(final)
    return model, rsp, final, tokens(cfg, b, 3 * B + 2, seed=2)


@pytest.mark.parametrize("kind", CARRYING)
def test_the_next_call_starts_from_the_final_memory_of_item_0(kind):
    b = 3
    model, rsp, final, toks = first_call(kind, b)
    assert bool(rsp.valid)
    torch.manual_seed(5)
    start = training_start(model, rsp, b)  # P(RSP) = 1
    logits = model(toks, state=start)
    ref_model, ref_state = started_by_hand(model, final, 0, b, start.pos_offset)
    assert torch.equal(ref_model(toks, state=ref_state), logits)
    assert_close(model(toks, impl="reference", state=start), logits, tol=1e-4, what="reference path, same start")
    # negative controls: neither the learned start nor another item's memory gives these logits
    fresh = model(toks, state=model.initial_state(b, pos_offset=start.pos_offset))
    assert not torch.allclose(fresh, logits, atol=1e-3)
    other_model, other_state = started_by_hand(model, final, 1, b, start.pos_offset)
    assert not torch.allclose(other_model(toks, state=other_state), logits, atol=1e-3)
    # only memory is carried: no cached K/V of the previous call, the partial block left behind
    for ls, ls0 in zip(start.layers, model.init_state(b).layers):
        assert ls.mem_k.shape == ls0.mem_k.shape and ls.blk_k.shape[2] == 0
        for name in ("infini_k", "brt_k", "fm_k"):
            assert getattr(ls, name) is None or getattr(ls, name).shape[2] == 0


@pytest.mark.parametrize("kind", CARRYING)
def test_without_rsp_every_call_starts_fresh(kind):
    b = 3
    model, rsp, _, toks = first_call(kind, b)
    torch.manual_seed(5)
    with_rsp = model(toks, state=training_start(model, rsp, b))
    rsp.prob = 0.0  # a schedule switched it off
    torch.manual_seed(5)
    start = training_start(model, rsp, b)
    assert start.fam_fresh
    fresh = model(toks, state=model.initial_state(b, pos_offset=start.pos_offset))
    assert torch.equal(model(toks, state=start), fresh) and not torch.allclose(with_rsp, fresh, atol=1e-3)
    off = RandomStatePassing(model.cfg.replace(rsp_prob=0.0))  # the config's P(RSP) = 0: nothing remembered
    _, final = model(toks, return_state=True)
    off.remember(final)
    assert off.enabled and not bool(off.valid) and not off.needs_final_state
    assert training_start(model, off, b).fam_fresh


@pytest.mark.parametrize("kind", CARRYING)
def test_checkpoints_keep_the_remembered_memory(kind):
    model, rsp, final, toks = first_call(kind)
    buf = io.BytesIO()
    torch.save(rsp.state_dict(), buf)
    loaded = RandomStatePassing(model.cfg)
    assert not bool(loaded.valid)
    loaded.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))  # strict
    assert bool(loaded.valid)
    for name, t in rsp.state_dict().items():
        assert torch.equal(getattr(loaded, name), t)
    logits = []
    for r in (rsp, loaded):
        torch.manual_seed(5)
        logits.append(model(toks, state=training_start(model, r, toks.shape[0])))
    assert torch.equal(*logits)
    # an older checkpoint of a kind whose memory RSP did not carry (no rsp.* keys) loads: nothing remembered
    if kind not in ("fam", "sum_fam"):
        old = {f"model.{k}": v for k, v in model.state_dict().items()}
        upgrade_checkpoint(old, rsp)
        assert not bool(old["rsp.valid"])
        expected = {
            **{f"model.{k}": v for k, v in model.state_dict().items()},
            **{f"rsp.{k}": v for k, v in rsp.state_dict().items()},
        }
        check_fits({"state_dict": old}, expected, "old.ckpt")


def test_fam_keeps_its_buffer_names_and_old_checkpoints_need_nothing_new():
    cfg = kind_cfg("fam")
    rsp = RandomStatePassing(cfg)
    assert list(rsp.state_dict()) == ["state", "valid"]
    old = {
        "model.rsp_state": torch.randn(cfg.n_layers, cfg.fam_len, cfg.d_model),
        "model.rsp_valid": torch.tensor(True),
    }
    upgrade_checkpoint(old, rsp)
    assert sorted(old) == ["rsp.state", "rsp.valid"] and bool(old["rsp.valid"])  # moved, not replaced


@pytest.mark.parametrize(
    "kind, fields",
    [
        ("fam", {"fam"}),
        ("sum_fam", {"fam"}),
        ("rmt", {"rmt_mem"}),
        ("infini", {"infini_mem", "infini_norm"}),
        ("block_recurrent", {"brt_state"}),
    ],
)
def test_each_kind_says_what_it_carries(kind, fields):
    cfg = kind_cfg(kind)
    assert set(carried_fields(cfg)) == fields
    model = make_model(cfg)
    state = model.init_state(2)
    carried = model.carried_memory(state)
    for i, ls in enumerate(state.layers):  # every carried field exists where the kind says, nowhere else
        for name in fields:
            held = i in carried_fields(cfg)[name].layers
            assert (name in carried[i]) == held == (getattr(ls, name) is not None)
            if held:
                assert carried[i][name].shape[1:] == carried_fields(cfg)[name].shape
    again = model.initial_state(2, carried=carried)  # the learned start again, without the zero-residual rule
    assert not again.fam_fresh
    toks = tokens(cfg, 2, 20)
    assert torch.equal(model(toks, state=again), model(toks, state=dataclasses.replace(state, fam_fresh=False)))
    with pytest.raises(ValueError, match="carried memory"):
        model.initial_state(2, carried=[{} for _ in state.layers])


@pytest.mark.parametrize("kind", STATELESS)
def test_kinds_without_memory_have_no_rsp_and_draw_no_coin(kind):
    cfg = tiny_cfg(attention=kind, random_pos_offset=True, rsp_prob=0.8)  # accepted, as before: ignored
    assert carried_fields(cfg) == {}
    model = make_model(cfg).train()
    rsp = RandomStatePassing(cfg)
    assert not rsp.enabled and not rsp.needs_final_state and rsp.state_dict() == {}
    _, final = model(tokens(cfg, 2, 20), return_state=True)
    rsp.remember(final)
    torch.manual_seed(3)
    torch.rand(2, 2, dtype=torch.float64)  # the offset only
    after_offset = torch.random.get_rng_state()
    torch.manual_seed(3)
    start = training_start(model, rsp, 2)
    assert torch.equal(torch.random.get_rng_state(), after_offset) and start.fam_fresh


@pytest.mark.parametrize("kind", ["rmt", "infini", "block_recurrent"])
def test_the_training_module_carries_the_memory_and_checkpoints_it(tmp_path, kind):
    extra = {"rmt": ["model.mem_segment=0"], "infini": [], "block_recurrent": ["model.brt_state_len=4"]}[kind]
    module, batch, seen = two_training_calls(tmp_path, f"model.attention={kind}", *extra, "model.rsp_prob=1")
    from famlab.train import FamLightningModule

    cfg = module.cfg
    (start0, final0), (start1, _) = seen
    assert start0.fam_fresh and not start1.fam_fresh  # nothing remembered before the first call
    fields = carried_fields(cfg.model)
    for name, field in fields.items():
        for i in field.layers:
            b = batch["input"].shape[0]
            want = getattr(final0.layers[i], name)[0].detach().expand(b, *field.shape)
            assert torch.equal(getattr(start1.layers[i], name), want)
    # the module's checkpoint keeps the remembered memory; an older one without rsp.* buffers still loads
    state = module.state_dict()
    again = FamLightningModule(cfg)
    again.load_state_dict(state)  # strict
    assert bool(again.rsp.valid) and all(torch.equal(v, again.state_dict()[k]) for k, v in state.items())
    old = {"state_dict": {k: v for k, v in state.items() if not k.startswith("rsp.")}}
    fresh = FamLightningModule(cfg)
    fresh.on_load_checkpoint(old)
    fresh.load_state_dict(old["state_dict"])  # strict: the upgrade gave it nothing remembered
    assert not bool(fresh.rsp.valid)
