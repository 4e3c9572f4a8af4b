"""``python -m famlab.hf``: convert and check from the command line; exit status 2 and one error line for
a model famlab cannot take or a missing SmolLM2 package."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

transformers = pytest.importorskip("transformers")

from hf_fixtures import make_hf  # noqa: E402

import famlab.hf.check  # noqa: E402
from famlab.hf.__main__ import main  # noqa: E402


def test_convert_prints_the_check_as_json(tmp_path, capsys):
    make_hf("llama").save_pretrained(str(tmp_path / "src"))
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "out")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["out"] == str(tmp_path / "out") and result["converted_now"] and result["max_abs_logit_diff"] < 1e-5
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_smollm2_without_its_package_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(famlab.hf.check, "SMOLLM2_PACKAGE", "no_such_famlab_package")
    assert main(["smollm2", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: package 'no_such_famlab_package' is not installed")
    assert not (tmp_path / "out").exists()


def test_unsupported_model_exits_2_with_one_error_line(tmp_path):
    """Run as ``python -m famlab.hf``: the module entry point and its exit status."""
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    gpt2.save_pretrained(str(tmp_path / "gpt2"))
    proc = subprocess.run(
        [sys.executable, "-m", "famlab.hf", "convert", str(tmp_path / "gpt2"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith("error: model_type='gpt2'") and "supported model types are llama" in err[-1]
    assert proc.stdout == "" and not (tmp_path / "out").exists()
