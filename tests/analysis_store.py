"""A real tiny sweep store for the analysis and report tests, and synthetic results for the rest.

:func:`build_store` runs two real tiny sweeps into one temporary SQLite store: ``fam_length``
(L_F in {1, 4} x seeds {0, 1}) and ``memory_segment`` (M1 and FAM, one seed, with a recall
evaluation stored on each trial). The test files share it through the ``store`` fixture, built once
per session (under pytest-xdist the first worker builds it under a file lock, the others reuse it)."""

from __future__ import annotations

import fcntl
import itertools
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import TINY

from famlab import analysis as fa
from famlab.sweep import load_spec, run_sweep


def write_spec(tmp: Path, study: str, **fields) -> str:
    spec = {
        "study": study,
        "preset": "tiny",
        "overrides": dict(TINY),
        "objective": {"metric": "val/loss", "direction": "minimize"},
        "metrics": ["val/bits_per_token", "wall_time_s"],
        "profiles": {"tiny": {}},
        **fields,
    }
    path = tmp / f"{study}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def build_store(tmp: Path) -> dict:
    url = f"sqlite:///{tmp / 'store.db'}"
    info = {"url": url, "tmp": tmp, "fam": str(tmp / "fam_length.yaml"), "mem": str(tmp / "memory_segment.yaml")}
    if (tmp / "done").exists():
        return info
    fam = write_spec(
        tmp,
        "fam_length",
        overrides={**TINY, "model.attention": "fam"},
        grid={"model.fam_len": [1, 4]},
        seeds=[0, 1],
        table={"rows": "model.fam_len"},
    )
    mem = write_spec(
        tmp,
        "memory_segment",
        variants={
            "M1": {"model.attention": "bswa", "model.mem_segment": 1},
            "FAM": {"model.attention": "fam", "model.mem_segment": 1},
        },
        grid={"variant": ["M1", "FAM"]},
        seeds=[0],
        evaluate=True,
        eval_overrides={"data.recall_eval_gaps": [0, 1], "data.recall_eval_samples": 4},
        table={"columns": "variant"},
    )
    for path in (fam, mem):
        run_sweep(load_spec(path, "tiny"), url, workers=1, out_root=tmp / "runs", heartbeat=2)
    (tmp / "done").touch()
    return info


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    tmp = shared / "analysis-store"
    tmp.mkdir(exist_ok=True)
    with open(shared / "analysis-store.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return build_store(tmp)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def synthetic(spec_name: str, rows: list[dict], params: list[str], profile: str = "tiny") -> fa.SweepResults:
    """Results of a shipped spec's ``profile`` made of the given trial rows (all COMPLETE)."""
    df = pd.DataFrame([{"study": spec_name, "state": "COMPLETE", **r} for r in rows])
    df.attrs["params"] = params
    return fa.SweepResults(load_spec(spec_name, profile, validate_runs=False), "sqlite:///x.db", df, params=params)


def synthetic_trials(spec) -> pd.DataFrame:
    """Plausible trials for every grid point of a shipped spec (2 seeds), with evaluation tables
    in the task's shape where the spec evaluates."""
    rng = np.random.default_rng(0)
    task = spec.overrides.get("data.task", "text")
    rows = []
    points = [dict(zip(spec.grid, values)) for values in itertools.product(*spec.grid.values())]
    for i, point in enumerate(points):
        for seed in (0, 1):
            value = 2.0 + 0.1 * (i % 5) + 0.01 * rng.standard_normal()
            row = {"state": "COMPLETE", **point, "seed": seed, "val/loss": value, "val/bits_per_token": value / 0.69}
            row["wall_time_s"] = 10.0 + i
            row["train/loss_recent_mean"] = value + 0.05
            if spec.evaluate and task == "passkey":
                row["eval_table"] = [
                    {"task": "passkey", "length": n, "depth": d, "n": 8, "accuracy": a, "digit_accuracy": a}
                    for n, a in ((256, 1.0), (1024, 0.5 * (i % 2)), (4096, 0.25 * (i % 3)))
                    for d in (0.25, 0.75)
                ]
                row["eval/accuracy"] = row["eval/digit_accuracy"] = 0.25 * (i % 3)
            elif spec.evaluate and task == "recall":
                row["eval_table"] = [
                    {"task": "recall", "gap": g, "gap_x": g / 128, "length": 16 + g, "num_pairs": 4, "n": 128}
                    | {"accuracy": a, "example_accuracy": a**4}
                    for g, a in ((0, 0.9), (128, 0.5 * (i % 2)), (256, 0.25 * (i % 3)))
                ]
                row["eval/accuracy"] = row["eval/example_accuracy"] = 0.25 * (i % 3)
                row["state_floats"] = 1000 + 100 * i
            elif spec.evaluate:
                row["eval_table"] = [
                    {"task": "text", "scope": "bucket", "position_bucket_start": s, "position_bucket_end": 2 * s or 64}
                    | {"bpb": value + 0.01 * k, "n_bytes": 10}
                    for k, s in enumerate((0, 64, 128, 256))
                ] + [{"task": "text", "scope": "overall", "position_bucket_start": 0, "bpb": value, "n_bytes": 40}]
                row["eval/bpb"] = value
            if spec.eval_suite is not None:  # the suite's numbers the spec names, and its rows (a needle task)
                for name in (spec.metric, *spec.metrics):
                    if name.startswith(f"eval/{spec.eval_suite}/"):
                        row[name] = float(i % 3)
                row["suite_table"] = [
                    {"task": "niah_single_digits", "length": 128 * x, "length_x": x, "depth": d, "score": 1.0 / x}
                    for x in (1, 2, 4)
                    for d in (0.25, 0.75)
                ]
            row["objective"] = row.get(spec.metric, value)
            rows.append(row)
    return pd.DataFrame(rows)


def write_bench_file(path: Path, ts: str, seq_len: int, times: dict[str, float], mem: dict[str, float] | None) -> None:
    """A famlab.bench JSON result with one entry per variant (step times in seconds, memory in MB)."""
    variants = [
        {"name": v, "attention": v, "impl": "fast", "step_time_median_s": t, "step_time_s": t, "tokens_per_s": 1 / t}
        | {"peak_mem_mb": (mem or {}).get(v)}
        for v, t in times.items()
    ]
    cfg = {"seq_len": seq_len, "batch_size": 2, "d_model": 64, "n_layers": 2, "block_size": 64}
    data = {
        "timestamp": ts,
        "config": {**cfg, "mem_segment": 1, "fam_len": 4, "dtype": "float32"},
        "variants": variants,
    }
    path.write_text(json.dumps(data))
