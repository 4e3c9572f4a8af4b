"""Tiny randomly initialised Hugging Face models for the famlab.hf tests (and any test that needs a
converted folder): one shape, four kinds, norms and biases moved away from their init."""

from __future__ import annotations

from pathlib import Path

import torch

from famlab import hf

SHAPE = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    rope_theta=5000.0,
    rms_norm_eps=1e-6,
)
KINDS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(tie_word_embeddings=False)),
    "llama-tied-bias": ("LlamaConfig", "LlamaForCausalLM", dict(tie_word_embeddings=True, attention_bias=True)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=False)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=None)),
}


def make_hf(kind: str = "llama", seed: int = 0, **changes):
    """An HF causal LM of ``kind`` (eval mode) with the tiny ``SHAPE``; ``changes`` override config keys."""
    import transformers

    cfg_name, model_name, extra = KINDS[kind]
    torch.manual_seed(seed)
    config = getattr(transformers, cfg_name)(**{**SHAPE, **extra, **changes})
    model = getattr(transformers, model_name)(config).eval()
    with torch.no_grad():  # norms and biases away from their init, so the mapping of each one is tested
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.1)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return model


def save_tiny_converted(path: Path, kind: str = "llama", tokenizer=None, **changes) -> Path:
    """A converted folder (attention="full") of ``make_hf(kind, **changes)`` at ``path``."""
    return hf.save_converted(hf.convert(make_hf(kind, **changes), attention="full"), path, tokenizer=tokenizer)


def tokens(T: int = 37, b: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, SHAPE["vocab_size"], (b, T), generator=torch.Generator().manual_seed(seed))
