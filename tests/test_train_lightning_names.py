"""Names a Lightning user types: the ones famlab supports (train.fast_dev_run, early stopping, logger.csv,
logger.tensorboard) and the ones it spells otherwise (one line naming famlab's key)."""

from __future__ import annotations

import csv
import importlib.util

import pytest
from tiny_runs import tiny

from famlab.cli import main
from famlab.config import ConfigError, load_run_config
from famlab.runs import RunDir
from famlab.train import train


@pytest.mark.parametrize(
    "override, hint",
    [
        ("train.val_check_interval=100", "famlab's name is train.val_every: train.val_every=100"),
        ("trainer.max_steps=5", "famlab's name is train.max_steps: train.max_steps=5"),
        ("trainer.gradient_clip_val=0.5", "famlab's name is train.grad_clip: train.grad_clip=0.5"),
        ("train.max_epochs=3", "no epochs"),
        ("train.lr_monitor=true", "logs the learning rate as train/lr"),
        ("callbacks.early_stopping.patience=3", "famlab's name is train.early_stopping_patience"),
        ("train.enable_checkpointing=false", "train.checkpoint_every=0"),
    ],
)
def test_foreign_names_say_what_famlab_calls_them(override, hint, capsys):
    with pytest.raises(ConfigError, match="unknown key") as err:
        load_run_config("tiny", [override])
    assert hint in str(err.value) and "\n" not in str(err.value)
    assert main(["train", "preset=tiny", override, "--print-config"]) == 2
    assert hint in capsys.readouterr().err


def test_a_plain_typo_still_gets_the_closest_spelling():
    with pytest.raises(ConfigError, match=r"train\.val_evry: unknown key; did you mean train\.val_every\?"):
        load_run_config("tiny", ["train.val_evry=5"])


def test_the_supported_names_are_run_keys():
    cfg = load_run_config("tiny", ["train.fast_dev_run=true", "logger.csv=true", "train.early_stopping_patience=2"])
    assert cfg.train.fast_dev_run is True and cfg.logger.csv and cfg.train.early_stopping_patience == 2
    assert load_run_config("tiny", ["train.fast_dev_run=3"]).train.fast_dev_run == 3
    for bad in ("train.fast_dev_run=-1", "train.fast_dev_run=x", "train.early_stopping_patience=-1"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_run_config("tiny", [bad])
    with pytest.raises(ConfigError, match="train.val_every=0"):  # early stopping watches val/loss
        load_run_config("tiny", ["train.early_stopping_patience=2", "train.val_every=0"])


@pytest.mark.parametrize("value, steps", [("true", 1), ("3", 3)])
def test_fast_dev_run_is_a_dry_run(tmp_path, value, steps):
    run = RunDir(train(tiny(tmp_path, f"train.fast_dev_run={value}", "logger.wandb=offline", "logger.csv=true")))
    assert run.read_final_metrics()["step"] == steps
    assert run.read_metrics() == []  # no logger rows
    assert not run.last_checkpoint.exists() and not (run.path / "wandb").exists() and not (run.path / "csv").exists()
    # negative control: the same short run without fast_dev_run checkpoints and logs
    normal = RunDir(train(tiny(tmp_path, f"train.max_steps={steps}", "logger.csv=true")))
    assert normal.last_checkpoint.exists() and normal.read_metrics() and (normal.path / "csv").exists()


def test_csv_logger_writes_lightnings_metrics_csv(tmp_path):
    run = RunDir(train(tiny(tmp_path, "train.max_steps=3", "logger.csv=true")))
    with (run.path / "csv" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    losses = [r["train/loss"] for r in rows if r.get("train/loss")]
    assert len(losses) == 3 and "train/lr" in rows[0]
    assert not (RunDir(train(tiny(tmp_path, "train.max_steps=1"))).path / "csv").exists()  # off by default


def test_tensorboard_logger(tmp_path):
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        run = RunDir(train(tiny(tmp_path, "train.max_steps=2", "logger.tensorboard=true")))
        assert list((run.path / "tensorboard").glob("events.out.tfevents.*"))
        return
    with pytest.raises(ConfigError, match="pip install tensorboard"):  # one line, before any run directory
        train(tiny(tmp_path, "train.max_steps=2", "logger.tensorboard=true"))
    assert not list(tmp_path.rglob("config.yaml"))


def test_early_stopping_stops_after_patience_validations_without_improvement(tmp_path):
    # min_delta far above any change: only the first validation counts as an improvement, so training
    # stops at the validation `patience` after it (val_every=1: step 1 + 2)
    stop = ["train.val_every=1", "train.max_steps=20", "train.early_stopping_min_delta=100"]
    run = RunDir(train(tiny(tmp_path, *stop, "train.early_stopping_patience=2")))
    assert run.read_final_metrics()["step"] == 3
    off = RunDir(train(tiny(tmp_path, "train.val_every=1", "train.max_steps=5", "train.early_stopping_min_delta=100")))
    assert off.read_final_metrics()["step"] == 5  # patience 0: no early stopping (negative control)
