"""famlab.train.loggers: metrics.jsonl always, wandb offline/disabled/auto without a network."""

from __future__ import annotations

import json

import pytest
from tiny_runs import tiny

from famlab.runs import RunDir
from famlab.train import train, wandb_mode


@pytest.fixture
def no_wandb_network(monkeypatch, tmp_path):
    """No API key, no netrc, and an unreachable server if anything tried to talk to one."""
    for key in ("WANDB_API_KEY", "WANDB_MODE", "NETRC"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    (tmp_path / "home").mkdir()


def test_wandb_mode_auto(no_wandb_network, monkeypatch, tmp_path):
    assert wandb_mode("auto") == "offline"
    assert wandb_mode("disabled") == "disabled" and wandb_mode("online") == "online"
    (tmp_path / "home" / ".netrc").write_text("machine 127.0.0.1\n  login user\n  password abc\n")
    assert wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode("auto") == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    (tmp_path / "home" / ".netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode("auto") == "online"


def test_wandb_offline_writes_run_files(no_wandb_network, tmp_path):
    cfg = tiny(tmp_path, "train.max_steps=2", "logger.wandb=offline", "logger.tags=[test]", "name=wb")
    run_dir = train(cfg)
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    assert (run_dir / "metrics.jsonl").exists()  # written with or without wandb


def test_metrics_file_exists_when_nothing_was_logged(tmp_path):
    """A run shorter than log_every, with no validation on the way, still has its metrics.jsonl (the
    analysis finds run directories by it); without validation data nothing is logged in it, with some
    only the final validation of the last step."""
    from famlab.analysis import load_runs

    run_dir = train(tiny(tmp_path, "train.max_steps=1", "train.log_every=50", "data.val_batches=0", "name=short"))
    assert (run_dir / "metrics.jsonl").is_file() and RunDir(run_dir).read_metrics() == []
    validated = train(tiny(tmp_path, "train.max_steps=1", "train.log_every=50", "name=short"))
    (row,) = RunDir(validated).read_metrics()
    assert row["step"] == 1 and set(row) == {"step", "time", "val/loss", "val/bits_per_token"}
    assert str(run_dir.resolve()) in set(load_runs(tmp_path)["run_dir"])


def test_resume_continues_the_same_wandb_run(no_wandb_network, tmp_path):
    first = train(tiny(tmp_path, "train.max_steps=2", "logger.wandb=offline", "name=wb"))
    (run_id,) = [p.name.rsplit("-", 1)[1] for p in (first / "wandb").glob("offline-run-*")]
    assert RunDir(first).wandb_id() == run_id
    resumed = train(tiny(tmp_path, "train.max_steps=3", "logger.wandb=offline", "name=wb", f"resume={first}"))
    assert resumed != first
    runs = list((resumed / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0].name.endswith(f"-{run_id}")  # the same wandb run id, resumed
    # a fresh run (no resume) gets a new id: the negative control
    fresh = train(tiny(tmp_path, "train.max_steps=1", "logger.wandb=offline", "name=wb"))
    assert RunDir(fresh).wandb_id() not in (None, run_id)
    # resuming a run that had no wandb starts a new wandb run as before
    plain = train(tiny(tmp_path, "train.max_steps=1", "logger.wandb=disabled", "name=plain"))
    assert RunDir(plain).wandb_id() is None
    again = train(tiny(tmp_path, "train.max_steps=2", "logger.wandb=offline", "name=plain", f"resume={plain}"))
    assert RunDir(again).wandb_id() not in (None, run_id)


def test_eval_is_logged_to_the_runs_wandb_run(no_wandb_network, tmp_path, capsys):
    from famlab.cli import main

    run_dir = train(tiny(tmp_path, "train.max_steps=2", "logger.wandb=offline", "name=wb"))
    run_id = RunDir(run_dir).wandb_id()
    small = ["data.passkey_eval_lengths=[1]", "data.passkey_eval_samples=2", "data.passkey_eval_depth_buckets=2"]
    assert main(["eval", str(run_dir), *small, "--device", "cpu"]) == 0
    assert f"wandb: logged to run {run_id} " in capsys.readouterr().out
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all((p / f"run-{run_id}.wandb").is_file() for p in runs)  # the same run, resumed
    # the table wandb wrote for that run (the client writes media files itself, at log time)
    (table,) = [f for p in runs for f in (p / "files" / "media" / "table").glob("eval/table_*.table.json")]
    logged = json.loads(table.read_text())
    assert "accuracy" in logged["columns"] and len(logged["data"]) == 2
    # negative control: a run without wandb gets none from its evaluation
    plain = train(tiny(tmp_path, "train.max_steps=1", "logger.wandb=disabled", "name=plain"))
    assert main(["eval", str(plain), *small, "--device", "cpu"]) == 0
    assert "wandb:" not in capsys.readouterr().out and not (plain / "wandb").exists()
