"""The adaptive sequence-length curriculum (``data.seq_len_adaptive``): its config keys, the callback's decisions,
the batches it serves, its checkpoint round trip and a whole run."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tiny_runs import rows_with, tiny, train_losses

from famlab.config import ConfigError, DataConfig
from famlab.data import build_datamodule
from famlab.data.base import TRAIN_INDEX
from famlab.train import AdaptiveSeqLen, load_checkpoint, train
from famlab.train.module import answer_accuracy

ADAPTIVE = ["data.tokenizer=symbols", "data.seq_len_adaptive=true", "data.adaptive_start_len=32"]


# --- config --------------------------------------------------------------------------------------------------


def test_lengths_grow_by_the_factor_in_blocks_up_to_seq_len():
    on = dict(seq_len_adaptive=True, seq_len=128)
    assert DataConfig(**on, adaptive_start_len=32).adaptive_lengths(16) == [32, 64, 128]
    assert DataConfig(**on, adaptive_start_len=40).adaptive_lengths(16) == [40, 80, 128]  # 160 capped
    assert DataConfig(**on, adaptive_start_len=20, adaptive_factor=1.5).adaptive_lengths(16) == [20, 32, 48, 80, 128]
    assert DataConfig(**on, adaptive_start_len=128).adaptive_lengths(16) == [128]
    assert DataConfig(seq_len=128, adaptive_start_len=32).adaptive_lengths(16) == [128]  # off: seq_len only
    assert DataConfig(**on, adaptive_start_len=32).min_seq_len == 32


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(seq_len_adaptive=1), "DataConfig.seq_len_adaptive=1 is not allowed: expected true or false"),
        (dict(adaptive_start_len=0), "DataConfig.adaptive_start_len=0 is not allowed: expected an integer >= 1"),
        (dict(adaptive_window=0), "DataConfig.adaptive_window=0 is not allowed: expected an integer >= 1"),
        (dict(adaptive_factor=1.0), "DataConfig.adaptive_factor=1.0 is not allowed: expected a number > 1.0"),
        (dict(adaptive_threshold=1.5), "DataConfig.adaptive_threshold=1.5 is not allowed: expected a number >= 0.0"),
        (dict(adaptive_metric="acc"), "DataConfig.adaptive_metric='acc' is not allowed: expected the name of a"),
        (
            dict(seq_len_adaptive=True, adaptive_start_len=300),
            "DataConfig.adaptive_start_len=300 is not allowed: expected an integer in [1, seq_len=256]",
        ),
        (
            dict(seq_len_adaptive=True, seq_len_schedule=[[0, 64], [10, 256]]),
            "DataConfig.seq_len_schedule=[[0, 64], [10, 256]] is not allowed: expected [] when seq_len_adaptive=true",
        ),
        (
            dict(seq_len_adaptive=True, task="text", stateful=True),
            "DataConfig.stateful=True is not allowed: expected false when seq_len_adaptive=true",
        ),
        (
            dict(seq_len_adaptive=True, num_workers=2),
            "DataConfig.num_workers=2 is not allowed: expected 0 when seq_len_adaptive=true",
        ),
        (
            dict(seq_len_adaptive=True, task="text"),
            "DataConfig.adaptive_metric='train/answer_acc' is not allowed: expected a training metric logged for",
        ),
    ],
)
def test_bad_values_are_one_line_errors(changes, message):
    with pytest.raises(ValueError) as err:
        DataConfig(**changes)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_run_config_names_the_dotted_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^data\.adaptive_factor=0\.5 is not allowed: expected a number > 1\.0$"):
        tiny(tmp_path, "data.adaptive_factor=0.5")
    with pytest.raises(ConfigError, match=r"^data\.seq_len_schedule=.* expected \[\] when seq_len_adaptive=true"):
        tiny(tmp_path, *ADAPTIVE, "data.seq_len_schedule=[[0,64],[4,128]]")


# --- the callback's decisions and the batches it serves -------------------------------------------------------


def datamodule(**changes):
    cfg = DataConfig(
        tokenizer="symbols", batch_size=3, seq_len=128, seq_len_adaptive=True, adaptive_start_len=32, **changes
    )
    return build_datamodule(cfg, vocab_size=64, block_size=16, seed=7)


def fake_trainer(dm):
    """What the callback reads of a Trainer, around a real datamodule."""
    return SimpleNamespace(callback_metrics={}, world_size=1, is_global_zero=True, datamodule=dm)


def feed(cb, trainer, values):
    """One training batch per value: the metric as logged, then the callback's batch-end hook; the stages after."""
    stages = []
    for v in values:
        trainer.callback_metrics["train/answer_acc"] = torch.tensor(v)
        cb.on_train_batch_end(trainer, SimpleNamespace(device=torch.device("cpu")), None, None, 0)
        stages.append(cb.stage)
    return stages


def next_served(dm):
    """The next training batch as the trainer gets it: the stream's index, built by the datamodule's hook."""
    ticket = next(iter(dm.train_dataloader()))
    assert set(ticket) == {TRAIN_INDEX}  # nothing is built ahead of its consumption
    batch = dm.on_before_batch_transfer(ticket, 0)
    dm.batches_served += 1  # what the hook counts while a trainer trains
    return ticket[TRAIN_INDEX], batch


def test_callback_advances_exactly_when_a_full_window_reaches_the_threshold(capsys):
    dm = datamodule()
    trainer = fake_trainer(dm)
    cb = AdaptiveSeqLen([32, 64, 128], "train/answer_acc", threshold=0.5, window=3)
    cb.on_train_start(trainer, None)
    assert dm.train_len == 32 and next_served(dm)[1]["input"].shape == (3, 32)
    # the window is not full after two perfect batches; the third fills it
    assert feed(cb, trainer, [1.0, 1.0, 1.0]) == [0, 0, 1]
    assert dm.train_len == 64 and next_served(dm)[1]["input"].shape == (3, 64)
    # the window restarted at the change: three batches again, then the sliding mean decides
    assert feed(cb, trainer, [0.0, 0.5, 0.5]) == [1, 1, 1]  # mean 1/3 < 0.5
    assert feed(cb, trainer, [0.5]) == [2]  # window [0.5, 0.5, 0.5]: mean == threshold advances
    k, batch = next_served(dm)
    assert batch["input"].shape == (3, 128) and k == 2
    assert feed(cb, trainer, [1.0] * 5) == [2] * 5  # the last stage stays
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "seq_len 32 -> 64" in lines[0] and "seq_len 64 -> 128" in lines[1]


def test_accuracy_below_threshold_keeps_the_start_length():  # negative control
    dm = datamodule()
    trainer = fake_trainer(dm)
    cb = AdaptiveSeqLen([32, 64, 128], "train/answer_acc", threshold=0.9, window=4)
    cb.on_train_start(trainer, None)
    assert feed(cb, trainer, [0.89, 1.0, 0.8, 0.85] * 10) == [0] * 40
    assert dm.train_len == 32 and next_served(dm)[1]["input"].shape == (3, 32)


def test_a_metric_nobody_logs_is_a_one_line_error():
    dm = datamodule()
    cb = AdaptiveSeqLen([32, 128], "train/nope", threshold=0.5, window=2)
    trainer = fake_trainer(dm)
    trainer.callback_metrics["train/loss"] = torch.tensor(1.0)
    with pytest.raises(ConfigError, match=r"^data.adaptive_metric='train/nope' is not allowed: .*\(train/loss\)$"):
        cb.on_train_batch_end(trainer, None, None, None, 0)


def test_batches_are_a_pure_function_of_index_and_length():
    dm = datamodule()
    for length in (32, 64, 128):
        dm.set_train_len(length)
        k, served = next_served(dm)
        fresh = datamodule()  # a new task: no episode cache shared
        for other in (fresh.train_batch(k, length=length), fresh.task.batch("train", k, 7, length=length)):
            assert all(torch.equal(served[key], other[key]) for key in ("input", "target", "weight"))
        assert served["input"].shape[1] == length and served["weight"].sum() > 0
    # at seq_len the adaptive stream serves the very batches of a fixed-length run
    fixed = build_datamodule(
        DataConfig(tokenizer="symbols", batch_size=3, seq_len=128), vocab_size=64, block_size=16, seed=7
    )
    assert torch.equal(fixed.train_batch(5)["input"], datamodule().train_batch(5, length=128)["input"])
    assert not torch.equal(
        datamodule().train_batch(5, length=64)["input"], datamodule().train_batch(6, length=64)["input"]
    )


def test_answer_accuracy_counts_whole_answers():
    target = torch.tensor([[1, 2, 3], [1, 2, 3], [1, 2, 3], [0, 0, 0]])
    weight = torch.tensor([[0, 1, 1], [0, 1, 1], [0, 0, 1], [0, 0, 0]], dtype=torch.float32)
    pred = torch.tensor([[0, 2, 3], [1, 2, 0], [3, 1, 3], [1, 1, 1]])  # rows 0 and 2 right where scored
    logits = torch.nn.functional.one_hot(pred, 4).float()
    assert float(answer_accuracy(logits, target, weight)) == pytest.approx(2 / 3)  # row 3 has no target


# --- real runs ---------------------------------------------------------------------------------------------------


def test_end_to_end_reaches_seq_len(tmp_path):
    run = train(tiny(tmp_path, *ADAPTIVE, "data.adaptive_threshold=0.0", "data.adaptive_window=2", "train.max_steps=6"))
    assert rows_with(run, "train/seq_len") == {1: 32, 2: 32, 3: 64, 4: 64, 5: 128, 6: 128}
    acc = rows_with(run, "train/answer_acc")
    assert sorted(acc) == [1, 2, 3, 4, 5, 6] and all(0.0 <= v <= 1.0 for v in acc.values())


def test_checkpoint_restores_the_stage_and_the_window(tmp_path):
    # train/loss (> 1 at the start) against threshold 1.0: each full window of 2 advances
    common = [*ADAPTIVE, "data.adaptive_metric=train/loss", "data.adaptive_threshold=1.0", "data.adaptive_window=2"]
    common += ["train.schedule=constant", "train.warmup_steps=1"]
    full = train(tiny(tmp_path, *common, "train.max_steps=6", "name=full"))
    half = train(tiny(tmp_path, *common, "train.max_steps=3", "name=half"))
    saved = load_checkpoint(Path(half) / "checkpoints" / "last.ckpt")["callbacks"]["AdaptiveSeqLen"]
    # advanced after batch 2; the window holds batch 3's logged loss (the value of the batch just done)
    assert saved["stage"] == 1 and saved["seq_len"] == 64
    assert saved["window"] == pytest.approx([train_losses(half)[3]], rel=1e-6)
    resumed = train(tiny(tmp_path, *common, "train.max_steps=6", "name=resumed", f"resume={half}"))
    want = rows_with(full, "train/seq_len")
    assert want == {1: 32, 2: 32, 3: 64, 4: 64, 5: 128, 6: 128}
    # without the restored stage and window step 4 would be at 32 and step 5 at 64
    assert rows_with(resumed, "train/seq_len") == {s: want[s] for s in (4, 5, 6)}
    for step in (4, 5, 6):
        assert train_losses(resumed)[step] == pytest.approx(train_losses(full)[step], rel=1e-6, abs=1e-7)
