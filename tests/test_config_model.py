"""famlab.config.model: ModelConfig's checks (one line naming key, value and what is allowed) and derived values."""

from __future__ import annotations

import pytest

from famlab.config import ModelConfig

BRT_LAYERS = "null or a non-empty list of distinct layer indices in [0, n_layers=2)"
SMALL = dict(vocab_size=41, d_model=32, n_layers=2, n_heads=4, block_size=8, mem_segment=1, fam_len=2)


def small(**changes) -> ModelConfig:
    return ModelConfig(**{**SMALL, **changes})


@pytest.mark.parametrize(
    "changes, key, value, allowed",
    [
        (dict(brt_gate="gru"), "brt_gate", "'gru'", "one of fixed, lstm"),
        (dict(brt_state_len=0), "brt_state_len", "0", "an integer > 0 or null (= block_size)"),
        (dict(brt_layers=[2]), "brt_layers", "[2]", BRT_LAYERS),
        (dict(brt_layers=[0, 0]), "brt_layers", "[0, 0]", BRT_LAYERS),
        (dict(brt_layers=[]), "brt_layers", "[]", BRT_LAYERS),
        (dict(brt_layers=[-1]), "brt_layers", "[-1]", BRT_LAYERS),
        (dict(brt_layers=[True]), "brt_layers", "[True]", BRT_LAYERS),
        (dict(brt_layers=1), "brt_layers", "1", BRT_LAYERS),
        (
            dict(attention="sliding"),
            "attention",
            "'sliding'",
            "one of full, bswa, txl, fam, fm, sum_fam, infini, rmt, block_recurrent",
        ),
        (dict(attention="infini", infini_delta_rule="yes"), "infini_delta_rule", "'yes'", "true or false"),
        (dict(attention="sum_fam", fam_len=0), "fam_len", "0", "an integer >= 1 for attention='sum_fam'"),
        (dict(attention="fm", mem_segment=0), "mem_segment", "0", "an integer >= 1 for attention='fm'"),
        (dict(attention="rmt", mem_segment=1), "mem_segment", "1", "0 for attention='rmt'"),
        (dict(rmt_mem_tokens=0), "rmt_mem_tokens", "0", "an integer > 0"),
        (dict(rmt_bptt_depth=-2), "rmt_bptt_depth", "-2", "-1 (full backprop through the memory) or an integer >= 0"),
        (dict(rmt_bptt_depth=1.5), "rmt_bptt_depth", "1.5", "-1 (full backprop through the memory) or an integer >= 0"),
        (dict(block_size=0), "block_size", "0", "an integer > 0"),
        (dict(vocab_size=True), "vocab_size", "True", "an integer > 0"),  # YAML's true is not 1
        (dict(mem_segment=-1), "mem_segment", "-1", "an integer >= 0"),
        (dict(fam_len=-2), "fam_len", "-2", "an integer >= 0"),
        (dict(n_kv_heads=0), "n_kv_heads", "0", "an integer > 0"),
        (dict(d_ff=0), "d_ff", "0", "an integer > 0"),
        (dict(attention="txl", txl_window=-1), "txl_window", "-1", "an integer >= 0"),
        (dict(d_model=30, n_heads=4), "n_heads", "4", "a divisor of d_model=30"),
        (dict(d_model=36, n_heads=4), "n_heads", "4", "a value giving an even head size (d_model=36)"),
        (dict(n_heads=4, n_kv_heads=3), "n_kv_heads", "3", "a divisor of n_heads=4"),
        (dict(fam_pos="first"), "fam_pos", "'first'", "one of last, float, zero"),
        (dict(ff="relu"), "ff", "'relu'", "one of gelu, swiglu"),
        (dict(rsp_prob=1.5), "rsp_prob", "1.5", "a probability in [0, 1]"),
        (dict(rope_base=0.0), "rope_base", "0.0", "a number > 1.0"),
        (dict(init_from=""), "init_from", "''", "a converted folder (famlab.hf) or null"),
        (dict(n_layers=2.5), "n_layers", "2.5", "an integer > 0"),
    ],
)
def test_bad_values_name_key_value_and_allowed(changes, key, value, allowed):
    with pytest.raises(ValueError) as err:
        small(**changes)
    assert str(err.value) == f"ModelConfig.{key}={value} is not allowed: expected {allowed}"


def test_unknown_keys_rejected_with_a_suggestion():
    with pytest.raises(ValueError, match="fam_lenn.*did you mean 'fam_len'"):
        ModelConfig.from_dict({"fam_lenn": 8})
    with pytest.raises(ValueError, match="no key 'impl'"):
        small().replace(impl="fast")
    with pytest.raises(ValueError, match="ModelConfig.fam_len=-1"):  # replace validates like the constructor
        small().replace(fam_len=-1)


def test_dict_round_trip():
    cfg = small(attention="txl", txl_window=5, n_kv_heads=2)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(fam_len=7).fam_len == 7 and cfg.fam_len == 2


def test_feed_forward_width():
    assert small(d_model=96, n_heads=2).ff_dim == 384  # gelu: 4 d
    assert small(d_model=96, n_heads=2, ff="swiglu").ff_dim == 256  # 8/3 * 96 = 256, already a multiple of 64
    assert small(d_model=100, n_heads=2, ff="swiglu").ff_dim == 320  # 266 rounded up to 64
    assert small(d_ff=50, ff="swiglu").ff_dim == 50


def test_attention_derived_values():
    assert (small().head_dim, small().kv_heads, small(n_kv_heads=2).kv_heads) == (8, 4, 2)
    assert small(attention="fam").effective_fam_len == 2 and small(attention="bswa").effective_fam_len == 0
    assert small(attention="txl", mem_segment=3).window == 24  # default: the whole memory segment
    assert small(attention="txl", txl_window=5).window == 5
    assert small(attention="bswa", txl_window=5).window is None  # only txl has a per-token window
    assert small(attention="bswa", stop_grad=True).detach_memory
    assert not small(attention="full", stop_grad=True).detach_memory  # full attention has no memory segment


def test_block_recurrent_layers_and_state_len():
    assert small(attention="block_recurrent").recurrent_layers == (1,)  # n_layers // 2
    assert small(attention="block_recurrent", brt_layers=[1, 0]).recurrent_layers == (0, 1)
    assert small(brt_layers=[1]).recurrent_layers == ()  # other kinds have no recurrent layers
    assert small().state_len == 8 and small(brt_state_len=3).state_len == 3  # default: block_size
