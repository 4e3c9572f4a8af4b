"""Names a Lightning, Hydra or W&B user types that famlab spells otherwise: the unknown-key error names famlab's
key instead of the closest spelling (``train.val_check_interval`` is ``train.val_every``, not
``train.checkpoint_every``).

Each entry maps a dotted key to famlab's key (the value carries over: ``use train.val_every=100``) or to a
sentence (``=`` absent) saying what to do instead. ``trainer.X`` (Lightning's Trainer section) reads as
``train.X``.
"""

from __future__ import annotations

from typing import Any

NO_EPOCHS = "famlab trains on an endless stream, so there are no epochs: use train.max_steps and train.val_every"
LR_LOGGED = (
    "famlab logs the learning rate as train/lr every train.log_every steps (metrics.jsonl, wandb): nothing to add"
)

RENAMED: dict[str, str] = {
    "train.val_check_interval": "train.val_every",
    "train.gradient_clip_val": "train.grad_clip",
    "train.log_every_n_steps": "train.log_every",
    "train.every_n_train_steps": "train.checkpoint_every",
    "train.limit_val_batches": "data.val_batches",
    "train.batch_size": "data.batch_size",
    "train.seed": "seed",
    "train.early_stopping": "train.early_stopping_patience",
    "train.patience": "train.early_stopping_patience",
    "train.min_delta": "train.early_stopping_min_delta",
    "train.default_root_dir": "out_dir",
    "logger.tensorboard_logger": "logger.tensorboard",
    "logger.csv_logger": "logger.csv",
    "logger.wandb_project": "logger.project",
    "logger.run_name": "logger.name",
}

EXPLAINED: dict[str, str] = {
    "train.max_epochs": NO_EPOCHS,
    "train.min_epochs": NO_EPOCHS,
    "train.check_val_every_n_epoch": NO_EPOCHS,
    "train.limit_train_batches": NO_EPOCHS,
    "train.lr_monitor": LR_LOGGED,
    "logger.lr_monitor": LR_LOGGED,
    "train.enable_checkpointing": "use train.checkpoint_every=0 for no periodic checkpoints (last.ckpt is always written)",
    "train.enable_progress_bar": "the step bar shows on a terminal only; elsewhere plain step lines (train.log_every)",
    "train.num_sanity_val_steps": "famlab runs no sanity validation; train.fast_dev_run=true is a 1-step dry run",
    "train.gradient_clip_algorithm": "train.grad_clip clips the global norm (the only algorithm)",
    "train.resume_from_checkpoint": "use resume=RUN_DIR (or a .ckpt path) at the top level",
    "train.ckpt_path": "use resume=RUN_DIR (or a .ckpt path) at the top level",
}


def foreign_hint(key: str, value: Any, known: list[str]) -> tuple[str, str] | None:
    """``(key, what to use instead)`` for the unknown dotted ``key`` (or a key under it, when ``value`` is a
    mapping: ``trainer: {max_steps: 5}``), or None if it is no foreign name famlab knows. ``known``: every
    valid dotted key."""
    mapped = key
    for prefix in ("trainer.", "callbacks.", "train.callbacks."):
        if key.startswith(prefix):
            mapped = "train." + key[len(prefix) :]
    new = RENAMED.get(mapped) or (mapped if mapped != key and mapped in known else None)
    if new:
        shown = f": {new}={value}" if value is not None and not isinstance(value, dict) else ""
        return key, f"famlab's name is {new}{shown}"
    if mapped in EXPLAINED:
        return key, EXPLAINED[mapped]
    if isinstance(value, dict):
        for sub, inner in value.items():
            found = foreign_hint(f"{key}.{sub}", inner, known)
            if found:
                return found
    return None
