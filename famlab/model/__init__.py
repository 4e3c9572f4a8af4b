"""FamLM and its parts: see :mod:`famlab.model.lm` for the model and its paths, :mod:`famlab.model.masks` for
the spec's mask table, :mod:`famlab.model.memory` for the memory kinds."""

from famlab.model.compile import compile_model
from famlab.model.layer import FeedForward, Layer
from famlab.model.lm import IMPLS, FamLM
from famlab.model.ops import (
    apply_rope,
    expand_kv,
    linear_plus,
    make_norm,
    merge_heads,
    naive_attention,
    rope_cos_sin,
    sdpa,
)
from famlab.model.state import FamState, LayerState, state_from_dict, state_to, state_to_dict

__all__ = [
    "IMPLS",
    "FamLM",
    "FamState",
    "FeedForward",
    "Layer",
    "LayerState",
    "apply_rope",
    "compile_model",
    "expand_kv",
    "linear_plus",
    "make_norm",
    "merge_heads",
    "naive_attention",
    "rope_cos_sin",
    "sdpa",
    "state_from_dict",
    "state_to",
    "state_to_dict",
]
