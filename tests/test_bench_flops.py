"""famlab.bench.flops: the analytic FLOP counter against torch.utils.flop_counter.FlopCounterMode,
and the matmul ceiling's weighting of each FLOP component by its shapes' measured rate."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from famlab.bench import flops
from famlab.config import ModelConfig
from famlab.model import FamLM

aten = torch.ops.aten


def _dense_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _counted(cfg: ModelConfig, T: int, impl: str) -> tuple[int, int]:
    """(matmul FLOPs of linear layers and LM head, attention FLOPs) FlopCounterMode sees in one
    forward. The fused CPU attention kernel has no formula there: count it as dense SDPA."""
    torch.manual_seed(0)
    model = FamLM(cfg).train()
    tokens = torch.randint(0, cfg.vocab_size, (2, T))
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: _dense_sdpa_flops}
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with counter:
        model(tokens, impl=impl)
    counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    # the wavefront runs the layers' linears as batched matmuls; elsewhere bmm is the naive attention's
    ops = ("mm", "addmm", "bmm", "baddbmm") if flops.flop_path(cfg, impl) == "wave" else ("mm", "addmm")
    linear = sum(counts.pop(f"aten.{op}", 0) for op in ops)
    return linear, sum(counts.values())


def _cfg(attention: str, **changes) -> ModelConfig:
    base = dict(vocab_size=64, d_model=32, n_heads=2, n_layers=2, block_size=16, mem_segment=1, fam_len=4)
    base.update(changes)
    return ModelConfig(attention=attention, random_pos_offset=False, rsp_prob=0.0, **base)


@pytest.mark.parametrize("impl", ["fast", "wave", "layer_major", "reference"])
def test_matmul_ceiling_is_flops_over_each_components_measured_rate(impl):
    cfg = ModelConfig(attention="fam", d_model=64, n_layers=2, n_heads=2, block_size=16, fam_len=4, vocab_size=32)
    shapes = flops.model_matmul_shapes(cfg, batch=2, seq_len=64)
    names = {s[0] for s in shapes}
    fl = flops.forward_flops(cfg, 2, 64, impl)["computed"]
    # one rate for every shape: the ceiling is the step's FLOPs at that rate
    uniform = flops.matmul_ceiling_s(cfg, impl, fl, dict.fromkeys(names, 100.0))
    assert uniform == pytest.approx(3 * fl["total"] / 100e9)
    # the FAM scan's shapes 4x slower: only the FAM rows' components take longer, by 3x their time
    slow_scan = {n: (25.0 if n.startswith("fam_scan_") else 100.0) for n in names}
    path = flops.flop_path(cfg, impl)  # fast: the wavefront, whose FAM rows run with the block tokens
    assert path == ("wave" if impl == "fast" else impl)
    fam_rows = (
        fl["scan_attn"] + fl["init_linear"] + fl["init_attn"] + (fl["fam_linear"] if path == "layer_major" else 0)
    )
    assert flops.matmul_ceiling_s(cfg, impl, fl, slow_scan) == pytest.approx(uniform + 3 * 3 * fam_rows / 100e9)
    # the linear shapes weigh by their FLOPs: FF at half speed costs its share of the token FLOPs twice
    d, ff = cfg.d_model, cfg.ff_dim
    qkv_row = 2 * d * (cfg.n_heads + 2 * cfg.kv_heads) * cfg.head_dim
    ff_share = 4 * d * ff / (qkv_row + 2 * d * d + 4 * d * ff)
    slow_ff = {n: (50.0 if n in ("ff_in", "ff_out") else 100.0) for n in names}
    linear = fl["token_linear"] + (fl["fam_linear"] if path in ("reference", "wave") else 0)
    assert flops.matmul_ceiling_s(cfg, impl, fl, slow_ff) == pytest.approx(uniform + 3 * linear * ff_share / 100e9)
    # a shape that was not measured: no ceiling rather than a wrong one
    assert flops.matmul_ceiling_s(cfg, impl, fl, dict.fromkeys(names - {"fam_scan_values"}, 100.0)) is None


def test_flops_by_hand_full_attention_one_block():
    # T = B = 16, d = 32, 2 layers, vocab 64, batch 2, GELU FF of 4d: per token and layer
    # QKV 2*32*96 + out 2*32*32 + FF 2*32*128*2 = 24576; head 2*32*64 = 4096;
    # causal attention: 16*17/2 pairs * 4*H*D (=128) per batch item and layer
    cfg = _cfg("full")
    f = flops.forward_flops(cfg, 2, 16)["computed"]
    assert f["token_linear"] == 2 * 2 * 16 * 24576
    assert f["head"] == 2 * 16 * 4096
    assert f["attn"] == 2 * 2 * (16 * 17 // 2) * 128
    assert f["total"] == f["token_linear"] + f["head"] + f["attn"]
    linear, attn = _counted(cfg, 16, "fast")
    assert linear == f["token_linear"] + f["head"]
    # the counter takes the causal kernel as dense: T*T pairs instead of T*(T+1)/2
    assert attn in (0, 2 * 2 * 16 * 16 * 128)


@pytest.mark.parametrize(
    "attention, impl, T, changes",
    [
        ("bswa", "fast", 40, {}),
        ("txl", "fast", 48, {}),
        ("fam", "fast", 40, {}),
        ("fam", "fast", 48, {"fam_prev_blocks": 2, "ff": "swiglu", "n_kv_heads": 1}),
        ("fam", "wave", 40, {"mem_segment": 2, "fam_prev_blocks": 3}),
        ("fam", "layer_major", 40, {}),
        ("fam", "layer_major", 48, {"fam_prev_blocks": 2, "ff": "swiglu", "n_kv_heads": 1}),
        ("fam", "reference", 40, {}),
        ("fam", "reference", 48, {"fam_prev_blocks": 2}),
        ("bswa", "reference", 40, {"mem_segment": 2}),
    ],
)
def test_flops_match_flop_counter(attention, impl, T, changes):
    cfg = _cfg(attention, **changes)
    f = flops.forward_flops(cfg, 2, T, impl)["computed"]
    linear, attn = _counted(cfg, T, impl)
    assert linear == f["token_linear"] + f["fam_linear"] + f["init_linear"] + f["head"]
    assert attn == f["attn"] + f["scan_attn"] + f["init_attn"]


def test_useful_flops_count_only_unmasked_pairs():
    cfg = _cfg("bswa", n_layers=1)  # B=16, m=1, T=40: blocks of 16, 16, 8 tokens (last padded)
    f = flops.forward_flops(cfg, 1, 40)
    pairs = sum(r + 1 for r in range(16)) + sum(16 + r + 1 for r in range(16)) + sum(16 + r + 1 for r in range(8))
    assert f["useful"]["attn"] == pairs * 128
    assert f["computed"]["attn"] == 48 * 32 * 128
    txl = flops.forward_flops(_cfg("txl", n_layers=1, txl_window=4), 1, 16 + 8)["useful"]["attn"]
    # block 1 tokens see max(0, 4 - r) memory keys besides their causal own block
    assert txl == (sum(r + 1 for r in range(16)) + sum(max(0, 4 - r) + r + 1 for r in range(8))) * 128


@pytest.mark.parametrize("gate", ["fixed", "lstm"])
def test_block_recurrent_flops_match_flop_counter(gate):
    """The recurrent cells' FLOPs (token reads, state projections, complete blocks' updates) on top of BSWA's:
    a partial last block reads the state and does not update it."""
    cfg = _cfg("block_recurrent", brt_gate=gate, brt_state_len=5, n_kv_heads=1, brt_layers=[1])
    for impl in ["fast", "reference"]:
        f = flops.forward_flops(cfg, 2, 40, impl)["computed"]
        bswa = flops.forward_flops(cfg.replace(attention="bswa"), 2, 40, impl)["computed"]
        assert f["recurrent"] > 0 and f["total"] == bswa["total"] + f["recurrent"]
        linear, attn = _counted(cfg, 40, impl)
        assert linear + attn == f["token_linear"] + f["head"] + f["attn"] + f["recurrent"], impl
