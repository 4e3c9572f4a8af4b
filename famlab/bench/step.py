"""The benchmark variants and one training step of each: build a variant's model and data, run a
training step, time layer 0's FAM scan alone, and measure a step's peak memory in a fresh process
(``python -m famlab.bench``'s module docstring says how and why)."""

from __future__ import annotations

import gc
import resource
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

from famlab.allocator import glibc, restore_default
from famlab.bench.common import reset_hwm, run_in_fresh_processes, status_kb
from famlab.config import ModelConfig
from famlab.model import IMPLS, FamLM, compile_model

VARIANTS: dict[str, tuple[str, str]] = {
    "full": ("full", "fast"),
    "bswa": ("bswa", "fast"),
    "txl": ("txl", "fast"),
    "fam": ("fam", "fast"),  # the wavefront path (``impl="wave"``), which "fast" picks for FAM
    "fam-layer-major": ("fam", "layer_major"),  # layer-major with its sequential FAM scan
    "fam-ref": ("fam", "reference"),
    "fm": ("fm", "fast"),  # feedback memory segment (App. C.2): per layer, block by block
    "sum-fam": ("sum_fam", "fast"),  # SUM FAM (App. C.3): layer-major
    "block-recurrent": ("block_recurrent", "fast"),  # Block-Recurrent Transformer (App. C.1), layer-major
    "block-recurrent-ref": ("block_recurrent", "reference"),
    # Infini-attention (compressive memory beside the base config's m-block segment; its memory matmuls are
    # not in famlab.bench.flops' counts)
    "infini": ("infini", "fast"),
    "infini-ref": ("infini", "reference"),
    "fam-compiled": ("fam", "compiled"),  # the fast path with FamLM.compile_fam_updates()
    # the same, compiled with mode="reduce-overhead": on a GPU the scan replays as CUDA graphs
    "fam-graphs": ("fam", "graphs"),
    # each single FAM update compiled instead of the whole scan (compile time independent of T)
    "fam-graphs-update": ("fam", "graphs-update"),
    # the whole model under torch.compile (default mode), for BSWA and FAM alike
    "bswa-model-compiled": ("bswa", "model-compiled"),
    "fam-model-compiled": ("fam", "model-compiled"),
    # the Recurrent Memory Transformer: mem_segment=0, L_F memory tokens (as the peers bench's RMT)
    "rmt": ("rmt", "fast"),
}
DEFAULT_VARIANTS = "full,bswa,txl,fam,fam-layer-major,fam-ref"
MEMORY_KINDS_VARIANTS = "bswa,fam,fm,sum-fam,rmt,infini,block-recurrent"  # make bench-kinds
# compiled impls -> (train.compile, train.compile_mode)
COMPILED = {
    "compiled": ("fam_scan", "default"),
    "graphs": ("fam_scan", "reduce-overhead"),
    "graphs-update": ("fam_update", "reduce-overhead"),
    "model-compiled": ("model", "default"),
}

# ----------------------------------------------------------------------------------------------
# the training step


def build(
    cfg: ModelConfig, batch: int, seq_len: int, seed: int, impl: str = "fast", device: str = "cpu"
) -> tuple[FamLM, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = FamLM(cfg).train().to(device)
    if impl in COMPILED:
        compile_model(model, *COMPILED[impl])
    data = torch.randint(0, cfg.vocab_size, (batch, seq_len + 1), generator=torch.Generator().manual_seed(seed))
    data = data.to(device)
    return model, data[:, :-1].contiguous(), data[:, 1:].contiguous()


AUTOCAST = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def train_step(model: FamLM, inputs: torch.Tensor, targets: torch.Tensor, impl: str, dtype: str = "float32") -> float:
    """One training step (fp32 weights; ``dtype`` bfloat16/float16: autocast, as Lightning's *-mixed)."""
    model.zero_grad(set_to_none=True)
    low = AUTOCAST[dtype]
    if impl.startswith("graphs"):
        torch.compiler.cudagraph_mark_step_begin()  # a new step: the last step's graph outputs may be reused
    with torch.autocast(inputs.device.type, dtype=low, enabled=low is not None):
        logits = model(inputs, impl=impl if impl in IMPLS else "fast")
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
    loss.backward()
    return float(loss.detach())  # .item() waits for the device, so wall time covers the whole step


def time_fam_scan(model: FamLM, inputs: torch.Tensor, reps: int) -> list[float]:
    """Seconds of one forward+backward of layer 0's FAM scan alone (``Layer.fam_scan``), ``reps`` times,
    on the very arguments it gets in a forward pass of ``inputs`` (captured once) and random output
    gradients. The scan is FAM's sequential part; this isolates it from the rest of the step."""
    layer = model.layers[0]
    own = layer.__dict__.get("fam_scan")  # a compiled scan is an instance attribute
    captured: list[tuple] = []

    def capture(*args):
        captured.append(args)
        return (own or type(layer).fam_scan.__get__(layer))(*args)

    layer.fam_scan = capture
    try:
        with torch.no_grad():
            model(inputs, impl="layer_major")
    finally:
        if own is None:
            del layer.fam_scan
        else:
            layer.fam_scan = own
    if not captured:
        raise ValueError("time_fam_scan: the model ran no FAM scan (not a fam model, or T < block_size)")
    fam, cos, sin, k_own, v_own, n_full, zero_first = captured[0]
    fam, k_own, v_own = (t.detach().clone().requires_grad_() for t in (fam, k_own, v_own))
    gen = torch.Generator(device=fam.device).manual_seed(0)
    times = []
    for _ in range(reps + 1):  # the first round warms up
        t0 = time.perf_counter()
        outs = layer.fam_scan(fam, cos, sin, k_own, v_own, n_full, zero_first)
        grads = [torch.randn(o.shape, generator=gen, device=o.device, dtype=o.dtype) for o in outs]
        torch.autograd.backward(outs, grads)
        if fam.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times[1:]


def variant_config(base: ModelConfig, name: str) -> tuple[ModelConfig, str]:
    attention, impl = VARIANTS[name]
    if attention == "rmt":  # its blocks meet only through the memory tokens
        return base.replace(attention=attention, mem_segment=0, rmt_mem_tokens=base.fam_len), impl
    return base.replace(attention=attention), impl


# ----------------------------------------------------------------------------------------------
# memory, in a fresh subprocess per variant


def memory_child(job: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process: peak extra RSS of one training step (see ``famlab.bench.train_step``)."""
    torch.set_num_threads(job["threads"])
    restore_default()  # whatever FAMLAB_MALLOC says for throughput, memory is measured with mmap on
    libc = glibc()
    if libc is not None:
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD: fixed, so big blocks go back to the OS
    cfg = ModelConfig.from_dict(job["config"])
    model, inputs, targets = build(cfg, job["batch"], job["seq_len"], job["seed"], job["impl"])
    kb = 1024.0
    gc.collect()
    if reset_hwm():
        method = "clear_refs: VmHWM - VmRSS around one step, after one warm-up step"
        train_step(model, inputs, targets, job["impl"])
        reps = []
        for _ in range(job["reps"]):
            gc.collect()
            if libc is not None:
                libc.malloc_trim(0)
            reset_hwm()
            before = status_kb("VmRSS")
            train_step(model, inputs, targets, job["impl"])
            reps.append((status_kb("VmHWM") - before) / kb)
        peak_abs = status_kb("VmHWM") / kb
        base_rss = before / kb
    else:
        method = "fresh process: ru_maxrss after one step - VmRSS before (no warm-up)"
        before = status_kb("VmRSS")
        max_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        train_step(model, inputs, targets, job["impl"])
        max_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if max_after <= max_before:
            method += " [lower bound: peak did not exceed the import-time high-water mark]"
        reps = [(max_after - before) / kb]
        peak_abs, base_rss = max_after / kb, before / kb
    return {
        "peak_increase_mb": statistics.median(reps),
        "reps_mb": reps,
        "rss_before_step_mb": base_rss,
        "peak_rss_mb": peak_abs,
        "method": method,
    }


def measure_memory(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """:func:`memory_child` of each job, one at a time, each in a new process."""
    return run_in_fresh_processes("famlab.bench.step", "memory_child", jobs)
