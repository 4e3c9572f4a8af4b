"""The suite's members that reuse famlab's own evaluations.

* ``mqar`` (Zoology's multi-query associative recall): :mod:`famlab.eval.recall` on
  :mod:`famlab.data.recall`'s examples, with the number of key-value pairs and the total sequence
  length as knobs (the gap between pairs and queries is whatever makes the example exactly that long).
  Rows: task "mqar", num_pairs, gap, length, length_x, n (queries), accuracy, example_accuracy, and
  score = accuracy (the fraction of queries answered, like RULER's all-match). A model whose vocabulary is
  smaller than the recall vocabularies (a PassKey model's 64 symbols) gets them shrunk to fit
  (:func:`fit_recall_vocab`). Its settings are checked before any member runs (:func:`mqar_settings`).
* ``lm-position``: :mod:`famlab.eval.text`'s bits per byte by position on the held-out documents, read
  out to ``max_x`` (default 16) times the training length, in log-spaced buckets (edges 0, seq_len/8,
  seq_len/4, ... doubling to max_x * seq_len). Byte-level runs only (the corpus is bytes).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd

from famlab.eval.recall import evaluate_recall
from famlab.eval.streaming import EvalRun
from famlab.eval.text import evaluate_text


def fit_recall_vocab(cfg: Any, vocab_size: int) -> Any:
    """``cfg`` with the recall vocabularies (noise, keys, values) shrunk in proportion, each by the same factor
    (rounded down, at least the pairs' keys and one token each), where together they outnumber the model's
    ``vocab_size - 1`` tokens: a model trained on another task (PassKey's 64 symbols) still gets MQAR in its own
    ids. Unchanged where they fit (a model trained on recall sees its own vocabularies)."""
    total = cfg.recall_noise_vocab + cfg.recall_key_vocab + cfg.recall_value_vocab
    if total <= vocab_size - 1:
        return cfg
    scale = (vocab_size - 1) / total
    noise, values = (max(1, int(v * scale)) for v in (cfg.recall_noise_vocab, cfg.recall_value_vocab))
    keys = max(cfg.recall_num_pairs, int(cfg.recall_key_vocab * scale))
    return dataclasses.replace(cfg, recall_noise_vocab=noise, recall_key_vocab=keys, recall_value_vocab=values)


def mqar_settings(
    cfg: Any, vocab_size: int, lengths: list[int], pairs: list[int] | None = None
) -> list[tuple[Any, int]]:
    """(data config, fixed tokens of an example) per number of pairs, checked against every length (a
    ``ValueError`` naming the bad one), before anything runs."""
    out = []
    for n_pairs in pairs or [cfg.recall_num_pairs]:
        try:
            sub = fit_recall_vocab(dataclasses.replace(cfg, recall_num_pairs=int(n_pairs)), vocab_size)
        except ValueError as e:
            raise ValueError(f"mqar pairs={n_pairs}: {e}") from None
        body = 2 * sub.recall_num_pairs + 2 * sub.num_queries
        for length in lengths:
            if length < body:
                raise ValueError(
                    f"length={length} is not allowed for task mqar: expected >= {body} tokens ({n_pairs} pairs)"
                )
        out.append((sub, body))
    return out


def evaluate_mqar(
    run: EvalRun, lengths: list[int], pairs: list[int] | None = None, samples: int | None = None
) -> pd.DataFrame:
    cfg = run.cfg
    frames = []
    for sub, body in mqar_settings(cfg, run.model.cfg.vocab_size, lengths, pairs):
        n_pairs = sub.recall_num_pairs
        for length in lengths:

            def say(line: str, n_pairs=n_pairs, length=length) -> None:
                run.say(f"mqar {n_pairs} pairs, length {length} ({length / cfg.seq_len:g}x): {line.split(': ', 1)[-1]}")

            one = dataclasses.replace(run, cfg=sub, progress=say if run.progress else None)
            frames.append(evaluate_recall(one, gaps=[length - body], samples=samples))
    df = pd.concat(frames, ignore_index=True)
    df["task"] = "mqar"
    df["length_x"] = df["length"] / cfg.seq_len
    df["score"] = df["accuracy"]
    return df


def log_buckets(seq_len: int, max_x: float = 16) -> list[int]:
    """0, seq_len/8, seq_len/4, ... doubling up to max_x * seq_len (the last edge)."""
    top = int(round(max_x * seq_len))
    edges, e = [0], max(seq_len // 8, 1)
    while e < top:
        edges.append(e)
        e *= 2
    return edges + [top]


def evaluate_lm_position(run: EvalRun, max_x: float = 16, max_docs: int | None = None) -> pd.DataFrame:
    cfg = run.cfg
    if cfg.tokenizer != "bytes":
        run.say(f"lm-position: skipped (the held-out text is bytes; this run has tokenizer={cfg.tokenizer})")
        return pd.DataFrame()
    edges = log_buckets(cfg.seq_len, max_x)
    df = evaluate_text(run, max_len=edges[-1], buckets=edges, max_docs=max_docs)
    df["task"] = "lm-position"
    df["length"] = df["position_bucket_end"]
    df["length_x"] = df["position_bucket_end"] / cfg.seq_len
    return df
