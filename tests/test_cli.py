"""The `famlab` command line: help, exit status 2 with a one-line message on bad settings,
train -> eval, resume from a run directory, data fetch."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
from tiny_runs import TINY

from famlab.cli import main
from famlab.config import ATTENTION_KINDS, load_run_config_file
from famlab.runs import RunDir
from famlab.train import load_checkpoint


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["eval", "--help"], ["data", "fetch", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: famlab")
    if argv == ["--help"]:
        assert all(cmd in out for cmd in ("train", "eval", "data"))
    if argv[0] == "train":
        assert "preset=" in out and "model.attention" in out
        kinds = out.split("attention=", 2)[2].split(",", 1)[0]  # the key list's line, not the examples'
        assert kinds.split("|") == list(ATTENTION_KINDS)  # every kind, from the one registry


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "usage: famlab" in capsys.readouterr().out


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.fam_lenn=16", "model.fam_lenn: unknown key; did you mean model.fam_len?"),
        ("train.max_steps=abc", "train.max_steps="),
        ("model.n_heads=3", "model.n_heads=3 is not allowed"),
        ("preset=tiyn", "did you mean tiny?"),
        ("data.seq_len=32", "data.seq_len=32 is not allowed"),  # caught when the task is built
    ],
)
def test_bad_settings_exit_2_with_one_line(override, message, capsys, tmp_path):
    assert main(["train", "preset=tiny", override, f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("famlab: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "tiny-fam").exists()  # no run directory for a run that never started


def test_bad_setting_subprocess_exit_2():
    proc = subprocess.run(
        [sys.executable, "-m", "famlab.cli", "train", "preset=tiny", "model.fam_lenn=16"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr == "famlab: error: model.fam_lenn: unknown key; did you mean model.fam_len?\n"


def test_print_config(capsys):
    assert main(["train", "preset=tiny", "model.fam_len=16", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "fam_len: 16" in out and "preset: tiny" in out


def test_eval_refuses_a_text_split_other_than_the_runs(tmp_path, capsys):
    text = ["data.task=text", "data.seq_len=64", "data.batch_size=2", "data.val_batches=1"]
    args = ["train", "preset=tiny", *text, f"out_dir={tmp_path}", "train.max_steps=1", "train.val_every=0", "name=t"]
    assert main([*args, "logger.wandb=disabled"]) == 0
    (run_dir,) = (tmp_path / "t").iterdir()
    capsys.readouterr()
    assert main(["eval", str(run_dir), "data.text_test_docs=5", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "data.text_test_docs=5 differs from the run's 3" in err and "held out from training" in err
    assert not (run_dir / "eval.csv").exists()


def test_train_eval_and_resume(tmp_path, capsys):
    assert main(["train", "preset=tiny", *TINY, f"out_dir={tmp_path}", "train.max_steps=2", "name=cli"]) == 0
    (run_dir,) = (tmp_path / "cli").iterdir()
    assert f"run: {run_dir}" in capsys.readouterr().out
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["command"][:2] == ["famlab", "train"]

    eval_args = ["data.passkey_eval_lengths=[1]", "data.passkey_eval_samples=2", "data.passkey_eval_depth_buckets=2"]
    assert main(["eval", str(run_dir), *eval_args, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    table = pd.read_csv(run_dir / "eval.csv")
    assert len(table) == 2 and set(table["task"]) == {"passkey"}
    lines = out.splitlines()  # progress per length first, the table, then one summary line
    (length,) = set(table["length"])
    assert lines[0].startswith(f"passkey length {length} (1x): accuracy {table['accuracy'].mean():.3f}, digits ")
    summary = [line for line in lines if line.startswith("eval passkey (mean over 2 cells): ")]
    assert summary == [
        f"eval passkey (mean over 2 cells): accuracy {table['accuracy'].mean():.4g}, "
        f"digit_accuracy {table['digit_accuracy'].mean():.4g}"
    ]
    final = json.loads((run_dir / "final_metrics.json").read_text())
    assert final["step"] == 2 and final["train/loss"] is not None  # training's summary is kept
    assert final["eval"] == {
        "task": "passkey",
        "checkpoint": str(run_dir / "checkpoints" / "last.ckpt"),
        "csv": str(run_dir / "eval.csv"),
        "accuracy": pytest.approx(table["accuracy"].mean()),
        "digit_accuracy": pytest.approx(table["digit_accuracy"].mean()),
    }

    # resume=RUN_DIR without preset=: the run's own config, continued to the new max_steps
    assert main(["train", f"resume={run_dir}", "train.max_steps=3"]) == 0
    resumed = sorted((tmp_path / "cli").iterdir())[-1]
    assert resumed != run_dir
    cfg = load_run_config_file(resumed / "config.yaml")
    assert cfg.model == load_run_config_file(run_dir / "config.yaml").model and cfg.resume == str(run_dir)
    assert [r["step"] for r in RunDir(resumed).read_metrics() if "train/loss" in r] == [3]
    assert load_checkpoint(resumed / "checkpoints" / "last.ckpt")["global_step"] == 3

    assert main(["eval", str(tmp_path / "nowhere")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_data_fetch_calls_text_fetch(monkeypatch, tmp_path, capsys):
    import famlab.data.text

    calls = []
    monkeypatch.setattr(famlab.data.text, "fetch", lambda cache_dir, **kw: calls.append(cache_dir) or tmp_path)
    assert main(["data", "fetch", "--cache-dir", str(tmp_path)]) == 0
    assert calls == [str(tmp_path)] and str(tmp_path) in capsys.readouterr().out


def test_resume_from_a_checkpoint_with_the_old_rsp_buffers(tmp_path):
    """A FAM checkpoint written before RSP's buffers moved out of the model (``model.rsp_state``,
    ``model.rsp_valid``) resumes: the keys are upgraded before the checkpoint is compared with the module (the
    upgrade's values: tests/test_train_regularizers.py)."""
    assert main(["train", "preset=tiny", *TINY, f"out_dir={tmp_path}", "train.max_steps=2", "name=old"]) == 0
    (run_dir,) = (tmp_path / "old").iterdir()
    path = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    remembered = ckpt["state_dict"]["rsp.state"].clone()
    assert bool(ckpt["state_dict"]["rsp.valid"]) and remembered.abs().sum() > 0  # rsp_prob 0.8: remembered
    ckpt["state_dict"]["model.rsp_state"] = ckpt["state_dict"].pop("rsp.state")
    ckpt["state_dict"]["model.rsp_valid"] = ckpt["state_dict"].pop("rsp.valid")
    torch.save(ckpt, path)
    assert main(["train", f"resume={run_dir}", "train.max_steps=3"]) == 0
    resumed = sorted((tmp_path / "old").iterdir())[-1]
    again = load_checkpoint(resumed / "checkpoints" / "last.ckpt")
    assert again["global_step"] == 3 and "model.rsp_state" not in again["state_dict"]
    assert again["state_dict"]["rsp.state"].shape == remembered.shape and bool(again["state_dict"]["rsp.valid"])
