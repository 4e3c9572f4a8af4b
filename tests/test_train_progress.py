"""What `famlab train` shows while it runs: the run directory first, plain step lines (no bar codes)
when stdout is not a terminal, a bar of steps on a terminal; and every run ends with a validation."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest
from tiny_runs import RECALL, TINY, tiny

from famlab.runs import RunDir
from famlab.train import train

SHORT = [*TINY, *RECALL, "train.max_steps=5", "train.val_every=2"]


def famlab_train(tmp_path, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("FAMLAB_RUN_DIR", None)
    cmd = [sys.executable, "-m", "famlab.cli", "train", "preset=tiny", *SHORT, f"out_dir={tmp_path}", *args]
    return subprocess.Popen(cmd, env=env, **kwargs)


def val_rows(run_dir) -> list[tuple[int, float]]:
    return [(r["step"], r["val/loss"]) for r in RunDir(run_dir).read_metrics() if "val/loss" in r]


def test_not_a_terminal_plain_lines_run_dir_first_and_a_final_validation(tmp_path):
    proc = famlab_train(tmp_path, "logger.wandb=offline", "name=plain", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = (s.decode() for s in proc.communicate(timeout=240))
    assert proc.returncode == 0, err[-3000:]
    (run_dir,) = (tmp_path / "plain").iterdir()
    lines = out.splitlines()
    assert lines[0] == f"run: {run_dir} (wandb: offline; sync with: wandb sync {run_dir}/wandb/offline-run-*)"
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    assert f"run: {run_dir} (wandb: offline; sync with: wandb sync {offline})" in lines[1:]  # the last line too
    assert "\r" not in out + err and "\x1b[" not in out + err  # no bar, no cursor codes in a log file
    assert any(line.startswith("step 5/5 train/loss ") and line.endswith(" s)") for line in lines), out
    # 5 steps, val_every 2: validated at 2 and 4 by Lightning, and at the last step, 5
    rows = val_rows(run_dir)
    assert [s for s, _ in rows] == [2, 4, 5]
    final = json.loads((run_dir / "final_metrics.json").read_text())
    assert final["val/loss"] == pytest.approx(rows[-1][1]) and final["val/loss_last_logged"] == final["val/loss"]


@pytest.mark.parametrize("val_every, steps", [(2, [2, 4]), (0, [4]), (10, [4])])
def test_the_last_step_is_validated_once(tmp_path, val_every, steps):
    run_dir = train(tiny(tmp_path, *RECALL, "train.max_steps=4", f"train.val_every={val_every}"))
    rows = val_rows(run_dir)
    assert [s for s, _ in rows] == steps  # once each: a validated last step gets no second row
    final = json.loads((run_dir / "final_metrics.json").read_text())
    assert final["step"] == 4 and final["val/loss"] == pytest.approx(rows[-1][1], rel=1e-5)


def test_a_terminal_shows_a_bar_of_steps(tmp_path):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))  # a 0-column tty shows no bar
    try:
        proc = famlab_train(tmp_path, "logger.wandb=disabled", "name=tty", stdout=slave, stderr=subprocess.PIPE)
    finally:
        os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=240) == 0, err[-3000:]
    out = b"".join(chunks).decode(errors="replace")
    (run_dir,) = (tmp_path / "tty").iterdir()
    assert out.startswith(f"run: {run_dir} (wandb: disabled)")
    assert "step: 100%" in out and "5/5" in out and "step/s" in out, out[-2000:]
    assert "Epoch" not in out
