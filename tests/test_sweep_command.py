"""``famlab sweep``: its output, its status table, and the CLI's dispatch to it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sweep_helpers import load, write_spec

from famlab.cli import sweep_main as main
from famlab.sweep import default_storage, load_spec


def test_cli_never_prints_the_password(tmp_path, postgres, capfd):
    spec_path = write_spec(tmp_path, name="pw", grid={"model.attention": ["bswa"]})
    url = postgres.new_database()
    assert main(["run", spec_path, "--storage", url, "--out-root", str(tmp_path / "runs")]) == 0
    out, err = capfd.readouterr()
    assert postgres.password not in out + err
    assert "***" in out and "COMPLETE" in out


def test_status_table_lists_trials(tmp_path, capsys):
    path = write_spec(tmp_path, grid={"model.attention": ["bswa", "fam"]})
    out_root = tmp_path / "runs"
    assert main(["run", path, "--out-root", str(out_root), "--threads", "2"]) == 0
    capsys.readouterr()
    for t in load(default_storage(load_spec(path), out_root), load_spec(path)).trials:  # --threads reached each run
        prov = json.loads((Path(t.user_attrs["run_dir"]) / "provenance.json").read_text())
        assert prov["threads"] == {"torch": 2, "OMP_NUM_THREADS": "2"}
    assert main(["status", path, "--out-root", str(out_root)]) == 0
    out = capsys.readouterr().out
    assert "complete: 2" in out and "bswa" in out and "fam" in out


def test_famlab_cli_dispatches_sweep(tmp_path):
    path = write_spec(tmp_path, grid={"model.attention": ["bswa"]})
    out = subprocess.run(
        [sys.executable, "-m", "famlab.cli", "sweep", "status", path, "--out-root", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "no trials yet" in out
