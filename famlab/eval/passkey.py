"""PassKey accuracy per (length, depth bucket), streamed.

For each length (``passkey_eval_lengths`` multiples of seq_len, or ``lengths=`` in tokens; the length is
prompt + answer tokens) and each of ``passkey_eval_depth_buckets`` equal depth buckets,
``passkey_eval_samples`` prompts (depth uniform in the bucket) are streamed as one batch through
``model.step`` in block-aligned chunks, then the answer is decoded greedily, one ``step`` per digit.
Memory stays constant in the length. Rows: task, length, length_x (length / seq_len), depth (bucket
midpoint), depth_lo, depth_hi, n, accuracy (all digits right), digit_accuracy (fraction of digits right).
The examples themselves are :mod:`famlab.data.passkey`'s.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from famlab.data.base import SPLIT_CODES
from famlab.data.passkey import PasskeyTask, fitting_key, pieces_for
from famlab.eval.streaming import EvalRun, greedy_decode, resolve_multiples


def evaluate_passkey(
    run: EvalRun, lengths: list[int] | None = None, depth_buckets: int | None = None, samples: int | None = None
) -> pd.DataFrame:
    cfg, model, device = run.cfg, run.model, run.device
    d = cfg.passkey_key_digits
    lengths = (
        [int(v) for v in lengths] if lengths is not None else resolve_multiples(cfg.passkey_eval_lengths, cfg.seq_len)
    )
    D = depth_buckets or cfg.passkey_eval_depth_buckets
    n = samples or cfg.passkey_eval_samples
    pieces = pieces_for(cfg, getattr(getattr(model, "cfg", None), "vocab_size", 1 << 62))
    need = pieces.fixed_len("9" * d)
    if any(v < need for v in lengths):
        raise ValueError(f"lengths={lengths} is not allowed: expected lengths >= {need} tokens (the fixed prompt)")
    rows = []
    for li, length in enumerate(lengths):
        t0 = time.monotonic()
        for di in range(D):
            rng = np.random.default_rng([int(run.seed), PasskeyTask.code, SPLIT_CODES["eval"], length, li, di, D])
            groups: dict[int, tuple[list, list]] = {}  # answer length -> (prompts, answers)
            for _ in range(n):
                key = fitting_key(rng, pieces, d, length, tries=100)
                if key is None:
                    raise ValueError(f"length {length} fits too few {d}-digit keys with this tokenizer")
                depth = (di + rng.random()) / D
                ids, answer_len, _ = pieces.example(key, length, depth)
                prompts, answers = groups.setdefault(answer_len, ([], []))
                prompts.append(ids[:-answer_len])
                answers.append(ids[-answer_len:])
            exact, digits = [], []
            for answer_len, (prompts, answers) in groups.items():  # one group unless key lengths vary
                prompt = torch.from_numpy(np.stack(prompts)).to(device)
                answer = torch.from_numpy(np.stack(answers)).to(device)
                right = (greedy_decode(model, prompt, answer_len, run.block_size) == answer).float()
                exact += right.all(dim=1).tolist()
                digits += right.mean(dim=1).tolist()
            rows.append(
                {
                    "task": "passkey",
                    "length": length,
                    "length_x": length / cfg.seq_len,
                    "depth": (di + 0.5) / D,
                    "depth_lo": di / D,
                    "depth_hi": (di + 1) / D,
                    "n": n,
                    "accuracy": float(np.mean(exact)),
                    "digit_accuracy": float(np.mean(digits)),
                }
            )
        done = rows[-D:]
        run.say(
            f"passkey length {length} ({length / cfg.seq_len:g}x): accuracy {np.mean([r['accuracy'] for r in done]):.3f}, "
            f"digits {np.mean([r['digit_accuracy'] for r in done]):.3f} ({n * D} prompts, {time.monotonic() - t0:.1f} s)"
        )
    return pd.DataFrame(rows)
