"""famlab.config.parameter_count (torch-free, used by the memory estimate before anything is built) counts
exactly the parameters FamLM has, for every attention kind and the switches that add or drop parameters."""

from __future__ import annotations

import subprocess
import sys

import pytest

from famlab.config import ModelConfig, parameter_count
from famlab.config.model import ATTENTION_KINDS
from famlab.model import FamLM

SMALL = dict(vocab_size=37, d_model=32, n_layers=3, n_heads=4, block_size=8, mem_segment=1, fam_len=3)
# every switch that changes a parameter's shape or presence (the second config flips them all)
FLIPPED = dict(
    n_kv_heads=2,
    d_ff=40,
    ff="swiglu",
    norm="rmsnorm",
    bias=True,
    tie_embeddings=False,
    fam_init="prefix",
    brt_layers=[0, 2],
    brt_state_len=5,
    rmt_mem_tokens=2,
)
KIND_NEEDS = {"rmt": dict(mem_segment=0)}


def configs():
    for kind in ATTENTION_KINDS:
        for gate in ("fixed", "lstm") if kind == "block_recurrent" else ("fixed",):
            for name, flips in (("plain", {}), ("flipped", FLIPPED)):
                for bias_only in (False, True) if name == "plain" else (False,):
                    extra = dict(bias=True, norm="layernorm") if bias_only else {}
                    cfg = dict(SMALL, attention=kind, brt_gate=gate, **flips, **KIND_NEEDS.get(kind, {}), **extra)
                    yield pytest.param(cfg, id=f"{kind}-{gate}-{name}{'-bias' if bias_only else ''}")


@pytest.mark.parametrize("cfg", list(configs()))
def test_the_estimate_counts_every_parameter(cfg):
    model_cfg = ModelConfig(**cfg)
    assert parameter_count(model_cfg) == sum(p.numel() for p in FamLM(model_cfg).parameters())


def test_the_recurrent_cells_count():
    """Negative control: the Block-Recurrent cells are counted (more recurrent layers, more parameters)."""
    one = ModelConfig(**SMALL, attention="block_recurrent", brt_layers=[1])
    two = ModelConfig(**SMALL, attention="block_recurrent", brt_layers=[0, 1])
    bswa = ModelConfig(**SMALL, attention="bswa")
    cell = parameter_count(two) - parameter_count(one)
    assert cell > 0 and parameter_count(one) - parameter_count(bswa) == cell


def test_the_estimate_needs_no_torch():
    code = (
        "import sys; from famlab.config import ModelConfig, parameter_count; "
        "parameter_count(ModelConfig(attention='block_recurrent')); assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
