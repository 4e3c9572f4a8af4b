"""Tiny training runs shared by the train and CLI tests: the overrides of a model that trains in seconds
on a CPU, and readers of a run's logged metrics."""

from __future__ import annotations

from pathlib import Path

from famlab.config import load_run_config
from famlab.runs import RunDir

# d_model 32, 2 layers, block 16; passkey needs >= 99 tokens without the instruction sentence
TINY = [
    "model.d_model=32",
    "model.n_layers=2",
    "model.n_heads=4",
    "model.block_size=16",
    "model.mem_segment=1",
    "model.fam_len=2",
    "data.task=passkey",
    "data.batch_size=4",
    "data.seq_len=128",
    "data.passkey_instruction=false",
    "data.val_batches=1",
    "logger.wandb=disabled",
    "train.accelerator=cpu",
    "train.log_every=1",
    "train.val_every=0",
    "train.checkpoint_every=0",
]
RECALL = ["data.task=recall", "data.seq_len=64", "data.recall_num_pairs=4"]


def tiny(tmp: Path, *extra: str):
    """The tiny preset with TINY's overrides, writing its runs under ``tmp``."""
    return load_run_config("tiny", [*TINY, f"out_dir={tmp}", *extra])


def rows_with(run_dir: Path, key: str) -> dict[int, float]:
    """{step: value} of every metrics.jsonl row that logged ``key``."""
    return {r["step"]: r[key] for r in RunDir(run_dir).read_metrics() if key in r}


def train_losses(run_dir: Path) -> dict[int, float]:
    return rows_with(run_dir, "train/loss")
