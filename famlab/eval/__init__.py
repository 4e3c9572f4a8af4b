"""famlab eval: one :func:`evaluate` for every task, run through the model's streaming path.

* ``passkey`` (:mod:`famlab.eval.passkey`): accuracy per length and key depth, streamed + greedy decoding.
* ``text`` (:mod:`famlab.eval.text`): bits per byte by position from each document's start, streamed.
* ``recall`` (:mod:`famlab.eval.recall`): accuracy by gap, streamed, teacher-forced.

:mod:`famlab.eval.suite` is the long-context suite (``famlab eval --suite``: RULER-style tasks, MQAR, loss
by position, effective lengths). :mod:`famlab.eval.streaming` holds what they share (chunked streaming through ``model.step``, greedy
decoding). The tasks' examples and corpora come from :mod:`famlab.data`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import torch

from famlab.data import as_data_config
from famlab.eval.passkey import evaluate_passkey
from famlab.eval.recall import evaluate_recall
from famlab.eval.streaming import EvalRun, eval_mode, greedy_decode, stream
from famlab.eval.text import evaluate_text

EVALUATIONS = {"passkey": evaluate_passkey, "text": evaluate_text, "recall": evaluate_recall}

__all__ = ["EVALUATIONS", "EvalRun", "eval_mode", "evaluate", "greedy_decode", "stream"]


def evaluate(
    model,
    data_cfg: Any,
    *,
    block_size: int,
    seed: int,
    device: Any = "cpu",
    progress: Callable[[str], None] | None = None,
    **options: Any,
) -> pd.DataFrame:
    """The task's evaluation (``data_cfg.task``), run through the model's streaming path in eval mode
    without gradients; tidy rows (one per cell).

    ``model`` must already be on ``device``; ``data_cfg``: DataConfig, DictConfig or dict. Options per
    task: passkey ``lengths`` (tokens), ``depth_buckets``, ``samples``; text ``split``, ``max_len``,
    ``buckets`` (edges), ``max_docs``; recall ``gaps`` (tokens), ``samples``. ``progress(line)`` is
    called with one line per length (passkey), gap (recall) or split (text) as each finishes."""
    cfg = as_data_config(data_cfg)
    run = EvalRun(model, cfg, block_size=int(block_size), seed=int(seed), device=device, progress=progress)
    with torch.no_grad(), eval_mode(model):
        return EVALUATIONS[cfg.task](run, **options)
