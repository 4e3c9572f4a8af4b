"""famlab.model.init: the schemes of ``model.init``, pinned by the statistics they give a model at init
(the quantities that decide whether a tiny model can learn at all: attention score spread, the residual
stream's scale, the initial logits)."""

from __future__ import annotations

import math

import pytest
import torch

from famlab.config import INIT_SCHEMES as CONFIG_SCHEMES
from famlab.config import ModelConfig
from famlab.model import FamLM
from famlab.model.init import INIT_SCHEMES
from famlab.model.positions import token_cos_sin

D, LAYERS = 64, 2


def init_stats(init: str, *, tie: bool = True, d: int = D, seed: int = 0) -> dict[str, float]:
    """At init, on random tokens: rms of the token vectors, std of layer 0's attention scores
    (q.k / sqrt(D)), rms of the stream after the stack, std of the logits."""
    cfg = ModelConfig(d_model=d, n_layers=LAYERS, n_heads=4, vocab_size=64, attention="bswa", block_size=32)
    cfg = cfg.replace(init=init, tie_embeddings=tie)
    torch.manual_seed(seed)
    model = FamLM(cfg).eval()
    tokens = torch.randint(0, cfg.vocab_size, (4, 64))
    with torch.no_grad():
        x = model.tok_emb(tokens)
        cos, sin = token_cos_sin(cfg, 0, 64, None, x.device, x.dtype)
        q, k, _ = model.layers[0].qkv(x, cos, sin)
        scores = q @ k.transpose(-1, -2) / math.sqrt(cfg.head_dim)
        h, _ = model.forward_embeds(x)
        logits = model.logits(h)
    return {
        "token_rms": x.pow(2).mean().sqrt().item(),
        "score_std": scores.std().item(),
        "stream_rms": h.pow(2).mean().sqrt().item(),
        "logit_std": logits.std().item(),
    }


def test_config_and_model_name_the_same_schemes():
    assert set(CONFIG_SCHEMES) == set(INIT_SCHEMES)
    assert ModelConfig().init == "scaled"


def test_gpt2_leaves_attention_uniform_at_small_width():
    """The failure mode behind issue 16: at d=64 GPT-2's N(0, 0.02) gives scores of std ~0.02
    (softmax is flat) and a stream at rms ~0.02."""
    s = init_stats("gpt2")
    assert s["token_rms"] == pytest.approx(0.02, rel=0.1)
    assert s["score_std"] < 0.05
    assert s["stream_rms"] < 0.1


def test_scaled_gives_unit_scale_scores_at_any_width():
    for d in (64, 256):
        s = init_stats("scaled", d=d)
        assert s["token_rms"] == pytest.approx(d**-0.5, rel=0.1)  # tied: N(0, 1/d)
        assert 0.5 < s["score_std"] < 2.0, d  # neither flat nor saturated
        assert s["logit_std"] == pytest.approx(1.0, rel=0.35), d  # the prediction starts near uniform
    untied = init_stats("scaled", tie=False)
    assert untied["token_rms"] == pytest.approx(1.0, rel=0.1)


def test_torch_is_pytorchs_default():
    s = init_stats("torch")
    assert s["token_rms"] == pytest.approx(1.0, rel=0.1)  # nn.Embedding's N(0, 1)
    cfg = ModelConfig(d_model=D, n_layers=LAYERS, n_heads=4, vocab_size=64, init="torch")
    w = FamLM(cfg).layers[0].wqkv.weight
    bound = 1 / math.sqrt(D)  # kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in))
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound


def test_scaled_weights_and_residual_outputs():
    cfg = ModelConfig(d_model=256, n_layers=4, n_heads=4, vocab_size=64, attention="fam", block_size=32, fam_len=4)
    torch.manual_seed(0)
    model = FamLM(cfg)
    layer = model.layers[0]
    assert layer.wqkv.weight.std().item() == pytest.approx(256**-0.5, rel=0.05)
    assert layer.ff.down.weight.std().item() == pytest.approx(cfg.ff_dim**-0.5 / math.sqrt(8), rel=0.05)
    assert layer.wo.weight.std().item() == pytest.approx(256**-0.5 / math.sqrt(8), rel=0.05)
    assert model.fam_prompt.std().item() == pytest.approx(256**-0.5, rel=0.1)
    assert torch.equal(layer.norm1.weight, torch.ones(256))  # norms keep their own init


def test_reset_parameters_follows_the_config_and_a_named_scheme():
    cfg = ModelConfig(d_model=D, n_layers=LAYERS, n_heads=4, vocab_size=64, init="gpt2")
    model = FamLM(cfg)
    assert model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.1)
    model.reset_parameters("scaled")
    assert model.tok_emb.weight.std().item() == pytest.approx(D**-0.5, rel=0.1)
    with pytest.raises(
        ValueError, match=r"ModelConfig.init='xavier' is not allowed: expected one of scaled, gpt2, torch"
    ):
        ModelConfig(init="xavier")
