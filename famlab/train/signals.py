"""Stopping a run on request, resumable: SIGUSR1, SIGUSR2 (what SLURM sends before a job's time limit with
``--signal``; ``famlab sweep submit`` asks for it) or SIGTERM (what SLURM sends a cancelled or preempted job,
``KillWait`` seconds before SIGKILL) makes the run finish its current optimizer step, save
``checkpoints/step########.ckpt`` and ``last.ckpt`` of it, log the step's metrics, and stop with
:class:`~famlab.train.stops.Interrupted` (``famlab train`` exits 5; no ``final_metrics.json``).
``resume=<run dir>`` then continues exactly as an uninterrupted run would (the save happens where the
periodic ones do: after the step's optimizer update, with the data position and the carried state).

The handlers are installed for the fit only (and the previous ones restored), in the main thread of the
process that trains; under DDP every rank learns of a signal any rank received before all of them save.

Lightning's own handlers (``_SignalConnector``, installed after ``on_fit_start``) would do otherwise, so:

* SIGUSR1/SIGUSR2 are taken in ``on_fit_start``, before Lightning's: its SLURM auto-requeue handler (a
  checkpoint in ``hpc_ckpt_*.ckpt`` and ``scontrol requeue`` of the job) is only installed on a signal nobody
  handles, so it stays out; requeueing is the sweep worker's (submitit's) business. ``famlab train`` also
  turns it off outright (``SLURMEnvironment(auto_requeue=False)``, :mod:`famlab.train.run`).
* SIGTERM is taken in ``on_train_start``, after Lightning's, replacing it for the training loop: Lightning's
  stops the fit at the end of the batch without a checkpoint (``SIGTERMException``, an exit status of 0
  without a finished run), even in the middle of a validation, and broadcasts from inside the handler under
  DDP. A SIGTERM that arrived between the two (during setup) is taken over from Lightning's flag.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from famlab.runs import RunDir
from famlab.train.stops import Interrupted

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)
EARLY_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)  # taken before Lightning installs its handlers; SIGTERM after


class CheckpointOnSignal(Callback):
    def __init__(self, run: RunDir):
        self.run = run
        self.received: int | None = None
        self.saved_at: int | None = None  # the step whose checkpoint the signal saved
        self.previous: dict[int, Any] = {}

    def _note(self, signum: int, frame: Any) -> None:
        self.received = signum

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in EARLY_SIGNALS:
                self.previous[sig] = signal.signal(sig, self._note)
            self.previous[signal.SIGTERM] = signal.getsignal(signal.SIGTERM)  # restored: the one before Lightning's

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if signal.SIGTERM in self.previous:  # on_fit_start ran in the main thread
            signal.signal(signal.SIGTERM, self._note)
        if trainer.received_sigterm:  # during setup, under Lightning's handler: this callback takes it over
            self.received = signal.SIGTERM
            trainer._signal_connector.received_sigterm = False  # else Lightning stops the loop without a save

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self.previous.clear()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.restore()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        batch_idx = args[-1] if args else 0
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # mid-accumulation: the optimizer step is not done yet
        asked = trainer.strategy.reduce_boolean_decision(self.received is not None, all=False)
        if not asked or self.saved_at is not None:
            return
        self.saved_at = trainer.global_step
        path = Path(self.run.checkpoint_dir) / f"step{self.saved_at:08d}.ckpt"  # the periodic checkpoints' name
        trainer.save_checkpoint(str(path), weights_only=False)
        trainer.save_checkpoint(str(self.run.last_checkpoint), weights_only=False)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        # stop here, not at the save: Lightning logs a step's metrics after its batch-end hooks
        if self.saved_at is not None:
            name = signal.Signals(self.received).name if self.received is not None else "a signal on another rank"
            raise Interrupted(name, self.saved_at)
