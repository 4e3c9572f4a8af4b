"""Lightning's known noisy warnings and info lines, filtered (process-wide; again in every spawned process)."""

from __future__ import annotations

import logging
import warnings

# Lightning messages that say nothing about a famlab run (matched as regular expressions)
NOISY_WARNINGS = [
    r".*does not have many workers which may be a bottleneck.*",
    r".*The number of training batches .* is smaller than the logging interval.*",
    r".*GPU available but not used.*",
    r".*that has Tensor Cores. To properly utilize them.*",
    r".*You're resuming from a checkpoint that ended before the epoch ended.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*`isinstance\(treespec, LeafSpec\)` is deprecated.*",
    r".*Total length of .* across ranks is zero.*",
    r".*The `srun` command is available on your system but is not used.*",
    r".*Your `IterableDataset` has `__len__` defined.*",
    r".*The dirpath has changed from .* won't be reloaded.*",  # resuming into a new run directory
]
NOISY_LOGGERS = [
    "pytorch_lightning.utilities.rank_zero",  # "GPU available: ...", "`Trainer.fit` stopped: ..."
    "pytorch_lightning.accelerators.cuda",  # "LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: ..."
    "lightning.pytorch.utilities.rank_zero",
    "lightning.pytorch.accelerators.cuda",
    "lightning_fabric.utilities.distributed",
]


def quiet_lightning() -> None:
    """Filter Lightning's known noisy warnings and info lines (process-wide, idempotent)."""
    for pattern in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
