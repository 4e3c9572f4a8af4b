"""``famlab sweep dashboard``: optuna-dashboard on a study's store (the command, and a real server when the
``dashboard`` extra is installed)."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from sweep_helpers import write_spec

from famlab.cli import main
from famlab.sweep import default_storage, load_spec, make_storage, open_study


@pytest.fixture
def study(tmp_path):
    """A spec whose study exists (no trial needed) in its default SQLite store."""
    path = write_spec(tmp_path, grid={"model.attention": ["bswa"]})
    out_root = tmp_path / "runs"
    url = default_storage(load_spec(path), out_root)
    (out_root / "sweeps" / "t").mkdir(parents=True)
    open_study(load_spec(path), make_storage(url))
    return path, out_root, url


def test_dry_run_prints_the_command(study, capsys):
    path, out_root, url = study
    assert main(["sweep", "dashboard", path, "--out-root", str(out_root), "--port", "9123", "--dry-run"]) == 0
    out = capsys.readouterr().out.strip()
    assert "optuna-dashboard" in out and url in out and out.endswith("--host 127.0.0.1 --port 9123")


def test_no_store_is_one_line_and_starts_nothing(tmp_path, capsys):
    path = write_spec(tmp_path, grid={"model.attention": ["bswa"]})
    assert main(["sweep", "dashboard", path, "--out-root", str(tmp_path / "runs"), "--dry-run"]) == 1
    assert "no trials yet" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists()  # no store was created to say there is none


def test_without_the_extra_it_says_how_to_install(study, capsys, monkeypatch):
    path, out_root, _ = study
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "optuna_dashboard" else real(name, *a)
    )
    assert main(["sweep", "dashboard", path, "--out-root", str(out_root)]) == 2
    assert "pip install -e '.[dashboard]'" in capsys.readouterr().out


@pytest.mark.skipif(importlib.util.find_spec("optuna_dashboard") is None, reason="the dashboard extra is not installed")
def test_dashboard_serves_http(study):
    path, out_root, _ = study
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "famlab.cli",
        "sweep",
        "dashboard",
        path,
        "--out-root",
        str(out_root),
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        status, deadline = None, time.monotonic() + 60  # a bounded wait for the server to come up
        while status is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/dashboard", timeout=5) as response:
                    status = response.status
            except OSError:
                time.sleep(0.5)
        assert status == 200, proc.stdout.read().decode() if proc.poll() is not None else "no answer"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: famlab and the dashboard it started
        proc.wait(timeout=30)
