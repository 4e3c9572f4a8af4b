"""Training that fails fails cleanly: a diverging run stops at the first non-finite loss (exit 3, strict JSON,
the reason in final_metrics.json); checkpoint saves are atomic in their own folder (a kill or a full disk
mid-save keeps the previous checkpoint, nothing goes through $TMPDIR); a failed final save is exit 4 without
final_metrics.json; resuming from an unreadable checkpoint is one line, exit 2, and no run directory."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch
from tiny_runs import TINY

from famlab.cli import main
from famlab.runs import RunDir, partial_path
from famlab.train import (
    EXIT_DIVERGED,
    EXIT_SAVE_FAILED,
    AtomicCheckpointIO,
    CheckpointSaveFailed,
    JsonlLogger,
    load_checkpoint,
)

REPO = Path(__file__).resolve().parents[1]
SHM = Path("/dev/shm")


def strict_json(text: str):
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("famlab: error:")]


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("**/config.yaml"))


@pytest.fixture
def other_fs_tmpdir(monkeypatch, tmp_path):
    """$TMPDIR on another filesystem than the run folder (tmpfs /dev/shm), empty, watched by the test."""
    if not SHM.is_dir() or os.stat(SHM).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test's tmp_path")
    tmpdir = Path(tempfile.mkdtemp(prefix="famlab-tmpdir-", dir=SHM))
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read $TMPDIR
    assert tempfile.gettempdir() == str(tmpdir)
    yield tmpdir
    shutil.rmtree(tmpdir, ignore_errors=True)


def tiny_train(tmp: Path, *extra: str) -> list[str]:
    return ["train", "preset=tiny", *TINY, f"out_dir={tmp}", *extra]


# ---------------------------------------------------------------- 6: divergence


def test_divergence_stops_at_the_first_non_finite_loss(tmp_path, capsys, one_thread):
    args = ["train.lr=1e6", "train.grad_clip=0", "train.warmup_steps=0", "train.schedule=constant"]
    rc = main(tiny_train(tmp_path, *args, "train.max_steps=40", "train.checkpoint_every=1", "name=div"))
    err = capsys.readouterr().err
    assert rc == EXIT_DIVERGED == 3
    lines = error_lines(err)
    assert len(lines) == 1 and "non-finite training loss (nan) at step " in lines[0], err
    step = int(lines[0].rsplit(" ", 1)[1])
    assert 1 <= step < 40

    (run_dir,) = run_dirs(tmp_path)
    run = RunDir(run_dir)
    rows = [strict_json(line) for line in run.metrics_path.read_text().splitlines()]
    assert all(r["step"] < step for r in rows)  # nothing of the diverged step or after
    assert all(math.isfinite(r["train/loss"]) for r in rows if "train/loss" in r)
    final = strict_json(run.final_metrics_path.read_text())
    assert final["stopped"] == f"non-finite training loss (nan) at step {step}"
    assert final["stop_kind"] == "diverged" and final["exit_status"] == 3 and final["step"] == step - 1
    assert final["train/loss"] is None  # NaN written as null
    assert run.stop_reason() == final["stopped"] and not run.is_complete()
    if step > 1:  # the checkpoint of the step before, not the diverged weights
        ckpt = load_checkpoint(run.last_checkpoint)
        assert ckpt["global_step"] == step - 1
        assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_json_files_write_non_finite_floats_as_null(tmp_path):
    run = RunDir(tmp_path)
    run.append_metrics({"step": 1, "train/loss": math.nan, "x": [math.inf, 1.0]})
    JsonlLogger(tmp_path).log_metrics({"train/loss": torch.tensor(-math.inf)}, step=2)
    run.write_final_metrics({"step": 2, "val/loss": math.inf, "eval": {"bpb": math.nan}})
    rows = [strict_json(line) for line in run.metrics_path.read_text().splitlines()]
    assert rows[0]["train/loss"] is None and rows[0]["x"] == [None, 1.0] and rows[1]["train/loss"] is None
    final = strict_json(run.final_metrics_path.read_text())
    assert final["val/loss"] is None and final["eval"] == {"bpb": None} and run.is_complete()
    assert not partial_path(run.final_metrics_path).exists()


# ---------------------------------------------------------------- 9, 10: atomic saves


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, other_fs_tmpdir, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)
    real_save = torch.save

    def full_disk(obj, f, *a, **kw):  # half a checkpoint, then the disk is full
        f.write(b"PK\x03\x04" + b"x" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointSaveFailed, match="No space left on device"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    ckpt = load_checkpoint(path)
    assert ckpt["global_step"] == 1 and torch.equal(ckpt["state_dict"]["w"], torch.ones(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no partial file left
    assert list(other_fs_tmpdir.iterdir()) == []


KILL_MID_SAVE = """
import os, sys, torch
from famlab.train import AtomicCheckpointIO
path = sys.argv[1]
io = AtomicCheckpointIO()
io.save_checkpoint({"state_dict": {"w": torch.ones(1000)}, "global_step": 1}, path)
real_save = torch.save
def killed(obj, f, *a, **kw):  # write half of the real bytes, then die without any cleanup
    import io as _io
    buf = _io.BytesIO()
    real_save(obj, buf)
    f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    f.flush()
    os._exit(9)
torch.save = killed
io.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}, "global_step": 2}, path)
"""


def test_a_kill_mid_save_keeps_the_previous_checkpoint(tmp_path, other_fs_tmpdir):
    path = tmp_path / "checkpoints" / "last.ckpt"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(other_fs_tmpdir)}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILL_MID_SAVE), str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 9, proc.stderr
    ckpt = load_checkpoint(path)  # intact and loadable: the first save
    assert ckpt["global_step"] == 1 and torch.equal(ckpt["state_dict"]["w"], torch.ones(1000))
    assert list(other_fs_tmpdir.iterdir()) == []  # nothing in $TMPDIR, leaked or not
    # the killed write left only its hidden partial file next to it, which the next save replaces
    assert sorted(p.name for p in path.parent.iterdir()) == [".last.ckpt.partial", "last.ckpt"]
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(2)}, "global_step": 3}, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    assert load_checkpoint(path)["global_step"] == 3


def test_training_saves_through_the_checkpoint_folder_not_tmpdir(tmp_path, other_fs_tmpdir, monkeypatch, one_thread):
    def no_move(*args, **kwargs):  # Lightning's save: mkstemp in $TMPDIR, then shutil.move (a copy across filesystems)
        raise AssertionError(f"shutil.move{args}")

    monkeypatch.setattr(shutil, "move", no_move)
    assert main(tiny_train(tmp_path, "train.max_steps=4", "train.checkpoint_every=2", "name=xfs")) == 0
    (run_dir,) = run_dirs(tmp_path)
    ckpts = RunDir(run_dir).checkpoint_dir
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step00000002.ckpt", "step00000004.ckpt"]
    assert load_checkpoint(ckpts / "last.ckpt")["global_step"] == 4
    assert list(other_fs_tmpdir.iterdir()) == []


def test_a_failed_final_save_is_exit_4_without_final_metrics(tmp_path, monkeypatch, capsys, one_thread):
    real_save = torch.save

    def disk_full_at_step_4(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("global_step") == 4:
            f.write(b"PK\x03\x04" + b"x" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_at_step_4)
    rc = main(tiny_train(tmp_path, "train.max_steps=4", "train.checkpoint_every=3", "name=full"))
    err = capsys.readouterr().err
    assert rc == EXIT_SAVE_FAILED == 4
    lines = error_lines(err)
    assert len(lines) == 1 and "could not write checkpoint" in lines[0] and "No space left on device" in lines[0]
    (run_dir,) = run_dirs(tmp_path)
    run = RunDir(run_dir)
    assert not run.final_metrics_path.exists() and not run.is_complete()
    assert sorted(p.name for p in run.checkpoint_dir.iterdir()) == ["last.ckpt", "step00000003.ckpt"]
    assert load_checkpoint(run.last_checkpoint)["global_step"] == 3  # the previous one, intact
    monkeypatch.setattr(torch, "save", real_save)
    assert main(["train", f"resume={run_dir}", "train.max_steps=4"]) == 0  # continues from it
    resumed = [d for d in run_dirs(tmp_path) if d != run_dir]
    assert len(resumed) == 1 and RunDir(resumed[0]).read_final_metrics()["step"] == 4


# ---------------------------------------------------------------- resume of an unreadable checkpoint


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finished")
    torch.set_num_threads(1)
    assert main(tiny_train(tmp, "train.max_steps=2", "name=ok")) == 0
    (run_dir,) = run_dirs(tmp)
    return run_dir


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "damage",
    [_truncate, lambda p: p.write_bytes(b""), lambda p: p.write_bytes(os.urandom(5000))],
    ids=["truncated", "empty", "garbage"],
)
@pytest.mark.parametrize("target", ["run_dir", "file"])
def test_resume_from_an_unreadable_checkpoint_is_one_line_exit_2(finished_run, tmp_path, capsys, damage, target):
    out = tmp_path / "runs"
    run_dir = out / "ok" / finished_run.name
    shutil.copytree(finished_run, run_dir)
    ckpt = RunDir(run_dir).last_checkpoint
    damage(ckpt)
    if target == "file":  # a bare checkpoint file: its config comes from inside it
        bare = tmp_path / "bare.ckpt"
        shutil.copy(ckpt, bare)
        shutil.rmtree(run_dir)
    resume = run_dir if target == "run_dir" else tmp_path / "bare.ckpt"
    before = run_dirs(tmp_path)
    rc = main(["train", f"resume={resume}", "train.max_steps=3", f"out_dir={out}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("famlab: error: resume: ") and err.count("\n") == 1, err
    assert "is unreadable (truncated or not a checkpoint)" in err
    assert run_dirs(tmp_path) == before  # no new (empty) run directory
    assert not (out / "ok").exists() or sorted((out / "ok").iterdir()) == ([run_dir] if target == "run_dir" else [])
