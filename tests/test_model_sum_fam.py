"""SUM FAM (``attention="sum_fam"``, TransformerFAM App. C.3): the FAM update's queries and residual come from
a static learned summary per layer, the past FAM only through its keys/values. The layer-major path and
streaming equal the reference loop; causality; a state continues exactly; the update is the App. C.3 formula."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import (
    STREAM_CHUNKS,
    assert_causal,
    assert_close,
    assert_paths_agree,
    assert_state_continues,
    assert_state_size_constant,
    assert_streaming_matches,
    make_model,
    random_switch_test,
    tiny_cfg,
    tokens,
)
from hypothesis import strategies as st

from famlab.model import FamLM
from famlab.model.ops import merge_heads
from famlab.model.positions import fam_cos_sin


def sum_model(dtype=torch.float64, **changes) -> FamLM:
    cfg = tiny_cfg(attention="sum_fam", **{"mem_segment": 1, "n_kv_heads": 2, "fam_prev_blocks": 2, **changes})
    return make_model(cfg, dtype=dtype)


@pytest.mark.parametrize("fam_init", ["prompt", "prefix"])
@pytest.mark.parametrize("m,P", [(0, 1), (1, 2)])
@pytest.mark.parametrize("impl", ["fast", "layer_major"])
def test_fast_equals_reference(impl, m, P, fam_init):
    model = sum_model(mem_segment=m, fam_prev_blocks=P, fam_init=fam_init)
    toks = tokens(model.cfg, 2, 4 * model.cfg.block_size + 3)  # a partial last block
    g_ref = assert_paths_agree(model, toks, tol=1e-10, impl=impl)
    assert all(g_ref[f"layers.{i}.fam_summary"].abs().sum() > 0 for i in range(model.cfg.n_layers))
    with pytest.raises(ValueError, match="impl='wave'"):
        model(toks, impl="wave")


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_causal(impl):
    model = sum_model(n_layers=3)
    assert_causal(model, impl)


@pytest.mark.parametrize("chunks", STREAM_CHUNKS)
def test_streaming_equals_parallel(chunks):
    assert_streaming_matches(sum_model(), chunks, tol=1e-10)


def test_streaming_state_size_is_constant():
    assert_state_size_constant(sum_model(dtype=torch.float32))


def test_state_continues_exactly():
    assert_state_continues(sum_model(), tol=1e-10)  # through state_to_dict too, as every kind


def test_update_is_the_summary_formula():
    """One FAM update by hand (App. C.3): A = Wo(softmax(Q(S) [K(F); K(X)]^T / sqrt(D)) [V(F); V(X)]) + S,
    F' = FF(LN(A)) + A; with the summary replaced by F itself it is FAM's update."""
    model = sum_model(n_kv_heads=None)
    layer, cfg, L_F = model.layers[0], model.cfg, model.cfg.fam_len
    b, B = 2, cfg.block_size
    fam = torch.randn(b, L_F, cfg.d_model, dtype=torch.float64)
    x = torch.randn(b, B, cfg.d_model, dtype=torch.float64)
    cos, sin = fam_cos_sin(cfg, torch.tensor([1]), None, torch.float64)
    tok_cos, tok_sin = fam_cos_sin(cfg.replace(fam_pos="zero"), torch.tensor([0]), None, torch.float64)  # any
    tok_cos, tok_sin = tok_cos[:, :, :1].expand(-1, -1, B, -1), tok_sin[:, :, :1].expand(-1, -1, B, -1)
    _, k_blk, v_blk = layer.qkv(x, tok_cos, tok_sin)
    got, _, _ = layer.fam_update(fam, cos, sin, k_blk, v_blk, zero_residual=True)

    def by_hand(rows):
        q, _, _ = layer.qkv(rows, cos, sin)
        _, k, v = layer.qkv(fam, cos, sin)
        k, v = torch.cat([k, k_blk], 2), torch.cat([v, v_blk], 2)
        attn = (q @ k.transpose(-1, -2) / math.sqrt(cfg.head_dim)).softmax(-1) @ v  # [b, H, L_F, D]
        a = layer.wo(merge_heads(attn)) + rows
        return layer.ff(layer.norm2(a)) + a

    assert_close(got, by_hand(layer.summary(b, torch.float64)), tol=1e-12, what="SUM FAM update")
    with torch.no_grad():
        fam_layer = FamLM(cfg.replace(attention="fam")).to(torch.float64).layers[0]
        fam_layer.load_state_dict({k: v for k, v in layer.state_dict().items() if k != "fam_summary"})
    plain, _, _ = fam_layer.fam_update(fam, cos, sin, k_blk, v_blk, zero_residual=False)
    assert_close(plain, by_hand(fam), tol=1e-12, what="FAM update (negative control: F's own queries)")
    assert not torch.allclose(plain, got)


def test_equals_fam_until_the_first_update():
    """Same weights: the first block reads the initial FAM in both; from the second block on, SUM FAM's FAM
    is the summary's (it differs from FAM's)."""
    sum_fam = sum_model()
    fam = FamLM(sum_fam.cfg.replace(attention="fam")).to(torch.float64).eval()
    missing = fam.load_state_dict(sum_fam.state_dict(), strict=False)
    assert not missing.missing_keys and all("fam_summary" in k for k in missing.unexpected_keys)
    B = sum_fam.cfg.block_size
    toks = tokens(sum_fam.cfg, 2, 3 * B)
    out_sum, out_fam = sum_fam(toks), fam(toks)
    assert_close(out_sum[:, :B], out_fam[:, :B], tol=1e-12, what="first block")
    assert (out_sum[:, B:] - out_fam[:, B:]).abs().amax(-1).min() > 1e-6


KIND = "sum_fam"
SWITCHES = dict(
    mem_segment=st.integers(0, 2),
    fam_len=st.integers(1, 4),
    fam_prev_blocks=st.integers(1, 3),
    fam_pos=st.sampled_from(["last", "float", "zero"]),
    fam_init=st.sampled_from(["prompt", "prefix"]),
    block_size=st.integers(1, 7),
    stop_grad=st.booleans(),
)


@random_switch_test(SWITCHES)
def test_random_switches_fast_reference_stream_agree(sw, T, chunk, seed):
    model = make_model(tiny_cfg(attention=KIND, **sw), seed=seed, dtype=torch.float64)
    toks = tokens(model.cfg, 2, T, seed=seed)
    assert_paths_agree(model, toks, tol=1e-10, chunks=[chunk, chunk + 2], what=str(sw))
