"""famlab.hf.folder: converted folders saved, read and loaded with any attention switches, and runs that
start from one (``model.init_from``)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from hf_fixtures import make_hf, save_tiny_converted, tokens  # noqa: E402

from famlab import hf  # noqa: E402
from famlab.config import ModelConfig, load_run_config  # noqa: E402
from famlab.train import train  # noqa: E402


@pytest.fixture(scope="module")
def converted_dir(tmp_path_factory):
    return save_tiny_converted(tmp_path_factory.mktemp("converted") / "tiny")


def test_converted_folder_roundtrip(tmp_path):
    fam = hf.convert(make_hf("llama"), attention="fam", block_size=8, mem_segment=1, fam_len=4)
    out = hf.save_converted(fam, tmp_path / "conv")
    meta = json.loads((out / "famlab.json").read_text())
    assert meta["format"] == "famlab-converted" and meta["source"]["model_type"] == "llama"
    assert meta["model"]["attention"] == "fam" and meta["dtype"] == "float32"
    x = tokens()
    again = hf.load_converted(out)  # same switches, FAM prompt included
    assert torch.equal(again(x), fam(x))
    full = hf.load_converted(out, attention="full")  # FAM prompt ignored
    assert not hasattr(full, "fam_prompt")
    assert hf.compare_logits(full, make_hf("llama"), x) < 1e-5
    with pytest.raises(hf.ConversionError, match="d_model=128 differs"):
        hf.load_converted(out, d_model=128)
    # another fam_len (a sweep over L_F from one FAM folder): the trained prompt cannot fit, a fresh one is
    # used and the user is told; every other weight loads
    with pytest.warns(UserWarning, match=r"another fam_len \(fam_prompt \[4, 64\] -> \[8, 64\]\)"):
        longer = hf.load_converted(out, fam_len=8)
    assert longer.fam_prompt.shape == (8, 64)
    assert torch.equal(longer.layers[0].wqkv.weight, fam.layers[0].wqkv.weight)


def test_folders_never_hold_training_buffers_and_old_ones_still_load(converted_dir, tmp_path):
    """The RSP buffers FamLM once kept in its state dict (``SKIPPED_KEYS``) are not written; a folder
    written with them loads all the same."""
    from safetensors.torch import load_file, save_file

    fam = hf.load_converted(converted_dir, attention="fam", block_size=8, mem_segment=1, fam_len=4)
    out = hf.save_converted(fam, tmp_path / "fam")
    saved = load_file(str(out / hf.WEIGHTS_FILE))
    assert "fam_prompt" in saved and not [k for k in saved if k.startswith(hf.SKIPPED_KEYS)]
    saved.update(rsp_state=torch.ones(2, 4, 64), rsp_valid=torch.ones((), dtype=torch.bool))
    save_file(saved, str(out / hf.WEIGHTS_FILE), metadata={"format": hf.FORMAT})
    x = tokens()
    assert torch.equal(hf.load_converted(out)(x), fam(x))


def test_resaved_folder_keeps_the_tokenizer_files(tmp_path, monkeypatch):
    """A model loaded from a converted folder and saved again (e.g. after fine-tuning) keeps the folder's
    tokenizer files and records where it came from, also along a chain of re-saves and after the working
    directory changed; saved over its own folder, the folder keeps its files and its record."""
    first = save_tiny_converted(tmp_path / "base")
    (first / "tokenizer.json").write_text('{"version": "1.0"}')
    monkeypatch.chdir(tmp_path)
    model = hf.load_converted("base", attention="bswa", block_size=8, mem_segment=1)  # a relative path
    monkeypatch.chdir(first)
    again = hf.save_converted(model, tmp_path / "again")
    assert (again / "tokenizer.json").read_text() == '{"version": "1.0"}'
    meta = json.loads((again / "famlab.json").read_text())
    assert meta["source"]["fine_tuned_from"] == str(first.resolve()) and meta["source"]["model_type"] == "llama"
    third = hf.save_converted(hf.load_converted(again), tmp_path / "third")
    source = json.loads((third / "famlab.json").read_text())["source"]
    assert source["fine_tuned_from"] == str(again.resolve()) and (third / "tokenizer.json").is_file()
    before = json.loads((first / "famlab.json").read_text())["source"]
    assert hf.save_converted(model, first) == first and (first / "tokenizer.json").is_file()
    assert json.loads((first / "famlab.json").read_text())["source"] == before
    assert torch.equal(
        hf.load_converted(again, attention="bswa", block_size=8, mem_segment=1)(tokens()), model(tokens())
    )


def test_extra_files_from_a_missing_folder_warns_and_saves(tmp_path):
    model = hf.convert(make_hf("llama"), attention="full")
    with pytest.warns(UserWarning, match=r"is not a folder: no tokenizer files copied"):
        out = hf.save_converted(model, tmp_path / "out", extra_files_from=tmp_path / "gone")
    assert sorted(f.name for f in out.iterdir()) == ["famlab.json", "model.safetensors"]
    assert json.loads((out / "famlab.json").read_text())["source"]["model_type"] == "llama"


def test_shape_mismatch_names_the_tensor(converted_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((converted_dir / "model.safetensors").read_bytes())
    meta = json.loads((converted_dir / "famlab.json").read_text())
    meta["model"]["d_ff"] = 128
    (bad / "famlab.json").write_text(json.dumps(meta))
    with pytest.raises(
        hf.ConversionError, match=r"'layers.0.ff.down.weight' has shape \[64, 96\], the FamLM config needs \[64, 128\]"
    ):
        hf.load_converted(bad)
    with pytest.raises(hf.ConversionError, match="not a converted folder"):
        hf.load_converted(tmp_path)
    (bad / "famlab.json").write_text(json.dumps({**meta, "format": "other"}))
    with pytest.raises(hf.ConversionError, match="format='other', expected 'famlab-converted'"):
        hf.read_converted(bad)


def test_run_config_takes_its_shape_from_the_folder(converted_dir):
    cfg = ModelConfig(d_model=32, n_layers=4, n_heads=2, attention="bswa", block_size=16, init_from=str(converted_dir))
    resolved = hf.resolve_model_config(cfg)
    assert (resolved.d_model, resolved.n_layers, resolved.n_heads, resolved.n_kv_heads) == (64, 2, 4, 2)
    assert (resolved.ff, resolved.norm, resolved.rope_base, resolved.vocab_size) == ("swiglu", "rmsnorm", 5000.0, 256)
    assert (resolved.attention, resolved.block_size, resolved.init_from) == ("bswa", 16, str(converted_dir))
    assert hf.resolve_model_config(cfg.replace(init_from=None)) == cfg.replace(init_from=None)


def test_init_from_bad_folder_is_a_config_error(tmp_path):
    cfg = load_run_config("tiny", [f"model.init_from={tmp_path}", f"out_dir={tmp_path}", "logger.wandb=disabled"])
    with pytest.raises(ValueError, match=r"model.init_from=.*not a converted folder"):
        train(cfg)


def test_memory_kinds_load_from_any_folder(tmp_path):
    """A FAM folder loads into sum_fam (fresh summaries, every other tensor loaded) and fm; a sum_fam folder
    round-trips with its summaries and loads into fam without them."""
    fam = hf.convert(make_hf("llama"), attention="fam", block_size=8, mem_segment=1, fam_len=4)
    out = hf.save_converted(fam, tmp_path / "conv")
    x = tokens()
    summ = hf.load_converted(out, attention="sum_fam")
    assert torch.equal(summ.fam_prompt, fam.fam_prompt) and summ.layers[0].fam_summary.shape == (4, 64)
    assert torch.equal(summ.layers[0].wqkv.weight, fam.layers[0].wqkv.weight)
    again = hf.load_converted(hf.save_converted(summ, tmp_path / "sum"))
    assert again.cfg.attention == "sum_fam" and torch.equal(again(x), summ(x))
    assert torch.equal(hf.load_converted(tmp_path / "sum", attention="fam")(x), fam(x))
    assert hf.load_converted(out, attention="fm").cfg.mem_segment == 1


def test_block_recurrent_loads_from_any_folder(tmp_path):
    """A converted model loads into block_recurrent (fresh recurrent cells, every other tensor loaded); a
    block_recurrent folder round-trips with its cells and loads into bswa without them."""
    fam = hf.convert(make_hf("llama"), attention="fam", block_size=8, mem_segment=1, fam_len=4)
    out = hf.save_converted(fam, tmp_path / "conv")
    x = tokens()
    brt = hf.load_converted(out, attention="block_recurrent", brt_state_len=3)
    cell = brt.layers[brt.cfg.n_layers // 2].brt
    assert cell is not None and cell.state0.shape == (3, 64) and torch.isfinite(cell.state0).all()
    assert torch.equal(brt.layers[0].wqkv.weight, fam.layers[0].wqkv.weight)
    again = hf.load_converted(hf.save_converted(brt, tmp_path / "brt"))
    assert again.cfg.attention == "block_recurrent" and torch.equal(again(x), brt(x))
    bswa = hf.load_converted(tmp_path / "brt", attention="bswa")
    assert torch.equal(bswa(x), hf.load_converted(out, attention="bswa")(x))


def test_infini_converts_and_loads_with_fresh_gates(tmp_path):
    """An HF model converts to infini (the gates beta start at 0, every other tensor is the checkpoint's); an
    infini folder round-trips with its gates and loads into fam (and a fam folder into infini) without them."""
    fam = hf.convert(make_hf("llama"), attention="fam", block_size=8, mem_segment=1, fam_len=4)
    inf = hf.convert(make_hf("llama"), attention="infini", block_size=8, mem_segment=0)
    assert torch.equal(inf.layers[0].infini_beta, torch.zeros(inf.cfg.n_heads))
    assert torch.equal(inf.layers[1].wqkv.weight, fam.layers[1].wqkv.weight)
    x = tokens()
    fresh = inf(x)
    with torch.no_grad():
        inf.layers[0].infini_beta.fill_(0.5)
    again = hf.load_converted(hf.save_converted(inf, tmp_path / "inf"))
    assert again.cfg.attention == "infini" and torch.equal(again(x), inf(x))
    as_fam = hf.load_converted(tmp_path / "inf", attention="fam", fam_len=4)
    assert torch.equal(as_fam.layers[0].wqkv.weight, inf.layers[0].wqkv.weight)
    from_fam = hf.load_converted(hf.save_converted(fam, tmp_path / "fam"), attention="infini", mem_segment=0)
    assert torch.equal(from_fam.layers[0].infini_beta, torch.zeros(inf.cfg.n_heads))
    assert torch.equal(from_fam(x), fresh) and not torch.equal(fresh, inf(x))
