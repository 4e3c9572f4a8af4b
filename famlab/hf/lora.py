"""LoRA fine-tuning of a FamLM through ``peft``: inject adapters, ask for them, fold them back in.

This lives in famlab.hf, not in famlab.train: a converted folder is always saved merged
(:func:`famlab.hf.folder.save_converted` calls :func:`merge_lora`), so the folder code needs it, and
famlab.hf must not import the training package (the training code imports famlab.hf for ``init_from``).
Nothing here needs Lightning; the run's model factory (famlab.train) calls :func:`add_lora` with the
``lora`` section of a run config.
"""

from __future__ import annotations

from torch import nn

from famlab.config import ConfigError, config_error
from famlab.hf.conversion import is_fam_key
from famlab.model import FamLM

DEFAULT_LORA_TARGETS = ("wqkv", "wo", "ff.up", "ff.down")


def add_lora(
    model: FamLM,
    rank: int = 64,
    alpha: float | None = None,
    dropout: float = 0.0,
    targets: tuple[str, ...] | list[str] = DEFAULT_LORA_TARGETS,
) -> FamLM:
    """Inject LoRA adapters (``peft``, in place) into the linear layers named by ``targets`` (module-name
    suffixes: ``wqkv``, ``wo``, ``ff.up``, ``ff.down``, ``head``) and freeze everything except the adapters
    and the FAM prompt/prefix (and SUM FAM summaries). ``alpha`` None = ``rank`` (scale 1). Returns the same FamLM."""
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
        p.requires_grad_("lora_" in name or is_fam_key(name))
    return model


def has_lora(model: nn.Module) -> bool:
    """Whether ``model`` holds any ``peft`` LoRA layer (False without peft installed)."""
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
