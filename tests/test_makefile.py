"""`make help` lists every target with its variables expanded (users copy what it prints)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _help(*args: str) -> str:
    return subprocess.run(
        ["make", "-s", "-C", str(ROOT), "help", *args], capture_output=True, text=True, check=True
    ).stdout


def test_make_help_expands_variables_and_lists_every_documented_target():
    text = _help()
    assert "$(" not in text, [line for line in text.splitlines() if "$(" in line]
    assert "torch==" in text and "run the memory_segment sweep at profile tiny" in text
    documented = re.findall(r"^([a-zA-Z0-9_-]+):.*## ", (ROOT / "Makefile").read_text(), flags=re.M)
    listed = re.findall(r"^  make (\S+)", text, flags=re.M)
    assert listed == documented and len(listed) > 15


def test_make_help_shows_the_values_a_user_sets():
    text = _help("SWEEP=fam_length", "PROFILE=paper")
    assert "run the fam_length sweep at profile paper" in text
