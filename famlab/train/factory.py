"""The FamLM of a run: pretrained resolution (``model.init_from``), LoRA adapters, and loading trained runs.

Checkpoints hold plain data only (dicts, lists, tensors, numbers, strings), so
``torch.load(path, weights_only=True)`` works; the run config is under ``checkpoint[CKPT_KEY]["config"]``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from famlab.config import ConfigError, RunConfig
from famlab.model import FamLM
from famlab.runs import RunDir
from famlab.train.checkpoint_io import check_fits, read_checkpoint

CKPT_KEY = "famlab"  # the checkpoint entry famlab adds next to Lightning's (config, counters, carried state)


def resolve_pretrained(cfg: RunConfig) -> RunConfig:
    """With ``model.init_from`` (a famlab.hf converted folder): the shape keys of ``cfg.model`` taken from it,
    and ``data.tokenizer=init_from`` replaced by that folder."""
    if cfg.data.tokenizer == "init_from":
        if not cfg.model.init_from:
            raise ConfigError(
                "data.tokenizer='init_from' is not allowed without model.init_from: expected 'bytes' or a folder "
                "with HF tokenizer files"
            )
        cfg = dataclasses.replace(cfg, data=cfg.data.replace(tokenizer=str(cfg.model.init_from)))
    if not cfg.model.init_from:
        return cfg
    from famlab import hf  # lazily: its converters are not needed to train from scratch

    try:
        model_cfg = hf.resolve_model_config(cfg.model)
    except (ValueError, OSError) as e:
        raise ConfigError(f"model.init_from={cfg.model.init_from!r}: {' '.join(str(e).split())}") from None
    return dataclasses.replace(cfg, model=model_cfg)


def build_model(cfg: RunConfig, *, load_init: bool = True) -> FamLM:
    """The FamLM of a run: pretrained weights from ``model.init_from`` (if ``load_init``), then LoRA adapters
    (``lora.rank`` > 0; only adapters and the FAM prompt/prefix train)."""
    model = FamLM(cfg.model)
    if not (cfg.model.init_from or cfg.lora.rank):
        return model
    from famlab import hf  # lazily, as above

    if cfg.model.init_from:
        if load_init:
            hf.init_weights_from(model, cfg.model.init_from)
        else:  # the weights come from a checkpoint; the base folder still holds the tokenizer files
            hf.remember_base(model, cfg.model.init_from)
    if cfg.lora.rank:
        lc = cfg.lora
        hf.add_lora(model, lc.rank, lc.alpha, lc.dropout, lc.targets)
    return model


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)``: famlab checkpoints hold plain data only."""
    return torch.load(str(path), map_location=map_location, weights_only=True)


def load_model(run_dir_or_ckpt: str | Path, map_location: Any = "cpu") -> tuple[FamLM, RunConfig]:
    """The FamLM (eval mode) and RunConfig of a run directory or checkpoint file."""
    ckpt_path = RunDir.resolve_checkpoint(run_dir_or_ckpt)
    ckpt = read_checkpoint(ckpt_path, map_location, what="checkpoint", needs=("state_dict", CKPT_KEY))
    try:
        cfg = RunConfig.from_dict(ckpt[CKPT_KEY]["config"])
    except (KeyError, TypeError, ValueError) as e:  # a foreign or damaged run config in the checkpoint
        why = " ".join(str(e).split())
        raise ConfigError(
            f"checkpoint: {str(ckpt_path)!r} has no usable run config: {type(e).__name__}: {why}"
        ) from None
    model = build_model(cfg, load_init=False)  # the checkpoint holds every weight
    prefix = "model."
    weights = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    check_fits({"state_dict": weights}, model.state_dict(), ckpt_path, what="checkpoint")
    model.load_state_dict(weights)
    if cfg.lora.rank:  # adapters folded into the weights: a plain FamLM
        from famlab import hf

        hf.merge_lora(model)
    return model.eval(), cfg
