"""famlab.eval: every task's evaluation streams through ``model.step`` (never ``forward``), restores the
training flag, is deterministic, scores right and wrong answers exactly; greedy decoding equals the
parallel forward."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import StreamingOracle, passkey_digit_to_say

from famlab.config import ModelConfig
from famlab.data import DataConfig
from famlab.data.passkey import encode, make_example
from famlab.eval import evaluate, greedy_decode
from famlab.model import FamLM

TINY = dict(vocab_size=256, d_model=32, n_layers=2, n_heads=2, block_size=16, mem_segment=1, fam_len=4)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(**changes) -> FamLM:
    torch.manual_seed(0)
    return FamLM(ModelConfig(**{**TINY, **changes}))


class NoParallel:
    """Make model.forward fail, so an evaluation can only use init_state/step."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        def fail(*a, **k):
            raise AssertionError("evaluate() must stream with model.step, not call forward")

        self.model.forward = fail
        return self.model

    def __exit__(self, *exc):
        del self.model.forward


def test_evaluate_passkey_streams_on_a_tiny_model():
    model = tiny_model()
    model.train()
    cfg = DataConfig(task="passkey", seq_len=96, passkey_instruction=False)
    lines: list[str] = []
    with NoParallel(model):
        df = evaluate(
            model, cfg, block_size=16, seed=0, lengths=[110, 400], depth_buckets=2, samples=3, progress=lines.append
        )
    assert model.training  # restored
    assert [line.split(":")[0] for line in lines] == ["passkey length 110 (1.14583x)", "passkey length 400 (4.16667x)"]
    for line, (_, cells) in zip(lines, df.groupby("length")):  # each line reports its length's cells, as they end
        assert f"accuracy {cells.accuracy.mean():.3f}, digits {cells.digit_accuracy.mean():.3f} (6 prompts, " in line
    assert {"task", "length", "depth", "n", "accuracy", "digit_accuracy"} <= set(df.columns)
    assert len(df) == 4 and (df.task == "passkey").all() and sorted(df.length.unique()) == [110, 400]
    assert df.depth.tolist() == [0.25, 0.75, 0.25, 0.75] and (df.n == 3).all()
    # an answer with every digit right counts in both; a partly right one only in digit_accuracy
    assert (df.accuracy <= df.digit_accuracy).all() and (df.digit_accuracy <= 1).all()
    again = evaluate(model, cfg, block_size=16, seed=0, lengths=[110, 400], depth_buckets=2, samples=3)
    assert df.equals(again)


def test_streaming_greedy_answer_equals_parallel_forward():
    model = tiny_model().double().eval()
    d = 4
    cases = [("1234", 0.1), ("9876", 0.9)]
    prompts = [encode(make_example(key, 150, depth, instruction=False)[0][:-d]) for key, depth in cases]
    prompt = torch.from_numpy(np.stack(prompts))
    streamed = greedy_decode(model, prompt, d, block_size=16)
    with torch.no_grad():
        logits = model(torch.cat([prompt, streamed[:, :-1]], 1))
    assert torch.equal(logits[:, -d:].argmax(-1), streamed)


class Oracle(StreamingOracle):
    """Passkey mode answers with the first key it read (optionally with its last digit wrong);
    recall mode answers a repeated key with the token that followed its first occurrence; uniform
    mode gives uniform logits."""

    def __init__(self, mode: str, wrong_last: bool = False):
        super().__init__(256, ModelConfig(**TINY))
        self.mode, self.wrong_last = mode, wrong_last

    def answer(self, seen: list[int]) -> int | None:
        if self.mode == "passkey":
            digit = passkey_digit_to_say(bytes(seen).decode(), self.wrong_last)
            return None if digit is None else ord(str(digit))
        elif self.mode == "recall":
            first = seen.index(seen[-1])
            if first < len(seen) - 1:
                return seen[first + 1]
        return None


def test_evaluate_scores_right_and_wrong_answers():
    cfg = DataConfig(task="passkey", seq_len=150, passkey_instruction=False, passkey_key_digits=4)
    kw = dict(block_size=16, seed=0, lengths=[150], depth_buckets=2, samples=2)
    right = evaluate(Oracle("passkey"), cfg, **kw)
    assert (right.accuracy == 1).all() and (right.digit_accuracy == 1).all()
    wrong = evaluate(Oracle("passkey", wrong_last=True), cfg, **kw)
    assert (wrong.accuracy == 0).all() and np.allclose(wrong.digit_accuracy, 0.75)
    rcfg = DataConfig(task="recall", seq_len=64, recall_num_pairs=5)
    lines: list[str] = []
    rec = evaluate(Oracle("recall"), rcfg, block_size=16, seed=0, gaps=[0, 40], samples=3, progress=lines.append)
    assert (rec.accuracy == 1).all() and (rec.example_accuracy == 1).all() and rec.n.tolist() == [15, 15]
    assert [line.split(" (")[0] for line in lines] == ["recall gap 0", "recall gap 40"]
    assert all("accuracy 1.000, whole examples 1.000 (3 examples, " in line for line in lines)


def test_evaluate_recall_streams_on_a_tiny_model():
    model = tiny_model()
    cfg = DataConfig(task="recall", seq_len=64, recall_num_pairs=4)
    with NoParallel(model):
        df = evaluate(model, cfg, block_size=16, seed=0, samples=4)
    assert {"task", "gap", "n", "accuracy", "example_accuracy"} <= set(df.columns)
    assert df.gap.tolist() == [0, 32, 64, 128, 256, 512] and (df.n == 16).all()
    assert (df.example_accuracy <= df.accuracy).all() and (df.accuracy <= 1).all()  # all queries right => each


def test_evaluate_text_bits_per_byte(cache_dir):
    cfg = DataConfig(task="text", cache_dir=cache_dir, seq_len=64)
    model = tiny_model()
    with NoParallel(model):
        df = evaluate(model, cfg, block_size=16, seed=0, max_len=300, buckets=[0, 100, 300])
    cols = {"task", "scope", "position_bucket_start", "position_bucket_end", "bpb", "n_bytes"}
    assert cols <= set(df.columns) and df.scope.tolist() == ["bucket", "bucket", "overall"]
    assert df.n_bytes.tolist() == [3 * 99, 3 * 200, 3 * 299]  # 3 test documents; byte 0 has no context
    assert ((df.bpb > 0) & (df.bpb < 16)).all()
    lines: list[str] = []
    uniform = evaluate(
        Oracle("uniform"), cfg, block_size=16, seed=0, max_len=300, buckets=[0, 100, 300], progress=lines.append
    )
    assert np.allclose(uniform.bpb, math.log2(256))
    assert lines and lines[0].startswith(
        "text test: 8.0000 bits per byte over 3 documents, 897 bytes up to position 300"
    )


def test_ragged_greedy_answers_equal_each_rows_own_greedy_decode():
    """greedy_decode_ragged: rows whose answers differ in length, in one batch, say what each row says alone."""
    from famlab.eval.streaming import greedy_decode_ragged

    model = tiny_model().double().eval()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 256, (4, 90), generator=g)
    lens = torch.tensor([1, 5, 3, 8])
    with torch.no_grad():
        ragged = greedy_decode_ragged(model, ids, lens, block_size=16)
        for r in range(4):
            alone = greedy_decode(model, ids[r : r + 1, : 90 - int(lens[r])], int(lens[r]), block_size=16)[0]
            assert torch.equal(ragged[r, : lens[r]], alone), r
            assert (ragged[r, lens[r] :] == -1).all()
    assert not torch.equal(ragged[1, :5], ragged[3, :5])  # a negative control: rows are not all alike
