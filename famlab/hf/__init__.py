"""Pretrained Hugging Face models in famlab: conversion to :class:`~famlab.model.FamLM`, converted
folders, and LoRA fine-tuning through ``peft``.

- :mod:`famlab.hf.conversion`: HF Llama-family models (``llama``, ``mistral``, ``qwen2``) to FamLM with
  exactly their weights, for any attention kind (:func:`convert`, :func:`sliding_window_switches`).
- :mod:`famlab.hf.folder`: converted folders on disk, and runs started from one with
  ``model.init_from`` (:func:`save_converted`, :func:`load_converted`, :func:`resolve_model_config`).
- :mod:`famlab.hf.lora`: LoRA adapters through ``peft`` (:func:`add_lora`, :func:`merge_lora`).
- :mod:`famlab.hf.check` and ``python -m famlab.hf convert|smollm2``: convert and compare the logits
  with the original's.
"""

from famlab.hf.check import PROMPT, SMOLLM2_GGUF, SMOLLM2_PACKAGE, convert_and_check, smollm2_gguf
from famlab.hf.conversion import (
    FAM_KEYS,
    SHAPE_KEYS,
    SKIPPED_KEYS,
    SUPPORTED_MODEL_TYPES,
    ConversionError,
    check_hf_config,
    compare_logits,
    convert,
    hf_to_famlab_state,
    load_famlab_state,
    load_hf,
    load_hf_tokenizer,
    model_config_from_hf,
    sliding_window_switches,
    source_info,
)
from famlab.hf.folder import (
    CONFIG_FILE,
    FORMAT,
    WEIGHTS_FILE,
    converted_model_config,
    init_weights_from,
    load_converted,
    read_converted,
    remember_base,
    resolve_model_config,
    save_converted,
)
from famlab.hf.lora import DEFAULT_LORA_TARGETS, add_lora, has_lora, merge_lora

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_LORA_TARGETS",
    "FAM_KEYS",
    "FORMAT",
    "PROMPT",
    "SHAPE_KEYS",
    "SKIPPED_KEYS",
    "SMOLLM2_GGUF",
    "SMOLLM2_PACKAGE",
    "SUPPORTED_MODEL_TYPES",
    "WEIGHTS_FILE",
    "ConversionError",
    "add_lora",
    "check_hf_config",
    "compare_logits",
    "convert",
    "convert_and_check",
    "converted_model_config",
    "hf_to_famlab_state",
    "has_lora",
    "init_weights_from",
    "load_converted",
    "load_famlab_state",
    "load_hf",
    "load_hf_tokenizer",
    "merge_lora",
    "model_config_from_hf",
    "read_converted",
    "remember_base",
    "resolve_model_config",
    "save_converted",
    "sliding_window_switches",
    "smollm2_gguf",
    "source_info",
]
