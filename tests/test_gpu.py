"""The model's equivalences on a CUDA device (``bench/gpu_check.sh`` runs this file on a GPU; skipped elsewhere).

The same obviously-correct references as tests/test_model.py: the block-by-block reference loop, the
streaming path, and the same model on the CPU. fp32 with TF32 off (TF32 rounds matmul inputs to 10 mantissa
bits, far outside a tight tolerance); bf16 autocast against fp32 with a tolerance for bf16."""

from __future__ import annotations

import os

import pytest
import torch
from helpers import VARIANTS, assert_close, make_model, stream, tiny_cfg, tokens

# FAMLAB_TEST_DEVICE=cpu runs the same checks on the CPU (to test this file without a GPU)
DEV = os.environ.get("FAMLAB_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEV == "cuda" and not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(autouse=True)
def no_tf32():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def grads(model, logits):
    w = torch.randn(logits.shape, generator=torch.Generator().manual_seed(7), dtype=logits.dtype).to(logits.device)
    params = dict(model.named_parameters())
    gs = torch.autograd.grad((logits * w).sum(), list(params.values()), allow_unused=True)
    return {n: (torch.zeros_like(p) if g is None else g) for (n, p), g in zip(params.items(), gs)}


def cfg_for(attention):
    return tiny_cfg(attention=attention, mem_segment=2, n_kv_heads=2, fam_prev_blocks=2, txl_window=5)


@pytest.mark.parametrize("attention", VARIANTS)
def test_fast_equals_reference_on_cuda(attention):
    cfg = cfg_for(attention)
    model = make_model(cfg).to(DEV)
    toks = tokens(cfg, 2, 5 * cfg.block_size + 3).to(DEV)
    fast, ref = model(toks), model(toks, impl="reference")
    assert_close(fast, ref, tol=1e-4, what="logits")
    g_fast, g_ref = grads(model, fast), grads(model, ref)
    for name in g_ref:
        assert_close(g_fast[name], g_ref[name], tol=1e-4, what=f"grad {name}")


@pytest.mark.parametrize("attention", VARIANTS)
def test_cuda_equals_cpu(attention):
    cfg = cfg_for(attention)
    cpu = make_model(cfg)
    toks = tokens(cfg, 2, 7 * cfg.block_size + 1)
    gpu = make_model(cfg).to(DEV)
    assert_close(gpu(toks.to(DEV)).cpu(), cpu(toks), tol=1e-4, what="cuda vs cpu logits")


@pytest.mark.parametrize("attention", VARIANTS)
def test_streaming_equals_parallel_on_cuda(attention):
    cfg = cfg_for(attention)
    model = make_model(cfg).to(DEV)
    toks = tokens(cfg, 2, 9 * cfg.block_size + 5).to(DEV)
    with torch.no_grad():
        assert_close(stream(model, toks, [3, 11, 1]), model(toks), tol=1e-4, what=f"{attention} streamed")


@pytest.mark.parametrize("attention", VARIANTS)
def test_bf16_autocast_tracks_fp32(attention):
    cfg = cfg_for(attention).replace(block_size=32, d_model=64)
    model = make_model(cfg).to(DEV)
    toks = tokens(cfg, 2, 4 * cfg.block_size + 7).to(DEV)
    with torch.no_grad():
        ref = model(toks)
        with torch.autocast(torch.device(DEV).type, dtype=torch.bfloat16):
            low = model(toks).float()
    rel = (low - ref).norm() / ref.norm()
    assert rel < 3e-2, f"bf16 autocast relative error {rel:.3g}"
