"""The synthetic tasks' evaluation: samples per (task, length, depth bucket), streamed through
``model.step`` (:func:`famlab.eval.streaming.greedy_decode_ragged`: memory constant in the length), the
answer decoded greedily, one ``step`` per answer token, and scored as RULER
scores it, on the decoded text (case-insensitive):

* ``all_match``: the fraction of the sample's reference values that the prediction contains
  (RULER's ``string_match_all``, its score for every synthetic task);
* ``part_match``: 1 if the prediction contains any reference value (RULER's ``string_match_part``);
* ``exact``: 1 if the predicted tokens are exactly the answer's.

A (task, length) whose samples do not all fit in the length (a multi-needle prompt at a short length) is
skipped with a progress line; if nothing fits at all, the first such error is raised.
The prediction is exactly as many tokens as the reference answer. All samples of a (task, length), every
depth bucket, stream together as one batch, whatever their answers' lengths. Rows: task, length, length_x,
depth (bucket midpoint; nan for tasks without a needle), depth_lo, depth_hi, n, all_match, part_match,
exact. Examples are drawn from ``np.random.default_rng([seed, code, task code, length, bucket, buckets])``:
the same seed gives the same samples.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from famlab.config.metrics import NIAH_TASKS  # noqa: F401  (re-exported: the niah suite's tasks, declared there)
from famlab.eval.streaming import EvalRun, greedy_decode_ragged
from famlab.eval.suite.codec import Codec
from famlab.eval.suite.niah import niah_multikey, niah_multiquery, niah_multivalue, niah_single
from famlab.eval.suite.passkey_needle import niah_passkey
from famlab.eval.suite.sample import Sample, TooShort
from famlab.eval.suite.tracking import cwe, fwe, vt

SUITE_CODE = 20  # issue #20; keeps the suite's random streams apart from the tasks' own


@dataclass(frozen=True)
class SyntheticTask:
    name: str
    code: int
    make: Callable[..., Sample]  # (codec, rng, length, depth) -> Sample
    has_depth: bool = True


TASKS = {
    t.name: t
    for t in (
        SyntheticTask("niah_passkey", 10, niah_passkey),  # the run's own PassKey format (first: RULER_TASKS' order)
        SyntheticTask("niah_single_digits", 1, niah_single("digits")),
        SyntheticTask("niah_single_words", 2, niah_single("words")),
        SyntheticTask("niah_single_uuid", 3, niah_single("uuid")),
        SyntheticTask("niah_multikey", 4, niah_multikey),
        SyntheticTask("niah_multivalue", 5, niah_multivalue),
        SyntheticTask("niah_multiquery", 6, niah_multiquery),
        SyntheticTask("vt", 7, vt),
        SyntheticTask("cwe", 8, cwe, has_depth=False),
        SyntheticTask("fwe", 9, fwe, has_depth=False),
    )
}


def cell_rng(seed: int, task: SyntheticTask, length: int, bucket: int, buckets: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), SUITE_CODE, task.code, int(length), bucket, buckets])


def make_samples(
    codec: Codec, task: SyntheticTask, seed: int, length: int, bucket: int, buckets: int, n: int
) -> list[Sample]:
    """The ``n`` samples of one cell: depth uniform in the bucket (no depth for tasks without a needle)."""
    rng = cell_rng(seed, task, length, bucket, buckets)
    out = []
    for _ in range(n):
        depth = (bucket + rng.random()) / buckets if task.has_depth else float("nan")
        out.append(task.make(codec, rng, length, depth))
    return out


def score(prediction: str, refs: list[str]) -> tuple[float, float]:
    """(all_match, part_match) of one prediction, as RULER's string_match_all / string_match_part."""
    pred = prediction.lower()
    found = [r.lower() in pred for r in refs]
    return float(np.mean(found)), float(any(found))


def run_samples(run: EvalRun, codec: Codec, samples: list[Sample]) -> list[tuple[float, float, float]]:
    """(all_match, part_match, exact) per sample, in order, all samples (one length) streamed as one batch."""
    ids = np.stack([s.ids for s in samples])
    lens = np.asarray([s.answer_len for s in samples])
    tokens = torch.from_numpy(ids).to(run.device)
    pred = greedy_decode_ragged(run.model, tokens, torch.from_numpy(lens), run.block_size).cpu().numpy()
    out = []
    for row, s in enumerate(samples):
        said = pred[row, : s.answer_len]
        a, p = score(codec.decode(said), s.refs)
        out.append((a, p, float(np.array_equal(said, ids[row, -s.answer_len :]))))
    return out


def evaluate_tasks(
    run: EvalRun,
    codec: Codec,
    tasks: list[str],
    lengths: list[int],
    depth_buckets: int,
    samples: int,
    options: dict[str, dict] | None = None,
) -> pd.DataFrame:
    """Every task at every length (and depth bucket); one progress line per (task, length)."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"tasks={unknown} is not allowed: expected some of {', '.join(TASKS)}")
    rows, skipped = [], []
    for name in tasks:
        task = TASKS[name]
        if options and name in options:
            task = SyntheticTask(task.name, task.code, functools.partial(task.make, **options[name]), task.has_depth)
        D = depth_buckets if task.has_depth else 1
        for length in lengths:
            t0, cells = time.monotonic(), []
            try:
                batch = [s for b in range(D) for s in make_samples(codec, task, run.seed, length, b, D, samples)]
            except TooShort as e:
                skipped.append(e)
                run.say(f"{name} length {length} ({length / run.cfg.seq_len:g}x): skipped: {e}")
                continue
            scores = np.asarray(run_samples(run, codec, batch)).reshape(D, samples, 3)  # one batch per length
            for b in range(D):
                cells.append(
                    {
                        "task": name,
                        "length": length,
                        "length_x": length / run.cfg.seq_len,
                        "depth": (b + 0.5) / D if task.has_depth else float("nan"),
                        "depth_lo": b / D if task.has_depth else float("nan"),
                        "depth_hi": (b + 1) / D if task.has_depth else float("nan"),
                        "n": samples,
                        "all_match": float(scores[b, :, 0].mean()),
                        "part_match": float(scores[b, :, 1].mean()),
                        "exact": float(scores[b, :, 2].mean()),
                    }
                )
            rows += cells
            run.say(
                f"{name} length {length} ({length / run.cfg.seq_len:g}x): all-match "
                f"{np.mean([c['all_match'] for c in cells]):.3f}, part-match {np.mean([c['part_match'] for c in cells]):.3f} "
                f"({samples * D} prompts, {time.monotonic() - t0:.1f} s)"
            )
    if not rows and skipped:
        raise skipped[0]
    return pd.DataFrame(rows)
