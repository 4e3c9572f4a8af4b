"""Training-step benchmark: throughput, peak memory and FLOP/s of full, BSWA, TransformerXL and FAM.

Run with ``make bench`` (``python -m famlab.bench``; ``--help`` lists the options). Defaults: a
4-layer, d_model=256, 4-head, vocab-256 model at T=4096, batch 2, B=256, m=1, L_F=16, fp32 on the CPU
(``--device cuda --dtype bfloat16``: on a GPU with bf16 autocast; device memory then comes from
``torch.cuda.max_memory_allocated`` in the same process).

What is measured, and how:

* **Throughput** (main process only, so the ratios compare like with like; glibc keeps freed memory
  for reuse, see ``famlab.allocator``; ``FAMLAB_MALLOC=default`` turns that off): one training step is
  ``zero_grad(set_to_none=True)``, forward, cross-entropy against random targets, ``backward``
  (no optimizer). Models are in ``train()`` mode with ``random_pos_offset=False`` and
  ``rsp_prob=0`` so nothing random changes the work. Variants run round-robin: warm-up rounds,
  then timed rounds, each round one step of every variant, so machine noise hits all of them
  alike. The reference path (``fam-ref``) takes part in fewer rounds. We report the median and
  the minimum step time, and tokens/s = batch * T / median (``--stat min``: / minimum).
* **Peak memory**: each variant runs in a fresh ``spawn`` subprocess (no allocator or autograd
  state left over from other variants). The child sets glibc ``mallopt`` so large blocks are
  ``mmap``-ed and returned to the OS on free (no hidden free-list reuse), runs one warm-up step,
  then per repetition: ``gc``, ``malloc_trim(0)``, reset the kernel's RSS high-water mark
  (``echo 5 > /proc/self/clear_refs``), read ``VmRSS``, run one training step, read ``VmHWM``.
  Peak memory = median of (``VmHWM`` - ``VmRSS`` before), i.e. the extra resident memory a
  training step needs on top of the model, parameters and data (activations, autograd buffers,
  gradients). Where ``clear_refs`` is not writable the child falls back to one step without
  warm-up and ``ru_maxrss`` after minus ``VmRSS`` before (``method`` says which was used).
* **Matmul FLOP/s**: fp32 ``[N,N] @ [N,N]`` (N=2048 by default), median over repeats, measured
  before and after the variants (both reported; the peak used for fractions is the median of all
  repeats), plus the matmuls at the shapes the model uses (projections, FF, LM head, block
  attention, the FAM scan's small attention).
* **Model FLOPs** (:func:`forward_flops`), analytic, per training step = 3 x forward. Per row and
  layer: ``2*d*(H+2G)*D`` (QKV) + ``2*d*d`` (out) + ``2*d*ff_in + 2*ff*d`` (FF); per attended
  (query, key) pair ``4*H*D`` (scores and values); LM head ``2*d*V`` per token. ``computed``
  counts the work the kernels do (every key in the fast path's ``[P*L_F FAM | m*B memory | B
  own]`` window, masked or not, padding rows included; the reference path's full masked score
  matrices; causal half for ``full``, whose flash kernel skips masked tiles); ``useful`` counts
  only unmasked pairs and real tokens. Softmax, norms, RoPE and elementwise work are not counted.
  Achieved FLOP/s = computed training FLOPs / step time (the median; ``--stat min`` uses the
  fastest round instead, which a shared, busy machine disturbs least; both are recorded).
* **Matmul ceiling** (:func:`matmul_ceiling_s`): the step time if every FLOP component ran at the
  FLOP/s measured for its own matmul shapes (block tokens' projections and FF, the LM head, block
  attention's scores and values, the FAM scan's batch x L_F-row projections, FF and small attention)
  and nothing else took time. It bounds what a variant can reach with these matmul kernels: the
  JSON keeps it per variant (``ceiling_step_s``, ``ceiling_frac_peak``, ``frac_of_ceiling``) and per
  target (``ceiling``: the FAM/BSWA ratio and FAM's fraction of peak at the ceilings).

Results: a Markdown table on stdout and in ``bench/results/latest.md``, and JSON in
``bench/results/bench_<timestamp>.json``. Targets (PASS/FAIL): FAM fast-path tokens/s >= 0.90x
BSWA's; FAM training step >= 50% of the measured matmul FLOP/s.

``fam`` is the default fast path, which for FAM is the wavefront (``impl="wave"``: layers pipelined
over blocks); ``fam-layer-major`` is the layer-major path with its sequential FAM scan. With either
among the variants, layer 0's layer-major FAM scan is also timed alone, on the arguments it receives
in a real forward pass (:func:`time_fam_scan`): its time for all layers as a share of
``fam-layer-major``'s extra step time over BSWA, and its GFLOP/s (JSON key ``fam_scan``).

``--profile VARIANT`` instead profiles that variant's training step with ``torch.profiler`` and
prints the ops sorted by self CPU time.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import gc
import importlib
import json
import multiprocessing
import os
import platform
import re
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from famlab.allocator import glibc, restore_default, reuse_freed_memory
from famlab.config import ModelConfig
from famlab.model import IMPLS, FamLM, compile_model

# variant name -> (attention kind, impl)
VARIANTS: dict[str, tuple[str, str]] = {
    "full": ("full", "fast"),
    "bswa": ("bswa", "fast"),
    "txl": ("txl", "fast"),
    "fam": ("fam", "fast"),  # the wavefront path (``impl="wave"``), which "fast" picks for FAM
    "fam-layer-major": ("fam", "layer_major"),  # layer-major with its sequential FAM scan
    "fam-ref": ("fam", "reference"),
    "fam-compiled": ("fam", "compiled"),  # the fast path with FamLM.compile_fam_updates()
    # the same, compiled with mode="reduce-overhead": on a GPU the scan replays as CUDA graphs
    "fam-graphs": ("fam", "graphs"),
    # each single FAM update compiled instead of the whole scan (compile time independent of T)
    "fam-graphs-update": ("fam", "graphs-update"),
    # the whole model under torch.compile (default mode), for BSWA and FAM alike
    "bswa-model-compiled": ("bswa", "model-compiled"),
    "fam-model-compiled": ("fam", "model-compiled"),
}
DEFAULT_VARIANTS = "full,bswa,txl,fam,fam-layer-major,fam-ref"
# compiled impls -> (train.compile, train.compile_mode)
COMPILED = {
    "compiled": ("fam_scan", "default"),
    "graphs": ("fam_scan", "reduce-overhead"),
    "graphs-update": ("fam_update", "reduce-overhead"),
    "model-compiled": ("model", "default"),
}
THROUGHPUT_TARGET = 0.90  # FAM tokens/s >= this x BSWA's
FLOPS_TARGET = 0.50  # FAM achieved FLOP/s >= this x measured matmul FLOP/s


# ----------------------------------------------------------------------------------------------
# analytic FLOP counting


def _linear_row_flops(cfg: ModelConfig) -> tuple[int, int]:
    """(QKV, out-projection + FF) matmul FLOPs of one row through one layer."""
    d, D = cfg.d_model, cfg.head_dim
    qkv = 2 * d * (cfg.n_heads + 2 * cfg.kv_heads) * D
    ff_in = cfg.ff_dim * (2 if cfg.ff == "swiglu" else 1)
    finish = 2 * d * d + 2 * d * ff_in + 2 * cfg.ff_dim * d
    return qkv, finish


def _memory_keys(cfg: ModelConfig, blk: int, row: int) -> int:
    """Memory keys (tokens of earlier blocks) that token ``row`` of block ``blk`` attends."""
    B, m = cfg.block_size, cfg.mem_segment
    if cfg.attention == "full":
        return blk * B
    n = min(blk, m) * B
    if cfg.window is not None:  # txl: key at distance row + (m*B - j) for memory index j
        n = max(0, min(n, cfg.window - row))
    return n


def flop_path(cfg: ModelConfig, impl: str) -> str:
    """The code path a bench impl runs, for FLOP counting: ``wave`` (what ``fast`` picks for FAM, also
    under a whole-model compile), ``layer_major`` (every other model, and the compiled FAM scans) or
    ``reference``."""
    if impl in ("reference", "wave", "layer_major"):
        return impl
    if impl in ("fast", "model-compiled") and cfg.effective_fam_len:
        return "wave"
    return "layer_major"


def forward_flops(cfg: ModelConfig, batch: int, seq_len: int, impl: str = "fast") -> dict[str, Any]:
    """Analytic matmul FLOPs of one forward pass from a fresh state (see the module docstring).

    Returns ``{"computed": {...}, "useful": {...}}``, each with components ``token_linear`` (QKV,
    out, FF of the block tokens), ``fam_linear`` (the same for FAM rows: the fast path's scan or
    the reference path's [F; X] rows), ``init_linear`` / ``init_attn`` (prompt pass and initial
    FAM keys), ``attn`` (block attention; in the reference path also the FAM rows' attention),
    ``scan_attn`` (fast path: FAM queries over [F; block]), ``head`` and ``total``. The wavefront
    path computes the FAM rows' attention with the block tokens' (in ``attn``, over the same keys) and
    ``useful`` is that of the layer-major path.
    """
    b, T = batch, seq_len
    B, m, P, L_F = cfg.block_size, cfg.mem_segment, cfg.fam_prev_blocks, cfg.effective_fam_len
    H, D, nl = cfg.n_heads, cfg.head_dim, cfg.n_layers
    pair = 4 * H * D  # scores + values per (query, key) pair
    qkv_row, finish_row = _linear_row_flops(cfg)
    row = qkv_row + finish_row
    n_blk, n_full = -(-T // B), T // B
    zero = dict.fromkeys(("token_linear", "fam_linear", "init_linear", "init_attn", "attn", "scan_attn", "head"), 0)
    comp, use = dict(zero), dict(zero)
    comp["head"] = use["head"] = b * T * 2 * cfg.d_model * cfg.vocab_size
    if L_F:  # initial state: prompt pass (one row set, no offset) and QKV of F_0 for the batch
        init = nl * (L_F * row + b * L_F * qkv_row)
        comp["init_linear"] = use["init_linear"] = init
        comp["init_attn"] = use["init_attn"] = nl * L_F * L_F * pair
    tok_useful = 0  # (query, key) pairs of real tokens, per batch item and layer
    for blk in range(n_blk):
        nb = min(B, T - blk * B)
        for r in range(nb):
            # FAM states S_{blk-P+1} .. S_blk that exist (the reference: older ones + the current F)
            tok_useful += min(blk + 1, P) * L_F + _memory_keys(cfg, blk, r) + r + 1
    use["token_linear"] = nl * b * T * row
    use["attn"] = nl * b * tok_useful * pair
    path = flop_path(cfg, impl)
    if path != "reference":
        if cfg.attention == "full":
            comp["token_linear"] = use["token_linear"]
            comp["attn"] = use["attn"]  # causal flash kernel: masked tiles are skipped
        else:
            Tp, Lk = n_blk * B, P * L_F + m * B + B
            comp["token_linear"] = nl * b * Tp * row
            comp["attn"] = nl * b * Tp * Lk * pair
        if L_F:
            comp["fam_linear"] = use["fam_linear"] = nl * b * L_F * ((n_full + 1) * qkv_row + n_full * finish_row)
            comp["scan_attn"] = use["scan_attn"] = nl * b * n_full * L_F * (L_F + B) * pair
        if L_F and path == "wave":  # [F; X] of every block through each layer, plus the final F's keys
            comp["fam_linear"] = nl * b * (n_blk * L_F * row + L_F * qkv_row)
            Lk = (P - 1) * L_F + m * B + L_F + B
            comp["attn"] = nl * b * n_blk * (L_F + B) * Lk * pair
            comp["scan_attn"] = 0
    else:  # reference: per block and layer, [F; X] through the layer, naive (dense) attention
        comp["token_linear"] = use["token_linear"]
        comp["fam_linear"] = use["fam_linear"] = nl * b * n_blk * L_F * row
        comp_pairs, fam_pairs = 0, 0
        for blk in range(n_blk):
            nb = min(B, T - blk * B)
            n_older = min(blk, P - 1) * L_F if L_F else 0
            if cfg.attention == "full":
                n_mem = blk * B
            else:
                n_mem = min(blk, m) * B
            comp_pairs += (L_F + nb) * (n_older + n_mem + L_F + nb)
            fam_pairs += L_F * (L_F + nb)
        comp["attn"] = nl * b * comp_pairs * pair
        use["attn"] += nl * b * fam_pairs * pair
    comp["total"] = sum(comp.values())
    use["total"] = sum(use.values())
    return {"computed": comp, "useful": use}


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
    return base.replace(attention=attention), impl


# ----------------------------------------------------------------------------------------------
# memory, in a fresh subprocess per variant


def _status_kb(key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+)\s+kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if not match:
        raise OSError(f"no {key} in /proc/self/status")
    return int(match.group(1))


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kb("VmHWM") <= _status_kb("VmRSS") + 1024
    except OSError:
        return False


def _memory_child(job: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process: peak extra RSS of one training step (see the module docstring)."""
    torch.set_num_threads(job["threads"])
    restore_default()  # whatever FAMLAB_MALLOC says for throughput, memory is measured with mmap on
    libc = glibc()
    if libc is not None:
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD: fixed, so big blocks go back to the OS
    cfg = ModelConfig.from_dict(job["config"])
    model, inputs, targets = build(cfg, job["batch"], job["seq_len"], job["seed"], job["impl"])
    kb = 1024.0
    gc.collect()
    if _reset_hwm():
        method = "clear_refs: VmHWM - VmRSS around one step, after one warm-up step"
        train_step(model, inputs, targets, job["impl"])
        reps = []
        for _ in range(job["reps"]):
            gc.collect()
            if libc is not None:
                libc.malloc_trim(0)
            _reset_hwm()
            before = _status_kb("VmRSS")
            train_step(model, inputs, targets, job["impl"])
            reps.append((_status_kb("VmHWM") - before) / kb)
        peak_abs = _status_kb("VmHWM") / kb
        base_rss = before / kb
    else:
        method = "fresh process: ru_maxrss after one step - VmRSS before (no warm-up)"
        before = _status_kb("VmRSS")
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
    child = importlib.import_module("famlab.bench")._memory_child  # picklable under `python -m`
    ctx = multiprocessing.get_context("spawn")
    results = []
    for job in jobs:  # one at a time, each in a new process
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=1) as pool:
            results.append(pool.submit(child, job).result())
    return results


# ----------------------------------------------------------------------------------------------
# matmul FLOP/s


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_matmul(
    m: int, k: int, n: int, reps: int, batch: int = 1, device: str = "cpu", dtype: str = "float32"
) -> list[float]:
    """FLOP/s of ``[batch, m, k] @ [batch, k, n]`` (fp32, or ``dtype``), one value per repeat (after a warm-up)."""
    g = torch.Generator().manual_seed(0)
    shape_a, shape_b = ((batch, m, k), (batch, k, n)) if batch > 1 else ((m, k), (k, n))
    dt_ = getattr(torch, dtype)
    a = torch.randn(*shape_a, generator=g).to(device, dt_)
    b = torch.randn(*shape_b, generator=g).to(device, dt_)
    out = torch.empty(*shape_a[:-1], n, device=device, dtype=dt_)
    torch.matmul(a, b, out=out)
    flops = 2.0 * batch * m * k * n
    scale = 1e3 if device.startswith("cuda") else 1.0  # a GPU needs far more work per timing
    inner = max(1, int(2e8 * scale // flops))  # at least ~0.2 GFLOP per timing for tiny shapes
    rates = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            torch.matmul(a, b, out=out)
        _sync(device)
        rates.append(flops * inner / (time.perf_counter() - t0))
    return rates


def model_matmul_shapes(cfg: ModelConfig, batch: int, seq_len: int) -> list[tuple[str, int, int, int, int]]:
    """(name, batch, m, k, n) of the matmuls the model spends its FLOPs in."""
    d, D, H, B = cfg.d_model, cfg.head_dim, cfg.n_heads, cfg.block_size
    rows = batch * seq_len
    n_blk = -(-seq_len // B)
    Lk = cfg.fam_prev_blocks * cfg.fam_len + cfg.mem_segment * B + B
    shapes = [
        ("qkv", 1, rows, d, (cfg.n_heads + 2 * cfg.kv_heads) * D),
        ("out_proj", 1, rows, d, d),
        ("ff_in", 1, rows, d, cfg.ff_dim * (2 if cfg.ff == "swiglu" else 1)),
        ("ff_out", 1, rows, cfg.ff_dim, d),
        ("lm_head", 1, rows, d, cfg.vocab_size),
        ("block_attn_scores", batch * H * n_blk, B, D, Lk),
        ("block_attn_values", batch * H * n_blk, B, Lk, D),
        ("fam_scan_scores", batch * H, cfg.fam_len, D, cfg.fam_len + B),
        ("fam_scan_values", batch * H, cfg.fam_len, cfg.fam_len + B, D),
        ("fam_scan_qkv", 1, batch * cfg.fam_len, d, (cfg.n_heads + 2 * cfg.kv_heads) * D),
        ("fam_scan_out_proj", 1, batch * cfg.fam_len, d, d),
        ("fam_scan_ff_in", 1, batch * cfg.fam_len, d, cfg.ff_dim * (2 if cfg.ff == "swiglu" else 1)),
        ("fam_scan_ff_out", 1, batch * cfg.fam_len, cfg.ff_dim, d),
    ]
    return [s for s in shapes if s[2] > 0 and s[4] > 0]


def _component_shapes(cfg: ModelConfig, impl: str) -> dict[str, list[tuple[str, float]]]:
    """FLOP component of :func:`forward_flops` -> the measured matmul shapes that stand for it, each
    with its share of the component's FLOPs."""
    d = cfg.d_model
    qkv_row, _ = _linear_row_flops(cfg)
    ff_in = cfg.ff_dim * (2 if cfg.ff == "swiglu" else 1)
    linear = [("qkv", qkv_row), ("out_proj", 2 * d * d), ("ff_in", 2 * d * ff_in), ("ff_out", 2 * cfg.ff_dim * d)]
    scan = [("fam_scan_" + name, w) for name, w in linear]
    scan_attn = [("fam_scan_scores", 1.0), ("fam_scan_values", 1.0)]
    return {
        "token_linear": linear,
        "head": [("lm_head", 1.0)],
        "attn": [("block_attn_scores", 1.0), ("block_attn_values", 1.0)],
        # the fast path runs FAM rows as batch x L_F-row matmuls; the reference loop as [F; X] rows
        "fam_linear": linear if flop_path(cfg, impl) in ("reference", "wave") else scan,
        "scan_attn": scan_attn,
        "init_linear": scan,
        "init_attn": scan_attn,
    }


def matmul_ceiling_s(
    cfg: ModelConfig, impl: str, forward_computed: dict[str, int], gflops: dict[str, float]
) -> float | None:
    """The shortest training step (3 x forward FLOPs) the model's own matmul shapes allow: seconds if
    every FLOP component ran at the FLOP/s measured for its shapes (``gflops``: shape name -> GFLOP/s)
    and softmax, norms, RoPE, elementwise work and memory traffic took no time. Forward shapes stand
    in for the backward's. None if a needed shape was not measured."""
    seconds = 0.0
    for comp, shapes in _component_shapes(cfg, impl).items():
        flops = forward_computed.get(comp, 0)
        if not flops:
            continue
        if any(name not in gflops for name, _ in shapes):
            return None
        total_w = sum(w for _, w in shapes)
        seconds += 3 * flops * sum(w / total_w / (gflops[name] * 1e9) for name, w in shapes)
    return seconds


# ----------------------------------------------------------------------------------------------
# machine info, reporting


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        cpu = match.group(1).strip() if match else cpu
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        capability = "unknown"
    return {
        "cpu_model": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "cpu_capability": capability,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()),
    }


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def render_markdown(res: dict[str, Any]) -> str:
    c, mach, mm = res["config"], res["machine"], res["matmul"]
    lines = [
        f"# famlab bench {res['timestamp']}",
        "",
        f"Model: {c['n_layers']} layers, d_model={c['d_model']}, {c['n_heads']} heads, vocab {c['vocab_size']}; "
        f"T={c['seq_len']}, batch={c['batch_size']}, B={c['block_size']}, m={c['mem_segment']}, L_F={c['fam_len']}, "
        f"{c.get('dtype', 'float32')} on {c.get('device_name', 'cpu')}. "
        f"Training step = forward + cross-entropy + backward; {c['stat']} of {c['iters']} timed rounds "
        f"({c['ref_iters']} for the reference path) after {c['warmup']} warm-up rounds, variants round-robin.",
        f"Machine: {mach['cpu_model']}, {mach['usable_cores']} usable cores, torch {mach['torch']}, "
        f"{mach['torch_threads']} threads, load avg {mach['loadavg_start'][0]:.2f} -> {mach['loadavg_end'][0]:.2f}, "
        f"malloc {mach.get('malloc', 'default')} (FAMLAB_MALLOC).",
        f"Matmul {c.get('dtype', 'float32')} {mm['size']}^3: {mm['peak_gflops']:.1f} GFLOP/s "
        f"(before {mm['before_gflops']:.1f}, after {mm['after_gflops']:.1f}).",
        "",
        "| variant | impl | median ms | min ms | tokens/s | vs bswa | peak mem MB | vs full | train GFLOP | GFLOP/s "
        "| frac of matmul peak | ceiling ms | ceiling frac of peak |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in res["variants"]:
        ceiling = v.get("ceiling_step_s")
        lines.append(
            f"| {v['name']} | {v['impl']} | {v['step_time_median_s'] * 1e3:.0f} | {v['step_time_min_s'] * 1e3:.0f} | "
            f"{v['tokens_per_s']:.0f} | "
            f"{_fmt(v['tokens_per_s_vs_bswa'], '.3f')} | {_fmt(v['peak_mem_mb'], '.1f')} | "
            f"{_fmt(v['peak_mem_vs_full'], '.2f')} | {v['train_flops_computed'] / 1e9:.1f} | "
            f"{v['achieved_gflops']:.1f} | {v['frac_matmul_peak']:.3f} | "
            f"{_fmt(None if ceiling is None else ceiling * 1e3, '.0f')} | {_fmt(v.get('ceiling_frac_peak'), '.3f')} |"
        )
    lines += [
        "",
        "Ceiling: the step time if every FLOP ran at the FLOP/s measured below for its matmul shape and "
        "softmax, norms, RoPE and elementwise work were free (forward shapes stand in for the backward's).",
    ]
    lines += ["", "Matmul FLOP/s at the model's shapes ([batch x] m x k @ k x n):", ""]
    lines += ["| matmul | batch | m | k | n | GFLOP/s |", "|---|---:|---:|---:|---:|---:|"]
    for s in mm["shapes"]:
        lines.append(f"| {s['name']} | {s['batch']} | {s['m']} | {s['k']} | {s['n']} | {s['gflops']:.1f} |")
    scan = res.get("fam_scan")
    if scan:
        share = scan["share_of_fam_extra"]
        lines += [
            "",
            f"FAM scan alone (layer 0, forward+backward, median of {len(scan['layer_times_s'])}): "
            f"{scan['layer_time_s'] * 1e3:.1f} ms per layer, {scan['step_time_s'] * 1e3:.0f} ms for all layers"
            + (f" = {share:.0%} of fam-layer-major's extra step time over BSWA" if share is not None else "")
            + f"; {scan['gflops']:.1f} GFLOP/s.",
        ]
    lines += ["", "Targets:", ""]
    for t in res["targets"].values():
        lines.append(f"* {t['name']}: {t['value_text']} -> **{t['status']}**")
    if res["variants"] and res["variants"][0].get("mem_method"):
        lines += ["", f"Memory method: {res['variants'][0]['mem_method']}."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="famlab.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke test: T=1024, fewer iterations, smaller matmul")
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--seq-len", type=int, default=None, help="T (default 4096; --quick 1024)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=256)
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--mem-segment", type=int, default=1)
    p.add_argument("--fam-len", type=int, default=16)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up rounds (default 2; --quick 1)")
    p.add_argument("--iters", type=int, default=None, help="timed rounds (default 7; --quick 2)")
    p.add_argument(
        "--ref-iters", type=int, default=None, help="timed rounds of the reference path (default 3; --quick 1)"
    )
    p.add_argument("--matmul-size", type=int, default=None, help="N of the N^3 matmul (default 2048; --quick 512)")
    p.add_argument("--matmul-reps", type=int, default=None, help="repeats per matmul timing (default 7; --quick 2)")
    p.add_argument("--mem-reps", type=int, default=None, help="memory repetitions per variant (default 2; --quick 1)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument(
        "--stat",
        choices=("median", "min"),
        default="median",
        help="step-time statistic behind tokens/s and FLOP/s (min resists a busy machine)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda (GPU: memory from torch.cuda, no subprocesses)")
    p.add_argument(
        "--dtype", default="float32", choices=sorted(AUTOCAST), help="float32, or autocast to bfloat16/float16"
    )
    p.add_argument("--out-dir", default="bench/results", help="where the JSON and latest.md go ('' = nowhere)")
    p.add_argument("--strict", action="store_true", help="exit 1 if a target fails")
    p.add_argument("--profile", metavar="VARIANT", default=None, help="only profile VARIANT's training step")
    p.add_argument("--profile-rows", type=int, default=25)
    args = p.parse_args(argv)
    quick = args.quick
    defaults = {
        "seq_len": (4096, 1024),
        "warmup": (2, 1),
        "iters": (7, 2),
        "ref_iters": (3, 1),
        "matmul_size": (2048, 512),
        "matmul_reps": (7, 2),
        "mem_reps": (2, 1),
    }
    for key, (full, small) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, small if quick else full)
    args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in args.variant_list + ([args.profile] if args.profile else []):
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}: expected one of {', '.join(VARIANTS)}")
    return args


def base_config(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(
        vocab_size=args.vocab_size,
        d_model=args.d_model,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        block_size=args.block_size,
        mem_segment=args.mem_segment,
        fam_len=args.fam_len,
        random_pos_offset=False,
        rsp_prob=0.0,
    )


def profile_variant(args: argparse.Namespace) -> str:
    cfg, impl = variant_config(base_config(args), args.profile)
    model, inputs, targets = build(cfg, args.batch_size, args.seq_len, args.seed, impl, args.device)
    for _ in range(max(1, args.warmup)):
        train_step(model, inputs, targets, impl, args.dtype)
    activities = [torch.profiler.ProfilerActivity.CPU]
    sort_by = "self_cpu_time_total"
    if args.device.startswith("cuda"):
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        sort_by = "self_cuda_time_total"  # on a GPU, what the device spends; CPU time is mostly launches
    with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
        t0 = time.perf_counter()
        train_step(model, inputs, targets, impl, args.dtype)
        elapsed = time.perf_counter() - t0
    table = prof.key_averages().table(sort_by=sort_by, row_limit=args.profile_rows)
    shapes = prof.key_averages(group_by_input_shape=True).table(sort_by=sort_by, row_limit=args.profile_rows)
    head = (
        f"profile of {args.profile} ({impl}), T={args.seq_len}, batch={args.batch_size}, {args.dtype} on "
        f"{args.device}: step {elapsed:.3f} s (profiled)"
    )
    return f"{head}\n{table}\nby input shape:\n{shapes}"


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    base = base_config(args)
    names = args.variant_list
    b, T = args.batch_size, args.seq_len
    mach = machine_info()
    mach["malloc"] = reuse_freed_memory()  # freed activations reused, not page-faulted in every step
    setups = {}
    dev, dtype = args.device, args.dtype
    for name in names:
        cfg, impl = variant_config(base, name)
        setups[name] = (cfg, impl, *build(cfg, b, T, args.seed, impl, dev))

    mm_size, mm_reps = args.matmul_size, args.matmul_reps
    mm_before = time_matmul(mm_size, mm_size, mm_size, mm_reps, device=dev, dtype=dtype)
    gpu_peak: dict[str, float] = {}

    # throughput: round-robin rounds, the reference path in fewer of them
    times: dict[str, list[float]] = {n: [] for n in names}
    for rnd in range(args.warmup + args.iters):
        timed = rnd >= args.warmup
        for name in names:
            cfg, impl, model, inputs, targets = setups[name]
            limit = args.ref_iters if impl == "reference" else args.iters
            if timed and len(times[name]) >= limit:
                continue
            if not timed and impl == "reference" and rnd >= 1:
                continue  # one warm-up round is enough for the slow path
            if dev.startswith("cuda") and timed and not times[name]:
                torch.cuda.reset_peak_memory_stats()
                base_mem = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            train_step(model, inputs, targets, impl, dtype)
            if timed:
                times[name].append(time.perf_counter() - t0)
                if dev.startswith("cuda") and len(times[name]) == 1:  # the step's extra device memory
                    gpu_peak[name] = (torch.cuda.max_memory_allocated() - base_mem) / 2**20

    scan_times = None
    scan_of = next((n for n in ("fam-layer-major", "fam") if n in setups), None)
    if scan_of and setups[scan_of][0].effective_fam_len and base.block_size <= T:
        scan_times = time_fam_scan(setups[scan_of][2], setups[scan_of][3], args.iters)
    mm_after = time_matmul(mm_size, mm_size, mm_size, mm_reps, device=dev, dtype=dtype)
    peak = statistics.median(mm_before + mm_after)
    shapes = []
    for sname, sb, sm, sk, sn in model_matmul_shapes(base, b, T):
        rates = time_matmul(sm, sk, sn, max(2, mm_reps // 2), batch=sb, device=dev, dtype=dtype)
        shapes.append({"name": sname, "batch": sb, "m": sm, "k": sk, "n": sn, "gflops": statistics.median(rates) / 1e9})
    del setups
    gc.collect()

    mem: dict[str, dict[str, Any]] = {}
    if dev.startswith("cuda"):  # torch's allocator counts device memory exactly, in this process
        mem = {n: {"peak_increase_mb": gpu_peak.get(n), "method": "torch.cuda.max_memory_allocated"} for n in names}
    elif not args.no_memory:
        jobs = []
        for name in names:
            cfg, impl = variant_config(base, name)
            jobs.append(
                {
                    "config": cfg.to_dict(),
                    "impl": impl,
                    "batch": b,
                    "seq_len": T,
                    "seed": args.seed,
                    "threads": torch.get_num_threads(),
                    "reps": args.mem_reps,
                }
            )
        mem = dict(zip(names, measure_memory(jobs)))

    shape_gflops = {s["name"]: s["gflops"] for s in shapes}
    variants = []
    for name in names:
        cfg, impl = variant_config(base, name)
        step_median, step_min = statistics.median(times[name]), min(times[name])
        step = step_min if args.stat == "min" else step_median
        fl = forward_flops(cfg, b, T, impl)
        train_comp, train_use = 3 * fl["computed"]["total"], 3 * fl["useful"]["total"]
        ceiling = matmul_ceiling_s(cfg, impl, fl["computed"], shape_gflops)
        m = mem.get(name, {})
        variants.append(
            {
                "name": name,
                "attention": cfg.attention,
                "impl": impl,
                "step_times_s": times[name],
                "step_time_s": step,
                "step_time_median_s": step_median,
                "step_time_min_s": step_min,
                "tokens_per_s": b * T / step,
                "peak_mem_mb": m.get("peak_increase_mb"),
                "peak_rss_mb": m.get("peak_rss_mb"),
                "mem_reps_mb": m.get("reps_mb"),
                "mem_method": m.get("method"),
                "forward_flops": fl,
                "train_flops_computed": train_comp,
                "train_flops_useful": train_use,
                "achieved_gflops": train_comp / step / 1e9,
                "achieved_useful_gflops": train_use / step / 1e9,
                "frac_matmul_peak": train_comp / step / peak,
                "ceiling_step_s": ceiling,
                "ceiling_frac_peak": train_comp / ceiling / peak if ceiling else None,
                "frac_of_ceiling": ceiling / step if ceiling else None,
            }
        )
    by_name = {v["name"]: v for v in variants}
    for v in variants:
        v["tokens_per_s_vs_bswa"] = v["tokens_per_s"] / by_name["bswa"]["tokens_per_s"] if "bswa" in by_name else None
        full_mem = by_name.get("full", {}).get("peak_mem_mb")
        v["peak_mem_vs_full"] = v["peak_mem_mb"] / full_mem if full_mem and v["peak_mem_mb"] is not None else None

    targets = {}
    fam, bswa = by_name.get("fam"), by_name.get("bswa")
    ratio = fam["tokens_per_s"] / bswa["tokens_per_s"] if fam and bswa else None
    # the same ratio if both ran at their matmul ceilings: what the model's shapes allow at best
    ceiling_ratio = (
        bswa["ceiling_step_s"] / fam["ceiling_step_s"]
        if fam and bswa and fam["ceiling_step_s"] and bswa["ceiling_step_s"]
        else None
    )
    targets["throughput"] = {
        "name": f"FAM tokens/s >= {THROUGHPUT_TARGET:.2f}x BSWA",
        "threshold": THROUGHPUT_TARGET,
        "value": ratio,
        "ceiling": ceiling_ratio,
        "value_text": _fmt(ratio, ".3f") + "x" + (f" (matmul ceiling {ceiling_ratio:.3f}x)" if ceiling_ratio else ""),
        "status": "n/a" if ratio is None else ("PASS" if ratio >= THROUGHPUT_TARGET else "FAIL"),
    }
    frac = fam["frac_matmul_peak"] if fam else None
    frac_ceiling = fam["ceiling_frac_peak"] if fam else None
    targets["flops"] = {
        "name": f"FAM training step >= {FLOPS_TARGET:.0%} of matmul FLOP/s",
        "threshold": FLOPS_TARGET,
        "value": frac,
        "ceiling": frac_ceiling,
        "value_text": "n/a"
        if frac is None
        else f"{frac:.1%} ({fam['achieved_gflops']:.1f} of {peak / 1e9:.1f} GFLOP/s)"
        + (f" (matmul ceiling {frac_ceiling:.1%})" if frac_ceiling else ""),
        "status": "n/a" if frac is None else ("PASS" if frac >= FLOPS_TARGET else "FAIL"),
    }
    scan = None
    if scan_times is not None:
        lm = by_name.get("fam-layer-major")  # the scan is the layer-major path's sequential part
        fl = forward_flops(base.replace(attention="fam"), b, T, "layer_major")["computed"]
        per_layer = statistics.median(scan_times)
        extra = lm["step_time_s"] - bswa["step_time_s"] if lm and bswa else None
        scan = {
            "layer_times_s": scan_times,
            "layer_time_s": per_layer,
            "step_time_s": per_layer * base.n_layers,
            "share_of_fam_extra": per_layer * base.n_layers / extra if extra and extra > 0 else None,
            "gflops": 3 * (fl["fam_linear"] + fl["scan_attn"]) / base.n_layers / per_layer / 1e9,
        }
    mach["loadavg_end"] = list(os.getloadavg())
    config = {
        k: getattr(args, k) for k in ("seq_len", "batch_size", "warmup", "iters", "ref_iters", "quick", "seed", "stat")
    }
    config.update({k: getattr(base, k) for k in ("d_model", "n_layers", "n_heads", "vocab_size")})
    config.update(block_size=base.block_size, mem_segment=base.mem_segment, fam_len=base.fam_len, dtype=dtype)
    config.update(device=dev, device_name=torch.cuda.get_device_name() if dev.startswith("cuda") else mach["cpu_model"])
    return {
        "timestamp": dt.datetime.now().strftime("%Y%m%d-%H%M%S"),
        "machine": mach,
        "config": config,
        "matmul": {
            "size": mm_size,
            "peak_gflops": peak / 1e9,
            "before_gflops": statistics.median(mm_before) / 1e9,
            "after_gflops": statistics.median(mm_after) / 1e9,
            "reps_gflops": [r / 1e9 for r in mm_before + mm_after],
            "shapes": shapes,
        },
        "variants": variants,
        "fam_scan": scan,
        "targets": targets,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.profile:
        text = profile_variant(args)
        print(text)
        return {"profile": text}
    return report_results(run_bench(args), render_markdown, args, json_prefix="bench_", latest="latest.md")


def report_results(res: dict[str, Any], render, args: argparse.Namespace, *, json_prefix: str, latest: str):
    """Print the Markdown of ``res``; write ``<out_dir>/<json_prefix><timestamp>.json`` and ``<out_dir>/<latest>``
    (unless ``args.out_dir`` is empty); with ``args.strict`` exit 1 if a target failed. Shared by the benchmarks."""
    md = render(res)
    print(md)
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{json_prefix}{res['timestamp']}.json"
        path.write_text(json.dumps(res, indent=2) + "\n")
        (out / latest).write_text(md)
        res["json_path"] = str(path)
        print(f"wrote {path} and {out / latest}")
    if args.strict and any(t["status"] == "FAIL" for t in res["targets"].values()):
        sys.exit(1)
    return res


if __name__ == "__main__":
    main()
