"""Parameter initialisation schemes, by name (:data:`INIT_SCHEMES`); :meth:`FamLM.reset_parameters` runs one."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn


def gpt2(model: nn.Module) -> None:
    """GPT-2 init: N(0, 0.02); residual output projections scaled by 1/sqrt(2 n_layers); norms
    keep their own init (ones, zeros). The FAM prompt/prefix lives at the embedding scale."""
    n_layers = model.cfg.n_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            residual_out = name.endswith((".wo", ".down"))
            nn.init.normal_(module.weight, std=0.02 / math.sqrt(2 * n_layers) if residual_out else 0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
    for name in ("fam_prompt", "fam_prefix"):
        if hasattr(model, name):
            nn.init.normal_(getattr(model, name), std=0.02)


INIT_SCHEMES: dict[str, Callable[[nn.Module], None]] = {"gpt2": gpt2}
