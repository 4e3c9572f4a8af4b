"""famlab eval --suite: a long-context evaluation suite (issue #20), streamed like every evaluation.

Suites (:data:`SUITES`):

* ``niah``: the run's own PassKey example (``niah_passkey``, :mod:`.passkey_needle`) and RULER's single-needle
  tasks (digits, words, uuid values) over (length x depth);
* ``ruler``: those, the multi-key, multi-value and multi-query needles, variable tracking and
  common-words extraction (:mod:`.niah`, :mod:`.tracking`, scored by :mod:`.ruler`);
* ``mqar``: Zoology's multi-query associative recall (famlab's recall task, :mod:`.members`);
* ``lm-position``: bits per byte by position out to 16x the training length (:mod:`.members`);
* ``all``: every member.

Lengths are multiples of the training ``seq_len`` (``data.passkey_eval_lengths``, default 1, 2, 4, 8, 16,
or ``lengths=`` in tokens); depth buckets and samples per cell are ``data.passkey_eval_depth_buckets``
and ``data.passkey_eval_samples`` (MQAR: samples x depth buckets examples per length). Samples come
from the run's tokenizer (:mod:`.codec`: bytes with the held-out corpus as haystack, symbols with
PassKey's filler, or an HF tokenizer).
:func:`run_suite` returns the table and its summary (effective lengths, :mod:`.summary`);
:func:`write_suite` writes ``<suite>.csv`` and the needle heatmap ``<suite>_heatmap.png``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from famlab.config.metrics import SUITES  # the suites and their members, declared with their metric names
from famlab.data import as_data_config
from famlab.eval.streaming import EvalRun, eval_mode, resolve_multiples
from famlab.eval.suite.codec import codec_for
from famlab.eval.suite.heatmap import write_heatmap
from famlab.eval.suite.members import evaluate_lm_position, evaluate_mqar, mqar_settings
from famlab.eval.suite.ruler import NIAH_TASKS, TASKS, evaluate_tasks
from famlab.eval.suite.summary import DEFAULT_THRESHOLD, summarize

__all__ = ["SUITES", "TASKS", "SuiteResult", "report_lines", "run_suite", "summary_lines", "task_tables", "write_suite"]


@dataclass
class SuiteResult:
    suite: str
    table: pd.DataFrame  # every member's rows (column ``member``)
    summary: dict[str, Any]  # {member: its summary}, and {"all": ...} over every scored row for suite "all"
    seq_len: int


def run_suite(
    model,
    data_cfg: Any,
    suite: str,
    *,
    block_size: int,
    seed: int,
    device: Any = "cpu",
    progress: Callable[[str], None] | None = None,
    lengths: list[int] | None = None,
    depth_buckets: int | None = None,
    samples: int | None = None,
    tasks: list[str] | None = None,
    task_options: dict[str, dict] | None = None,
    mqar_pairs: list[int] | None = None,
    lm_max_x: float = 16,
    lm_max_docs: int | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> SuiteResult:
    """Run ``suite`` on ``model`` (already on ``device``) in eval mode without gradients. ``lengths`` in
    tokens (default: ``data.passkey_eval_lengths`` x seq_len); ``tasks`` restricts the synthetic tasks."""
    if suite not in SUITES:
        raise ValueError(f"suite={suite!r} is not allowed: expected one of {', '.join(SUITES)}")
    if not 0.0 <= threshold <= 1.0:  # nan fails too: every score would fail it
        raise ValueError(f"threshold={threshold!r} is not allowed: expected a score in [0, 1]")
    cfg = as_data_config(data_cfg)
    run = EvalRun(model, cfg, block_size=int(block_size), seed=int(seed), device=device, progress=progress)
    lengths = (
        [int(v) for v in lengths] if lengths is not None else resolve_multiples(cfg.passkey_eval_lengths, cfg.seq_len)
    )
    D = int(depth_buckets or cfg.passkey_eval_depth_buckets)
    n = int(samples or cfg.passkey_eval_samples)
    if "mqar" in SUITES[suite]:  # its settings are checked before the other members spend their time
        mqar_settings(cfg, model.cfg.vocab_size, lengths, mqar_pairs)
    frames = []
    with torch.no_grad(), eval_mode(model):
        for member in SUITES[suite]:
            if member in ("niah", "ruler"):
                names = list(tasks or (NIAH_TASKS if member == "niah" else TASKS))
                codec = codec_for(cfg, model.cfg.vocab_size)
                df = evaluate_tasks(run, codec, names, lengths, D, n, task_options)
                df["score"] = df["all_match"]
            elif member == "mqar":
                df = evaluate_mqar(run, lengths, mqar_pairs, n * D)  # as many examples per length as the needle tasks
            else:
                df = evaluate_lm_position(run, lm_max_x, lm_max_docs)
            if len(df):
                df.insert(0, "member", member)
                frames.append(df)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    summary: dict[str, Any] = {}
    for df in frames:
        member = df["member"].iloc[0]
        if member == "lm-position":
            overall = df[df["scope"] == "overall"]["bpb"]
            summary[member] = {
                "bpb": float(overall.iloc[0]),
                "bpb_last_bucket": float(df[df["scope"] == "bucket"]["bpb"].iloc[-1]),
            }
        else:
            summary[member] = summarize(df, cfg.seq_len, threshold)
    if len(SUITES[suite]) > 1:
        summary[suite] = summarize(table, cfg.seq_len, threshold)
    return SuiteResult(suite, table, summary, cfg.seq_len)


def write_suite(result: SuiteResult, folder: str | Path) -> tuple[Path, Path | None]:
    """``<folder>/<suite>.csv`` and ``<folder>/<suite>_heatmap.png`` (None when no task has a depth)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    csv = folder / f"{result.suite}.csv"
    result.table.to_csv(csv, index=False)
    png = write_heatmap(
        result.table, folder / f"{result.suite}_heatmap.png", title=f"{result.suite}: score by length and depth"
    )
    return csv, png


INT_COLUMNS = ("length", "n", "gap", "num_pairs", "position_bucket_start", "position_bucket_end", "n_bytes", "n_docs")


def task_tables(result: SuiteResult) -> dict[str, pd.DataFrame]:
    """{task: its rows}, without the columns other tasks brought in (and counts as integers again)."""
    out: dict[str, pd.DataFrame] = {}
    if result.table.empty:
        return out
    for task, rows in result.table.groupby("task", sort=False):
        rows = rows.dropna(axis=1, how="all").drop(columns=["member", "task"])
        out[task] = rows.astype({c: int for c in INT_COLUMNS if c in rows.columns})
    return out


def report_lines(result: SuiteResult) -> list[str]:
    """What ``famlab eval --suite`` prints after the progress lines: a table per task, then the summary."""
    lines = []
    with pd.option_context("display.max_rows", 1000, "display.width", 200):
        for task, rows in task_tables(result).items():
            lines += ["", f"{task}:", rows.to_string(index=False)]
    return [*lines, "", *summary_lines(result)]


def summary_lines(result: SuiteResult) -> list[str]:
    """Per member: one line per scored task, then the member's effective length (lm-position: its bpb)."""
    lines = []
    for member, s in result.summary.items():
        if "bpb" in s:
            lines.append(
                f"{member}: {s['bpb']:.4f} bits per byte overall, {s['bpb_last_bucket']:.4f} in the last bucket"
            )
            continue
        if not s:
            continue
        if member != result.suite or len(SUITES[result.suite]) == 1:
            lines += [
                f"  {task:<20} score {t['score']:.3f}, effective length {t['effective_length']} "
                f"({t['effective_length_x']:g}x)"
                for task, t in s["tasks"].items()
            ]
        lines.append(
            f"{member}: score {s['score']:.3f}, effective length {s['effective_length']} ({s['effective_length_x']:g}x; "
            f"mean over tasks {s['mean_effective_length_x']:.3g}x) at threshold {s['threshold']:g}"
        )
    return lines
