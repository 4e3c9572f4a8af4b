"""The suite's ``niah_passkey`` task (famlab.eval.suite.passkey_needle): each sample is exactly the example
famlab's PassKey task builds (famlab.data.passkey) for its key, length and depth, in bytes (with and without
the instruction) and symbols; a streaming reader of the prompt scores 1, a guesser 0, and a reader that sees
only its last W tokens scores exactly where its window ends. The readers are tests/suite_readers.py's."""

from __future__ import annotations

import numpy as np
import pytest
from suite_readers import VOCAB, Reader

from famlab.config.metrics import NIAH_TASKS, RULER_TASKS, suite_metrics
from famlab.data import DataConfig
from famlab.data.passkey import PasskeyTask, fitting_key, make_example
from famlab.eval.suite import run_suite
from famlab.eval.suite.codec import codec_for
from famlab.eval.suite.ruler import TASKS, cell_rng, make_samples

pytestmark = pytest.mark.usefixtures("one_thread")

TASK = TASKS["niah_passkey"]


def configs(cache_dir):
    byte = dict(task="passkey", seq_len=400, cache_dir=cache_dir)
    return {
        "symbols": (DataConfig(task="passkey", tokenizer="symbols", seq_len=64, passkey_key_digits=4), [64, 300]),
        "bytes": (DataConfig(**byte, passkey_instruction=False), [120, 1000]),
        "bytes+instruction": (DataConfig(**byte, passkey_key_digits=7), [300, 1000]),
    }


@pytest.mark.parametrize("kind", ["symbols", "bytes", "bytes+instruction"])
def test_a_sample_is_the_example_the_passkey_task_builds(cache_dir, kind):
    cfg, lengths = configs(cache_dir)[kind]
    codec = codec_for(cfg, VOCAB)
    pieces = PasskeyTask(cfg, vocab_size=VOCAB, block_size=16).pieces
    assert codec.passkey is pieces  # the run's own pieces: its filler, instruction, markers
    D, n, seed = 4, 3, 7
    for length in lengths:
        for b in range(D):
            rng = cell_rng(seed, TASK, length, b, D)  # the reference: the same draws, made by hand
            for s in make_samples(codec, TASK, seed, length, b, D, n):
                depth = (b + rng.random()) / D
                key = fitting_key(rng, pieces, cfg.passkey_key_digits, length, tries=100)
                ids, answer_len, actual = pieces.example(key, length, depth)
                assert s.refs == [key] and len(key) == cfg.passkey_key_digits
                assert np.array_equal(s.ids, ids) and len(s.ids) == length and s.answer_len == answer_len
                assert s.depth == actual == s.offset / s.hay_len and s.hay_len == length - pieces.fixed_len(key)
                sentence, question, answer = pieces.key_parts(key)
                assert np.array_equal(s.ids[s.needle_at : s.needle_at + len(sentence)], sentence)
                assert s.needle_at == len(pieces.head) + s.offset
                assert np.array_equal(s.ids[-answer_len:], answer) and codec.decode(answer) == key
                # the key sits at the requested depth: exactly (symbols) or at the nearest sentence boundary
                tol = 0.5 if kind == "symbols" else len(pieces.period) / 2
                assert abs(s.offset - depth * s.hay_len) <= tol and b / D * s.hay_len - tol <= s.offset
                if kind != "symbols":  # the text is PassKey's byte example
                    text, _ = make_example(key, length, depth, instruction=cfg.passkey_instruction)
                    assert codec.decode(s.ids) == text and f"The pass key is {key}. Remember it." in text
                    assert text.endswith(f"\nWhat is the pass key? The pass key is {key}")
                else:  # key marker + digits in the filler, question marker, digits
                    assert s.ids[s.needle_at] == 11 and s.ids[-answer_len - 1] == 12


def test_a_length_below_the_fixed_prompt_is_skipped_with_its_minimum(cache_dir):
    cfg, _ = configs(cache_dir)["symbols"]
    codec = codec_for(cfg, VOCAB)
    with pytest.raises(ValueError, match=r"length=9 is not allowed for task niah_passkey: expected >= 10 tokens"):
        make_samples(codec, TASK, 0, 9, 0, 1, 1)


@pytest.mark.parametrize("kind", ["symbols", "bytes+instruction"])
def test_a_reader_of_the_prompt_scores_one_and_a_guesser_zero(cache_dir, kind):
    cfg, lengths = configs(cache_dir)[kind]
    codec = codec_for(cfg, VOCAB)
    kw = dict(block_size=16, seed=0, lengths=lengths, depth_buckets=3, samples=3, tasks=["niah_passkey"])
    right = run_suite(Reader(codec, "niah_passkey"), cfg, "niah", **kw).table
    assert set(right.length) == set(lengths) and len(right) == 3 * len(lengths)
    assert (right.all_match == 1).all() and (right.part_match == 1).all() and (right.exact == 1).all()
    guess = run_suite(Reader(codec, None, guess=True), cfg, "niah", **kw).table
    assert (guess.all_match == 0).all() and (guess.exact == 0).all()
    # negative control: a reader of another task's format (RULER's keyed needle) finds no key here
    other = run_suite(Reader(codec, "niah_single_digits"), cfg, "niah", **kw).table
    assert (other.all_match == 0).all()


def test_a_reader_with_a_window_scores_where_the_window_ends():
    W, seq_len, D, n = 96, 64, 4, 6
    cfg = DataConfig(task="passkey", tokenizer="symbols", seq_len=seq_len, passkey_key_digits=4)
    codec = codec_for(cfg, VOCAB)
    lengths = [64, 128, 256, 512]
    res = run_suite(
        Reader(codec, "niah_passkey", window=W),
        cfg,
        "niah",
        block_size=16,
        seed=2,
        lengths=lengths,
        depth_buckets=D,
        samples=n,
        tasks=["niah_passkey"],
    )
    edge = 0
    for (
        _,
        cell,
    ) in res.table.iterrows():  # theory, per sample: right iff the key sentence is in the last W prompt tokens
        samples = make_samples(codec, TASK, 2, int(cell.length), int(cell.depth_lo * D), D, n)
        inside = [s.needle_at >= len(s.ids) - s.answer_len - W for s in samples]
        assert cell.all_match == np.mean(inside), cell
        edge += 0 < np.mean(inside) < 1  # a cell that the window's end cuts through
    assert edge >= 1
    by_length = res.table.groupby("length").all_match.mean()
    assert by_length[64] == 1 and by_length[512] < 0.5
    assert res.summary["niah"]["effective_length"] == 64  # 128 tokens are more than the window sees


def test_niah_passkey_is_a_niah_task_with_its_metric_names():
    assert NIAH_TASKS[0] == "niah_passkey" and RULER_TASKS[0] == "niah_passkey" and list(TASKS)[0] == "niah_passkey"
    for suite in ("niah", "ruler", "all"):
        assert f"eval/{suite}/tasks/niah_passkey/effective_length" in suite_metrics(suite, "symbols")
