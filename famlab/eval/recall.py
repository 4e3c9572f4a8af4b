"""MQAR accuracy per gap length, streamed.

For each gap (``recall_eval_gaps`` multiples of seq_len, or ``gaps=`` in tokens), ``recall_eval_samples``
examples are streamed as one batch through ``model.step`` in block-aligned chunks, teacher-forced
(queries and their true values are part of the stream, as in training); a query counts as right when the
argmax after its key is its value. Rows: task, gap, gap_x (gap / seq_len), length, num_pairs,
n (queries), accuracy (per query), example_accuracy (all queries of an example right).
The examples themselves are :mod:`famlab.data.recall`'s.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from famlab.data.base import SPLIT_CODES
from famlab.data.recall import RecallTask
from famlab.eval.streaming import EvalRun, resolve_multiples, stream


def evaluate_recall(run: EvalRun, gaps: list[int] | None = None, samples: int | None = None) -> pd.DataFrame:
    cfg, model, device = run.cfg, run.model, run.device
    task = RecallTask(cfg, vocab_size=model.cfg.vocab_size, block_size=run.block_size)
    gaps = [int(g) for g in gaps] if gaps is not None else resolve_multiples(cfg.recall_eval_gaps, cfg.seq_len)
    if any(g < 0 for g in gaps):
        raise ValueError(f"gaps={gaps} is not allowed: expected token counts >= 0")
    n = samples or cfg.recall_eval_samples
    rows = []
    for gi, gap in enumerate(gaps):
        t0 = time.monotonic()
        rng = np.random.default_rng([int(run.seed), RecallTask.code, SPLIT_CODES["eval"], gap, gi])
        examples = [task.example(rng, gap) for _ in range(n)]
        tokens = torch.from_numpy(np.stack([t for t, _ in examples])).to(device)
        scored = np.flatnonzero(examples[0][1]) - 1  # input positions whose next token is a value
        pos = torch.from_numpy(scored).to(device)
        preds = torch.empty(n, len(scored), dtype=torch.long, device=device)

        def collect(start: int, logits: torch.Tensor, pos=pos, preds=preds) -> None:
            sel = (pos >= start) & (pos < start + logits.shape[1])
            if sel.any():
                preds[:, sel] = logits[:, pos[sel] - start].argmax(-1)

        stream(model, tokens[:, :-1], run.block_size, collect)
        right = (preds == tokens[:, pos + 1]).float()
        rows.append(
            {
                "task": "recall",
                "gap": gap,
                "gap_x": gap / cfg.seq_len,
                "length": tokens.shape[1],
                "num_pairs": cfg.recall_num_pairs,
                "n": int(right.numel()),
                "accuracy": right.mean().item(),
                "example_accuracy": right.all(dim=1).float().mean().item(),
            }
        )
        run.say(
            f"recall gap {gap} ({gap / cfg.seq_len:g}x): accuracy {rows[-1]['accuracy']:.3f}, "
            f"whole examples {rows[-1]['example_accuracy']:.3f} ({n} examples, {time.monotonic() - t0:.1f} s)"
        )
    return pd.DataFrame(rows)
