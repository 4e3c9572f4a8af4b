"""famlab.eval.suite with a Hugging Face tokenizer (``data.tokenizer`` = a folder): samples are exactly the
requested number of tokens, the needle at its depth, and a reader of the prompt scores 1 on every task.
The tokenizer is the byte-level BPE that tests/test_data_passkey_tokenizer.py trains offline."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from suite_readers import Reader, tasks_frame  # noqa: E402
from test_data_passkey_tokenizer import VOCAB, train_bpe  # noqa: E402

from famlab.data import DataConfig  # noqa: E402
from famlab.eval.suite.codec import codec_for  # noqa: E402
from famlab.eval.suite.ruler import TASKS, make_samples  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cfg(tmp_path_factory, cache_dir):
    tok = train_bpe(tmp_path_factory.mktemp("bpe"), split_digits=True, key="8240", vocab_size=480)
    return DataConfig(task="passkey", tokenizer=tok, seq_len=300, passkey_instruction=False, cache_dir=cache_dir)


def test_tokenizer_samples_are_exact_in_tokens_with_the_needle_at_its_depth(cfg):
    codec = codec_for(cfg, VOCAB)
    assert codec.kind == "tokenizer"
    for task in TASKS.values():
        for length in (300, 900):
            for bucket in range(3):
                for s in make_samples(codec, task, 0, length, bucket, 3, 2):
                    assert len(s.ids) == length
                    assert all(r in codec.decode(s.ids[-s.answer_len :]) for r in s.refs)
                    if task.has_depth:
                        assert bucket / 3 <= s.depth <= (bucket + 1) / 3 + 1e-9 and s.depth == s.offset / s.hay_len
                        assert s.refs[0] in codec.decode(s.ids[s.needle_at : s.needle_at + 120])
    a = make_samples(codec, TASKS["vt"], 1, 600, 0, 1, 2)
    assert all(np.array_equal(x.ids, y.ids) for x, y in zip(a, make_samples(codec, TASKS["vt"], 1, 600, 0, 1, 2)))


def test_a_reader_of_tokenized_prompts_scores_one(cfg):
    codec = codec_for(cfg, VOCAB)
    df = tasks_frame(lambda task: Reader(codec, task, vocab=VOCAB), cfg, [300, 600], depth_buckets=2, samples=2)
    assert set(df.task) == set(TASKS) and (df.all_match == 1).all(), df[df.all_match < 1]
