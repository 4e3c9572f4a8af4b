"""Shell completion (argcomplete), asked in-process as a shell asks it: verbs, spec names, config keys and values."""

from __future__ import annotations

import io

import argcomplete
import argcomplete.io
import pytest

from famlab.cli import _parser, main
from famlab.cli.complete import complete_setting, complete_spec


class Finder(argcomplete.CompletionFinder):
    def _init_debug_stream(self):  # argcomplete's hook to keep off fd 9 (pytest's faulthandler holds it)
        argcomplete.io.debug_stream = io.StringIO()


def complete(monkeypatch, line: str) -> list[str]:
    """What argcomplete answers for the command line ``line`` (the cursor at its end)."""

    def stop(code):
        raise SystemExit(code)

    monkeypatch.setenv("_ARGCOMPLETE", "1")
    monkeypatch.setenv("COMP_LINE", line)
    monkeypatch.setenv("COMP_POINT", str(len(line)))
    monkeypatch.setenv("_ARGCOMPLETE_IFS", "\013")
    out = io.StringIO()
    with pytest.raises(SystemExit):
        Finder()(_parser(), output_stream=out, exit_method=stop)
    return sorted(w.strip() for w in out.getvalue().split("\013") if w.strip())


def test_verbs(monkeypatch):
    words = complete(monkeypatch, "famlab ")
    assert {"train", "eval", "sweep", "claims", "report", "completion"} <= set(words)
    assert complete(monkeypatch, "famlab tr") == ["train"]


def test_config_keys_and_values(monkeypatch):
    assert "model.fam_len=" in complete(monkeypatch, "famlab train model.fam")
    assert complete(monkeypatch, "famlab train model.attention=f") == [
        "model.attention=fam",
        "model.attention=fm",
        "model.attention=full",
    ]
    assert complete(monkeypatch, "famlab train model.attention=b") == [
        "model.attention=block_recurrent",
        "model.attention=bswa",
    ]
    assert "preset=tiny" in complete(monkeypatch, "famlab train preset=")
    assert "--print-config" in complete(monkeypatch, "famlab train --pr")
    assert "model.fam_len=" not in complete(monkeypatch, "famlab train data.")  # only the section's keys


def test_sweep_specs_and_actions(monkeypatch):
    assert "dashboard" in complete(monkeypatch, "famlab sweep ")
    assert complete(monkeypatch, "famlab sweep run fam_len") == ["fam_length"]


def test_completer_functions():
    assert "model.fam_len=" in complete_setting("model.fam")
    assert complete_setting("logger.csv=") == ["logger.csv=true", "logger.csv=false"]
    assert complete_setting("train.lr=") == []  # an open value: nothing to offer
    assert {"model.", "data.", "train.", "seed="} <= set(complete_setting(""))
    assert complete_spec("memory") == ["memory_kinds", "memory_segment"] and complete_spec("nope") == []


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_shell_code(shell, capsys):
    assert main(["completion", shell]) == 0
    assert "famlab" in capsys.readouterr().out


def test_main_help_names_print_config(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "--print-config" in out and "completion" in out and "-m" in out
