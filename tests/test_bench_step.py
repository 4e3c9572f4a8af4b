"""famlab.bench.step: a variant's model and data, one training step, and layer 0's FAM scan timed alone
on the arguments of a real forward."""

from __future__ import annotations

import pytest
import torch

from famlab.bench import step
from famlab.config import ModelConfig
from famlab.model import FamLM


def test_build_gives_next_token_targets_and_the_variants_impl():
    base = ModelConfig(d_model=32, n_layers=1, n_heads=2, block_size=8, fam_len=2, vocab_size=16)
    cfg, impl = step.variant_config(base, "fam-layer-major")
    assert (cfg.attention, impl) == ("fam", "layer_major")
    assert step.variant_config(base, "fam") == (base.replace(attention="fam"), "fast")
    model, inputs, targets = step.build(cfg, batch=2, seq_len=24, seed=3, impl=impl)
    assert inputs.shape == targets.shape == (2, 24) and torch.equal(inputs[:, 1:], targets[:, :-1])
    _, again, _ = step.build(cfg, batch=2, seq_len=24, seed=3, impl=impl)
    assert torch.equal(inputs, again)  # the seed fixes the data
    with torch.no_grad():  # the loss of the step is the model's next-token cross-entropy before the step
        want = torch.nn.functional.cross_entropy(model(inputs, impl=impl).flatten(0, 1), targets.flatten()).item()
    loss = step.train_step(model, inputs, targets, impl)
    assert loss == pytest.approx(want, rel=1e-5)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_rmt_variant_has_no_memory_segment_and_l_f_memory_tokens():
    base = ModelConfig(d_model=32, n_layers=1, n_heads=2, block_size=8, fam_len=2, vocab_size=16, mem_segment=1)
    cfg, impl = step.variant_config(base, "rmt")
    assert (cfg.attention, cfg.mem_segment, cfg.rmt_mem_tokens, impl) == ("rmt", 0, 2, "fast")
    model, inputs, targets = step.build(cfg, batch=2, seq_len=20, seed=3, impl=impl)
    assert torch.isfinite(torch.tensor(step.train_step(model, inputs, targets, impl)))
    assert model.rmt_memory.grad.abs().sum() > 0


def test_time_fam_scan_runs_the_models_own_scan_and_restores_it():
    cfg = ModelConfig(attention="fam", d_model=32, n_layers=2, n_heads=2, block_size=8, fam_len=2, vocab_size=16)
    model = FamLM(cfg).train()
    tokens = torch.randint(0, 16, (2, 24))
    calls = []
    layer = model.layers[0]
    scan = layer.fam_scan
    layer.fam_scan = lambda *a: calls.append(a[5]) or scan(*a)  # as compile_fam_updates would set it
    times = step.time_fam_scan(model, tokens, reps=3)
    assert len(times) == 3 and all(t > 0 for t in times)
    assert calls == [3] * 5  # captured in one forward (n_full=3 blocks), then warm-up + 3 timed rounds
    assert "fam_scan" in layer.__dict__  # the instance's own scan is put back
    del layer.fam_scan
    step.time_fam_scan(model, tokens, reps=1)
    assert "fam_scan" not in layer.__dict__
    with pytest.raises(ValueError, match="no FAM scan"):
        step.time_fam_scan(FamLM(cfg.replace(attention="bswa")), tokens, reps=1)
