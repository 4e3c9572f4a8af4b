"""famlab.config.run: the training, logger and LoRA sections, and RunConfig's own checks."""

from __future__ import annotations

import math

import pytest

from famlab.config import DataConfig, LoggerConfig, LoraConfig, ModelConfig, RunConfig, TrainConfig


def test_lr_schedule():
    t = TrainConfig(max_steps=110, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert t.lr_factor_at(0) == pytest.approx(1 / 11) and t.lr_factor_at(9) == pytest.approx(10 / 11)
    assert t.lr_factor_at(10) == pytest.approx(1.0)
    assert t.lr_factor_at(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert t.lr_factor_at(110) == pytest.approx(0.1) and t.lr_factor_at(500) == pytest.approx(0.1)
    c = TrainConfig(schedule="constant", warmup_steps=0)
    assert all(c.lr_factor_at(s) == 1.0 for s in (0, 5, 10_000))


def test_rsp_schedule_function():
    t = TrainConfig(rsp_start_step=100, rsp_ramp_steps=50)
    assert t.rsp_prob_at(0, 0.8) == 0.0 and t.rsp_prob_at(99, 0.8) == 0.0
    assert 0.0 < t.rsp_prob_at(100, 0.8) < t.rsp_prob_at(120, 0.8) < 0.8
    assert t.rsp_prob_at(149, 0.8) == pytest.approx(0.8) and t.rsp_prob_at(10_000, 0.8) == pytest.approx(0.8)
    assert TrainConfig(rsp_start_step=5).rsp_prob_at(5, 0.8) == 0.8  # no ramp: at once


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(devices=0), "train.devices=0 is not allowed: expected an integer >= 1, or -1 for all"),
        (dict(lr=0.0), "train.lr=0.0 is not allowed: expected a number > 0.0"),
        (dict(min_lr_ratio=1.5), "train.min_lr_ratio=1.5 is not allowed: expected a number >= 0.0 and <= 1.0"),
        (dict(betas=[0.9, 1.0]), "train.betas=[0.9, 1.0] is not allowed: expected two numbers in [0, 1)"),
        (dict(strategy=""), "train.strategy='' is not allowed: expected a non-empty string (a Lightning name)"),
        (dict(deterministic="yes"), "train.deterministic='yes' is not allowed: expected true or false"),
    ],
)
def test_train_section_checks(changes, message):
    with pytest.raises(ValueError) as err:
        TrainConfig(**changes)
    assert str(err.value).startswith(message)


def test_train_section_normalises_betas_and_accepts_all_devices():
    t = TrainConfig(betas=(0, 0.5), devices=-1)
    assert t.betas == [0.0, 0.5] and all(isinstance(b, float) for b in t.betas) and t.devices == -1


def test_logger_section():
    assert LoggerConfig(tags=("a", "b")).tags == ["a", "b"]  # a tuple from code becomes YAML's list
    for changes, message in [
        (dict(wandb="maybe"), "logger.wandb='maybe' is not allowed: expected one of auto, online, offline, disabled"),
        (dict(project=""), "logger.project='' is not allowed: expected a non-empty string"),
        (dict(group=3), "logger.group=3 is not allowed: expected a string"),
        (dict(tags=["a", 1]), "logger.tags=['a', 1] is not allowed: expected a list of strings"),
    ]:
        with pytest.raises(ValueError) as err:
            LoggerConfig(**changes)
        assert str(err.value) == message


def test_lora_section():
    assert LoraConfig(rank=4, targets=("wo",)).targets == ["wo"]
    for changes, message in [
        (dict(rank=-1), "lora.rank=-1 is not allowed: expected an integer >= 0 (0 = no LoRA)"),
        (dict(alpha=0), "lora.alpha=0 is not allowed: expected a number > 0, or null for alpha = rank"),
        (dict(dropout=1.0), "lora.dropout=1.0 is not allowed: expected a number in [0, 1)"),
        (dict(targets=["wq"]), "lora.targets=['wq'] is not allowed: expected a non-empty list of wqkv, wo, ff.up"),
        (dict(targets=[]), "lora.targets=[] is not allowed"),
        (dict(merge=None), "lora.merge=None is not allowed: expected true or false"),
    ]:
        with pytest.raises(ValueError) as err:
            LoraConfig(**changes)
        assert str(err.value).startswith(message)


def test_run_config_checks_and_name():
    assert RunConfig(preset="tiny").run_name == "tiny-fam" and RunConfig(name="mine").run_name == "mine"
    assert RunConfig(model=ModelConfig(attention="bswa")).run_name == "run-bswa"
    for changes, message in [
        (dict(seed=-1), "run.seed=-1 is not allowed: expected an integer in [0, 4294967295]"),
        (dict(seed=2**32), "run.seed=4294967296 is not allowed: expected an integer in [0, 4294967295]"),
        (dict(name="a/b"), "run.name='a/b' is not allowed: expected a string without '/'"),
        (dict(name=".."), "run.name='..' is not allowed"),
        (dict(out_dir=""), "run.out_dir='' is not allowed: expected a non-empty path"),
        (dict(resume=""), "run.resume='' is not allowed: expected a checkpoint path or run directory"),
    ]:
        with pytest.raises(ValueError) as err:
            RunConfig(**changes)
        assert str(err.value).startswith(message)


def test_stateful_data_must_align_with_blocks_through_the_curriculum():
    model = ModelConfig(block_size=64)
    data = DataConfig(task="recall", stateful=True, seq_len=128, seq_len_schedule=[[0, 64], [5, 128]])
    assert RunConfig(model=model, data=data).data.stateful
    bad = DataConfig(task="recall", stateful=True, seq_len=128, seq_len_schedule=[[0, 96], [5, 128]])
    with pytest.raises(
        ValueError, match=r"^data.seq_len=96 is not allowed: expected a multiple of model.block_size=64"
    ):
        RunConfig(model=model, data=bad)
    RunConfig(model=model, data=bad.replace(stateful=False))  # only the carried state needs block boundaries


def test_dict_round_trip_checks_like_user_input():
    cfg = RunConfig(model=ModelConfig(fam_len=8), logger=LoggerConfig(tags=["x"]), seed=3)
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    data = cfg.to_dict()
    data["train"]["lr"] = -1
    with pytest.raises(ValueError, match=r"^train.lr=-1.0 is not allowed: expected a number > 0.0$"):
        RunConfig.from_dict(data)
    data["train"]["lr"] = 1e-3
    data["model"]["fam_lenn"] = 3
    with pytest.raises(ValueError, match=r"^model.fam_lenn: unknown key; did you mean model.fam_len\?$"):
        RunConfig.from_dict(data)
