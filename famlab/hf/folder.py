"""Converted folders: a FamLM's weights and config on disk, for any attention kind and for runs.

A converted folder holds ``model.safetensors`` (the FamLM state dict, without the training-time buffers
of :data:`~famlab.hf.conversion.SKIPPED_KEYS`), ``famlab.json`` (``{"format": "famlab-converted", "model":
ModelConfig dict, "source": {...}}``) and, when there is one, the HF tokenizer files.
``load_converted(path, attention=..., ...)`` rebuilds a FamLM from it with any attention switches; shape
keys always come from the folder. Runs use such a folder with ``model.init_from=<path>``
(:func:`resolve_model_config`, :func:`init_weights_from`) and LoRA with the ``lora`` section
(:mod:`famlab.hf.lora`). A model loaded from a folder remembers it (``model.converted_from``), so saving it
again keeps the folder's tokenizer files and records where it came from.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

from famlab.config import ModelConfig
from famlab.hf.conversion import SHAPE_KEYS, SKIPPED_KEYS, ConversionError, load_famlab_state, warn_unapplied_window
from famlab.hf.lora import has_lora, merge_lora
from famlab.model import FamLM

FORMAT = "famlab-converted"
CONFIG_FILE = "famlab.json"
WEIGHTS_FILE = "model.safetensors"


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
    from safetensors.torch import save_file

    path = Path(path)
    if extra_files_from is None and tokenizer is None:
        extra_files_from = getattr(model, "converted_from", None)
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
        source = getattr(model, "hf_source", None)
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
    return ModelConfig.from_dict({"init": "gpt2", **saved, **switches})  # folders from before model.init: gpt2


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
    warn_unapplied_window(model.cfg, meta.get("source"))
    return model


def remember_base(model: FamLM, path: str | Path) -> FamLM:
    """Record the converted folder ``model`` comes from: :func:`save_converted` copies its tokenizer files."""
    model.converted_from = Path(path).expanduser().resolve()
    return model


def resolve_model_config(cfg: ModelConfig) -> ModelConfig:
    """For a run: ``cfg`` with ``init_from`` set -> its shape keys replaced by the converted folder's."""
    init_from = getattr(cfg, "init_from", None)
    if not init_from:
        return cfg
    saved = read_converted(init_from)["model"]
    return cfg.replace(**{k: saved[k] for k in SHAPE_KEYS})
