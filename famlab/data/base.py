"""What the three tasks share: the batch stream, the curriculum, episodes, the datamodule.

**Batches.** Every batch is a pure function of ``(seed, split, batch index k)``: nothing depends on
iteration order, worker count or a global RNG, so reruns and resumed runs see the same data.
Training batch k uses ``cfg.seq_len_at(k)`` tokens (the curriculum). Validation batches always use
``cfg.seq_len`` and come from held-out data (a different RNG stream; for text, other documents).

**Episodes.** A task produces *episodes*: ``tokens`` [b, E] and ``weights`` [b, E] (the loss weight
of each token as a target). A batch is a window of an episode: ``input = tokens[:, o:o+T]``,
``target = tokens[:, o+1:o+T+1]``, ``weight = weights[:, o+1:o+T+1]``. Without ``stateful`` every
batch is its own episode (E = T + 1). With ``stateful``, episode e spans batches
``e*W .. e*W+W-1`` (W = ``episode_windows``) and its windows are consecutive: window w starts where
window w-1's input ended, even when the curriculum changes T inside an episode. Stateful batches
carry ``new_episode`` (True on window 0), the trainer's cue to reset the model state.

**Resuming.** :class:`FamDataModule` counts the training batches the trainer consumed (in its
``on_before_batch_transfer`` hook, only while ``trainer.training``) and saves that count in
``state_dict()``; after ``load_state_dict()`` the stream restarts at that batch index, so the data
and the curriculum position continue exactly. The count is of batches, not optimizer steps.

**Adaptive curriculum** (``seq_len_adaptive``). The length of training batch k is decided while
training (by :class:`famlab.train.callbacks.AdaptiveSeqLen`, which calls :meth:`FamDataModule.set_train_len`),
so the batch cannot be built ahead: Lightning prefetches a batch and workers prefetch several. The
train stream then yields only the index k, and :meth:`FamDataModule.on_before_batch_transfer` builds
batch k at the current length when the trainer consumes it. A batch stays a pure function of
``(seed, split, k, length)`` (``Task.batch(..., length=L)``). ``num_workers`` must be 0 (nothing is left for
workers to do) and ``stateful`` false (a length change would cut an episode's windows).

**Data parallel.** Training batches of global rank r > 0 come from their own RNG stream (rank 0's
is the single-process stream); every rank gets the same batch index and curriculum position.
Validation batches are the same on every rank.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from famlab.config import DataConfig

SPLIT_CODES = {"train": 0, "val": 1, "test": 2, "eval": 3}
TRAIN_INDEX = "train_index"  # adaptive curriculum: the train stream yields {TRAIN_INDEX: k}, built when consumed


class Task:
    """One data task. Subclasses implement :meth:`episode` (its evaluation is in :mod:`famlab.eval`)."""

    name = ""
    code = 0  # mixed into every RNG seed so tasks never share streams

    def __init__(self, cfg: DataConfig, *, vocab_size: int, block_size: int):
        self.cfg, self.vocab_size, self.block_size = cfg, vocab_size, block_size
        self._cache: dict[str, tuple[tuple, tuple[np.ndarray, np.ndarray]]] = {}

    # --- to implement ---
    def prepare(self) -> None:
        """Download whatever the task needs (called once, on one process)."""

    def setup(self) -> None:
        """Load what :meth:`prepare` fetched (called on every process)."""

    def episode(
        self, split: str, rng: np.random.Generator, length: int, windows: tuple[int, ...] = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        """``batch_size`` rows of ``length`` tokens: tokens int64 [b, length], weights float32 [b, length].
        ``windows``: the input lengths of the episode's stateful windows, in order (sum = length - 1;
        empty when not stateful), for tasks that place content by window."""
        raise NotImplementedError

    # --- shared machinery ---
    def rng(self, seed: int, split: str, index: int, rank: int = 0) -> np.random.Generator:
        entropy = [int(seed), self.code, SPLIT_CODES[split], int(index)] + ([int(rank)] if rank else [])
        return np.random.default_rng(entropy)

    def _episode_cached(
        self, split: str, seed: int, e: int, windows: tuple[int, ...], rank: int
    ) -> tuple[np.ndarray, np.ndarray]:
        key = (seed, e, windows, rank)
        hit = self._cache.get(split)
        if hit is None or hit[0] != key:
            stateful = windows if self.cfg.stateful else ()
            hit = (key, self.episode(split, self.rng(seed, split, e, rank), sum(windows) + 1, stateful))
            self._cache[split] = hit
        return hit[1]

    def batch(self, split: str, k: int, seed: int, rank: int = 0, length: int | None = None) -> dict[str, torch.Tensor]:
        """Batch k of ``split`` ("train" follows the curriculum; "val" is always at seq_len).
        ``rank`` > 0 draws another stream (data-parallel ranks); rank 0 is the single-process stream.
        ``length``: every window at this length instead (the adaptive curriculum's current length)."""
        cfg = self.cfg
        fixed = length if length is not None else (None if split == "train" else cfg.seq_len)
        seq_len = cfg.seq_len_at if fixed is None else (lambda _k: int(fixed))
        W = cfg.episode_windows if cfg.stateful else 1
        e, w = divmod(k, W)
        lengths = [seq_len(e * W + i) for i in range(W)]
        offset, T = sum(lengths[:w]), lengths[w]
        tokens, weights = self._episode_cached(split, seed, e, tuple(lengths), rank)
        out = {
            "input": torch.from_numpy(np.ascontiguousarray(tokens[:, offset : offset + T])),
            "target": torch.from_numpy(np.ascontiguousarray(tokens[:, offset + 1 : offset + T + 1])),
            "weight": torch.from_numpy(np.ascontiguousarray(weights[:, offset + 1 : offset + T + 1])),
        }
        if cfg.stateful:
            out["new_episode"] = torch.tensor(w == 0)
        return out


class _TrainStream(IterableDataset):
    """Training batches start, start+1, ... forever (workers interleave: worker i takes start+i, ...)."""

    def __init__(self, task: Task, seed: int, start: int, rank: int = 0):
        self.task, self.seed, self.start, self.rank = task, seed, start, rank
        self.indices_only = task.cfg.seq_len_adaptive

    def __iter__(self):
        info = get_worker_info()
        k, stride = self.start, 1
        if info is not None:
            k, stride = self.start + info.id, info.num_workers
        while True:
            yield {TRAIN_INDEX: k} if self.indices_only else self.task.batch("train", k, self.seed, self.rank)
            k += stride


class _FixedBatches(Dataset):
    def __init__(self, task: Task, seed: int, split: str, n: int):
        self.task, self.seed, self.split, self.n = task, seed, split, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, j: int) -> dict[str, torch.Tensor]:
        return self.task.batch(self.split, j, self.seed)


class FamDataModule(pl.LightningDataModule):
    """The LightningDataModule for any famlab task. Batches: dicts of input/target/weight
    (+ new_episode when stateful). ``state_dict()`` holds the training batches served."""

    def __init__(self, cfg: DataConfig, task: Task, *, seed: int):
        super().__init__()
        self.cfg, self.task, self.seed = cfg, task, int(seed)
        self.batches_served = 0
        self._train_stream: _TrainStream | None = None
        self.train_len = cfg.adaptive_lengths(task.block_size)[0]  # adaptive curriculum: the current length

    def prepare_data(self) -> None:
        self.task.prepare()

    def setup(self, stage: str | None = None) -> None:
        self.task.setup()

    def _loader(self, dataset) -> DataLoader:
        workers = self.cfg.num_workers
        return DataLoader(dataset, batch_size=None, num_workers=workers, persistent_workers=False)

    def train_dataloader(self) -> DataLoader:
        self.task.setup()
        rank = self.trainer.global_rank if self.trainer is not None else 0
        self._train_stream = _TrainStream(self.task, self.seed, self.batches_served, rank)
        return self._loader(self._train_stream)

    def val_dataloader(self) -> DataLoader | list:
        if not self.cfg.val_batches:
            return []
        self.task.setup()
        return self._loader(_FixedBatches(self.task, self.seed, "val", self.cfg.val_batches))

    def set_train_len(self, length: int) -> None:
        """Adaptive curriculum: training batches consumed from now on are built at ``length`` tokens."""
        self.train_len = int(length)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = self.trainer
        if isinstance(batch, dict) and TRAIN_INDEX in batch:  # adaptive: build batch k at the current length
            rank = self._train_stream.rank if self._train_stream is not None else 0
            batch = self.task.batch("train", int(batch[TRAIN_INDEX]), self.seed, rank, length=self.train_len)
            if trainer is not None:
                batch = trainer.precision_plugin.convert_input(batch)
        if trainer is not None and trainer.training and isinstance(batch, dict) and "input" in batch:
            self.batches_served += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"batches_served": self.batches_served}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.batches_served = int(state_dict["batches_served"])
        if self._train_stream is not None:  # a loader made before the restore starts at the right place
            self._train_stream.start = self.batches_served

    # --- direct access (tests, notebooks, custom loops) ---
    def train_batch(self, k: int, rank: int = 0, length: int | None = None) -> dict[str, torch.Tensor]:
        """Training batch k, exactly as the train dataloader of process ``rank`` serves it (at ``length``
        tokens: as the adaptive curriculum serves it at that length)."""
        self.task.setup()
        if length is None and self.cfg.seq_len_adaptive:
            length = self.train_len
        return self.task.batch("train", k, self.seed, rank, length=length)

    def val_batch(self, j: int) -> dict[str, torch.Tensor]:
        self.task.setup()
        return self.task.batch("val", j, self.seed)

    def seq_len_at(self, k: int) -> int:
        return self.cfg.seq_len_at(k)


def check_positive_tokens(name: str, values) -> list[int]:
    out = [int(v) for v in values]
    if not out or any(v < 0 for v in out):
        raise ValueError(f"{name}={values!r} is not allowed: expected a non-empty list of token counts >= 0")
    return out
