"""famlab.eval.suite (issue #20): every synthetic sample is exactly the requested length with its needle at
the requested depth, in every tokenizer; samples are deterministic per seed; a streaming oracle that
reads the prompt (and only the prompt) scores 1 on every task, a guesser 0, and an oracle that can see
only the last W tokens scores exactly where theory says (the effective length lands on W); MQAR reuses
the recall task (tests/test_eval_suite_members.py); the model's state stays the same size at every length.
The readers are tests/suite_readers.py's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from suite_readers import VOCAB, Reader, tasks_frame
from torch import nn

from famlab.config import ModelConfig
from famlab.data import DataConfig
from famlab.eval.suite import SUITES, run_suite, summary_lines, write_suite
from famlab.eval.suite.codec import codec_for
from famlab.eval.suite.ruler import NIAH_TASKS, TASKS, make_samples
from famlab.eval.suite.summary import effective_length, summarize
from famlab.model import FamLM

pytestmark = pytest.mark.usefixtures("one_thread")

SYM = dict(task="passkey", tokenizer="symbols", seq_len=160)
SYM_LENGTHS = [256, 512]  # fwe's text needs up to 254 symbols (25 words of up to 8 letters, and its answer)


def byte_cfg(cache_dir, **kw):
    return DataConfig(**{"task": "passkey", "seq_len": 400, "passkey_instruction": False, "cache_dir": cache_dir, **kw})


# --- the samples ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def codecs(cache_dir):
    return {
        "symbols": (codec_for(DataConfig(**SYM), VOCAB), SYM_LENGTHS),
        "bytes": (codec_for(byte_cfg(cache_dir), VOCAB), [420, 1500]),
        "bytes+instruction": (codec_for(byte_cfg(cache_dir, passkey_instruction=True), VOCAB), [560, 1500]),
    }


@pytest.mark.parametrize("kind", ["symbols", "bytes", "bytes+instruction"])
def test_every_sample_is_exactly_its_length_with_the_needle_at_its_depth(codecs, kind):
    codec, lengths = codecs[kind]
    tol = 0 if codec.kind == "symbols" else 40  # bytes: needles go in at the nearest word start
    for task in TASKS.values():
        for length in lengths:
            for bucket in range(4):
                for s in make_samples(codec, task, 3, length, bucket, 4, 2):
                    assert len(s.ids) == length, (task.name, length)
                    answer = codec.decode(s.ids[-s.answer_len :]).lower()  # symbols read uppercase as lowercase
                    assert all(r.lower() in answer for r in s.refs) and len(s.refs) >= 1
                    if not task.has_depth:
                        assert np.isnan(s.depth)
                        continue
                    # the target needle's tokens start at needle_at, after `offset` haystack tokens
                    if task.name == "niah_passkey":  # PassKey's own key sentence (tests/test_eval_suite_passkey.py)
                        sentence = codec.passkey.key_parts(s.refs[0])[0]
                        assert np.array_equal(s.ids[s.needle_at : s.needle_at + len(sentence)], sentence)
                    else:
                        needle = codec.decode(s.ids[s.needle_at :])
                        lead = codec.templates["vt_value" if task.name == "vt" else "needle"].split("{")[0]
                        assert needle.startswith(lead) and s.refs[0].lower() in needle[:120].lower()
                    assert s.depth == s.offset / s.hay_len
                    # the requested depth was uniform in the bucket: the actual one is within tol tokens of it
                    lo, hi = bucket / 4 * s.hay_len - tol, (bucket + 1) / 4 * s.hay_len + tol
                    assert lo <= s.offset <= hi + 0.5, (task.name, length, bucket, s.offset, s.hay_len)


def test_a_sample_that_does_not_fit_names_the_length_and_the_minimum():
    codec = codec_for(DataConfig(**SYM), VOCAB)
    with pytest.raises(ValueError, match=r"length=20 is not allowed for task niah_multiquery: expected >= \d+ tokens"):
        make_samples(codec, TASKS["niah_multiquery"], 0, 20, 0, 1, 1)


def test_samples_are_deterministic_per_seed(cache_dir):
    codec = codec_for(byte_cfg(cache_dir), VOCAB)
    for task in TASKS.values():
        a = make_samples(codec, task, 5, 600, 1, 3, 3)
        b = make_samples(codec, task, 5, 600, 1, 3, 3)
        c = make_samples(codec, task, 6, 600, 1, 3, 3)
        assert all(np.array_equal(x.ids, y.ids) and x.refs == y.refs for x, y in zip(a, b))
        assert not all(np.array_equal(x.ids, y.ids) for x, y in zip(a, c))
        assert len({tuple(s.refs) for s in a}) == 3  # the samples of a cell differ


# --- scoring: oracle, guesser, receptive field --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["symbols", "bytes"])
def test_a_reader_of_the_prompt_scores_one_on_every_task_and_a_guesser_zero(cache_dir, kind):
    cfg = DataConfig(**SYM) if kind == "symbols" else byte_cfg(cache_dir)
    lengths = SYM_LENGTHS if kind == "symbols" else [400, 800]
    codec = codec_for(cfg, VOCAB)
    kw = dict(depth_buckets=2, samples=2)
    right = tasks_frame(lambda task: Reader(codec, task), cfg, lengths, **kw)
    assert set(right.task) == set(TASKS) and set(right.length) == set(lengths)
    assert (right.all_match == 1).all() and (right.part_match == 1).all(), right[right.all_match < 1]
    guess = tasks_frame(lambda task: Reader(codec, None, guess=True), cfg, lengths, **kw)
    assert (guess.all_match == 0).all() and (guess.part_match == 0).all() and (guess.exact == 0).all()
    # a reader that cannot see the needles (uniform logits: it says token 0) scores 0 too (not cwe and fwe: the
    # last 8 tokens still show the list's last words, among them, by chance, common ones)
    blind = tasks_frame(lambda task: Reader(codec, task, window=8), cfg, lengths[:1], **kw)
    assert (blind[~blind.task.isin(["cwe", "fwe"])].all_match == 0).all()


def test_a_reader_with_a_receptive_field_scores_inside_it_and_the_effective_length_is_its_edge(tmp_path):
    W, seq_len = 128, 64  # the reader sees the last W tokens: 2x the training length
    cfg = DataConfig(task="passkey", tokenizer="symbols", seq_len=seq_len)
    codec = codec_for(cfg, VOCAB)
    lengths, D, n = [64, 128, 256, 512], 4, 4
    res = run_suite(
        Reader(codec, "niah_single_digits", window=W),
        cfg,
        "niah",
        block_size=16,
        seed=1,
        lengths=lengths,
        depth_buckets=D,
        samples=n,
        tasks=["niah_single_digits"],
    )
    df = res.table
    for _, cell in df.iterrows():  # theory, per sample: right iff the whole needle is in the last W prompt tokens
        bucket = int(cell.depth_lo * D)
        samples = make_samples(codec, TASKS["niah_single_digits"], 1, int(cell.length), bucket, D, n)
        inside = [s.needle_at >= len(s.ids) - s.answer_len - W for s in samples]
        assert cell.all_match == np.mean(inside), cell
    by_length = df.groupby("length").all_match.mean()
    assert by_length[64] == by_length[128] == 1 and by_length[512] < 0.5  # 8x: only the last eighth is seen
    s = res.summary["niah"]
    assert (
        s["effective_length"] == W
        and s["effective_length_x"] == 2
        and s["tasks"]["niah_single_digits"]["effective_length"] == W
    )
    csv, png = write_suite(res, tmp_path)
    assert csv.read_text().splitlines()[0].startswith("member,task,length,length_x,depth")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary_lines(res)[-1].startswith("niah: score ") and "effective length 128 (2x;" in summary_lines(res)[-1]


def test_a_task_that_does_not_fit_a_length_is_skipped_there():
    cfg = DataConfig(task="passkey", tokenizer="symbols", seq_len=64)
    codec = codec_for(cfg, VOCAB)
    lines: list[str] = []
    kw = dict(block_size=16, seed=0, depth_buckets=2, samples=2, progress=lines.append)
    res = run_suite(Reader(codec, "niah_single_uuid"), cfg, "niah", lengths=[64, 128], tasks=["niah_single_uuid"], **kw)
    assert lines[0].startswith("niah_single_uuid length 64 (1x): skipped: length=64 is not allowed for task ")
    assert res.table.length.unique().tolist() == [128] and (res.table.score == 1).all()
    assert res.summary["niah"]["effective_length"] == 128
    with pytest.raises(ValueError, match="length=64 is not allowed for task niah_single_uuid"):
        run_suite(Reader(codec, None), cfg, "niah", lengths=[64], tasks=["niah_single_uuid"], **kw)


def test_effective_length_is_the_last_length_before_the_first_drop():
    import pandas as pd

    s = pd.Series({100: 0.9, 200: 0.86, 400: 0.5, 800: 0.95})
    assert effective_length(s, 0.85) == 200  # 800 is above again, but after a drop
    assert effective_length(s, 0.95) == 0 and effective_length(s, 0.1) == 800
    df = pd.DataFrame({"task": ["a", "a", "b", "b"], "length": [100, 200, 100, 200], "score": [1.0, 0.9, 1.0, 0.6]})
    out = summarize(df, seq_len=100)
    assert out["tasks"]["a"]["effective_length"] == 200 and out["tasks"]["b"]["effective_length"] == 100
    assert out["effective_length"] == 100  # the average at 200 is 0.75
    assert out["mean_effective_length_x"] == 1.5


# --- memory ---------------------------------------------------------------------------------------------------


class Measured(nn.Module):
    """A FamLM whose streamed calls are recorded: the most tokens in one call and the most bytes the
    state's tensors hold (their whole storage, so a view into a growing buffer would show)."""

    def __init__(self, model: FamLM):
        super().__init__()
        self.model, self.cfg = model, model.cfg
        self.max_tokens, self.max_state = 0, 0

    def init_state(self, b, device=None):
        return self.model.init_state(b, device=device)

    def step(self, tokens, state):
        logits, state = self.model.step(tokens, state)
        storages = {}
        state.map(lambda t: storages.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()))
        self.max_tokens = max(self.max_tokens, tokens.shape[1])
        self.max_state = max(self.max_state, sum(storages.values()))
        return logits, state


def test_evaluation_memory_is_flat_in_the_length():
    torch.manual_seed(0)
    fam = FamLM(
        ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=2, block_size=16, mem_segment=1, fam_len=4)
    )
    cfg = DataConfig(task="passkey", tokenizer="symbols", seq_len=64)
    peaks = {}
    for length in (64, 256, 1024):
        m = Measured(fam)
        run_suite(
            m,
            cfg,
            "niah",
            block_size=16,
            seed=0,
            lengths=[length],
            depth_buckets=1,
            samples=2,
            tasks=["niah_single_digits"],
        )
        peaks[length] = (m.max_tokens, m.max_state)
    assert len(set(peaks.values())) == 1, peaks  # the same state size at 1x and 16x
    assert peaks[64][0] <= 16  # never more than one block of tokens (and of logits) at once


def test_suites_name_their_members():
    assert SUITES["all"] == ("ruler", "mqar", "lm-position") and set(NIAH_TASKS) < set(TASKS)
    with pytest.raises(ValueError, match="suite='x' is not allowed: expected one of niah, ruler"):
        run_suite(None, DataConfig(**SYM), "x", block_size=16, seed=0)


@pytest.mark.parametrize("threshold", [-0.1, 1.01, float("nan")])
def test_a_threshold_outside_scores_is_refused(threshold):
    with pytest.raises(ValueError, match=rf"threshold={threshold!r} is not allowed: expected a score in \[0, 1\]"):
        run_suite(None, DataConfig(**SYM), "niah", block_size=16, seed=0, threshold=threshold)
