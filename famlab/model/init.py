"""Parameter initialisation schemes, by name (:data:`INIT_SCHEMES`, the values of ``ModelConfig.init``);
:meth:`FamLM.reset_parameters` runs one. Norm layers keep their own init (ones, zeros) in every scheme,
and weights loaded afterwards (``model.init_from``, a converted Hugging Face model) are untouched.

* ``scaled`` (the default): width-aware. Every linear weight N(0, 1/fan_in), so a unit-variance input
  gives unit-variance outputs at any width and the attention scores at init have a std near 1; the
  residual output projections (``wo``, ``ff.down``) further scaled by 1/sqrt(2 n_layers), so the stream
  grows O(1) with depth; biases zero. Token embeddings N(0, 1) when untied (unit-scale tokens in the
  stream; the untied head is a linear layer, so the initial logits have std 1). Tied, one matrix is both
  the input table and the output head, whose logits have std = its std * sqrt(d) (the final norm gives
  unit-rms rows): it takes N(0, 1/d), so the initial logits have std 1 at any width (the prediction starts
  near uniform) and tokens enter at rms d^-1/2 (pre-LN hands every layer a normalised input anyway).
  The FAM prompt/prefix (and SUM FAM's summary) at the embedding scale.
* Every scheme: Infini-attention's per-head gates beta at 0 (:func:`zero_gates`).
  The FAM prompt/prefix (and SUM FAM's summary, RMT's first memory) at the embedding scale.
* ``gpt2``: GPT-2's N(0, 0.02) for linear layers and embeddings, residual output projections at
  0.02/sqrt(2 n_layers), biases zero, FAM prompt/prefix N(0, 0.02). Chosen for d=768; at famlab's CPU
  widths (d=64) the attention scores at init have std ~0.02 (attention is uniform) and the residual
  stream rms 0.02, and tiny PassKey models stay at the digit-guessing loss for thousands of steps.
* ``torch``: PyTorch's own defaults (``nn.Linear``: U(+-1/sqrt(fan_in)) weights and biases;
  ``nn.Embedding``: N(0, 1)); the FAM prompt/prefix N(0, 1).

Block-Recurrent cells (``attention="block_recurrent"``): their linear layers as above (the token
cross-attention's ``brt.wo`` and the state feed-forward's ``brt.ff.down`` count as residual outputs), the
learned initial state ``brt.state0`` like the FAM prompt of the scheme, and the gates and state IDs by the
paper's code in every scheme (:meth:`~famlab.model.recurrent_cell.RecurrentCell.reset_own`).

Measured in docs/init.md (PassKey, text, recall at the tiny presets, 3 seeds each).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn

RESIDUAL_OUTPUTS = (".wo", ".down")  # the linear layers that write into the residual stream


def fam_tensors(model: nn.Module) -> list[nn.Parameter]:
    """The learned initial FAM (prompt or per-layer prefix) and SUM FAM's summary queries, when the model has them."""
    summaries = [layer.fam_summary for layer in model.layers if getattr(layer, "fam_summary", None) is not None]
    names = ("fam_prompt", "fam_prefix", "rmt_memory")  # rmt_memory: RMT's first memory, like a FAM prompt
    return [getattr(model, name) for name in names if hasattr(model, name)] + summaries


def recurrent_cells(model: nn.Module, state_std: float) -> None:
    """Block-Recurrent cells after the scheme's linear layers: initial state N(0, ``state_std``), the rest
    (gates, state IDs) as the paper."""
    for layer in model.layers:
        if getattr(layer, "brt", None) is not None:
            nn.init.normal_(layer.brt.state0, std=state_std)
            layer.brt.reset_own()


def zero_gates(model: nn.Module) -> None:
    """Infini-attention's per-head gates beta to 0 in every scheme: sigmoid(0) = 1/2, memory and local
    attention mixed evenly at the start (the paper does not say; famlab.model.memory.infini)."""
    for layer in model.layers:
        if getattr(layer, "infini_beta", None) is not None:
            nn.init.zeros_(layer.infini_beta)


def gpt2(model: nn.Module) -> None:
    depth_scale = 1 / math.sqrt(2 * model.cfg.n_layers)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            std = 0.02 * depth_scale if name.endswith(RESIDUAL_OUTPUTS) else 0.02
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
    for p in fam_tensors(model):
        nn.init.normal_(p, std=0.02)
    recurrent_cells(model, 0.02)
    zero_gates(model)


def torch_default(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Embedding):
            module.reset_parameters()
    for p in fam_tensors(model):
        nn.init.normal_(p, std=1.0)
    recurrent_cells(model, 1.0)
    zero_gates(model)


def scaled(model: nn.Module) -> None:
    cfg = model.cfg
    depth_scale = 1 / math.sqrt(2 * cfg.n_layers)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            std = 1 / math.sqrt(module.in_features)
            nn.init.normal_(module.weight, std=std * depth_scale if name.endswith(RESIDUAL_OUTPUTS) else std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    emb_std = cfg.d_model**-0.5 if cfg.tie_embeddings else 1.0
    nn.init.normal_(model.tok_emb.weight, std=emb_std)
    for p in fam_tensors(model):
        nn.init.normal_(p, std=emb_std)
    recurrent_cells(model, emb_std)
    zero_gates(model)


INIT_SCHEMES: dict[str, Callable[[nn.Module], None]] = {"scaled": scaled, "gpt2": gpt2, "torch": torch_default}
