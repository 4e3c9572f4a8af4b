"""PassKey with a real Hugging Face tokenizer (``data.tokenizer``): exact lengths in tokens, the answer
tokens the tokenizer produces in context, scoring, config errors, and a training run from a converted
model folder that carries the tokenizer (``data.tokenizer=init_from``).

The tokenizer is a real byte-level BPE (digits split one per token, like SmolLM2's), trained here
with the ``tokenizers`` library on the PassKey sentences and saved as an HF folder, so the tests stay
offline and fast."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from helpers import StreamingOracle, passkey_digit_to_say  # noqa: E402

from famlab.config import ConfigError, load_run_config  # noqa: E402
from famlab.data import DataConfig, build_datamodule  # noqa: E402
from famlab.data.passkey import FILLER, INSTRUCTION, KEY_SENTENCE, QUESTION, Pieces, load_tokenizer  # noqa: E402
from famlab.eval import evaluate  # noqa: E402

VOCAB = 512  # the model's vocabulary: >= the tokenizer's 256 byte symbols + merges + <pad>


def train_bpe(folder: Path, *, split_digits: bool, key: str, vocab_size: int) -> str:
    """A byte-level BPE trained on the PassKey sentences (with ``key``), saved as an HF folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    digits = [pre_tokenizers.Digits(individual_digits=True)] if split_digits else []
    bpe.pre_tokenizer = pre_tokenizers.Sequence([*digits, byte_level])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<pad>"]
    )
    corpus = [INSTRUCTION, FILLER * 4, KEY_SENTENCE.format(key=key), QUESTION + key]
    bpe.train_from_iterator(corpus * 20, trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>")
    fast.save_pretrained(str(folder))
    assert len(fast) <= VOCAB
    return str(folder)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return train_bpe(tmp_path_factory.mktemp("bpe"), split_digits=True, key="8240", vocab_size=480)


def cfg_for(tok_dir, **kw):
    return DataConfig(**{"task": "passkey", "tokenizer": tok_dir, "seq_len": 96, "batch_size": 12, **kw})


def test_examples_have_exact_token_lengths_and_in_context_answers(tok_dir):
    tok = load_tokenizer(tok_dir)
    pieces = Pieces(tok, instruction=True)
    for length, depth in [(80, 0.0), (97, 0.5), (300, 1.0), (301, 0.3)]:
        ids, answer_len, actual = pieces.example("50719", length, depth)
        assert len(ids) == length and answer_len == 5  # one token per digit
        text = tok.decode(ids.tolist())
        assert text.startswith(INSTRUCTION.rstrip("\n")) and text.endswith(QUESTION + "50719")
        assert tok.decode(ids[-answer_len:].tolist()) == "50719"
        assert " The pass key is 50719. Remember it. 50719 is the pass key." in text
        assert abs(actual - depth) < 0.25
        # the tokens of the question + answer are the tokenizer's own for that text (not a concatenation)
        tail = tok(QUESTION + "50719", add_special_tokens=False)["input_ids"]
        assert ids[-len(tail) :].tolist() == tail
    with pytest.raises(ValueError, match="too short"):
        pieces.example("50719", pieces.fixed_len("50719") - 1, 0.5)


def test_training_batches_score_exactly_the_answer_tokens(tok_dir):
    tok = load_tokenizer(tok_dir)
    cfg = cfg_for(tok_dir, passkey_key_digits=3, passkey_train_blocks_min=3)
    dm = build_datamodule(cfg, vocab_size=VOCAB, block_size=16, seed=0)
    batch = dm.train_batch(0)
    pad = tok.pad_token_id
    for r in range(cfg.batch_size):
        inp, tgt, w = batch["input"][r], batch["target"][r], batch["weight"][r]
        scored = torch.nonzero(w).flatten()
        assert len(scored) == 3 and torch.equal(scored, torch.arange(scored[0], scored[0] + 3))
        text = tok.decode(inp[: int(scored[0]) + 1].tolist())
        key = re.search(r"The pass key is (\d{3})\. Remember it\. \1 is the pass key\.", text).group(1)
        assert text.endswith(QUESTION) and tok.decode(tgt[scored].tolist()) == key
        length = int(scored[-1]) + 2  # example tokens (prompt + answer)
        assert 3 * 16 <= length <= 97 and (inp[length:] == pad).all()  # right padding with the pad id
    assert int(batch["input"].max()) < len(tok)


class TokenOracle(StreamingOracle):
    """Reads the streamed tokens back through the tokenizer and answers with the key it saw (one digit token
    per step), optionally with the last digit wrong: a stand-in model that tests the scoring."""

    def __init__(self, tok, wrong_last=False):
        super().__init__(VOCAB)
        self.tok, self.wrong_last = tok, wrong_last

    def answer(self, seen: list[int]) -> int | None:
        digit = passkey_digit_to_say(self.tok.decode(seen), self.wrong_last)
        return None if digit is None else self.tok.convert_tokens_to_ids(str(digit))


def test_evaluate_scores_tokenized_answers(tok_dir):
    tok = load_tokenizer(tok_dir)
    cfg = cfg_for(tok_dir, passkey_key_digits=4)
    kw = dict(block_size=16, seed=0, lengths=[90, 200], depth_buckets=2, samples=3)
    right = evaluate(TokenOracle(tok), cfg, **kw)
    assert (right.accuracy == 1).all() and (right.digit_accuracy == 1).all() and len(right) == 4
    wrong = evaluate(TokenOracle(tok, wrong_last=True), cfg, **kw)
    assert (wrong.accuracy == 0).all() and np.allclose(wrong.digit_accuracy, 0.75)


def test_bad_tokenizer_settings_name_the_key(tok_dir, tmp_path):
    with pytest.raises(ValueError, match=r"DataConfig.tokenizer=.*'bytes' for task='text'"):
        DataConfig(task="text", tokenizer=tok_dir)
    with pytest.raises(ValueError, match=r"DataConfig.tokenizer=.*HF tokenizer files"):
        build_datamodule(cfg_for(str(tmp_path)), vocab_size=VOCAB, block_size=16, seed=0)
    with pytest.raises(ValueError, match=r"DataConfig.tokenizer=.*fit the model's vocab_size=300"):
        build_datamodule(cfg_for(tok_dir), vocab_size=300, block_size=16, seed=0)
    cfg = load_run_config("tiny", ["data.tokenizer=init_from", f"out_dir={tmp_path}", "logger.wandb=disabled"])
    from famlab.train import train

    with pytest.raises(ConfigError, match=r"data.tokenizer='init_from' is not allowed without model.init_from"):
        train(cfg)


def test_train_from_a_converted_folder_with_its_tokenizer(tok_dir, tmp_path):
    pytest.importorskip("peft")
    from hf_fixtures import save_tiny_converted

    from famlab.train import load_model, train

    base = save_tiny_converted(tmp_path / "base", vocab_size=VOCAB, tokenizer=load_tokenizer(tok_dir))
    cfg = load_run_config(
        "paper_lora",
        [
            f"model.init_from={base}",
            "model.block_size=16",
            "model.fam_len=2",
            "model.mem_segment=1",
            "lora.rank=2",
            "data.tokenizer=init_from",
            "data.batch_size=2",
            "data.seq_len=96",
            "data.val_batches=1",
            "data.num_workers=0",
            "data.passkey_eval_lengths=[1,2]",
            "data.passkey_eval_samples=2",
            "data.passkey_eval_depth_buckets=1",
            "train.max_steps=2",
            "train.precision=32-true",
            "train.accumulate_grad_batches=1",
            "train.val_every=0",
            "train.checkpoint_every=0",
            "train.accelerator=cpu",
            "logger.wandb=disabled",
            f"out_dir={tmp_path / 'runs'}",
        ],
    )
    run_dir = train(cfg)
    model, run_cfg = load_model(run_dir)
    assert run_cfg.data.tokenizer == str(base)  # resolved and recorded in config.yaml
    df = evaluate(model, run_cfg.data, block_size=16, seed=0)
    assert df.length.tolist() == [96, 192] and df.accuracy.between(0, 1).all()
    from famlab.cli import main

    assert main(["eval", str(run_dir)]) == 0  # the CLI evaluates the same run, in the base's tokens
    import pandas as pd

    assert pd.read_csv(run_dir / "eval.csv")[["length", "accuracy", "digit_accuracy"]].equals(
        df[["length", "accuracy", "digit_accuracy"]]
    )


@pytest.fixture(scope="module")
def merged_digits_dir(tmp_path_factory):
    """A BPE that merges digits (like GPT-2's): "9999" is a few tokens, other keys more."""
    return train_bpe(tmp_path_factory.mktemp("bpe_merged"), split_digits=False, key="9999", vocab_size=400)


def test_keys_longer_in_tokens_than_the_all_nines_key_still_fit(merged_digits_dir):
    pieces = Pieces(load_tokenizer(merged_digits_dir), instruction=False)
    nines = pieces.fixed_len("9999")
    assert pieces.fixed_len("1357") > nines  # the case: "9999" is no upper bound
    rng = np.random.default_rng(0)
    most = max(pieces.fixed_len(str(k)) for k in rng.integers(1000, 10000, size=200))
    for pack in (True, False):  # rows just long enough for most keys, packed and one example per row
        cfg = cfg_for(merged_digits_dir, seq_len=most + 4, passkey_instruction=False, passkey_pack=pack, batch_size=8)
        dm = build_datamodule(cfg, vocab_size=VOCAB, block_size=16, seed=0)
        for k in range(20):
            batch = dm.train_batch(k)
            assert (batch["weight"].sum(1) > 0).all()  # every row holds at least one scored answer
    # rows that only keys like "9999" fit: a clear error, not an endless search
    short = cfg_for(merged_digits_dir, seq_len=nines + 1, passkey_instruction=False, batch_size=8)
    with pytest.raises(ValueError, match="fits too few 4-digit keys"):
        build_datamodule(short, vocab_size=VOCAB, block_size=16, seed=0).train_batch(0)
    # evaluation draws only keys that fit its length
    from famlab.config import ModelConfig
    from famlab.model import FamLM

    model = FamLM(ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=1, n_heads=2, block_size=16, fam_len=2)).eval()
    cfg = cfg_for(merged_digits_dir, seq_len=64, passkey_instruction=False)
    table = evaluate(model, cfg, block_size=16, seed=0, lengths=[most], samples=16)
    assert len(table) and (table["n"] == 16).all()
