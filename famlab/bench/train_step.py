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
* **Matmul FLOP/s**: fp32 ``[N,N] @ [N,N]`` (N=2048 by default), median over repeats, measured
  before and after the variants (both reported; the peak used for fractions is the median of all
  repeats), plus the matmuls at the shapes the model uses (projections, FF, LM head, block
  attention, the FAM scan's small attention).
* **Model FLOPs** and the **matmul ceiling**: see ``famlab.bench.flops``. Achieved FLOP/s = computed
  training FLOPs / step time (the median; ``--stat min`` uses the fastest round instead, which a
  shared, busy machine disturbs least; both are recorded). The JSON keeps the ceiling per variant
  (``ceiling_step_s``, ``ceiling_frac_peak``, ``frac_of_ceiling``) and per target (``ceiling``: the
  FAM/BSWA ratio and FAM's fraction of peak at the ceilings).
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
import gc
import os
import statistics
import time
from typing import Any

import torch

from famlab.allocator import reuse_freed_memory
from famlab.bench.common import (
    add_options,
    base_config,
    benchmark_parser,
    check_name,
    fill_defaults,
    machine_info,
    name_list,
    parse_and_apply_threads,
    report_results,
    timestamp,
)
from famlab.bench.flops import model_matmul_shapes, time_matmul
from famlab.bench.step import (
    AUTOCAST,
    DEFAULT_VARIANTS,
    VARIANTS,
    build,
    measure_memory,
    time_fam_scan,
    train_step,
    variant_config,
)
from famlab.bench.train_step_report import fam_scan_summary, make_targets, render_markdown, variant_rows
from famlab.config import ModelConfig

# option -> (default, --quick default), for the options left unset
QUICK_DEFAULTS = {"seq_len": (4096, 1024), "warmup": (2, 1), "iters": (7, 2), "ref_iters": (3, 1)}
QUICK_DEFAULTS.update(matmul_size=(2048, 512), matmul_reps=(7, 2), mem_reps=(2, 1))

# ----------------------------------------------------------------------------------------------
# throughput


def time_variants(
    setups: dict[str, tuple], args: argparse.Namespace
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Round-robin rounds of training steps, the reference path in fewer of them: step times per
    variant and, on a GPU, the extra device memory (MiB) of each variant's first timed step."""
    names, dev = list(setups), args.device
    gpu_peak: dict[str, float] = {}
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
            train_step(model, inputs, targets, impl, args.dtype)
            if timed:
                times[name].append(time.perf_counter() - t0)
                if dev.startswith("cuda") and len(times[name]) == 1:  # the step's extra device memory
                    gpu_peak[name] = (torch.cuda.max_memory_allocated() - base_mem) / 2**20
    return times, gpu_peak


def peak_memory(args: argparse.Namespace, base: ModelConfig, gpu_peak: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Per variant: the extra memory of a training step (see the module docstring)."""
    names = args.variant_list
    if args.device.startswith("cuda"):  # torch's allocator counts device memory exactly, in this process
        return {n: {"peak_increase_mb": gpu_peak.get(n), "method": "torch.cuda.max_memory_allocated"} for n in names}
    if args.no_memory:
        return {}
    jobs = []
    for name in names:
        cfg, impl = variant_config(base, name)
        jobs.append(
            {
                "config": cfg.to_dict(),
                "impl": impl,
                "batch": args.batch_size,
                "seq_len": args.seq_len,
                "seed": args.seed,
                "threads": torch.get_num_threads(),
                "reps": args.mem_reps,
            }
        )
    return dict(zip(names, measure_memory(jobs)))


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
    times, gpu_peak = time_variants(setups, args)

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

    mem = peak_memory(args, base, gpu_peak)
    configs = {name: variant_config(base, name) for name in names}
    variants = variant_rows(configs, times, mem, {s["name"]: s["gflops"] for s in shapes}, peak, args)
    mach["loadavg_end"] = list(os.getloadavg())
    config = {
        k: getattr(args, k) for k in ("seq_len", "batch_size", "warmup", "iters", "ref_iters", "quick", "seed", "stat")
    }
    config.update({k: getattr(base, k) for k in ("d_model", "n_layers", "n_heads", "vocab_size")})
    config.update(block_size=base.block_size, mem_segment=base.mem_segment, fam_len=base.fam_len, dtype=dtype)
    config.update(device=dev, device_name=torch.cuda.get_device_name() if dev.startswith("cuda") else mach["cpu_model"])
    return {
        "timestamp": timestamp(),
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
        "fam_scan": None if scan_times is None else fam_scan_summary(scan_times, base, variants, b, T),
        "targets": make_targets(variants, peak),
    }


# ----------------------------------------------------------------------------------------------
# CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = benchmark_parser("famlab.bench", __doc__, "smoke test: T=1024, fewer iterations, smaller matmul")
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma list of {', '.join(VARIANTS)}")
    add_options(p, ("seq_len", "batch_size", "d_model", "n_layers", "n_heads", "vocab_size", "block_size"))
    add_options(p, ("mem_segment", "fam_len", "threads", "warmup", "iters"))
    p.add_argument(
        "--ref-iters", type=int, default=None, help="timed rounds of the reference path (default 3; --quick 1)"
    )
    p.add_argument("--matmul-size", type=int, default=None, help="N of the N^3 matmul (default 2048; --quick 512)")
    p.add_argument("--matmul-reps", type=int, default=None, help="repeats per matmul timing (default 7; --quick 2)")
    p.add_argument("--mem-reps", type=int, default=None, help="memory repetitions per variant (default 2; --quick 1)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    stat_help = "step-time statistic behind tokens/s and FLOP/s (min resists a busy machine)"
    add_options(p, ("stat", "seed"), stat={"help": stat_help})
    p.add_argument("--device", default="cpu", help="cpu or cuda (GPU: memory from torch.cuda, no subprocesses)")
    p.add_argument(
        "--dtype", default="float32", choices=sorted(AUTOCAST), help="float32, or autocast to bfloat16/float16"
    )
    add_options(p, ("out_dir", "strict"))
    p.add_argument("--profile", metavar="VARIANT", default=None, help="only profile VARIANT's training step")
    p.add_argument("--profile-rows", type=int, default=25)
    args = p.parse_args(argv)
    fill_defaults(args, QUICK_DEFAULTS)
    args.variant_list = name_list(p, args.variants, VARIANTS, "variant")
    if args.profile:
        check_name(p, args.profile, VARIANTS, "variant")
    return args


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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_and_apply_threads(parse_args, argv)
    if args.profile:
        text = profile_variant(args)
        print(text)
        return {"profile": text}
    return report_results(run_bench(args), render_markdown, args, json_prefix="bench_", latest="latest.md")


if __name__ == "__main__":
    main()
