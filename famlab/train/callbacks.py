"""Callbacks of a training run: the progress bar, checkpoints, ``final_metrics.json`` and the merged LoRA model.

* **Checkpoints**: ``<run_dir>/checkpoints/step########.ckpt`` every ``checkpoint_every`` steps
  (all kept) and ``last.ckpt`` at each of those and at the end of training.
* ``final_metrics.json``: step counters, the last and recent mean train loss, the last logged validation
  loss and a fresh validation loss of the final weights (whenever ``data.val_batches`` > 0).
"""

from __future__ import annotations

import copy
import time
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint, TQDMProgressBar

from famlab.config import RunConfig
from famlab.runs import RunDir
from famlab.train.module import LN2, FamLightningModule


class ProgressBar(TQDMProgressBar):
    """Lightning's bar without the logger version number."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


class FinalMetrics(Callback):
    """Writes ``final_metrics.json`` when training ends, on global rank 0 of the processes that
    trained (so it also works with ``ddp_spawn``, whose launching process holds no counters)."""

    def __init__(self, run: RunDir, t0: float):
        self.run, self.t0 = run, t0

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            cfg = pl_module.cfg
            final = final_metrics(cfg, pl_module, trainer, trainer.datamodule, self.run, time.time() - self.t0)
            self.run.write_final_metrics(final)


class MergeLora(Callback):
    """Writes ``<run_dir>/merged`` (a famlab.hf converted folder) when training ends: a copy of the model
    with its LoRA adapters merged (the trained module and its checkpoints keep the adapters)."""

    def __init__(self, run: RunDir):
        self.run = run

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            from famlab import hf

            merged = hf.merge_lora(copy.deepcopy(pl_module.model)).eval()
            hf.save_converted(merged, self.run.path / "merged", extra_files_from=pl_module.cfg.model.init_from)


class Checkpoints(ModelCheckpoint):
    """ModelCheckpoint whose ``last.ckpt`` is always the final state (Lightning's own end-of-training
    save skips it when an earlier periodic save already wrote a ``last.ckpt``)."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._last_global_step_saved != trainer.global_step or not self._last_checkpoint_saved:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def final_metrics(
    cfg: RunConfig, module: FamLightningModule, trainer: pl.Trainer, dm: Any, run: RunDir, wall: float
) -> dict[str, Any]:
    """What ``final_metrics.json`` holds: step counters, the last and recent mean train loss, the
    last logged validation loss and a fresh validation loss of the final weights."""
    cb = {k: (float(v) if torch.is_tensor(v) else v) for k, v in trainer.callback_metrics.items()}
    out: dict[str, Any] = {
        "step": int(trainer.global_step),
        "tokens": int(module.tokens_seen),
        "skipped_steps": int(module.skipped_steps),  # optimizer steps without targets: no weight changed
        "train/loss": cb.get("train/loss"),
        "train/loss_recent_mean": (sum(module.recent_losses) / len(module.recent_losses))
        if module.recent_losses
        else None,
        "val/loss_last_logged": cb.get("val/loss"),
        "wall_time_s": round(wall, 3),
        "checkpoint": str(run.last_checkpoint),
        "run_dir": str(run.path),
    }
    if cfg.data.val_batches > 0:
        dm.setup("validate")
        with trainer.precision_plugin.forward_context():
            val = module.evaluate_loss(dm.val_dataloader())
        out["val/loss"] = val
        out["val/bits_per_token"] = val / LN2
    return out
