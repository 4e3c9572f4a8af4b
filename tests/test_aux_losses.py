"""The paper's auxiliary losses on the FAM (famlab.model.aux_losses, App. C.4 and C.5): the fast path's values
equal the reference loop's (fp64), the formulas equal hand computations, the gradients reach the FAM, the
training objective adds them with their weights (and is bit-identical without them), and bad config is refused."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import make_model, tiny_cfg, tokens
from tiny_runs import RECALL, tiny

from famlab.config import ConfigError
from famlab.model import aux_losses
from famlab.model.aux_losses import AuxCollector

CASES = [
    dict(attention="fam"),
    dict(attention="fam", mem_segment=2, fam_prev_blocks=2, n_kv_heads=2, fam_pos="float"),
    dict(attention="fam", mem_segment=0, fam_init="prefix", ff="swiglu", norm="rmsnorm"),
    dict(attention="sum_fam", mem_segment=2, fam_prev_blocks=2),
]


def collected(model, x, impl, state=None, **which):
    with aux_losses.collect(**which) as aux:
        model(x, impl=impl, state=state)
    return aux


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@torch.no_grad()
def test_fast_path_equals_the_reference_loop(case):
    cfg = tiny_cfg(**case)
    model = make_model(cfg, dtype=torch.float64)
    x = tokens(cfg, 2, 3 * cfg.block_size + 5)  # three complete blocks and a partial one
    offset = torch.tensor([123.25, 7.5], dtype=torch.float64)  # RPO: the FAM keys' positions matter
    state = model.initial_state(2, pos_offset=offset)
    fast, ref = collected(model, x, "fast", state), collected(model, x, "reference", state)
    # every layer's complete blocks, batch items and elements, and nothing of the partial block
    assert fast.div_count == ref.div_count == cfg.n_layers * 2 * 3
    assert fast.rec_count == ref.rec_count == cfg.n_layers * 2 * 3 * cfg.block_size * cfg.d_model
    torch.testing.assert_close(fast.diversity_loss(), ref.diversity_loss(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast.reconstruction_loss(), ref.reconstruction_loss(), rtol=1e-12, atol=1e-12)
    # the entropy is at most log(L_F + B) and the mean distribution is not uniform
    assert -math.log(cfg.fam_len + cfg.block_size) < float(fast.diversity_loss()) < 0
    # negative control: another model's values differ
    other = collected(make_model(cfg, seed=1, dtype=torch.float64), x, "fast", state)
    assert abs(float(other.diversity_loss() - fast.diversity_loss())) > 1e-6
    assert abs(float(other.reconstruction_loss() - fast.reconstruction_loss())) > 1e-6


@torch.no_grad()
def test_streaming_collects_the_same_diversity_and_refuses_reconstruction():
    cfg = tiny_cfg(mem_segment=2)
    model = make_model(cfg, dtype=torch.float64)
    x = tokens(cfg, 2, 2 * cfg.block_size + 3)
    want = collected(model, x, "fast", reconstruction=False).diversity_loss()
    with aux_losses.collect(reconstruction=False) as aux:
        state = model.init_state(2)
        for chunk in x.split(5, dim=1):
            _, state = model.step(chunk, state)
    torch.testing.assert_close(aux.diversity_loss(), want, rtol=1e-12, atol=1e-12)
    with aux_losses.collect(), pytest.raises(ValueError, match="reconstruction loss is collected by forward"):
        model.step(x, model.init_state(2))
    with aux_losses.collect(), pytest.raises(ValueError, match="no auxiliary losses collected"):
        model(x, impl="wave")


def test_the_diversity_formula_by_hand():
    aux = AuxCollector(diversity=True, reconstruction=False)
    # batch item 0: heads one-hot on different keys -> the mean over heads and rows is [1/2, 1/2, 0]
    # batch item 1: uniform over the 3 keys
    probs = torch.zeros(2, 2, 1, 3, dtype=torch.float64)  # [b, H, L_F, K]
    probs[0, 0, 0, 0] = probs[0, 1, 0, 1] = 1.0
    probs[1] = 1 / 3
    aux.add_fam_attention(probs)
    aux.add_fam_attention(torch.tensor([[[[1.0, 0.0, 0.0]]]], dtype=torch.float64))  # one-hot: sum p log p = 0
    want = (2 * 0.5 * math.log(0.5) + 3 * (1 / 3) * math.log(1 / 3) + 0.0) / 3
    assert float(aux.diversity_loss()) == pytest.approx(want, rel=1e-14)
    # negative control: the mean of the per-head entropies would make batch item 0 count 0, not log 1/2
    assert float(aux.diversity_loss()) != pytest.approx((3 * (1 / 3) * math.log(1 / 3)) / 3)
    assert float(AuxCollector(True, True).diversity_loss()) == 0.0  # no complete block: nothing collected


def test_the_reconstruction_formula_by_hand():
    aux = AuxCollector(diversity=False, reconstruction=True)
    # one block of 2 queries, 1 head, D = 2; the updated FAM has 2 keys
    q = torch.tensor([[[[0.0, 0.0], [1.0, 0.0]]]], dtype=torch.float64)  # [n, H, B, D]
    k = torch.tensor([[[[2.0, 0.0], [0.0, 0.0]]]], dtype=torch.float64)  # [n, G, L_F, D]
    v = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64)
    target = torch.tensor([[[[2.0, 3.0], [0.0, 0.0]]]], dtype=torch.float64)
    aux.add_reconstruction(q, target, k, v)
    # query 0 scores [0, 0]: uniform, reads [2, 3] = its target; query 1 scores [2/sqrt 2, 0]
    a = math.exp(2 / math.sqrt(2)) / (math.exp(2 / math.sqrt(2)) + 1)
    recon1 = [a * 1 + (1 - a) * 3, a * 2 + (1 - a) * 4]
    want = (recon1[0] ** 2 + recon1[1] ** 2) / 4  # mean over the 4 elements
    assert float(aux.reconstruction_loss()) == pytest.approx(want, rel=1e-14)
    # stop-gradient: the loss trains the FAM's keys/values, not the block's queries or its targets
    q, target, k, v = (t.clone().requires_grad_() for t in (q, target, k, v))
    aux = AuxCollector(diversity=False, reconstruction=True)
    aux.add_reconstruction(q, target, k, v)
    gq, gt, gk, gv = torch.autograd.grad(aux.reconstruction_loss(), [q, target, k, v], allow_unused=True)
    assert gq is None and gt is None and gk.abs().max() > 0 and gv.abs().max() > 0


@pytest.mark.parametrize("case", [dict(), dict(fam_init="prefix"), dict(attention="sum_fam")], ids=str)
def test_gradients_reach_the_fam(case):
    cfg = tiny_cfg(**case)
    model = make_model(cfg, dtype=torch.float64).train()
    x = tokens(cfg, 2, 2 * cfg.block_size)
    fam_param = model.fam_prefix if cfg.fam_init == "prefix" else model.fam_prompt
    for which in ("diversity", "reconstruction"):
        aux = collected(model, x, "fast", diversity=which == "diversity", reconstruction=which == "reconstruction")
        loss = getattr(aux, f"{which}_loss")()
        grads = torch.autograd.grad(loss, [fam_param, model.layers[0].wqkv.weight], allow_unused=True)
        assert all(g is not None and g.abs().max() > 0 for g in grads), which
        if cfg.attention == "sum_fam":
            (g,) = torch.autograd.grad(
                getattr(collected(model, x, "fast"), f"{which}_loss")(), [model.layers[0].fam_summary]
            )
            assert g.abs().max() > 0


def run_module(tmp_path, *extra):
    from famlab.data import build_datamodule
    from famlab.train import FamLightningModule

    cfg = tiny(tmp_path, *RECALL, "model.rsp_prob=0", *extra)
    torch.manual_seed(0)
    module = FamLightningModule(cfg).train()
    dm = build_datamodule(cfg.data, vocab_size=cfg.model.vocab_size, block_size=cfg.model.block_size, seed=0)
    return module, dm.train_batch(0)


def test_the_objective_adds_the_weighted_losses(tmp_path):
    module, batch = run_module(tmp_path, "train.diversity_loss_weight=0.5", "train.reconstruction_loss_weight=2.0")
    loss = module.train_loss(batch)
    div, rec = module.aux_values["diversity"], module.aux_values["reconstruction"]
    torch.testing.assert_close(loss, module.last_lm_loss + 0.5 * div + 2.0 * rec)
    assert float(div.detach()) < 0 < float(rec.detach())
    loss.backward()
    assert module.model.fam_prompt.grad.abs().max() > 0


def test_weight_zero_is_the_plain_training_step(tmp_path, monkeypatch):
    from famlab.train import weighted_ce
    from famlab.train.regularizers import training_start

    module, batch = run_module(tmp_path)
    plain, _ = run_module(tmp_path)
    plain.load_state_dict(module.state_dict())

    def no_collector(*a, **k):
        raise AssertionError("weight 0 must not collect")

    monkeypatch.setattr(aux_losses, "collect", no_collector)
    loss = module.train_loss(batch)
    grads = torch.autograd.grad(loss, list(module.model.parameters()), allow_unused=True)
    with plain.step_rng():  # the training step as it was: CE of the forward from the drawn start
        x = batch["input"]
        logits = plain.model(x, state=training_start(plain.model, plain.rsp, x.shape[0], x.device))
        wce, wsum = weighted_ce(logits, batch["target"], batch["weight"])
    want = wce / wsum.clamp_min(1e-8)
    want_grads = torch.autograd.grad(want, list(plain.model.parameters()), allow_unused=True)
    assert torch.equal(loss, want) and torch.equal(module.last_lm_loss, want.detach())
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(grads, want_grads))
    # negative control: a weight > 0 changes the objective
    monkeypatch.undo()
    on, _ = run_module(tmp_path, "train.diversity_loss_weight=0.1")
    on.load_state_dict(module.state_dict())
    on.micro_step = 0
    assert not torch.allclose(on.train_loss(batch), want)


def test_a_run_logs_the_losses_and_the_sweep_names_them(tmp_path):
    from famlab.config.metrics import logged_metrics
    from famlab.runs import RunDir
    from famlab.train import train

    cfg = tiny(
        tmp_path,
        *RECALL,
        "train.max_steps=2",
        "train.accumulate_grad_batches=2",
        "train.diversity_loss_weight=0.1",
        "train.reconstruction_loss_weight=0.1",
    )
    run = RunDir(train(cfg))
    rows = [r for r in run.read_metrics() if "train/diversity_loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["train/diversity_loss"] < 0 < r["train/reconstruction_loss"] for r in rows)
    flat = run.read_flat_final_metrics()
    assert flat["train/diversity_loss"] == pytest.approx(rows[-1]["train/diversity_loss"])
    assert {k for k, v in flat.items() if isinstance(v, int | float)} == set(logged_metrics(cfg))
    assert "train/diversity_loss" not in logged_metrics(tiny(tmp_path, *RECALL))  # off: not written


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["model.attention=bswa", "train.diversity_loss_weight=0.1"], "train.diversity_loss_weight=0.1 is not allowed"),
        (
            ["model.fam_len=0", "train.reconstruction_loss_weight=1"],
            "train.reconstruction_loss_weight=1.0 is not allowed",
        ),
        (["train.diversity_loss_weight=-0.5"], "train.diversity_loss_weight=-0.5 is not allowed"),
        (["train.reconstruction_loss_weight=.nan"], "train.reconstruction_loss_weight=nan is not allowed"),
        (["train.compile=fam_scan", "train.diversity_loss_weight=0.1"], "unless train.compile=none"),
    ],
)
def test_bad_settings_are_refused_in_one_line(tmp_path, overrides, expected):
    with pytest.raises(ConfigError) as err:
        tiny(tmp_path, *overrides)
    assert expected in str(err.value) and len(str(err.value).splitlines()) == 1
    tiny(tmp_path, "model.attention=sum_fam", "train.diversity_loss_weight=0.1")  # negative control: accepted
