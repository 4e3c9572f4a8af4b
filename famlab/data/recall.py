"""Multi-query associative recall (MQAR, Zoology) with a controllable gap.

An example is::

    k1 v1 k2 v2 ... kN vN | g1 ... gG | kq1 vq1 kq2 vq2 ... kqQ vqQ | pad ...

* N = ``recall_num_pairs`` distinct keys (drawn without replacement from ``recall_key_vocab``
  key tokens) with values drawn with replacement from ``recall_value_vocab`` value tokens.
* G gap tokens drawn uniformly from ``recall_noise_vocab`` noise tokens.
* Q = ``recall_num_queries`` (0: all N) keys in random order, each followed by its value. The loss
  weight is 1 on those values (the target after a queried key) and 0 elsewhere, so the model must
  retrieve a value bound G + 2(N - i) + ... tokens earlier. BSWA loses pairs that fall outside its
  reach (about n_layers * (m+1) * B tokens); FAM has to carry them in its state.

Token ids (not bytes): 0 = pad, then the noise, key and value ranges, in that order; they must fit
in ``vocab_size`` (checked when the task is built).

**Training.** The gap is uniform in ``[recall_gap_min, recall_gap_max]`` tokens, capped so the
example fits the row (``recall_gap_max = -1``: the longest gap that fits, the default); the rest
of the row is padding (weight 0). With ``stateful``, one example spans the whole episode (all its
windows): the pairs come in the first window, the queries in the last (the gap's lower bound is
raised so they start there, unless ``recall_gap_max`` forbids it), so the state carried between
windows is what must hold the pairs. The carried state is detached (truncated
backpropagation), so the query loss never reaches the window that stored the pairs: stateful recall
trains reading from the state, not writing into it. Non-stateful rows hold both and train both.

**Evaluation**: :mod:`famlab.eval.recall` (accuracy by gap, streamed).
"""

from __future__ import annotations

import numpy as np

from famlab.config import DataConfig
from famlab.config.trainable import check_recall_fits
from famlab.data.base import Task

PAD = 0


class RecallTask(Task):
    name = "recall"
    code = 3

    def __init__(self, cfg: DataConfig, *, vocab_size: int, block_size: int):
        super().__init__(cfg, vocab_size=vocab_size, block_size=block_size)
        check_recall_fits(cfg, vocab_size)
        self.noise_base = 1
        self.key_base = 1 + cfg.recall_noise_vocab
        self.value_base = self.key_base + cfg.recall_key_vocab
        self.body = 2 * cfg.recall_num_pairs + 2 * cfg.num_queries

    def example(self, rng: np.random.Generator, gap: int) -> tuple[np.ndarray, np.ndarray]:
        """One example with a gap of ``gap`` tokens: tokens [2N + gap + 2Q], weights (same shape)."""
        cfg = self.cfg
        N, Q = cfg.recall_num_pairs, cfg.num_queries
        keys = rng.choice(cfg.recall_key_vocab, size=N, replace=False) + self.key_base
        values = rng.integers(0, cfg.recall_value_vocab, size=N) + self.value_base
        noise = rng.integers(0, cfg.recall_noise_vocab, size=gap) + self.noise_base
        order = rng.permutation(N)[:Q]
        pairs = np.stack([keys, values], 1).reshape(-1)
        queries = np.stack([keys[order], values[order]], 1).reshape(-1)
        tokens = np.concatenate([pairs, noise, queries]).astype(np.int64)
        weights = np.zeros(len(tokens), dtype=np.float32)
        weights[2 * N + gap + 1 :: 2] = 1.0  # the value after each queried key
        return tokens, weights

    def gap_range(self, length: int) -> tuple[int, int]:
        cfg = self.cfg
        fit = length - self.body
        hi = fit if cfg.recall_gap_max == -1 else min(cfg.recall_gap_max, fit)
        return min(cfg.recall_gap_min, hi), hi

    def episode(
        self, split: str, rng: np.random.Generator, length: int, windows: tuple[int, ...] = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        b = self.cfg.batch_size
        tokens = np.full((b, length), PAD, dtype=np.int64)
        weights = np.zeros((b, length), dtype=np.float32)
        lo, hi = self.gap_range(length)
        if len(windows) > 1:  # stateful: the queries start in the last window (as far as gap_max allows)
            lo = min(max(lo, sum(windows[:-1]) - 2 * self.cfg.recall_num_pairs), hi)
        for r in range(b):
            t, w = self.example(rng, int(rng.integers(lo, hi + 1)))
            tokens[r, : len(t)] = t
            weights[r, : len(w)] = w
        return tokens, weights
