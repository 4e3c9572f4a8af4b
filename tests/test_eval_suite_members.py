"""famlab.eval.suite's members that reuse famlab's evaluations (MQAR: the recall task; lm-position: bits per
byte by position to 16x) and ``famlab eval --suite`` end to end on a tiny trained run."""

from __future__ import annotations

import re

import numpy as np
import pytest
from suite_readers import VOCAB, Reader, Recall

from famlab.data import DataConfig
from famlab.eval.suite import run_suite, task_tables
from famlab.eval.suite.codec import codec_for
from famlab.eval.suite.members import log_buckets, mqar_settings
from famlab.eval.suite.ruler import TASKS

pytestmark = pytest.mark.usefixtures("one_thread")


def byte_cfg(cache_dir, **kw):
    return DataConfig(**{"task": "passkey", "seq_len": 400, "passkey_instruction": False, "cache_dir": cache_dir, **kw})


def test_mqar_member_has_pairs_and_length_as_knobs():
    cfg = DataConfig(task="passkey", tokenizer="symbols", seq_len=64)
    codec = codec_for(cfg, VOCAB)
    kw = dict(block_size=16, seed=0, lengths=[64, 256], samples=3, depth_buckets=1, mqar_pairs=[4, 8])
    lines: list[str] = []
    res = run_suite(Recall(codec, None), cfg, "mqar", progress=lines.append, **kw)
    df = res.table
    assert df[["num_pairs", "length"]].values.tolist() == [[4, 64], [4, 256], [8, 64], [8, 256]]
    assert (df.score == 1).all() and (df.example_accuracy == 1).all()
    assert df.n.tolist() == [12, 12, 24, 24]  # 3 examples x every pair queried
    assert [line.split(" (")[0] for line in lines] == [
        "mqar 4 pairs, length 64",
        "mqar 4 pairs, length 256",
        "mqar 8 pairs, length 64",
        "mqar 8 pairs, length 256",
    ]
    short = run_suite(Recall(codec, None, window=100), cfg, "mqar", **kw)  # pairs more than 100 tokens back are lost
    assert short.table.score.tolist()[0] == 1 and short.table.score.tolist()[1] < 0.5
    assert short.summary["mqar"]["effective_length"] == 64
    with pytest.raises(ValueError, match="length=10 is not allowed for task mqar"):
        run_suite(Recall(codec, None), cfg, "mqar", **{**kw, "lengths": [10]})


def test_mqar_fits_its_tokens_to_a_small_vocabulary_and_checks_before_anything_runs():
    # a PassKey model's 64 symbols: recall's 64 + 64 + 64 tokens shrink to 21 each (the same factor)
    cfg = DataConfig(task="passkey", tokenizer="symbols", seq_len=64)
    ((sub, _),) = mqar_settings(cfg, 64, [64])
    assert (sub.recall_noise_vocab, sub.recall_key_vocab, sub.recall_value_vocab) == (21, 21, 21)
    assert mqar_settings(cfg, 256, [64])[0][0] == cfg  # they fit 256 tokens: unchanged (negative control)
    reader = Recall(codec_for(cfg, 64), None, vocab=64)
    res = run_suite(reader, cfg, "mqar", block_size=16, seed=0, lengths=[64, 128], samples=2, depth_buckets=1)
    assert (res.table.score == 1).all() and 43 <= reader.largest <= 63  # values (the last 21 ids) fit the model
    # a bad length is refused before the other members run (the needle tasks would take minutes first)
    lines: list[str] = []
    with pytest.raises(ValueError, match="length=10 is not allowed for task mqar"):
        run_suite(reader, cfg, "all", block_size=16, seed=0, lengths=[10, 64], progress=lines.append)
    assert lines == []


def test_lm_position_reads_to_16x_in_log_buckets(cache_dir):
    assert log_buckets(64) == [0, 8, 16, 32, 64, 128, 256, 512, 1024]
    cfg = byte_cfg(cache_dir, seq_len=32)
    codec = codec_for(cfg, VOCAB)
    res = run_suite(Reader(codec, None), cfg, "lm-position", block_size=16, seed=0, lm_max_docs=2)
    df = res.table
    buckets = df[df.scope == "bucket"]
    assert buckets.position_bucket_end.tolist() == log_buckets(32)[1:] and buckets.length_x.max() == 16
    assert np.allclose(df.bpb, 8.0)  # uniform logits: 8 bits per byte at every position
    assert df.n_bytes.iloc[-1] == 2 * (16 * 32 - 1)
    assert res.summary["lm-position"] == {"bpb": pytest.approx(8.0), "bpb_last_bucket": pytest.approx(8.0)}
    lines: list[str] = []  # the held-out text is bytes: a symbols run skips it, saying so
    sym = DataConfig(task="passkey", tokenizer="symbols", seq_len=32)
    none = run_suite(Reader(codec, None), sym, "lm-position", block_size=16, seed=0, progress=lines.append)
    assert none.table.empty and none.summary == {} and task_tables(none) == {}
    assert lines == ["lm-position: skipped (the held-out text is bytes; this run has tokenizer=symbols)"]


def test_cli_suite_all_on_a_tiny_trained_run(tmp_path, capsys, cache_dir):
    import json

    import pandas as pd

    from famlab.cli import main

    train = ["train", "preset=tiny", f"out_dir={tmp_path}", "name=s", "train.max_steps=2", "train.val_every=0"]
    quiet = ["train.checkpoint_every=0", "logger.wandb=disabled", "train.accelerator=cpu", "model.d_model=32"]
    assert main([*train, *quiet]) == 0
    (run_dir,) = (tmp_path / "s").iterdir()
    small = ["data.passkey_eval_lengths=[1,2]", "data.passkey_eval_depth_buckets=2", "data.passkey_eval_samples=1"]
    eval_args = ["eval", str(run_dir), *small, f"data.cache_dir={cache_dir}"]
    capsys.readouterr()
    assert main([*eval_args, "data.passkey_eval_lengths=[0.1]", "--device", "cpu", "--suite", "ruler"]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(
        r"famlab: error: length=51 is not allowed for task niah_passkey: expected >= \d+ tokens .*", err
    )
    assert main([*eval_args, "--device", "cpu", "--suite", "all"]) == 0
    out = capsys.readouterr().out
    table = pd.read_csv(run_dir / "eval" / "all.csv")
    assert set(table.member) == {"ruler", "mqar", "lm-position"} and set(table.task) == {*TASKS, "mqar", "lm-position"}
    assert set(table[table.member != "lm-position"].length) == {512, 1024}
    assert (run_dir / "eval" / "all_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    # progress per task and length as each finishes, then a table per task, then the summary
    assert out.splitlines()[0].startswith("niah_passkey length 512 (1x): all-match ")
    assert "\nmqar 8 pairs, length 1024 (2x): accuracy " in out and "\ncwe:\n" in out
    assert re.search(
        r"\nmqar:\n *length +length_x +n +score +gap +gap_x +num_pairs +accuracy +example_accuracy\n +512 +1.0 +16 +0.0 +480 +0.9375 +8 ",
        out,
    )
    final = json.loads((run_dir / "final_metrics.json").read_text())
    assert final["step"] == 2  # training's summary is kept
    ev = final["eval"]
    assert set(ev) == {"ruler", "mqar", "lm-position", "all"}
    assert ev["ruler"]["effective_length"] in (0, 512, 1024) and set(ev["ruler"]["tasks"]) == set(TASKS)
    assert ev["all"]["csv"] == str(run_dir / "eval" / "all.csv") and 0 < ev["lm-position"]["bpb"] < 16
    assert f"all: score {ev['all']['score']:.3f}, effective length {ev['all']['effective_length']} " in out
    # the names a sweep may use are exactly the ones written (famlab.config.metrics declares them)
    from famlab.config.metrics import suite_metrics
    from famlab.runs import flatten_metrics

    assert set(flatten_metrics({"eval": ev})) == set(suite_metrics("all", "bytes", numeric=False))
