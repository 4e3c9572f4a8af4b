"""famlab.bench.stream: a quick run writes every variant and length, the state of FAM and BSWA
does not grow with the tokens consumed (counted from its tensors), full attention's is exactly its
KV cache, and the streamed logits equal the parallel forward's."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import make_model, tiny_cfg, tokens

from famlab.bench import stream as bench_stream
from famlab.bench.common import base_config
from famlab.bench.stream import kv_cache_bytes, parse_tokens, state_nbytes, stream
from famlab.bench.stream_report import fmt_tokens


def test_parse_tokens():
    assert parse_tokens("16k") == 16384 and parse_tokens("1M") == 1 << 20 and parse_tokens(" 3000 ") == 3000
    assert fmt_tokens(131072) == "128k" and fmt_tokens(1 << 20) == "1M"
    with pytest.raises(ValueError):
        parse_tokens("0")


def _expected_state_bytes(cfg, model) -> int:
    """Logical bytes of a FAM/BSWA state at a block boundary: per layer the memory ring (m*B keys
    and values), no partial block, and for FAM the hidden state (L_F x d) and the keys/values of
    the last P FAM states."""
    G, D, L_F = cfg.kv_heads, cfg.head_dim, model.fam_len
    per_layer = 2 * cfg.mem_segment * cfg.block_size * G * D
    if L_F:
        per_layer += L_F * cfg.d_model + 2 * cfg.fam_prev_blocks * L_F * G * D
    return 4 * cfg.n_layers * per_layer


@pytest.mark.parametrize("attention", ["fam", "bswa", "full"])
def test_state_bytes_constant_for_fam_and_bswa_growing_kv_cache_for_full(attention):
    cfg = tiny_cfg(attention=attention, mem_segment=2, fam_prev_blocks=2)
    model = make_model(cfg)
    B = cfg.block_size
    sizes = {}
    for n_blocks in (3, 6, 16):  # from m + 1 = 3 blocks on, the memory ring is full
        state, _ = stream(model, n_blocks * B, B, torch.Generator().manual_seed(0))
        assert state.pos == n_blocks * B
        sizes[n_blocks] = state_nbytes(state)
    # mid-block: the partial block's keys come on top, still independent of the length
    mid = {}
    for n_blocks in (3, 16):
        state, _ = stream(model, n_blocks * B + 3, B, torch.Generator().manual_seed(0))
        mid[n_blocks] = state_nbytes(state)
    if attention == "full":
        for n_blocks, size in sizes.items():
            assert size["logical"] == kv_cache_bytes(cfg, n_blocks * B)
        assert mid[16]["logical"] == kv_cache_bytes(cfg, 16 * B + 3)
    else:
        assert sizes[3] == sizes[6] == sizes[16]
        assert mid[3] == mid[16]
        assert sizes[3]["logical"] == _expected_state_bytes(cfg, model)
        assert sizes[3]["storage"] >= sizes[3]["logical"]
        assert mid[3]["logical"] == sizes[3]["logical"] + 4 * cfg.n_layers * 2 * 3 * cfg.kv_heads * cfg.head_dim


@pytest.mark.parametrize("attention", ["fam", "bswa", "full"])
def test_streamed_logits_equal_parallel_forward(attention):
    cfg = tiny_cfg(attention=attention)
    model = make_model(cfg)
    toks = tokens(cfg, 1, 7 * cfg.block_size + 5)
    parallel = model(toks)
    for chunk in (cfg.block_size, 3):
        state, outs = model.init_state(1), []
        for start in range(0, toks.shape[1], chunk):
            logits, state = model.step(toks[:, start : start + chunk], state)
            outs.append(logits)
        torch.testing.assert_close(torch.cat(outs, 1), parallel, atol=1e-5, rtol=1e-5)
    # the benchmark's own prefill comparison reports the same agreement
    rows = bench_stream.prefill({attention: cfg}, 4 * cfg.block_size, cfg.block_size, seed=0, warmup=0, iters=1)
    assert rows[0]["max_abs_logit_diff"] < 1e-5
    assert rows[0]["stream_tokens_per_s"] > 0 and rows[0]["parallel_tokens_per_s"] > 0


def test_quick_stream_bench_writes_every_variant_and_length(tmp_path, capsys):
    args = ["--quick", "--lengths", "1k,4k", "--full-max-tokens", "1k", "--prefill-len", "512"]
    args += ["--threads", "1", "--warmup-chunks", "2", "--out-dir", str(tmp_path)]
    res = bench_stream.main(args)
    out = capsys.readouterr().out
    assert "| variant | tokens | tokens/s |" in out
    data = json.loads(next(tmp_path.glob("stream_*.json")).read_text())
    assert data["timestamp"] == res["timestamp"]
    assert (tmp_path / "stream_latest.md").read_text().startswith("# famlab streaming bench")
    assert {"cpu_model", "torch", "torch_threads", "usable_cores"} <= data["machine"].keys()
    assert data["code"]["model_py_sha256"]
    rows = {(r["variant"], r["tokens"]): r for r in data["stream"]}
    assert set(rows) == {(v, n) for v in ("fam", "bswa", "full") for n in (1024, 4096)}
    assert rows[("full", 4096)]["skipped"] and "full-max-tokens" in rows[("full", 4096)]["reason"]
    assert rows[("full", 4096)]["kv_cache_bytes"] == kv_cache_bytes(base_config(_ns(data)), 4096)
    for key, r in rows.items():
        if key == ("full", 4096):
            continue
        assert not r["skipped"] and r["final_pos"] == r["tokens"]
        assert r["tokens_per_s_total"] > 0 and r["time_s"] > 0
        assert r["peak_rss_mb"] >= r["rss_before_mb"] > 0
        assert len(r["rss_trace_mb"]) == bench_stream.RSS_SAMPLES
        assert r["rss_trace_mb"][-1][0] == r["tokens"]
    for v in ("fam", "bswa"):  # measured in separate processes: the state is the same size
        assert rows[(v, 1024)]["state_bytes"] == rows[(v, 4096)]["state_bytes"]
        assert rows[(v, 1024)]["state_storage_bytes"] == rows[(v, 4096)]["state_storage_bytes"]
        f = data["flatness"][v]
        assert (f["shortest"], f["longest"]) == (1024, 4096) and f["rss_ratio"] > 0 and f["speed_ratio"] > 0
    assert data["flatness"]["full"]["shortest"] is None  # only one length ran
    assert [p["variant"] for p in data["prefill"]] == ["fam", "bswa", "full"]
    assert all(p["max_abs_logit_diff"] < 1e-4 and p["ratio"] > 0 for p in data["prefill"])
    expected = {f"{k}_{v}" for k in ("rss_flat", "speed_flat", "prefill") for v in ("fam", "bswa")}
    assert set(data["targets"]) == expected
    for v in ("fam", "bswa"):  # every target measured, its status read off its value
        f, p = data["flatness"][v], next(p for p in data["prefill"] if p["variant"] == v)
        assert data["targets"][f"rss_flat_{v}"]["value"] == f["rss_ratio"]
        assert data["targets"][f"speed_flat_{v}"]["value"] == f["speed_ratio"]
        assert data["targets"][f"prefill_{v}"]["value"] == p["ratio"]
    for t in data["targets"].values():
        tol = t["threshold"]
        ok = (
            t["value"] >= tol
            if t["name"].split(": ")[1].startswith("streaming prefill")
            else abs(t["value"] - 1) <= tol
        )
        assert t["status"] == ("PASS" if ok else "FAIL")
        assert f"* {t['name']}: {t['value_text']} -> **{t['status']}**" in out


def _ns(data):
    """The config of a result as the attributes famlab.bench.common.base_config reads."""
    import argparse

    c = data["config"]
    keys = ("vocab_size", "d_model", "n_layers", "n_heads", "block_size", "mem_segment", "fam_len")
    return argparse.Namespace(**{k: c[k] for k in keys})
