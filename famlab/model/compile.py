"""``torch.compile`` for FamLM: the whole forward, or the FAM updates only."""

from __future__ import annotations

import torch

from famlab.model.lm import FamLM


def compile_model(model: FamLM, what: str, mode: str = "default") -> FamLM:
    """``train.compile``: ``none``, ``fam_scan`` / ``fam_update`` (each layer's FAM scan / single FAM
    update, :meth:`FamLM.compile_fam_updates`; a no-op without FAM) or ``model`` (the forward, in place:
    ``nn.Module.compile`` keeps the state-dict keys), with ``torch.compile`` mode ``mode``."""
    if what == "none":
        return model
    kwargs = {} if mode == "default" else {"mode": mode}
    # one compiled entry per layer x sequence length x grad mode: keep dynamo from giving up and
    # silently running eager after its default limit of 8
    dynamo_config = torch._dynamo.config
    limit_key = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    setattr(dynamo_config, limit_key, max(getattr(dynamo_config, limit_key), 64))
    if what in ("fam_scan", "fam_update"):
        if model.fam_len:
            model.compile_fam_updates(unit=what.removeprefix("fam_"), **kwargs)
    else:
        model.compile(**kwargs)
    return model
