"""Hugging Face Llama-family causal LMs converted to :class:`~famlab.model.FamLM`.

``convert(src, attention="fam", block_size=..., mem_segment=..., fam_len=..., **switches)`` takes a
Llama-architecture causal LM (``llama``, ``mistral``, ``qwen2``: RMSNorm, SwiGLU, grouped-query
heads, plain RoPE) and returns a FamLM with exactly its weights, for any attention kind. With
``attention="full"`` its logits equal the original's. The only new tensor of ``fam`` is the FAM
prompt (or prefix), initialised as in a fresh FamLM (N(0, 0.02)).

Weight mapping (famlab <- HF ``model.``-prefixed keys)::

    tok_emb                  <- embed_tokens
    layers.i.norm1 / norm2   <- layers.i.input_layernorm / post_attention_layernorm
    layers.i.wqkv            <- cat(self_attn.q_proj, k_proj, v_proj)     (rows: q heads; k heads; v heads)
    layers.i.wo              <- self_attn.o_proj
    layers.i.ff.up           <- cat(mlp.gate_proj, mlp.up_proj)           (FamLM chunks [gate; up])
    layers.i.ff.down         <- mlp.down_proj
    norm_f                   <- norm
    head                     <- lm_head (None when the embeddings are tied)

Biases: famlab has one ``bias`` switch for every linear layer. A checkpoint with any linear bias
(Qwen2's q/k/v biases, Llama's ``attention_bias``/``mlp_bias``) converts with ``bias=True``; the
biases the checkpoint lacks are zeros, so the function is unchanged.

Not supported (a :class:`ConversionError` says what was found and what is supported): other model
types, activations other than SiLU, RoPE scaling (``rope_type`` other than ``default``), partial
rotary factors, a ``head_dim`` other than ``hidden_size / num_attention_heads``, sliding-window
layers (Qwen2 ``use_sliding_window``). Mistral's ``sliding_window`` W is a per-token window, which
famlab's ``txl`` attention computes exactly: ``convert(src, **sliding_window_switches(W))`` equals the
original at any length (tested). Converted with ``attention="full"``, it equals the original for
sequences up to W tokens only, and ``convert`` warns.

A converted model records its source in ``model.hf_source`` (saved in a converted folder's
``famlab.json``, see :mod:`famlab.hf.folder`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from famlab.config import ModelConfig, config_error
from famlab.model import FamLM

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
SHAPE_KEYS = (  # the ModelConfig keys a pretrained model decides; the attention switches stay free
    "vocab_size",
    "d_model",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "d_ff",
    "ff",
    "norm",
    "norm_eps",
    "bias",
    "tie_embeddings",
    "rope_base",
)
FAM_KEYS = ("fam_prompt", "fam_prefix", "rmt_memory")  # tensors a converted checkpoint may lack or carry extra
BRT_LAYER_KEY = ".brt."  # likewise, every tensor of a block_recurrent layer's recurrent cell
FAM_LAYER_KEYS = (".fam_summary", ".infini_beta")  # per layer, likewise (sum_fam's summary, infini's gates)
# training-time buffers older FamLMs held in their state dict: never saved in a converted folder, ignored
# when an old folder or state dict still has them
SKIPPED_KEYS = ("rsp_state", "rsp_valid")


def is_fam_key(key: str) -> bool:
    """A memory kind's own tensor (FAM prompt, prefix, a layer's SUM FAM summary, Infini-attention gates, a
    Block-Recurrent cell's tensors): a checkpoint may lack it (kept as initialised) or carry it extra (ignored)."""
    return key.startswith(FAM_KEYS) or key.endswith(FAM_LAYER_KEYS) or BRT_LAYER_KEY in key


class ConversionError(ValueError):
    """A model or checkpoint that famlab cannot take: names what was found and what is supported."""


# ----------------------------------------------------------------------------------------------
# loading HF models


def load_hf(src: Any, *, gguf_file: str | None = None, dtype: torch.dtype = torch.float32) -> nn.Module:
    """An HF causal LM (eval mode) from a model instance, an HF folder, a ``.gguf`` file or a hub id.

    Folders and hub ids go through ``AutoModelForCausalLM.from_pretrained`` (set ``HF_HUB_OFFLINE=1``
    to stay offline); a ``.gguf`` path loads with ``gguf_file=`` (dequantized; needs ``gguf``)."""
    if isinstance(src, nn.Module):
        return src.eval()
    try:
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.utils import logging as hf_logging
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("famlab.hf needs transformers: pip install 'famlab[hf]'") from e
    hf_logging.disable_progress_bar()
    path = Path(str(src)).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        src, gguf_file = str(path.parent), path.name
    kw = {"gguf_file": gguf_file} if gguf_file else {}
    config = AutoConfig.from_pretrained(str(src), **kw)
    check_hf_config(config)  # a clear error before loading any weights
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=dtype, **kw)
    return model.eval()


def load_hf_tokenizer(src: Any, *, gguf_file: str | None = None) -> Any:
    """The tokenizer of an HF folder, ``.gguf`` file or hub id (None if there is none)."""
    from transformers import AutoTokenizer

    path = Path(str(src)).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        src, gguf_file = str(path.parent), path.name
    kw = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        return AutoTokenizer.from_pretrained(str(src), **kw)
    except (OSError, ValueError, TypeError):
        return None


# ----------------------------------------------------------------------------------------------
# configs


def _rope(config: Any) -> tuple[float, dict[str, Any]]:
    """(rope base, the full RoPE parameters) of a transformers 5 config (or a 4.x one)."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if not params:  # transformers 4.x: rope_theta + rope_scaling
        params = dict(getattr(config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    if "rope_type" not in params:
        params["rope_type"] = params.get("type", "default")
    return float(params["rope_theta"]), params


def check_hf_config(config: Any) -> None:
    """Raise :class:`ConversionError` unless ``config`` describes a model famlab can reproduce."""
    mt = getattr(config, "model_type", None)
    arch = ", ".join(getattr(config, "architectures", None) or []) or "?"
    if mt not in SUPPORTED_MODEL_TYPES:
        raise ConversionError(
            f"model_type={mt!r} (architectures: {arch}) cannot be converted to FamLM: supported model types are "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (decoder-only, RMSNorm, SwiGLU, grouped-query attention, plain RoPE)"
        )
    act = getattr(config, "hidden_act", "silu")
    if act != "silu":
        raise ConversionError(f"{mt}: hidden_act={act!r} is not supported: FamLM's SwiGLU uses 'silu'")
    _, rope = _rope(config)
    if rope["rope_type"] != "default":
        raise ConversionError(
            f"{mt}: RoPE scaling rope_type={rope['rope_type']!r} ({rope}) is not supported: only unscaled RoPE "
            "(rope_type 'default') converts exactly; FamLM has no RoPE scaling modes"
        )
    partial = rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)) or 1.0
    if float(partial) != 1.0:
        raise ConversionError(f"{mt}: partial_rotary_factor={partial} is not supported: FamLM rotates whole heads")
    d, H = config.hidden_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or d // H
    if d % H or head_dim != d // H:
        raise ConversionError(
            f"{mt}: head_dim={head_dim} with hidden_size={d} and num_attention_heads={H} is not supported: "
            "FamLM's head size is hidden_size / num_attention_heads"
        )
    if head_dim % 2:
        raise ConversionError(f"{mt}: head_dim={head_dim} is odd: RoPE needs an even head size")
    layer_types = getattr(config, "layer_types", None) or []
    others = sorted({t for t in layer_types if t != "full_attention"})
    # Qwen2's use_sliding_window applies only to layers past max_window_layers: layer_types says which
    if others or (getattr(config, "use_sliding_window", False) and not layer_types):
        raise ConversionError(
            f"{mt}: layer types {others or ['sliding_attention']} are not supported: only full_attention layers "
            "(set use_sliding_window=false)"
        )
    if getattr(config, "pretraining_tp", 1) not in (None, 1):
        raise ConversionError(f"{mt}: pretraining_tp={config.pretraining_tp} is not supported (only 1)")


def model_config_from_hf(config: Any, *, bias: bool = False, **switches: Any) -> ModelConfig:
    """The FamLM config of an HF config: shape from ``config``, attention switches from ``switches``."""
    check_hf_config(config)
    bad = [k for k in switches if k in SHAPE_KEYS]
    if bad:
        raise ConversionError(f"{bad[0]!r} comes from the pretrained model and cannot be set when converting")
    base, _ = _rope(config)
    shape = {
        "vocab_size": config.vocab_size,
        "d_model": config.hidden_size,
        "n_layers": config.num_hidden_layers,
        "n_heads": config.num_attention_heads,
        "n_kv_heads": getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        "d_ff": config.intermediate_size,
        "ff": "swiglu",
        "norm": "rmsnorm",
        "norm_eps": float(config.rms_norm_eps),
        "bias": bool(bias),
        "tie_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
        "rope_base": base,
    }
    # the only tensors a conversion adds (the FAM prompt/prefix) start at N(0, 0.02) unless told otherwise
    return ModelConfig.from_dict({**shape, "init": "gpt2", **switches})


# ----------------------------------------------------------------------------------------------
# state dicts


def _expected_shapes(model: FamLM) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith(SKIPPED_KEYS)}


def hf_to_famlab_state(hf_state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """HF Llama-family state dict -> FamLM state dict (no FAM tensors); every HF tensor must be used."""
    sd = {k.removeprefix("model."): v for k, v in hf_state.items() if not k.endswith("rotary_emb.inv_freq")}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor | None:
        if key in sd:
            used.add(key)
            return sd[key]
        return None

    def need(key: str) -> torch.Tensor:
        t = take(key)
        if t is None:
            raise ConversionError(f"the checkpoint has no {key!r}: not a Llama-family causal LM state dict")
        return t

    def zeros_like_rows(weight: torch.Tensor) -> torch.Tensor:
        return weight.new_zeros(weight.shape[0])

    out: dict[str, torch.Tensor] = {"tok_emb.weight": need("embed_tokens.weight"), "norm_f.weight": need("norm.weight")}
    for i in range(cfg.n_layers):
        p, q = f"layers.{i}.", f"layers.{i}."
        out[q + "norm1.weight"] = need(p + "input_layernorm.weight")
        out[q + "norm2.weight"] = need(p + "post_attention_layernorm.weight")
        qkv = [need(p + f"self_attn.{n}_proj.weight") for n in "qkv"]
        out[q + "wqkv.weight"] = torch.cat(qkv, 0)
        out[q + "wo.weight"] = need(p + "self_attn.o_proj.weight")
        gate, up = need(p + "mlp.gate_proj.weight"), need(p + "mlp.up_proj.weight")
        out[q + "ff.up.weight"] = torch.cat([gate, up], 0)
        out[q + "ff.down.weight"] = need(p + "mlp.down_proj.weight")
        if cfg.bias:  # the biases the checkpoint lacks are zeros
            qkv_b = [take(p + f"self_attn.{n}_proj.bias") for n in "qkv"]
            out[q + "wqkv.bias"] = torch.cat([b if b is not None else zeros_like_rows(w) for b, w in zip(qkv_b, qkv)])
            for dst, src, w in (
                ("wo.bias", "self_attn.o_proj.bias", out[q + "wo.weight"]),
                ("ff.down.bias", "mlp.down_proj.bias", out[q + "ff.down.weight"]),
            ):
                b = take(p + src)
                out[q + dst] = b if b is not None else zeros_like_rows(w)
            gb, ub = take(p + "mlp.gate_proj.bias"), take(p + "mlp.up_proj.bias")
            out[q + "ff.up.bias"] = torch.cat(
                [gb if gb is not None else zeros_like_rows(gate), ub if ub is not None else zeros_like_rows(up)]
            )
    head = hf_state.get("lm_head.weight")
    if not cfg.tie_embeddings:
        if head is None:
            raise ConversionError("the checkpoint has no 'lm_head.weight' but tie_word_embeddings is false")
        out["head.weight"] = head
    left = sorted(set(sd) - used - {"lm_head.weight"})
    if left:
        raise ConversionError(
            f"the checkpoint has tensors FamLM has no place for: {', '.join(left[:5])}"
            f"{' ...' if len(left) > 5 else ''} (supported: the Llama-family layout, see famlab.hf)"
        )
    return out


def load_famlab_state(model: FamLM, state: dict[str, torch.Tensor], source: str = "the checkpoint") -> None:
    """Copy ``state`` into ``model``: every non-FAM tensor must be there with the right shape; the FAM
    prompt/prefix may be missing (kept as initialised) or extra (ignored, e.g. a fam folder into bswa)."""
    expected = _expected_shapes(model)
    for key, shape in expected.items():
        if is_fam_key(key):
            continue
        if key not in state:
            raise ConversionError(f"{source} has no {key!r} (expected shape {list(shape)})")
    fresh_fam = []
    for key, t in state.items():
        if key.startswith(SKIPPED_KEYS):
            continue
        if key not in expected:
            if is_fam_key(key):
                continue
            raise ConversionError(f"{source} has {key!r}, which this FamLM does not have")
        if is_fam_key(key) and tuple(t.shape) != expected[key]:
            fresh_fam.append(f"{key} {list(t.shape)} -> {list(expected[key])}")  # another fam_len: keep it fresh
            continue
        if tuple(t.shape) != expected[key]:
            raise ConversionError(
                f"{source}: {key!r} has shape {list(t.shape)}, the FamLM config needs {list(expected[key])} "
                f"(d_model={model.cfg.d_model}, n_heads={model.cfg.n_heads}, n_kv_heads={model.cfg.kv_heads}, "
                f"d_ff={model.cfg.ff_dim}, vocab_size={model.cfg.vocab_size})"
            )
    if fresh_fam:
        warnings.warn(
            f"{source}: the FAM prompt/prefix has another fam_len ({'; '.join(fresh_fam)}); "
            f"model.fam_len={model.cfg.fam_len} starts from a freshly initialised one",
            stacklevel=2,
        )
    keep = {k: v for k, v in state.items() if k in expected and tuple(v.shape) == expected[k]}
    missing, _ = model.load_state_dict(keep, strict=False)
    assert all(is_fam_key(k) or k.startswith(SKIPPED_KEYS) for k in missing), missing


# ----------------------------------------------------------------------------------------------
# conversion


def sliding_window_switches(window: int, block_size: int | None = None) -> dict[str, Any]:
    """The ``txl`` switches that compute Mistral's sliding-window attention exactly: a token sees the keys
    at distances 0 .. ``window`` - 1. famlab's ``txl`` shows a token its own block causally and the memory
    within ``txl_window``, so it needs ``block_size`` <= ``window`` (default: ``window``) and a memory
    segment reaching back ``window`` - 1 tokens."""
    if not (isinstance(window, int) and window >= 1):
        raise config_error("sliding_window", "window", window, "an integer >= 1")
    block_size = window if block_size is None else block_size
    if not (isinstance(block_size, int) and 1 <= block_size <= window):
        raise config_error("sliding_window", "block_size", block_size, f"an integer in [1, window={window}]")
    return {
        "attention": "txl",
        "block_size": block_size,
        "mem_segment": -(-(window - 1) // block_size),
        "txl_window": window - 1,
    }


def convert(
    src: Any, attention: str = "fam", *, gguf_file: str | None = None, dtype=torch.float32, **switches
) -> FamLM:
    """A FamLM (eval mode) with the weights of the HF model ``src`` (a model, folder, ``.gguf`` file or hub
    id) and the attention switches given (``attention``, ``block_size``, ``mem_segment``, ``fam_len``, ...)."""
    hf = load_hf(src, gguf_file=gguf_file, dtype=dtype)
    check_hf_config(hf.config)
    if "bias" in switches:  # like the shape keys: the checkpoint decides
        raise ConversionError("'bias' comes from the pretrained model and cannot be set when converting")
    state = hf.state_dict()
    has_bias = any(k.endswith("_proj.bias") for k in state)
    cfg = model_config_from_hf(hf.config, bias=has_bias, attention=attention, **switches)
    fam_state = hf_to_famlab_state(state, cfg)
    model = FamLM(cfg).to(dtype)
    load_famlab_state(model, fam_state, f"the {hf.config.model_type} checkpoint")
    model.hf_source = source_info(hf, src, gguf_file)
    warn_unapplied_window(cfg, model.hf_source)
    return model.eval()


def warn_unapplied_window(cfg: ModelConfig, source: dict[str, Any] | None) -> None:
    """A model that claims the original's function (``attention="full"``) from a source with a sliding
    window (Mistral) equals it only up to that window: say so, and what reproduces it."""
    window = (source or {}).get("sliding_window")
    if window is not None and cfg.attention == "full":
        warnings.warn(
            f"{source.get('model_type')}: sliding_window={window} is not applied by attention='full': the model "
            f"equals the original only for sequences up to {window} tokens; "
            f"famlab.hf.sliding_window_switches({window}) = {sliding_window_switches(window)} reproduces it at any length",
            stacklevel=3,
        )


def source_info(hf: nn.Module, src: Any, gguf_file: str | None) -> dict[str, Any]:
    """The record of the HF model ``hf`` (loaded from ``src``) that a converted folder keeps as ``source``."""
    config = hf.config
    info = {
        "model_type": config.model_type,
        "name_or_path": str(getattr(config, "_name_or_path", "") or (src if not isinstance(src, nn.Module) else "")),
        "gguf_file": gguf_file,
        "architectures": list(getattr(config, "architectures", None) or []),
        "sliding_window": getattr(config, "sliding_window", None) if config.model_type == "mistral" else None,
        "bos_token_id": getattr(config, "bos_token_id", None),
        "eos_token_id": getattr(config, "eos_token_id", None),
    }
    return info


@torch.no_grad()
def compare_logits(model: FamLM, hf: nn.Module, tokens: torch.Tensor) -> float:
    """max |logits(FamLM) - logits(HF)| on ``tokens`` [b, T] (both eval mode, fp32 expected)."""
    ours = model.eval()(tokens)
    theirs = hf.eval()(input_ids=tokens).logits
    return float((ours.float() - theirs.float()).abs().max())
