"""The metric names a run writes, by its config: what a sweep's objective and ``metrics:`` may name.

``final_metrics.json`` (:mod:`famlab.train.callbacks`) holds the counters and losses below, the validation
loss when ``data.val_batches`` > 0, and, after ``famlab eval``, an ``eval`` section that sweeps read flattened
as ``eval/<name>`` (its numbers by task, as ``famlab.cli.summarize_eval`` writes them). ``metrics.jsonl``
holds the per-step ``train/...`` and ``val/...`` rows (:mod:`famlab.train.module`); a sweep's objective is
read from ``final_metrics.json`` (and from ``metrics.jsonl`` by a pruner). Tests hold these lists to what a
short run writes.

``state_floats`` (the floats a model carries from block to block per sequence) is a number for every attention
kind but those in :data:`UNBOUNDED_STATE`, whose state grows (null there). The auxiliary losses
(``train/diversity_loss``, ``train/reconstruction_loss``) are logged, and kept in ``final_metrics.json``, when
their ``train.*_loss_weight`` is > 0.
``famlab eval --suite SUITE`` (:mod:`famlab.eval.suite`) adds one section per member to that ``eval`` section, and
for ``all`` one over every scored task: ``eval/<member>/effective_length``, ``eval/<member>/tasks/<task>/score``,
``eval/lm-position/bpb`` (:func:`suite_metrics`). The suites, their members and the members' tasks are declared
here, as plain data a sweep checks without torch; :mod:`famlab.eval.suite` runs these (a test holds the task
names to its own).
"""

from __future__ import annotations

from typing import Any

FINAL_METRICS = ("step", "tokens", "skipped_steps", "train/loss", "train/loss_recent_mean", "wall_time_s")
VAL_METRICS = ("val/loss", "val/bits_per_token", "val/loss_last_logged")  # with data.val_batches > 0
EVAL_METRICS = {  # famlab eval's summary numbers per task (final_metrics.json's "eval" section)
    "passkey": ("eval/accuracy", "eval/digit_accuracy"),
    "text": ("eval/bpb",),
    "recall": ("eval/accuracy", "eval/example_accuracy"),
}
EVAL_TEXT = ("eval/task", "eval/checkpoint", "eval/csv")  # strings, not numbers
TEXT_METRICS = ("checkpoint", "run_dir")  # final_metrics.json's strings
STATE_METRIC = "state_floats"
UNBOUNDED_STATE = ("full",)  # attention kinds whose streaming state grows with the tokens: state_floats is null
AUX_METRICS = {
    "diversity_loss_weight": "train/diversity_loss",
    "reconstruction_loss_weight": "train/reconstruction_loss",
}


def aux_weight_keys(cfg: Any) -> list[str]:
    """The ``train.<name>_loss_weight`` keys of a run of ``cfg`` that are > 0 (its auxiliary losses on)."""
    return [key for key in AUX_METRICS if getattr(cfg.train, key, 0) > 0]


def aux_metrics(cfg: Any) -> list[str]:
    """The auxiliary-loss metrics a run of ``cfg`` logs: those whose ``train.<key>`` weight is > 0."""
    return [AUX_METRICS[key] for key in aux_weight_keys(cfg)]


SUITES: dict[str, tuple[str, ...]] = {  # famlab eval --suite SUITE: the members it runs
    "niah": ("niah",),
    "ruler": ("ruler",),
    "mqar": ("mqar",),
    "lm-position": ("lm-position",),
    "all": ("ruler", "mqar", "lm-position"),
}
# niah_passkey: the run's own PassKey example (famlab.eval.suite.passkey_needle), in every run's niah suite
NIAH_TASKS = ("niah_passkey", "niah_single_digits", "niah_single_words", "niah_single_uuid")
RULER_TASKS = (*NIAH_TASKS, "niah_multikey", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe")
MEMBER_TASKS = {"niah": NIAH_TASKS, "ruler": RULER_TASKS, "mqar": ("mqar",)}  # lm-position scores no task
SCORE_SUMMARY = ("threshold", "score", "effective_length", "effective_length_x")
SCORE_SUMMARY += ("mean_effective_length", "mean_effective_length_x")
TASK_SUMMARY = ("score", "effective_length", "effective_length_x")
LM_SUMMARY = ("bpb", "bpb_last_bucket")  # lm-position: byte-level runs only
HEATMAP_SUITES = ("niah", "ruler", "all")  # the suites with a needle depth: a heatmap PNG


def suite_metrics(suite: str, tokenizer: str = "bytes", *, numeric: bool = True) -> list[str]:
    """The ``eval/...`` names ``famlab eval --suite suite`` adds to final_metrics.json for a run with
    ``tokenizer`` (lm-position reads byte-level text only): numbers, or with ``numeric=False`` the strings too
    (each section's ``csv`` and, for a suite with needles, ``heatmap``)."""
    members = [m for m in SUITES[suite] if m != "lm-position" or tokenizer == "bytes"]
    sections = {m: list(MEMBER_TASKS.get(m, ())) for m in members}
    if len(SUITES[suite]) > 1:  # the summary over every scored task of the suite
        sections[suite] = [t for m in members for t in MEMBER_TASKS.get(m, ())]
    names = []
    for section, tasks in sections.items():
        if section == "lm-position":
            names += [f"eval/{section}/{k}" for k in LM_SUMMARY]
        else:
            names += [f"eval/{section}/{k}" for k in SCORE_SUMMARY]
            names += [f"eval/{section}/tasks/{t}/{k}" for t in tasks for k in TASK_SUMMARY]
        if not numeric:
            names += [f"eval/{section}/csv"] + ([f"eval/{section}/heatmap"] if suite in HEATMAP_SUITES else [])
    return names


def logged_metrics(cfg: Any, *, evaluate: bool = False, numeric: bool = True, suite: str | None = None) -> list[str]:
    """The names a run of ``cfg`` (a :class:`~famlab.config.RunConfig`) leaves in its final metrics, as a
    sweep reads them: numbers only (an objective), or with ``numeric=False`` the strings too (a table may
    show them); ``evaluate``: after ``famlab eval`` (the ``eval/...`` names of the task); ``suite``: after
    ``famlab eval --suite suite`` (:func:`suite_metrics`)."""
    names = list(FINAL_METRICS) + aux_metrics(cfg)
    bounded = cfg.model.attention not in UNBOUNDED_STATE
    if bounded or not numeric:
        names.append(STATE_METRIC)
    if cfg.data.val_batches > 0:
        names += VAL_METRICS
    if evaluate:
        names += EVAL_METRICS[cfg.data.task]
    if not numeric:  # val/loss_last_logged is always there: null without validation
        names += TEXT_METRICS + (EVAL_TEXT if evaluate else ()) + (() if cfg.data.val_batches > 0 else VAL_METRICS[2:])
    if suite is not None:
        names += suite_metrics(suite, cfg.data.tokenizer, numeric=numeric)
    return names
