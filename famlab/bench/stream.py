"""Streaming inference benchmark: tokens/s and peak RSS of ``FamLM.step`` over long streams.

Run with ``make bench-stream`` (``python -m famlab.bench.stream``; ``--help`` lists the options).
Defaults: the model of ``famlab.bench`` (4 layers, d_model=256, 4 heads, vocab 256, B=256, m=1,
L_F=16, fp32), batch 1, ``eval()`` and ``torch.no_grad()``, streams of 16k, 128k and 1M tokens fed
to ``FamLM.step`` in block-sized chunks. ``--quick``: a 2-layer d=64 model (B=64, L_F=4) over 4k,
16k and 64k tokens.

What is measured, and how:

* **Streaming** (one fresh ``spawn`` subprocess per variant and length, so neither allocator
  state nor a larger stream run before it inflates the numbers): the child builds the model,
  warms up by streaming a few chunks into a throw-away state, then ``gc``, ``malloc_trim(0)``,
  resets the kernel's RSS high-water mark (``echo 5 > /proc/self/clear_refs``, with
  ``famlab.bench.common``'s helpers), reads ``VmRSS`` and streams N random tokens from a fresh
  ``init_state(1)``. The allocator keeps glibc's defaults, as a user's process would
  (``--malloc mmap``: ``famlab.bench``'s ``mallopt`` settings, every block over 64 kB returned to
  the OS on free; the page faults then cost about a quarter of the streaming speed). tokens/s = N / the summed ``step`` times (token generation is not timed;
  ``--stat median`` uses the median chunk time instead). Peak RSS = ``VmHWM`` after the stream:
  the whole process (torch, the model, the state, the transient buffers), and the stream's increase
  over ``VmRSS`` before it. ``VmRSS`` is also sampled at eight points along the stream. The
  state's own size is counted directly from its tensors (logical bytes, and the bytes of the
  distinct storages they keep alive).
* ``fam`` and ``bswa`` hold a constant-size state (memory-segment ring, partial block, FAM), so
  their RSS and tokens/s should not depend on the length. ``full`` keeps a growing KV cache and
  each chunk attends all of it, so its time per token grows with the position and its memory with
  the length: it runs only up to ``--full-max-tokens`` (its KV cache at the skipped lengths is
  reported instead).
* **Prefill** (main process, variants round-robin): the same ``--prefill-len`` tokens consumed
  by ``step`` in block-sized chunks vs the parallel forward ``model(tokens)``, median over timed
  rounds; reported as a ratio of tokens/s, with the largest difference between the two paths'
  logits.

Targets (PASS/FAIL), for ``fam`` and ``bswa``: peak RSS at the longest length within 5% of the
shortest's; tokens/s at the longest length within 10% of the shortest's; streaming prefill
tokens/s >= 0.8x the parallel forward's (``full``'s ratio is reported without a target).

Results: a Markdown table on stdout and in ``bench/results/stream_latest.md``, and JSON in
``bench/results/stream_<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import resource
import statistics
import time
from typing import Any

import torch

from famlab.allocator import glibc
from famlab.bench.common import (
    add_options,
    base_config,
    benchmark_parser,
    code_version,
    fill_defaults,
    machine_info,
    name_list,
    parse_and_apply_threads,
    report_results,
    reset_hwm,
    run_in_fresh_processes,
    status_kb,
    timestamp,
)
from famlab.bench.stream_report import flatness, fmt_tokens, make_targets, render_markdown
from famlab.config import ModelConfig
from famlab.model import FamLM, FamState

VARIANTS = ("fam", "bswa", "full")  # attention kinds
DEFAULT_LENGTHS = "16k,128k,1M"
QUICK_LENGTHS = "4k,16k,64k"
RSS_SAMPLES = 8  # VmRSS readings along each stream
# option -> (default, --quick default), for the options left unset
QUICK_DEFAULTS = {"lengths": (DEFAULT_LENGTHS, QUICK_LENGTHS), "full_max_tokens": (16384, 16384)}
QUICK_DEFAULTS.update(d_model=(256, 64), n_layers=(4, 2), n_heads=(4, 2), block_size=(256, 64), fam_len=(16, 4))
QUICK_DEFAULTS.update(prefill_len=(16384, 4096), prefill_warmup=(1, 1), prefill_iters=(3, 1))


def parse_tokens(text: str) -> int:
    """'16k' -> 16384, '1M' -> 1048576, '3000' -> 3000 (binary multiples)."""
    t = text.strip().lower()
    mult = {"k": 1 << 10, "m": 1 << 20}.get(t[-1:], 1)
    n = int(t[:-1] if mult > 1 else t) * mult
    if n <= 0:
        raise ValueError(f"token count must be positive, got {text!r}")
    return n


# ----------------------------------------------------------------------------------------------
# the state's size


def state_tensors(obj: Any) -> list[torch.Tensor]:
    """Every tensor a streaming state holds, whatever its memory kind: the fields of its dataclasses
    (``FamState``, each layer's state), recursively through lists."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for x in obj for t in state_tensors(x)]
    if dataclasses.is_dataclass(obj):
        return [t for f in dataclasses.fields(obj) for t in state_tensors(getattr(obj, f.name))]
    return []


def state_nbytes(state: FamState) -> dict[str, int]:
    """Bytes of the tensors in a streaming state: ``logical`` (sum of numel x element size) and
    ``storage`` (the distinct storages they keep alive, e.g. a slice of a concatenation keeps the
    whole concatenation)."""
    logical, storages = 0, {}
    for t in state_tensors(state):
        logical += t.numel() * t.element_size()
        st = t.untyped_storage()
        storages[st.data_ptr()] = max(storages.get(st.data_ptr(), 0), st.nbytes())
    return {"logical": logical, "storage": sum(storages.values())}


def kv_cache_bytes(cfg: ModelConfig, tokens: int, batch: int = 1) -> int:
    """Bytes of a full-attention KV cache over ``tokens`` (fp32 keys and values, every layer)."""
    return 2 * cfg.n_layers * batch * tokens * cfg.kv_heads * cfg.head_dim * 4


# ----------------------------------------------------------------------------------------------
# streaming


def stream(
    model: FamLM, n_tokens: int, chunk: int, gen: torch.Generator, state: FamState | None = None, on_chunk=None
) -> tuple[FamState, list[float]]:
    """Feed ``n_tokens`` random tokens (batch 1) through ``model.step`` in chunks of ``chunk``;
    returns the final state and the time of each ``step`` call. ``on_chunk(i, consumed)`` runs
    after each chunk, untimed."""
    vocab = model.cfg.vocab_size
    state = model.init_state(1) if state is None else state
    times = []
    with torch.no_grad():
        for i, start in enumerate(range(0, n_tokens, chunk)):
            toks = torch.randint(0, vocab, (1, min(chunk, n_tokens - start)), generator=gen)
            t0 = time.perf_counter()
            _, state = model.step(toks, state)
            times.append(time.perf_counter() - t0)
            if on_chunk is not None:
                on_chunk(i, start + toks.shape[1])
    return state, times


def stream_child(job: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process: stream ``job['tokens']`` tokens, time it, read the RSS."""
    torch.set_num_threads(job["threads"])
    libc = glibc()
    if libc is not None and job["malloc"] == "mmap":  # famlab.bench's setting
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD: fixed, so big blocks go back to the OS
        libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD
    cfg = ModelConfig.from_dict(job["config"])
    torch.manual_seed(job["seed"])
    model = FamLM(cfg).eval()
    n, chunk = job["tokens"], job["chunk"]
    gen = torch.Generator().manual_seed(job["seed"])
    stream(model, min(n, job["warmup_chunks"] * chunk), chunk, gen)  # throw-away state
    gc.collect()
    if libc is not None:
        libc.malloc_trim(0)
    kb = 1024.0
    hwm = reset_hwm()
    before = status_kb("VmRSS")
    n_chunks = -(-n // chunk)
    marks = {max(0, round(n_chunks * (k + 1) / RSS_SAMPLES) - 1) for k in range(RSS_SAMPLES)}
    trace: list[list[float]] = []

    def sample(i: int, consumed: int) -> None:
        if i in marks:
            trace.append([consumed, status_kb("VmRSS") / kb])

    state, times = stream(model, n, chunk, gen, on_chunk=sample)
    if hwm:
        method = "clear_refs: VmHWM over the stream (after a warm-up stream)"
        peak = status_kb("VmHWM")
    else:
        method = "ru_maxrss of the process (clear_refs not writable): peak since start, model build included"
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    total = sum(times)
    sizes = state_nbytes(state)
    return {
        "time_s": total,
        "tokens_per_s_total": n / total,
        "tokens_per_s_median_chunk": chunk / statistics.median(times),
        "tokens_per_s_first_tenth": _rate(times, chunk, n, first=True),
        "tokens_per_s_last_tenth": _rate(times, chunk, n, first=False),
        "peak_rss_mb": peak / kb,
        "rss_before_mb": before / kb,
        "rss_after_mb": status_kb("VmRSS") / kb,
        "stream_increase_mb": (peak - before) / kb,
        "rss_trace_mb": trace,
        "state_bytes": sizes["logical"],
        "state_storage_bytes": sizes["storage"],
        "final_pos": state.pos,
        "mem_method": method,
        "threads": torch.get_num_threads(),
    }


def _rate(times: list[float], chunk: int, n: int, first: bool) -> float:
    """tokens/s over the first (or last) tenth of the chunks (at least one)."""
    k = max(1, len(times) // 10)
    part = times[:k] if first else times[-k:]
    tokens = k * chunk if first else n - (len(times) - k) * chunk
    return tokens / sum(part)


def run_children(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """:func:`stream_child` of each job, one at a time, each in a new process."""
    return run_in_fresh_processes("famlab.bench.stream", "stream_child", jobs)


# ----------------------------------------------------------------------------------------------
# prefill: streaming vs the parallel forward


def prefill(
    configs: dict[str, ModelConfig], length: int, chunk: int, seed: int, warmup: int, iters: int
) -> list[dict[str, Any]]:
    """Round-robin rounds over the variants: stream ``length`` tokens in chunks, then the parallel
    forward over the same tokens; the median of the timed rounds."""
    setups = {}
    for name, cfg in configs.items():
        torch.manual_seed(seed)
        model = FamLM(cfg).eval()
        toks = torch.randint(0, cfg.vocab_size, (1, length), generator=torch.Generator().manual_seed(seed))
        setups[name] = (model, toks)
    times: dict[str, dict[str, list[float]]] = {n: {"stream": [], "parallel": []} for n in configs}
    diffs: dict[str, float] = {}
    with torch.no_grad():
        for rnd in range(warmup + iters):
            for name, (model, toks) in setups.items():
                state, outs = model.init_state(1), []
                t0 = time.perf_counter()
                for start in range(0, length, chunk):
                    logits, state = model.step(toks[:, start : start + chunk], state)
                    outs.append(logits)
                t1 = time.perf_counter()
                par = model(toks)
                t2 = time.perf_counter()
                if rnd >= warmup:
                    times[name]["stream"].append(t1 - t0)
                    times[name]["parallel"].append(t2 - t1)
                if rnd == warmup + iters - 1:
                    diffs[name] = float((torch.cat(outs, 1) - par).abs().max())
                del outs, par
    rows = []
    for name in configs:
        t_s, t_p = statistics.median(times[name]["stream"]), statistics.median(times[name]["parallel"])
        rows.append(
            {
                "variant": name,
                "tokens": length,
                "chunk": chunk,
                "stream_times_s": times[name]["stream"],
                "parallel_times_s": times[name]["parallel"],
                "stream_tokens_per_s": length / t_s,
                "parallel_tokens_per_s": length / t_p,
                "ratio": t_p / t_s,
                "max_abs_logit_diff": diffs[name],
            }
        )
    return rows


# ----------------------------------------------------------------------------------------------
# CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    quick_help = "smoke test: a 2-layer d=64 model (B=64, L_F=4), 4k/16k/64k"
    p = benchmark_parser("famlab.bench.stream", __doc__, quick_help)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument(
        "--lengths",
        default=None,
        help=f"comma list of stream lengths (default {DEFAULT_LENGTHS}; --quick {QUICK_LENGTHS})",
    )
    p.add_argument(
        "--full-max-tokens",
        type=parse_tokens,
        default=None,
        help="longest stream for full attention; longer ones are reported as skipped (default 16k)",
    )
    p.add_argument("--chunk", type=int, default=None, help="tokens per step() call (default: the block size)")
    quick_sizes = {
        "d_model": {"default": None, "help": "default 256; --quick 64"},
        "n_layers": {"default": None, "help": "default 4; --quick 2"},
        "n_heads": {"default": None, "help": "default 4; --quick 2"},
        "block_size": {"default": None, "help": "B (default 256; --quick 64)"},
        "fam_len": {"default": None, "help": "L_F (default 16; --quick 4)"},
    }
    add_options(
        p, ("d_model", "n_layers", "n_heads", "vocab_size", "block_size", "mem_segment", "fam_len"), **quick_sizes
    )
    p.add_argument("--warmup-chunks", type=int, default=16, help="chunks streamed into a throw-away state first")
    p.add_argument(
        "--prefill-len", type=parse_tokens, default=None, help="prefill comparison length (default 16k; --quick 4k)"
    )
    p.add_argument("--prefill-warmup", type=int, default=None, help="prefill warm-up rounds (default 1; --quick 1)")
    p.add_argument("--prefill-iters", type=int, default=None, help="prefill timed rounds (default 3; --quick 1)")
    p.add_argument(
        "--malloc",
        choices=("default", "mmap"),
        default="default",
        help="allocator in the streaming processes: glibc's defaults, or famlab.bench's (every block over 64 kB "
        "mmap-ed and returned on free: no hidden reuse, but page faults slow the stream)",
    )
    p.add_argument("--no-prefill", action="store_true", help="skip the prefill comparison")
    p.add_argument("--no-stream", action="store_true", help="skip the streaming subprocesses")
    stat = {
        "choices": ("total", "median"),
        "default": "total",
        "help": "tokens/s from the total step time (default) or the median chunk time (resists a busy machine)",
    }
    out_dir = {"help": "where the JSON and stream_latest.md go ('' = nowhere)"}
    add_options(p, ("stat", "threads", "seed", "out_dir", "strict"), stat=stat, out_dir=out_dir)
    args = p.parse_args(argv)
    fill_defaults(args, QUICK_DEFAULTS)
    if args.chunk is None:
        args.chunk = args.block_size
    try:
        args.length_list = sorted({parse_tokens(x) for x in args.lengths.split(",") if x.strip()})
    except ValueError as e:
        p.error(f"--lengths: {e}")
    args.variant_list = name_list(p, args.variants, VARIANTS, "variant")
    if not args.length_list:
        p.error("--lengths is empty")
    return args


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    base = base_config(args)
    mach = machine_info()
    configs = {name: base.replace(attention=name) for name in args.variant_list}
    job = {"chunk": args.chunk, "seed": args.seed, "threads": torch.get_num_threads()}
    job.update(warmup_chunks=args.warmup_chunks, malloc=args.malloc)

    rows: list[dict[str, Any]] = []
    if not args.no_stream:
        jobs, indices = [], []
        for n in args.length_list:  # interleaved: every variant at one length, then the next length
            for name, cfg in configs.items():
                row = {"variant": name, "tokens": n, "skipped": False}
                if name == "full" and n > args.full_max_tokens:
                    kv = kv_cache_bytes(cfg, n)
                    row.update(
                        skipped=True,
                        reason=f"> --full-max-tokens {fmt_tokens(args.full_max_tokens)} "
                        f"(KV cache {kv / 2**20:.0f} MB, time per token grows with the position)",
                        kv_cache_bytes=kv,
                    )
                else:
                    jobs.append({"config": cfg.to_dict(), "tokens": n, **job})
                    indices.append(len(rows))
                rows.append(row)
        for idx, result in zip(indices, run_children(jobs)):
            rows[idx].update(result)
        rows.sort(key=lambda r: (args.variant_list.index(r["variant"]), r["tokens"]))
    flat = flatness(rows, args.variant_list, args.stat) if rows else {}

    pre = []
    if not args.no_prefill:
        pre = prefill(configs, args.prefill_len, args.chunk, args.seed, args.prefill_warmup, args.prefill_iters)
    targets = make_targets(flat, pre)
    mach["loadavg_end"] = list(os.getloadavg())
    keys = "quick chunk full_max_tokens warmup_chunks malloc prefill_len prefill_warmup prefill_iters stat seed"
    config = {k: getattr(args, k) for k in keys.split()}
    config.update(lengths=args.length_list, variants=args.variant_list, batch_size=1, dtype="float32")
    config.update({k: getattr(base, k) for k in ("d_model", "n_layers", "n_heads", "vocab_size")})
    config.update(block_size=base.block_size, mem_segment=base.mem_segment, fam_len=base.fam_len)
    config["num_params"] = {name: FamLM(cfg).num_params() for name, cfg in configs.items()}
    return {
        "timestamp": timestamp(),
        "machine": mach,
        "code": code_version(),
        "config": config,
        "stream": rows,
        "flatness": flat,
        "prefill": pre,
        "targets": targets,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_and_apply_threads(parse_args, argv)
    return report_results(run_bench(args), render_markdown, args, json_prefix="stream_", latest="stream_latest.md")


if __name__ == "__main__":
    main()
