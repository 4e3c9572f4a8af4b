"""famlab.train.module: the RSP schedule, gradient accumulation's logged loss, the carried stateful
state, steps without targets, the weighted loss, compiling FAM parts."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
from tiny_runs import RECALL, rows_with, tiny, train_losses

from famlab.data import build_datamodule
from famlab.model import FamState
from famlab.train import FamLightningModule, load_model, train, weighted_ce


def test_rsp_schedule_sets_the_probability(tmp_path, monkeypatch):
    cfg = tiny(tmp_path, "train.rsp_start_step=3", "train.rsp_ramp_steps=2", "model.rsp_prob=0.6")
    module = FamLightningModule(cfg)
    assert module.rsp.prob == 0.6  # the config value, before any step
    for step, want in [(0, 0.0), (2, 0.0), (3, 0.3), (4, 0.6), (50, 0.6)]:
        monkeypatch.setattr(FamLightningModule, "global_step", property(lambda self, s=step: s))
        assert module.set_rsp_prob() == pytest.approx(want)
        assert module.rsp.prob == pytest.approx(want)


def test_accumulated_steps_log_the_weighted_mean_of_their_micro_batches(tmp_path, monkeypatch):
    seen = []
    train_loss = FamLightningModule.train_loss

    def spy(self, batch):
        loss = train_loss(self, batch)
        seen.append((float(loss.detach()), float(self.last_weight)))
        return loss

    monkeypatch.setattr(FamLightningModule, "train_loss", spy)
    run = train(tiny(tmp_path, "train.accumulate_grad_batches=2", "train.max_steps=2", "train.val_every=0"))
    assert len(seen) == 4
    logged = train_losses(run)
    for step, ((l1, w1), (l2, w2)) in zip((1, 2), (seen[0:2], seen[2:4])):
        assert w1 > 0 and w2 > 0 and l1 != l2
        assert logged[step] == pytest.approx((l1 * w1 + l2 * w2) / (w1 + w2), rel=1e-5)
    assert rows_with(run, "train/weight")[2] == pytest.approx(seen[2][1] + seen[3][1])


def test_stateful_state_is_carried_detached_and_reset(tmp_path):
    cfg = tiny(tmp_path, *RECALL, "data.stateful=true", "data.episode_windows=2", "model.rsp_prob=0")
    module = FamLightningModule(cfg).train()
    dm = build_datamodule(cfg.data, vocab_size=cfg.model.vocab_size, block_size=cfg.model.block_size, seed=0)
    batches = [dm.train_batch(k) for k in range(4)]
    assert [bool(b["new_episode"]) for b in batches] == [True, False, True, False]
    assert batches[1]["weight"].sum() > 0  # the second window holds the queries

    seen = []
    forward = module.model.forward

    def spy(tokens, **kw):
        seen.append(kw.get("state"))
        return forward(tokens, **kw)

    module.model.forward = spy
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    for batch in batches:
        loss = module.train_loss(batch)
        assert torch.isfinite(loss)
        loss.backward()  # would fail on a second pass through an earlier window's graph
        opt.step()
        opt.zero_grad()
        state = module.carried
        assert isinstance(state, FamState)
        tensors = [t for ls in state.layers for t in vars(ls).values() if t is not None]
        assert tensors and all(t.grad_fn is None and not t.requires_grad for t in tensors)
    assert all(seen[i].pos == 0 and seen[i].fam_fresh for i in (0, 2))  # new_episode: a fresh start
    assert isinstance(seen[1], FamState) and isinstance(seen[3], FamState)
    assert seen[1].pos == cfg.data.seq_len  # the state after window 0

    # carrying the state changes the loss of the second window
    module.model.forward = forward
    module.carried = None
    module.train_loss(batches[0])
    with torch.no_grad():
        carried = module.train_loss(batches[1])
        module.carried = None
        fresh, _, _ = module._run(batches[1], None, True)
    assert not torch.allclose(carried, fresh / batches[1]["weight"].sum())


def test_steps_without_targets_change_no_weight(tmp_path):
    """Stateful recall, two windows per episode: window 0 of each episode has no targets. Step 3
    (episode 2's first window) follows a step with targets, so AdamW has momentum and decays the
    weights; a step without targets must still leave every weight as it was."""
    base = [*RECALL, "data.stateful=true", "data.episode_windows=2", "model.rsp_prob=0"]
    base += ["train.warmup_steps=0", "train.schedule=constant", "train.weight_decay=0.1", "train.optimizer=adamw"]
    base += ["train.val_every=0"]  # the same LR at every step of the 1-, 2- and 3-step runs
    weights, finals = {}, {}
    for steps in (1, 2, 3):
        cfg = tiny(tmp_path / str(steps), *base, f"train.max_steps={steps}")
        run_dir = train(cfg)
        model, _ = load_model(run_dir)
        weights[steps] = {k: v.clone() for k, v in model.state_dict().items()}
        finals[steps] = json.loads((run_dir / "final_metrics.json").read_text())
    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # as train() does before building the model
    init = FamLightningModule(cfg).model.state_dict()
    params = [k for k in init if not k.startswith("rsp_")]
    assert all(torch.equal(weights[1][k], init[k]) for k in params), "a step without targets moved a weight"
    assert any(not torch.equal(weights[2][k], weights[1][k]) for k in params), "the step with targets did nothing"
    assert all(torch.equal(weights[3][k], weights[2][k]) for k in params), "a step without targets moved a weight"
    assert [finals[s]["skipped_steps"] for s in (1, 2, 3)] == [1, 1, 2]
    assert [finals[s]["step"] for s in (1, 2, 3)] == [1, 2, 3]


def test_weighted_ce():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    weight = torch.rand(2, 5)
    wce, wsum = weighted_ce(logits, target, weight)
    ce = torch.nn.functional.cross_entropy(logits.reshape(10, 7), target.reshape(10), reduction="none")
    assert torch.allclose(wce / wsum, (ce * weight.reshape(10)).sum() / weight.sum())


@pytest.mark.parametrize("what", ["fam_scan", "fam_update"])
def test_compile_fam_parts(tmp_path, what):
    model = FamLightningModule(tiny(tmp_path, f"train.compile={what}")).model
    assert all(what in vars(layer) for layer in model.layers) and model._compiled_call_impl is None
    other = "fam_update" if what == "fam_scan" else "fam_scan"
    assert not any(other in vars(layer) for layer in model.layers)
    # without FAM there is nothing to compile
    model = FamLightningModule(tiny(tmp_path, "model.attention=bswa", f"train.compile={what}")).model
    assert not any(what in vars(layer) for layer in model.layers) and model._compiled_call_impl is None
