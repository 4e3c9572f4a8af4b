"""Training runs: a LightningModule around :class:`~famlab.model.FamLM` and :func:`train`.

* :mod:`famlab.train.module`: the LightningModule (loss, optimizers, randomness, stateful training, checkpoints)
* :mod:`famlab.train.loggers`: ``metrics.jsonl`` and wandb
* :mod:`famlab.train.callbacks`: checkpoints, ``final_metrics.json``, the merged LoRA model, the progress bar,
  the adaptive sequence-length curriculum
* :mod:`famlab.train.run`: :func:`train` and the Lightning Trainer
* :mod:`famlab.train.factory`: the FamLM of a run (pretrained weights, LoRA) and loading trained runs
* :mod:`famlab.train.checkpoint_io`: atomic checkpoint saves, reading a ``resume`` checkpoint
* :mod:`famlab.train.stops`: why training stops early (divergence, a failed save, a signal) and the exit statuses
* :mod:`famlab.train.quiet`: Lightning's noisy warnings, filtered

The run directory's files are owned by :class:`famlab.runs.RunDir`.
"""

from famlab.model import state_from_dict, state_to, state_to_dict
from famlab.train.callbacks import AdaptiveSeqLen, final_metrics, stopped_metrics
from famlab.train.checkpoint_io import AtomicCheckpointIO, read_checkpoint
from famlab.train.factory import CKPT_KEY, build_model, load_checkpoint, load_model, resolve_pretrained
from famlab.train.loggers import JsonlLogger, make_wandb_logger, wandb_api_key_available, wandb_mode
from famlab.train.module import LN2, FamLightningModule, weighted_ce
from famlab.train.quiet import quiet_lightning
from famlab.train.run import RUN_DIR_ENV, build_trainer, global_rank, train
from famlab.train.stops import (
    EXIT_BAD_CONFIG,
    EXIT_DIVERGED,
    EXIT_SAVE_FAILED,
    CheckpointSaveFailed,
    Diverged,
    Interrupted,
    TrainingStopped,
)

__all__ = [
    "AdaptiveSeqLen",
    "AtomicCheckpointIO",
    "CKPT_KEY",
    "CheckpointSaveFailed",
    "Interrupted",
    "Diverged",
    "EXIT_BAD_CONFIG",
    "EXIT_DIVERGED",
    "EXIT_SAVE_FAILED",
    "LN2",
    "RUN_DIR_ENV",
    "FamLightningModule",
    "JsonlLogger",
    "build_model",
    "build_trainer",
    "final_metrics",
    "global_rank",
    "load_checkpoint",
    "load_model",
    "make_wandb_logger",
    "quiet_lightning",
    "read_checkpoint",
    "resolve_pretrained",
    "state_from_dict",
    "state_to",
    "state_to_dict",
    "stopped_metrics",
    "train",
    "TrainingStopped",
    "wandb_api_key_available",
    "wandb_mode",
    "weighted_ce",
]
