"""Bits per byte by position from each document's start, streamed.

Each document of the eval split (``text_eval_split``, default test) is read from its start, up to
``text_eval_max_len`` bytes, all documents as one batch, through ``model.step`` in block-aligned chunks
(constant memory). Bits per byte are reported per target-position bucket (edges 0, 256, 512, 1024, ...
doubling up to the max length, or ``buckets=``) plus an overall row. Columns: task, scope
("bucket" | "overall"), position_bucket_start, position_bucket_end, bpb, n_bytes, split, n_docs.
The run's seed is unused (the documents are fixed). The corpus and its split are :mod:`famlab.data.text`'s.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from famlab.data.text import load_corpus
from famlab.eval.streaming import LN2, EvalRun, stream


def default_buckets(max_len: int) -> list[int]:
    edges, e = [0], 256
    while e < max_len:
        edges.append(e)
        e *= 2
    return edges + [max_len]


def evaluate_text(
    run: EvalRun,
    split: str | None = None,
    max_len: int | None = None,
    buckets: list[int] | None = None,
    max_docs: int | None = None,
) -> pd.DataFrame:
    cfg, device = run.cfg, run.device
    split = split or cfg.text_eval_split
    max_len = int(max_len or cfg.text_eval_max_len)
    docs = load_corpus(cfg.cache_dir, cfg.text_val_docs, cfg.text_test_docs)[split]
    arrays = [docs[n][:max_len] for n in sorted(docs)][:max_docs]
    edges = [int(e) for e in (buckets or default_buckets(max_len))]
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])) or edges[0] < 0:
        raise ValueError(f"buckets={buckets!r} is not allowed: expected increasing edges >= 0 (at least two)")
    L = max(len(a) for a in arrays)
    tokens = torch.zeros(len(arrays), L, dtype=torch.long)
    valid = torch.zeros(len(arrays), L, dtype=torch.bool)
    for r, a in enumerate(arrays):
        tokens[r, : len(a)] = torch.from_numpy(a.astype(np.int64))
        valid[r, 1 : len(a)] = True  # targets at positions 1 .. len-1
    tokens, valid = tokens.to(device), valid.to(device)
    pos = torch.arange(L, device=device)
    bucket_of = torch.bucketize(pos, torch.tensor(edges, device=device), right=True) - 1  # [L]
    in_range = (bucket_of >= 0) & (bucket_of < len(edges) - 1)
    nb = len(edges) - 1
    sums = torch.zeros(nb, dtype=torch.float64, device=device)
    counts = torch.zeros(nb, dtype=torch.float64, device=device)

    def collect(start: int, logits: torch.Tensor) -> None:
        n = logits.shape[1]
        tgt_pos = slice(start + 1, start + n + 1)  # input i predicts byte i + 1
        tgt = tokens[:, tgt_pos]
        ce = F.cross_entropy(logits.float().transpose(1, 2), tgt, reduction="none").double()
        mask = valid[:, tgt_pos] & in_range[tgt_pos]
        idx = bucket_of[tgt_pos].clamp(0, nb - 1).expand_as(ce)
        sums.index_add_(0, idx[mask], ce[mask])
        counts.index_add_(0, idx[mask], torch.ones_like(ce[mask]))

    t0 = time.monotonic()
    stream(run.model, tokens[:, :-1], run.block_size, collect)
    rows = []
    for i in range(nb):
        n = counts[i].item()
        rows.append(
            {
                "task": "text",
                "scope": "bucket",
                "position_bucket_start": edges[i],
                "position_bucket_end": edges[i + 1],
                "bpb": sums[i].item() / n / LN2 if n else float("nan"),
                "n_bytes": int(n),
            }
        )
    total = counts.sum().item()
    rows.append(
        {
            "task": "text",
            "scope": "overall",
            "position_bucket_start": edges[0],
            "position_bucket_end": edges[-1],
            "bpb": sums.sum().item() / total / LN2 if total else float("nan"),
            "n_bytes": int(total),
        }
    )
    run.say(
        f"text {split}: {rows[-1]['bpb']:.4f} bits per byte over {len(arrays)} documents, "
        f"{int(total)} bytes up to position {L} ({time.monotonic() - t0:.1f} s)"
    )
    df = pd.DataFrame(rows)
    df["split"] = split
    df["n_docs"] = len(arrays)
    return df
