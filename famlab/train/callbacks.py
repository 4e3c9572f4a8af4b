"""Callbacks of a training run (the progress display is :mod:`famlab.train.progress`): checkpoints,
``final_metrics.json``, the merged LoRA model and the adaptive sequence-length curriculum.

* **Checkpoints**: ``<run_dir>/checkpoints/step########.ckpt`` every ``checkpoint_every`` steps
  (all kept) and ``last.ckpt`` at each of those and at the end of training.
* ``final_metrics.json``: step counters, the last and recent mean train loss, the last logged validation
  loss and a fresh validation loss of the final weights (whenever ``data.val_batches`` > 0), the model's
  state size (``state_floats``: floats carried from block to block per sequence,
  :func:`famlab.model.state_size.state_floats`; null for ``full`` attention, whose state grows) and the
  last logged auxiliary losses when they are on (``train/diversity_loss``, ``train/reconstruction_loss``). A run whose
  last step was not validated (shorter than ``val_every``, or not a multiple of it) also logs that final
  ``val/loss`` at its last step (``metrics.jsonl``, wandb): every run's curve ends with a validation.
* **Adaptive curriculum** (``data.seq_len_adaptive``, :class:`AdaptiveSeqLen`): after each training batch the
  value of ``data.adaptive_metric`` joins a window; once the window holds ``adaptive_window`` values since the
  last change and their mean is >= ``adaptive_threshold``, the next batch is built at the next length of
  :meth:`DataConfig.adaptive_lengths`. The stage and the window are saved in checkpoints.
"""

from __future__ import annotations

import copy
import sys
import time
from collections import deque
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from famlab.config import ConfigError, RunConfig
from famlab.config.metrics import aux_metrics
from famlab.model.state_size import state_floats
from famlab.runs import STOPPED_KEY, RunDir
from famlab.train.module import LN2, FamLightningModule
from famlab.train.stops import TrainingStopped


class FinalMetrics(Callback):
    """Writes ``final_metrics.json`` when training ends, on global rank 0 of the processes that
    trained (so it also works with ``ddp_spawn``, whose launching process holds no counters).

    Only after the final checkpoint is saved: Lightning runs checkpoint callbacks' ``on_train_end`` after
    every other callback's, so this one saves ``last.ckpt`` first (:meth:`Checkpoints.save_final`); a failed
    save raises and no final_metrics.json claims a finished run."""

    def __init__(self, run: RunDir, t0: float):
        self.run, self.t0 = run, t0
        self.validated_at: int | None = None  # the step of the last validation of this process

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.validated_at = trainer.global_step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, Checkpoints):
                cb.save_final(trainer)
        if trainer.is_global_zero:
            cfg = pl_module.cfg
            final = final_metrics(cfg, pl_module, trainer, trainer.datamodule, self.run, time.time() - self.t0)
            if "val/loss" in final and self.validated_at != trainer.global_step:  # the last step's validation
                row = {"val/loss": final["val/loss"], "val/bits_per_token": final["val/bits_per_token"]}
                for logger in trainer.loggers:
                    logger.log_metrics(row, step=trainer.global_step)
                    logger.save()
                final["val/loss_last_logged"] = final["val/loss"]
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

    def save_final(self, trainer: pl.Trainer) -> None:
        """Save ``last.ckpt`` of the final state unless this step's is saved already (every rank calls it).
        Nothing under ``fast_dev_run`` (Lightning's dry run saves no checkpoint)."""
        if trainer.fast_dev_run:
            return
        if self._last_global_step_saved != trainer.global_step or not self._last_checkpoint_saved:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save_final(trainer)


class AdaptiveSeqLen(Callback):
    """The adaptive sequence-length curriculum (``data.seq_len_adaptive``): moves the datamodule's training
    length (``set_train_len``) to the next of ``lengths`` when the window mean of the metric reaches the
    threshold. The window is cleared at each change (the next decision needs a full window at the new length).

    **Data parallel**: each batch's metric is averaged over ranks before it joins the window, so every rank
    holds the same window and takes the same decision (and the window rank 0 saves is every rank's)."""

    def __init__(self, lengths: list[int], metric: str, threshold: float, window: int):
        self.lengths, self.metric, self.threshold = [int(n) for n in lengths], metric, float(threshold)
        self.stage = 0
        self.window: deque[float] = deque(maxlen=int(window))

    @classmethod
    def from_config(cls, cfg: RunConfig) -> AdaptiveSeqLen:
        d = cfg.data
        return cls(d.adaptive_lengths(cfg.model.block_size), d.adaptive_metric, d.adaptive_threshold, d.adaptive_window)

    @property
    def seq_len(self) -> int:
        return self.lengths[self.stage]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.datamodule.set_train_len(self.seq_len)  # after a resume: the restored stage's length

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.stage == len(self.lengths) - 1:
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is None:
            logged = ", ".join(sorted(k for k in trainer.callback_metrics if k.startswith("train/")))
            raise ConfigError(
                f"data.adaptive_metric={self.metric!r} is not allowed: expected a logged training metric ({logged})"
            )
        if trainer.world_size > 1:
            value = trainer.strategy.reduce(
                torch.as_tensor(value, dtype=torch.float32).to(pl_module.device), reduce_op="mean"
            )
        self.window.append(float(value))
        self.update(trainer)

    def update(self, trainer: pl.Trainer | None = None) -> bool:
        """Advance one stage if the window is full and its mean reaches the threshold; True if it did."""
        if len(self.window) < (self.window.maxlen or 0) or self.stage == len(self.lengths) - 1:
            return False
        mean = sum(self.window) / len(self.window)
        if mean < self.threshold:
            return False
        old = self.seq_len
        self.stage += 1
        self.window.clear()
        if trainer is not None:
            trainer.datamodule.set_train_len(self.seq_len)
            if trainer.is_global_zero:
                served = trainer.datamodule.batches_served
                print(
                    f"famlab: adaptive curriculum: seq_len {old} -> {self.seq_len} after {served} training batches "
                    f"({self.metric} {mean:.3f} >= {self.threshold} over {self.window.maxlen} batches)",
                    file=sys.stderr,
                )
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"seq_len": self.seq_len, "stage": self.stage, "window": list(self.window)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the stage by its length (the longest stage not above the saved one) and the window."""
        saved = int(state_dict["seq_len"])
        self.stage = max([i for i, n in enumerate(self.lengths) if n <= saved] or [0])
        self.window.clear()
        self.window.extend(float(v) for v in state_dict["window"])


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
        "state_floats": state_floats(module.model),
        "checkpoint": str(run.last_checkpoint),
        "run_dir": str(run.path),
    }
    for name in aux_metrics(cfg):
        out[name] = cb.get(name)
    if cfg.data.val_batches > 0:
        dm.setup("validate")
        with trainer.precision_plugin.forward_context():
            val = module.evaluate_loss(dm.val_dataloader())
        out["val/loss"] = val
        out["val/bits_per_token"] = val / LN2
    return out


def stopped_metrics(
    module: FamLightningModule, trainer: pl.Trainer, run: RunDir, wall: float, stop: TrainingStopped
) -> dict[str, Any]:
    """What ``final_metrics.json`` holds for a run stopped early (:class:`Diverged`): the counters, the
    reason (``stopped``), its kind and exit status, and the last checkpoint (written before the stop)."""
    last = run.last_checkpoint
    return {
        "step": int(trainer.global_step),
        "tokens": int(module.tokens_seen),
        "skipped_steps": int(module.skipped_steps),
        "train/loss": getattr(stop, "value", None),
        "train/loss_recent_mean": (sum(module.recent_losses) / len(module.recent_losses))
        if module.recent_losses
        else None,
        "wall_time_s": round(wall, 3),
        "checkpoint": str(last) if last.is_file() else None,
        "run_dir": str(run.path),
        STOPPED_KEY: str(stop),
        "stop_kind": stop.kind,
        "exit_status": stop.exit_status,
    }
