"""What a training run shows while it trains: a bar of optimizer steps on a terminal, plain lines elsewhere.

* stdout is a terminal: :class:`ProgressBar`, Lightning's TQDM bar counting optimizer steps
  (``step 120/800``), not batches of "Epoch 0" (a famlab run is one endless epoch of ``max_steps``).
* stdout is not a terminal (a file, a pipe, a sweep trial's ``train.log``): no bar (no carriage
  returns, no cursor codes) but :class:`StepLines`, one plain line every ``10 x train.log_every``
  steps and at the last step: ``step 200/800 train/loss 1.93 val/loss 1.95 (12.3 s)``.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, TQDMProgressBar


def interactive(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default: stdout) is a terminal."""
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class ProgressBar(TQDMProgressBar):
    """Lightning's bar counting optimizer steps up to ``max_steps`` (with gradient accumulation a
    batch is not a step), without the logger version number, closed when training fails."""

    @property
    def train_description(self) -> str:
        return "step"

    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        # Lightning's own would show "Epoch 0" (even for a moment: a terminal keeps it in its scrollback)
        bar = self.train_progress_bar
        bar.unit = "step"
        bar.reset(total=trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None)
        bar.initial = 0
        bar.n = trainer.global_step  # a resumed run starts where it stopped

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        bar = self.train_progress_bar
        step = trainer.global_step
        if bar is not None and not bar.disable and (step % self.refresh_rate == 0 or step == bar.total):
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.refresh()

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """End the bars' line, so the error that follows starts a line of its own on a terminal."""
        for bar in (getattr(self, "_val_progress_bar", None), getattr(self, "_train_progress_bar", None)):
            if bar is not None:
                bar.close()


class StepLines(Callback):
    """One plain line on stdout every ``every`` optimizer steps and at the last one (global rank 0):
    ``step 200/800 train/loss 1.93 val/loss 1.95 (12.3 s)``; val/loss once a validation ran."""

    KEYS = ("train/loss", "val/loss")

    def __init__(self, every: int, stream: TextIO | None = None):
        self.every = max(1, int(every))
        self.stream = stream
        self.t0 = time.perf_counter()
        self.last = -1

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step == self.last or not (step % self.every == 0 or step == trainer.max_steps):
            return
        self.last = step
        if trainer.is_global_zero:
            print(self.line(trainer), file=self.stream or sys.stdout, flush=True)

    def line(self, trainer: pl.Trainer) -> str:
        total = f"/{trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""
        parts = [f"step {trainer.global_step}{total}"]
        for key in self.KEYS:
            value = trainer.callback_metrics.get(key)
            if value is not None:
                parts.append(f"{key} {float(value.item() if torch.is_tensor(value) else value):.4g}")
        return " ".join(parts) + f" ({time.perf_counter() - self.t0:.1f} s)"


def progress_callbacks(log_every: int, stream: TextIO | None = None) -> tuple[list[Callback], bool]:
    """The progress callbacks of a run and Trainer's ``enable_progress_bar``: a step bar on a terminal,
    else plain lines every ``10 x log_every`` steps."""
    if interactive(stream):
        return [ProgressBar(refresh_rate=max(1, min(log_every, 10)))], True
    return [StepLines(10 * max(1, log_every), stream)], False
