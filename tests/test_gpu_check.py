"""bench/gpu_check.sh, dry-run on the CPU (DEVICE=cpu): the whole flow (tests, bf16 benchmark, one JSON)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_script_dry_run_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {
        **os.environ,
        "DEVICE": "cpu",
        "PY": sys.executable,
        "SEQ_LENS": "96",
        "COMPILED_SEQ_LENS": "64",
        "BENCH_ARGS": "--block-size 32 --fam-len 4 --d-model 32 --iters 1 --warmup 1 --matmul-size 128 --matmul-reps 1",
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), str(out)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads(out.read_text())
    tests = res["tests"]
    assert tests["tests"] == len(tests["cases"]) >= 16 and tests["failures"] == tests["errors"] == 0
    assert all(c["outcome"] == "passed" for c in tests["cases"])  # DEVICE=cpu: nothing skipped
    bench = res["bench"]["96"]
    assert bench["config"]["dtype"] == "bfloat16" and bench["config"]["device"] == "cpu"
    names = [v["name"] for v in bench["variants"]]
    assert names == ["full", "bswa", "txl", "fam", "fam-layer-major", "fam-ref"]
    assert all(v["tokens_per_s"] > 0 for v in bench["variants"]) and "| fam |" in bench["markdown"]
    compiled = res["bench"]["64_compiled"]
    assert [v["name"] for v in compiled["variants"]] == [
        "bswa",
        "fam",
        "fam-compiled",
        "fam-graphs",
        "fam-graphs-update",
    ]
    assert compiled["config"]["seq_len"] == 64 and all(v["tokens_per_s"] > 0 for v in compiled["variants"])
