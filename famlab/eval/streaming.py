"""What every evaluation shares: the request (:class:`EvalRun`), streaming through ``model.step`` in
block-aligned chunks (constant memory in the length) and greedy decoding."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from famlab.config import DataConfig

LN2 = math.log(2.0)


@dataclass(frozen=True)
class EvalRun:
    """One evaluation: the model (already on ``device``, in eval mode), the task's data config, the
    model's block size (the streaming chunk grid) and the seed of the evaluation examples;
    ``progress`` (optional) receives one line per finished length or gap, as it finishes."""

    model: Any
    cfg: DataConfig
    block_size: int
    seed: int
    device: Any = "cpu"
    progress: Callable[[str], None] | None = None

    def say(self, line: str) -> None:
        if self.progress is not None:
            self.progress(line)


def stream(
    model,
    tokens: torch.Tensor,
    block_size: int,
    on_chunk: Callable[[int, torch.Tensor], None] | None = None,
    state=None,
):
    """Feed tokens [b, L] through ``model.step`` in block-aligned chunks; call
    ``on_chunk(start, logits[b, n, V])`` for each chunk. Returns (last logits [b, V], state).
    Memory is constant in L: only the model's fixed-size state and one chunk of logits live at once."""
    if state is None:
        state = model.init_state(tokens.shape[0], device=tokens.device)
    last = None
    L = tokens.shape[1]
    start = 0
    while start < L:
        n = min(block_size - state.pos % block_size, L - start)
        logits, state = model.step(tokens[:, start : start + n], state)
        if on_chunk is not None:
            on_chunk(start, logits)
        last = logits[:, -1]
        start += n
    return last, state


def greedy_decode(model, prompt: torch.Tensor, n: int, block_size: int) -> torch.Tensor:
    """Stream ``prompt`` [b, L], then greedily decode n tokens one at a time with ``model.step``."""
    last, state = stream(model, prompt, block_size)
    out = []
    for i in range(n):
        nxt = last.argmax(-1)  # [b]
        out.append(nxt)
        if i + 1 < n:
            logits, state = model.step(nxt[:, None], state)
            last = logits[:, -1]
    return torch.stack(out, dim=1)


def greedy_decode_ragged(model, ids: torch.Tensor, answer_lens: torch.Tensor, block_size: int) -> torch.Tensor:
    """Greedy answers of rows that end their prompts at different positions, in one batch: ``ids`` [b, L]
    holds each row's prompt and answer (row r's answer: its last ``answer_lens[r]`` tokens, which are not
    read). Streams the common prefix (the first L - max answer tokens) with :func:`stream`, then steps one
    token at a time, feeding each row its own prompt token until its prompt ends and its own greedy token
    after, as :func:`greedy_decode` does per row. Returns [b, max answer]; row r's first ``answer_lens[r]``
    entries are its answer (the rest -1)."""
    b, L = ids.shape
    longest = int(answer_lens.max())
    starts = L - answer_lens.to(ids.device)  # [b] each row's first answer position
    last, state = stream(model, ids[:, : L - longest], block_size)
    preds = torch.full((b, longest), -1, dtype=torch.long, device=ids.device)
    rows = torch.arange(b, device=ids.device)
    for pos in range(L - longest, L):
        guess = last.argmax(-1)  # [b] each row's greedy token for position pos
        answering = pos >= starts
        preds[rows[answering], (pos - starts)[answering]] = guess[answering]
        if pos == L - 1:
            break
        token = torch.where(answering, guess, ids[:, pos])
        logits, state = model.step(token[:, None], state)
        last = logits[:, -1]
    return preds


class eval_mode:
    """Context: model.eval() inside, the previous training flag restored after."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def resolve_multiples(values, seq_len: int) -> list[int]:
    """Multiples of seq_len -> token counts (rounded)."""
    return [int(round(float(v) * seq_len)) for v in values]
