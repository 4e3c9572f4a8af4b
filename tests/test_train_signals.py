"""``famlab train`` stopped by SIGUSR2 (SLURM's warning before a time limit), SIGUSR1 or SIGTERM (a cancelled or
preempted SLURM job; Lightning's own SIGTERM handler would stop without a checkpoint): it saves the checkpoint of
its last step, exits 5 without final_metrics.json, and ``resume=`` continues as if it had never stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from tiny_runs import TINY, train_losses

from famlab.runs import RunDir


def _cmd(tmp_path, name, *extra):
    return [sys.executable, "-m", "famlab.cli", "train", "preset=tiny", *TINY, f"out_dir={tmp_path}", f"name={name}",
            *extra]  # fmt: skip


@pytest.mark.parametrize("sig", [signal.SIGUSR2, signal.SIGTERM], ids=["SIGUSR2", "SIGTERM"])
def test_a_signal_saves_a_checkpoint_and_resume_continues_as_uninterrupted(tmp_path, sig):
    # SIGUSR1 takes SIGUSR2's path (famlab.train.signals.EARLY_SIGNALS); SIGTERM replaces Lightning's handler
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        _cmd(tmp_path, "cut", "train.max_steps=100000"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    end = time.time() + 120
    while True:  # a few steps logged: then ask it to stop
        run = RunDir.newest_under(tmp_path / "cut")
        if run is not None and len(train_losses(run.path)) >= 3:
            break
        assert proc.poll() is None and time.time() < end, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 5, err
    (line,) = err.decode().strip().splitlines()
    step = max(train_losses(run.path))
    want = f"famlab: error: training stopped: {sig.name}: checkpoint of step {step} saved; resume=<run dir> continues"
    assert line == want
    assert RunDir(run.path).newest_periodic_checkpoint() == (step, run.checkpoint_dir / f"step{step:08d}.ckpt")
    assert run.last_checkpoint.is_file() and not run.final_metrics_path.exists()  # not a finished run

    more = f"train.max_steps={step + 3}"
    resumed = subprocess.run(_cmd(tmp_path, "resumed", more, f"resume={run.path}"), env=env, capture_output=True)
    whole = subprocess.run(_cmd(tmp_path, "whole", more), env=env, capture_output=True)
    assert resumed.returncode == 0 and whole.returncode == 0, resumed.stderr + whole.stderr
    got = train_losses(RunDir.newest_under(tmp_path / "resumed").path)
    want_losses = train_losses(RunDir.newest_under(tmp_path / "whole").path)
    assert sorted(got) == [step + 1, step + 2, step + 3]
    for s in got:
        assert got[s] == pytest.approx(want_losses[s], rel=1e-6, abs=1e-7)
    assert {s: want_losses[s] for s in range(1, step + 1)} == pytest.approx(train_losses(run.path), rel=1e-6)
