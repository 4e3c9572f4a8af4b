"""Evaluation memory is flat in the length (issue #20), measured as the operating system sees it: the peak
resident set size (``ru_maxrss``) of the long-context suite's streamed scorer at 1x, 4x and 16x the training
length.

The peak RSS of a process only ever grows, so every length is measured in a process of its own: one Python
process (one thread) imports famlab and builds a tiny untrained FAM model once, then forks a child per
measurement (importing PyTorch Lightning costs seconds, a fork nothing). A forked child starts with its peak at
its current RSS (Linux resets the high-water mark on fork); it takes that as its baseline, runs ``run_suite``
for one needle task at one length, and reports how far its peak grew. The growth at each length is compared
with the growth at 1x, so the first call's one-off allocations, paid at every length, cancel out.

The bound is half the bytes of the longest prompts' logits (batch x length x vocab float32, 8 MiB here; a full
4096 x 4096 float32 attention score matrix would be 64 MiB per head and prompt): a scorer that holds the whole
sequence's logits at once, as a non-streamed forward does, grows by at least twice the bound from 1x to 16x,
while the streamed one holds a block of them. The negative control is that scorer: the same evaluation with
the streaming chunk set to the whole prompt (``block_size`` = the length, so ``model.step`` gets every prompt
token at once, as ``model(tokens)`` would); it must exceed the bound, which shows the measurement can fail.
tests/test_eval_suite.py checks the same property from inside (state size and chunk length).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork, and ru_maxrss in KiB: Linux")

SEQ_LEN = 256  # the evaluation config's training length
VOCAB = 256
BLOCK = 16
DEPTH_BUCKETS, SAMPLES = 2, 2  # one batch of 4 prompts per length
BATCH = DEPTH_BUCKETS * SAMPLES
LENGTHS = (SEQ_LEN, 4 * SEQ_LEN, 16 * SEQ_LEN)
BOUND_BYTES = BATCH * LENGTHS[-1] * VOCAB * 4 // 2

MEASURE = """
import json, os, resource, sys
import torch
torch.set_num_threads(1)
from famlab.config import ModelConfig
from famlab.data import DataConfig
from famlab.eval.suite import run_suite
from famlab.model import FamLM

vocab, block, seq_len, buckets, samples = (int(a) for a in sys.argv[1:6])
runs = json.loads(sys.argv[6])  # [[length, chunk], ...]
torch.manual_seed(0)
model = FamLM(ModelConfig(vocab_size=vocab, d_model=32, n_layers=2, n_heads=2, block_size=block, mem_segment=1, fam_len=4))
cfg = DataConfig(task="passkey", tokenizer="symbols", seq_len=seq_len)
for length, chunk in runs:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a fresh peak, one evaluation, its growth back through the pipe
        os.close(read)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = run_suite(model, cfg, "niah", block_size=chunk, seed=0, lengths=[length], depth_buckets=buckets,
                           samples=samples, tasks=["niah_single_digits"])
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        done = {"length": length, "chunk": chunk, "growth_kib": after - before, "rows": len(result.table),
                "prompts": int(result.table["n"].sum())}
        os.write(write, json.dumps(done).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        reply = pipe.read()
    _, status = os.waitpid(pid, 0)
    if status != 0:
        sys.exit(f"the child measuring length {length} exited with status {status}")
    print(reply, flush=True)
"""


def peak_growths(runs: list[tuple[int, int]]) -> dict[tuple[int, int], int]:
    """{(length, chunk): bytes} the peak RSS of a fresh process grows by while the suite scores ``length``
    tokens fed to the model ``chunk`` tokens at a time."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    args = [str(v) for v in (VOCAB, BLOCK, SEQ_LEN, DEPTH_BUCKETS, SAMPLES)] + [json.dumps(runs)]
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [(o["length"], o["chunk"]) for o in out] == runs
    assert all(o["rows"] == DEPTH_BUCKETS and o["prompts"] == BATCH for o in out)  # it scored what was asked
    return {(o["length"], o["chunk"]): o["growth_kib"] * 1024 for o in out}


def test_streamed_suite_peak_rss_is_flat_in_the_length_and_a_whole_sequence_scorer_is_not():
    whole = [(LENGTHS[0], LENGTHS[0]), (LENGTHS[-1], LENGTHS[-1])]  # the negative control: one chunk per prompt
    growth = peak_growths([(L, BLOCK) for L in LENGTHS] + whole)
    streamed = {f"{L // SEQ_LEN}x": growth[(L, BLOCK)] - growth[(LENGTHS[0], BLOCK)] for L in LENGTHS}
    one_chunk = growth[whole[1]] - growth[whole[0]]
    seen = {k: f"{v / 2**20:.2f} MiB" for k, v in {**streamed, "one chunk 16x": one_chunk}.items()}
    assert all(g < BOUND_BYTES for g in streamed.values()), (seen, BOUND_BYTES)
    assert one_chunk > BOUND_BYTES, (seen, BOUND_BYTES)  # the bound fails a scorer that is not streamed
