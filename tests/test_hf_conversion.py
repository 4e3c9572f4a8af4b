"""famlab.hf.conversion: Hugging Face Llama-family models converted to FamLM with exactly their weights."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hf_fixtures import KINDS, SHAPE, make_hf, tokens  # noqa: E402

from famlab import hf  # noqa: E402


@pytest.mark.parametrize("kind", list(KINDS))
def test_full_attention_logits_equal_original(kind, tmp_path):
    ref = make_hf(kind)
    ref.save_pretrained(str(tmp_path))
    model = hf.convert(tmp_path, attention="full")  # from the folder
    assert model.cfg.ff == "swiglu" and model.cfg.norm == "rmsnorm" and model.cfg.n_kv_heads == 2
    assert model.cfg.bias == (kind in ("llama-tied-bias", "qwen2"))
    assert model.cfg.tie_embeddings == (kind == "llama-tied-bias") and model.cfg.rope_base == 5000.0
    assert model.hf_source["model_type"] == KINDS[kind][0].removesuffix("Config").lower()
    x = tokens()
    assert hf.compare_logits(model, ref, x) < 1e-5
    # streaming (KV cache) gives the same logits
    logits, _ = model.step(x, model.init_state(2))
    assert torch.allclose(logits, ref(input_ids=x).logits, atol=1e-5)


def test_mistral_sliding_window_is_exact_as_txl(tmp_path):
    """Mistral's sliding window (keys at distances < W) is famlab's txl with txl_window = W - 1, blocks of
    at most W and memory back W - 1 tokens; 'full' equals it only up to W tokens, and says so."""
    W = 7
    ref = make_hf("mistral", sliding_window=W)
    x = tokens(T=41)  # six windows long
    for block_size in (None, 4, 3):
        switches = hf.sliding_window_switches(W, block_size)
        model = hf.convert(ref, **switches)
        assert hf.compare_logits(model, ref, x) < 1e-5, switches
    with pytest.warns(UserWarning, match=r"sliding_window=7 is not applied.*up to 7 tokens"):
        full = hf.convert(ref, attention="full")
    with pytest.warns(UserWarning, match=r"sliding_window=7 is not applied"):  # the folder records the window
        hf.load_converted(hf.save_converted(full, tmp_path / "mistral"))
    exact = hf.load_converted(tmp_path / "mistral", **hf.sliding_window_switches(W))
    assert hf.compare_logits(exact, ref, x) < 1e-5
    assert hf.compare_logits(full, ref, x[:, :W]) < 1e-5 and hf.compare_logits(full, ref, x) > 1e-2
    near = hf.convert(ref, attention="txl", block_size=8, mem_segment=1, txl_window=W - 1)  # block > W
    assert hf.compare_logits(near, ref, x) > 1e-2
    with pytest.raises(
        ValueError, match=r"sliding_window\.block_size=8 is not allowed: expected an integer in \[1, window=7\]"
    ):
        hf.sliding_window_switches(W, 8)


def test_block_attention_within_one_block_equals_original():
    ref = make_hf("llama")
    x = tokens(T=30)
    for attention in ("bswa", "txl", "fam"):
        model = hf.convert(ref, attention=attention, block_size=32, mem_segment=1, fam_len=0)
        assert hf.compare_logits(model, ref, x) < 1e-5, attention
    fam = hf.convert(ref, attention="fam", block_size=8, mem_segment=1, fam_len=4)
    assert fam.fam_prompt.shape == (4, 64) and fam(x).shape == (2, 30, 256)
    assert hf.compare_logits(fam, ref, x) > 1e-3  # FAM rows are new keys: a different function


def test_rmt_converts_with_a_fresh_memory():
    """The checkpoint has no RMT memory: it starts as initialised; the rest are the original's weights."""
    ref = make_hf("llama")
    model = hf.convert(ref, attention="rmt", block_size=8, mem_segment=0, rmt_mem_tokens=3)
    assert model.rmt_memory.shape == (3, 64) and torch.isfinite(model.rmt_memory).all()
    bswa = hf.convert(ref, attention="bswa", block_size=8, mem_segment=0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in bswa.state_dict().items())
    assert model(tokens(T=30)).shape == (2, 30, 256)


def test_shape_keys_come_from_the_checkpoint():
    ref = make_hf("llama")
    with pytest.raises(hf.ConversionError, match="'bias' comes from the pretrained model"):
        hf.convert(ref, attention="full", bias=True)
    with pytest.raises(hf.ConversionError, match="'d_model' comes from the pretrained model"):
        hf.convert(ref, attention="full", d_model=128)


# ---------------------------------------------------------------- bad input


def test_unsupported_model_type_is_rejected():
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(hf.ConversionError, match=r"model_type='gpt2'.*supported model types are llama, mistral"):
        hf.convert(gpt2)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "RoPE scaling rope_type='linear'"),
        (dict(head_dim=32), "head_dim=32 with hidden_size=64"),
        (dict(hidden_act="gelu"), "hidden_act='gelu'"),
    ],
)
def test_unsupported_config_is_rejected(changes, match):
    config = transformers.LlamaConfig(**SHAPE, **changes)
    with pytest.raises(hf.ConversionError, match=match):
        hf.model_config_from_hf(config)


def test_qwen2_sliding_window_is_rejected():
    config = transformers.Qwen2Config(**SHAPE, use_sliding_window=True, sliding_window=16, max_window_layers=0)
    with pytest.raises(hf.ConversionError, match="sliding"):
        hf.model_config_from_hf(config)
    # the flag on, but every layer below max_window_layers: all layers are full attention, nothing to reject
    n = SHAPE["num_hidden_layers"]
    config = transformers.Qwen2Config(**SHAPE, use_sliding_window=True, sliding_window=16, max_window_layers=n)
    assert set(config.layer_types) == {"full_attention"}
    assert hf.model_config_from_hf(config).n_layers == n


def test_state_dict_that_does_not_fit_names_the_tensor():
    ref = make_hf("llama")
    cfg = hf.model_config_from_hf(ref.config)
    with pytest.raises(hf.ConversionError, match="no 'embed_tokens.weight'"):
        hf.hf_to_famlab_state({}, cfg)
    extra = {**ref.state_dict(), "model.layers.0.self_attn.q_norm.weight": torch.ones(16)}
    with pytest.raises(hf.ConversionError, match=r"no place for: layers\.0\.self_attn\.q_norm\.weight"):
        hf.hf_to_famlab_state(extra, cfg)


# ---------------------------------------------------------------- loading a FamLM state dict


def test_training_buffers_of_old_state_dicts_are_ignored():
    """State dicts written while FamLM held the RSP buffers (``SKIPPED_KEYS``) still load, into a FamLM
    with or without them; every other tensor must fit."""
    fam = hf.convert(make_hf("llama"), attention="fam", block_size=8, mem_segment=1, fam_len=4)
    state = {k: v.clone() for k, v in fam.state_dict().items()}
    old = {**state, "rsp_state": torch.full((2, 4, 64), 3.0), "rsp_valid": torch.ones((), dtype=torch.bool)}
    fresh = hf.convert(make_hf("llama", seed=1), attention="fam", block_size=8, mem_segment=1, fam_len=4)
    hf.load_famlab_state(fresh, old)
    x = tokens()
    assert torch.equal(fresh(x), fam(x))
    assert all(not torch.equal(v, torch.full_like(v, 3.0)) for k, v in fresh.state_dict().items() if "rsp" in k)
    bswa = hf.convert(make_hf("llama", seed=1), attention="bswa", block_size=8, mem_segment=1)
    hf.load_famlab_state(bswa, old)  # the FAM prompt is extra, the buffers skipped
    assert torch.equal(bswa.layers[1].wo.weight, fam.layers[1].wo.weight)
    with pytest.raises(hf.ConversionError, match=r"the checkpoint has 'rsp_extra', which this FamLM does not have"):
        hf.load_famlab_state(bswa, {**old, "rsp_extra": torch.zeros(1)})
    del state["layers.1.wo.weight"]
    with pytest.raises(hf.ConversionError, match=r"has no 'layers.1.wo.weight' \(expected shape \[64, 64\]\)"):
        hf.load_famlab_state(bswa, state)
