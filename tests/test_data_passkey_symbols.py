"""PassKey as abstract symbols (``data.tokenizer=symbols``): layout and exact lengths, the scored
answer positions, scoring with an oracle that reads the symbols back, and config errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import StreamingOracle

from famlab.config import load_run_config
from famlab.data import DataConfig, build_datamodule
from famlab.data.passkey import SYMBOL_DIGIT0, SYMBOL_FILLER0, SYMBOL_KEY, SYMBOL_QUESTION, pieces_for
from famlab.eval import evaluate

VOCAB = 64


def cfg_for(**kw):
    return DataConfig(**{"task": "passkey", "tokenizer": "symbols", "seq_len": 128, "batch_size": 16, **kw})


def digits_of(key: str) -> list[int]:
    return [SYMBOL_DIGIT0 + int(c) for c in key]


def test_example_layout_exact_length_and_depth():
    pieces = pieces_for(cfg_for(), VOCAB)
    assert pieces.fixed_len("1234") == 2 * 4 + 2  # KEY d1..d4, QUESTION, d1..d4
    for length in (10, 11, 128, 2000):
        for depth in (0.0, 0.3, 1.0):
            ids, answer_len, actual = pieces.example("5071", length, depth)
            assert len(ids) == length and answer_len == 4 and ids.dtype == np.int64
            assert ids[-5:].tolist() == [SYMBOL_QUESTION, *digits_of("5071")]
            k = int(np.flatnonzero(ids == SYMBOL_KEY)[0])
            assert ids[k : k + 5].tolist() == [SYMBOL_KEY, *digits_of("5071")]
            filler = np.concatenate([ids[:k], ids[k + 5 : -5]])
            assert len(filler) == length - 10 and ((filler >= SYMBOL_FILLER0) & (filler < VOCAB)).all()
            assert k == round(depth * (length - 10)) and actual == pytest.approx(k / max(1, length - 10))
    with pytest.raises(ValueError, match="too short"):
        pieces.example("5071", 9, 0.5)


def test_training_batches_score_exactly_the_answer_digits():
    cfg = cfg_for(passkey_key_digits=5, passkey_train_blocks_min=2)
    dm = build_datamodule(cfg, vocab_size=VOCAB, block_size=16, seed=0)
    for k in range(3):
        batch = dm.train_batch(k)
        assert int(batch["input"].max()) < VOCAB
        for r in range(cfg.batch_size):
            inp, tgt, w = batch["input"][r], batch["target"][r], batch["weight"][r]
            scored = torch.nonzero(w).flatten()
            assert len(scored) == 5 and torch.equal(scored, torch.arange(scored[0], scored[0] + 5))
            assert int(inp[scored[0]]) == SYMBOL_QUESTION  # the question is the last prompt token
            k_pos = int(torch.nonzero(inp == SYMBOL_KEY)[0])
            assert torch.equal(tgt[scored], inp[k_pos + 1 : k_pos + 6])  # the answer is the key
            length = int(scored[-1]) + 2
            assert 2 * 16 <= length <= 129 and (inp[length:] == 0).all()


def test_packed_rows_hold_consecutive_scored_examples():
    cfg = cfg_for(passkey_pack=True, passkey_train_blocks_max=3, batch_size=8)
    batch = build_datamodule(cfg, vocab_size=VOCAB, block_size=16, seed=0).train_batch(0)
    for r in range(cfg.batch_size):
        row = torch.cat([batch["input"][r], batch["target"][r, -1:]])  # the whole example stream
        w = torch.cat([torch.zeros(1), batch["weight"][r]])  # weight of each token of the row
        keys = torch.nonzero(row == SYMBOL_KEY).flatten().tolist()
        questions = torch.nonzero(row == SYMBOL_QUESTION).flatten().tolist()
        assert len(keys) == len(questions) >= 128 // 48  # several examples of at most 3 blocks
        ends = [q + 5 for q in questions]  # each example ends with its 4 answer digits
        starts = [0, *ends[:-1]]
        for s, k, q, e in zip(starts, keys, questions, ends):
            assert s <= k < q and e - s <= 48  # one key per example, then its question
            assert torch.equal(row[q + 1 : e], row[k + 1 : k + 5])  # the answer is that example's key
            assert w[s:e].tolist() == [0.0] * (e - s - 4) + [1.0] * 4  # scored: exactly its answer
        assert ends[-1] > 129 - 10 and (row[ends[-1] :] == 0).all()  # only a too-short tail is padding
    unpacked = build_datamodule(
        cfg_for(passkey_train_blocks_max=3, batch_size=8), vocab_size=VOCAB, block_size=16, seed=0
    )
    assert all(int((row == SYMBOL_KEY).sum()) == 1 for row in unpacked.train_batch(0)["input"])


class SymbolOracle(StreamingOracle):
    """Remembers the digits after the KEY symbol and answers them one per step after QUESTION
    (optionally with the last digit wrong): a stand-in model that tests the streaming scorer."""

    def __init__(self, wrong_last=False):
        super().__init__(VOCAB)
        self.wrong_last = wrong_last

    def answer(self, seen: list[int]) -> int | None:
        if SYMBOL_QUESTION not in seen:
            return None
        k = seen.index(SYMBOL_KEY)
        key = seen[k + 1 : seen.index(SYMBOL_QUESTION, k)]
        key = key[: next((j for j, x in enumerate(key) if x >= SYMBOL_FILLER0), len(key))]
        said = len(seen) - 1 - seen.index(SYMBOL_QUESTION, k)
        if said >= len(key):
            return None
        digit = key[said]
        if self.wrong_last and said == len(key) - 1:
            digit = SYMBOL_DIGIT0 + (digit - SYMBOL_DIGIT0 + 1) % 10
        return digit


def test_evaluate_scores_symbol_answers():
    kw = dict(block_size=16, seed=0, lengths=[40, 300], depth_buckets=2, samples=3)
    right = evaluate(SymbolOracle(), cfg_for(), **kw)
    assert (right.accuracy == 1).all() and (right.digit_accuracy == 1).all() and len(right) == 4
    wrong = evaluate(SymbolOracle(wrong_last=True), cfg_for(), **kw)
    assert (wrong.accuracy == 0).all() and np.allclose(wrong.digit_accuracy, 0.75)


def test_bad_symbol_settings_name_the_key():
    with pytest.raises(ValueError, match=r"tokenizer='symbols'.*vocab_size > 14.*it has 14"):
        pieces_for(cfg_for(), 14)
    with pytest.raises(ValueError, match=r"DataConfig.tokenizer='symbols'.*'bytes' for task='recall'"):
        DataConfig(task="recall", tokenizer="symbols")


def test_passkey_demo_preset_uses_symbols():
    cfg = load_run_config("passkey_demo", [])
    assert cfg.data.tokenizer == "symbols" and cfg.model.vocab_size == VOCAB


def key_starts(cfg: DataConfig, block_size: int, batches: int = 4) -> np.ndarray:
    """Where the key marker sits in every training row (token index from the row's start)."""
    dm = build_datamodule(cfg, vocab_size=64, block_size=block_size, seed=0)
    rows = torch.cat([dm.train_batch(k)["input"] for k in range(batches)])
    hits = (rows == SYMBOL_KEY).nonzero()
    assert len(hits) == len(rows)  # one key per (unpacked) row
    return hits[:, 1].numpy()


def test_train_depth_first_block_puts_every_key_sentence_in_the_first_block():
    B, digits = 16, 4
    sentence = 1 + digits  # the key marker, then the digits
    first = key_starts(cfg_for(passkey_train_depth="first_block"), B)
    assert (first + sentence <= B).all()  # the whole key sentence inside block 0
    assert len(set(first.tolist())) > 3  # spread over the block's room, not pinned to one place
    uniform = key_starts(cfg_for(), B)  # the default: depth uniform over the filler
    assert (uniform + sentence > B).mean() > 0.5  # negative control: most keys lie beyond the first block


def test_train_depth_mixture_mixes_at_its_probability():
    B = 16
    all_first = key_starts(cfg_for(passkey_train_depth="mixture", passkey_train_first_block_prob=1.0), B)
    assert (all_first + 5 <= B).all()
    half = key_starts(cfg_for(passkey_train_depth="mixture", passkey_train_first_block_prob=0.5), B, batches=8)
    uniform_share = (key_starts(cfg_for(), B, batches=8) + 5 <= B).mean()
    share = (half + 5 <= B).mean()
    expected = 0.5 + 0.5 * uniform_share
    assert abs(share - expected) < 4 * (expected * (1 - expected) / len(half)) ** 0.5 + 1e-9


def test_train_depth_default_is_uniform_and_the_key_changes_the_rows():
    dm = build_datamodule(cfg_for(), vocab_size=64, block_size=16, seed=0)
    explicit = build_datamodule(cfg_for(passkey_train_depth="uniform"), vocab_size=64, block_size=16, seed=0)
    other = build_datamodule(cfg_for(passkey_train_depth="first_block"), vocab_size=64, block_size=16, seed=0)
    assert torch.equal(dm.train_batch(0)["input"], explicit.train_batch(0)["input"])
    assert not torch.equal(dm.train_batch(0)["input"], other.train_batch(0)["input"])


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"passkey_train_depth": "middle"},
            "DataConfig.passkey_train_depth='middle' is not allowed: expected one of uniform, first_block, mixture",
        ),
        (
            {"passkey_train_first_block_prob": 1.5},
            "DataConfig.passkey_train_first_block_prob=1.5 is not allowed: expected a number >= 0.0 and <= 1.0",
        ),
    ],
)
def test_train_depth_bad_values(changes, message):
    with pytest.raises(ValueError) as err:
        cfg_for(**changes)
    assert str(err.value) == message
