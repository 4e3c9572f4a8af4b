"""PassKey retrieval, the paper's long-context probe, at byte level.

An example (prompt + answer) is::

    [instruction] filler ... The pass key is 7143. Remember it. 7143 is the pass key. filler ...
    \\nWhat is the pass key? The pass key is 7143

* Instruction (``passkey_instruction``, default on): "There is an important info hidden inside a
  lot of irrelevant text. Find it and memorize it. I will quiz you about the important information
  there." (as in the landmark-attention / TransformerFAM prompts), then a newline.
* Filler: "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back
  again. " cycled and cut to the exact byte count that makes the example ``length`` bytes long.
* The key sentence is inserted at the filler's sentence boundary nearest to ``depth * filler``
  (depth 0: right after the instruction; 1: at the last boundary before the question).
* The key has ``passkey_key_digits`` digits, the first one non-zero; the answer is the digits
  only (the space belongs to the prompt). Loss weight 1 on the answer digits, 0 elsewhere.

**Training.** Each row draws its example length uniformly in
``[passkey_train_blocks_min, passkey_train_blocks_max] * block_size`` bytes, capped at
``seq_len + 1`` (max 0: up to ``seq_len + 1``, i.e. a full row; a min above the cap is lowered to
it, so an early, short curriculum stage still works), and its depth uniformly in [0, 1]. Lengths
are in blocks because that is the unit of memory reach (about n_layers * (m+1) * B). Examples
shorter than the row are right-padded with byte 0 (weight 0), so each example starts at position 0
as in evaluation.

**Evaluation** (:func:`evaluate`). For each length (``passkey_eval_lengths`` multiples of seq_len,
or ``lengths=`` in tokens; the length is prompt + answer bytes) and each of
``passkey_eval_depth_buckets`` equal depth buckets, ``passkey_eval_samples`` prompts (depth uniform
in the bucket) are streamed as one batch through ``model.step`` in block-aligned chunks, then the
answer is decoded greedily, one ``step`` per digit. Memory stays constant in the length. Rows:
task, length, length_x (length / seq_len), depth (bucket midpoint), depth_lo, depth_hi, n,
accuracy (all digits right), digit_accuracy (fraction of digits right).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from famlab.data.base import SPLIT_CODES, Task, eval_mode, greedy_decode, resolve_multiples
from famlab.data.config import DataConfig, config_error

INSTRUCTION = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there.\n"
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
KEY_SENTENCE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "\nWhat is the pass key? The pass key is "
PAD = 0  # right padding byte after an example (weight 0)

# sentence boundaries inside one period of FILLER (0 and after each ". ")
_OFFSETS = [0] + [i + 2 for i in range(len(FILLER) - 1) if FILLER[i : i + 2] == ". " and i + 2 < len(FILLER)]


def fixed_len(digits: int, instruction: bool) -> int:
    """Bytes of an example that are not filler: instruction, key sentence, question, answer."""
    key = "0" * digits
    return len(INSTRUCTION) * bool(instruction) + len(KEY_SENTENCE.format(key=key)) + len(QUESTION) + digits


def _boundary(depth: float, filler_len: int) -> int:
    """The filler sentence boundary (<= filler_len) nearest to depth * filler_len."""
    x = depth * filler_len
    period = len(FILLER)
    q = int(x // period)
    best = 0
    for p in (q - 1, q, q + 1):
        for o in _OFFSETS:
            c = p * period + o
            if 0 <= c <= filler_len and abs(c - x) < abs(best - x):
                best = c
    return best


def make_example(key: str, length: int, depth: float, instruction: bool = True) -> tuple[str, float]:
    """The example (prompt + answer) of exactly ``length`` bytes, and its actual depth in [0, 1]."""
    filler_len = length - fixed_len(len(key), instruction)
    if filler_len < 0:
        raise ValueError(
            f"a passkey example of {length} bytes is too short: it needs at least "
            f"{fixed_len(len(key), instruction)} (instruction={instruction}, {len(key)} digits)"
        )
    filler = (FILLER * (filler_len // len(FILLER) + 1))[:filler_len]
    b = _boundary(depth, filler_len)
    head = INSTRUCTION if instruction else ""
    text = head + filler[:b] + KEY_SENTENCE.format(key=key) + filler[b:] + QUESTION + key
    assert len(text) == length
    return text, (b / filler_len if filler_len else 0.0)


def random_key(rng: np.random.Generator, digits: int) -> str:
    first = str(rng.integers(1, 10))
    return first + "".join(str(d) for d in rng.integers(0, 10, size=digits - 1))


def encode(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("ascii"), dtype=np.uint8).astype(np.int64)


class PasskeyTask(Task):
    name = "passkey"
    code = 1

    def __init__(self, cfg: DataConfig, *, vocab_size: int, block_size: int):
        super().__init__(cfg, vocab_size=vocab_size, block_size=block_size)
        if vocab_size < 128:
            raise ValueError(
                f"vocab_size={vocab_size} is not allowed for task='passkey': expected >= 128 (ASCII bytes)"
            )
        need = fixed_len(cfg.passkey_key_digits, cfg.passkey_instruction)
        if cfg.min_seq_len + 1 < need:
            raise config_error(
                "seq_len" if not cfg.seq_len_schedule else "seq_len_schedule",
                cfg.seq_len if not cfg.seq_len_schedule else cfg.seq_len_schedule,
                f"every seq_len >= {need - 1} for a passkey prompt (passkey_instruction="
                f"{cfg.passkey_instruction}, passkey_key_digits={cfg.passkey_key_digits}); "
                "set passkey_instruction=false for shorter prompts",
            )

    def length_range(self, row_len: int) -> tuple[int, int]:
        cfg, B = self.cfg, self.block_size
        hi = min(cfg.passkey_train_blocks_max * B, row_len) if cfg.passkey_train_blocks_max else row_len
        lo = min(max(cfg.passkey_train_blocks_min * B, fixed_len(cfg.passkey_key_digits, cfg.passkey_instruction)), hi)
        return lo, hi

    def episode(self, split: str, rng: np.random.Generator, length: int) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.cfg
        d = cfg.passkey_key_digits
        tokens = np.full((cfg.batch_size, length), PAD, dtype=np.int64)
        weights = np.zeros((cfg.batch_size, length), dtype=np.float32)
        lo, hi = self.length_range(length)
        for r in range(cfg.batch_size):
            n = int(rng.integers(lo, hi + 1))
            text, _ = make_example(random_key(rng, d), n, float(rng.random()), cfg.passkey_instruction)
            tokens[r, :n] = encode(text)
            weights[r, n - d : n] = 1.0
        return tokens, weights


@torch.no_grad()
def evaluate(
    model,
    cfg: DataConfig,
    *,
    block_size: int,
    seed: int,
    device="cpu",
    lengths: list[int] | None = None,
    depth_buckets: int | None = None,
    samples: int | None = None,
) -> pd.DataFrame:
    """PassKey accuracy per (length, depth bucket), streamed; see the module docstring."""
    d = cfg.passkey_key_digits
    lengths = (
        [int(v) for v in lengths] if lengths is not None else resolve_multiples(cfg.passkey_eval_lengths, cfg.seq_len)
    )
    D = depth_buckets or cfg.passkey_eval_depth_buckets
    n = samples or cfg.passkey_eval_samples
    need = fixed_len(d, cfg.passkey_instruction)
    if any(v < need for v in lengths):
        raise ValueError(f"lengths={lengths} is not allowed: expected lengths >= {need} tokens (the fixed prompt)")
    rows = []
    with eval_mode(model):
        for li, length in enumerate(lengths):
            for di in range(D):
                rng = np.random.default_rng([int(seed), PasskeyTask.code, SPLIT_CODES["eval"], length, li, di, D])
                keys, prompts = [], []
                for _ in range(n):
                    key = random_key(rng, d)
                    depth = (di + rng.random()) / D
                    text, _ = make_example(key, length, depth, cfg.passkey_instruction)
                    keys.append(key)
                    prompts.append(encode(text[:-d]))
                prompt = torch.from_numpy(np.stack(prompts)).to(device)
                answer = torch.from_numpy(np.stack([encode(k) for k in keys])).to(device)
                pred = greedy_decode(model, prompt, d, block_size)
                right = (pred == answer).float()
                rows.append(
                    {
                        "task": "passkey",
                        "length": length,
                        "length_x": length / cfg.seq_len,
                        "depth": (di + 0.5) / D,
                        "depth_lo": di / D,
                        "depth_hi": (di + 1) / D,
                        "n": n,
                        "accuracy": right.all(dim=1).float().mean().item(),
                        "digit_accuracy": right.mean().item(),
                    }
                )
    return pd.DataFrame(rows)
