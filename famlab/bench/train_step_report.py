"""The training-step benchmark's results: a row per variant (step times, FLOPs, FLOP/s, matmul ceiling,
memory), its two targets, the FAM scan's summary, and the Markdown report."""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from famlab.bench.common import format_or, machine_line, target_status
from famlab.bench.flops import forward_flops, matmul_ceiling_s
from famlab.config import ModelConfig

THROUGHPUT_TARGET = 0.90  # FAM tokens/s >= this x BSWA's
FLOPS_TARGET = 0.50  # FAM achieved FLOP/s >= this x measured matmul FLOP/s


def variant_rows(
    configs: dict[str, tuple[ModelConfig, str]],
    times: dict[str, list[float]],
    mem: dict[str, dict[str, Any]],
    shape_gflops: dict[str, float],
    peak: float,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """One result row per variant (``configs``: name -> (config, impl), in the run's order) from its step
    times, its peak memory (``mem``), the GFLOP/s of each matmul shape and the matmul peak (FLOP/s)."""
    b, T = args.batch_size, args.seq_len
    variants = []
    for name, (cfg, impl) in configs.items():
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
    return variants


def make_targets(variants: list[dict[str, Any]], peak: float) -> dict[str, dict[str, Any]]:
    """FAM's tokens/s against BSWA's, and FAM's fraction of the matmul peak (FLOP/s); n/a without them."""
    by_name = {v["name"]: v for v in variants}
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
        "value_text": format_or(ratio, ".3f")
        + "x"
        + (f" (matmul ceiling {ceiling_ratio:.3f}x)" if ceiling_ratio else ""),
        "status": target_status(None if ratio is None else ratio >= THROUGHPUT_TARGET),
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
        "status": target_status(None if frac is None else frac >= FLOPS_TARGET),
    }
    return targets


def fam_scan_summary(
    scan_times: list[float], base: ModelConfig, variants: list[dict[str, Any]], batch: int, seq_len: int
) -> dict[str, Any]:
    """Layer 0's FAM scan timed alone: per layer, for all layers, as a share of fam-layer-major's extra
    step time over BSWA, and its GFLOP/s."""
    by_name = {v["name"]: v for v in variants}
    lm, bswa = by_name.get("fam-layer-major"), by_name.get("bswa")  # the scan is the layer-major path's part
    fl = forward_flops(base.replace(attention="fam"), batch, seq_len, "layer_major")["computed"]
    per_layer = statistics.median(scan_times)
    extra = lm["step_time_s"] - bswa["step_time_s"] if lm and bswa else None
    return {
        "layer_times_s": scan_times,
        "layer_time_s": per_layer,
        "step_time_s": per_layer * base.n_layers,
        "share_of_fam_extra": per_layer * base.n_layers / extra if extra and extra > 0 else None,
        "gflops": 3 * (fl["fam_linear"] + fl["scan_attn"]) / base.n_layers / per_layer / 1e9,
    }


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
        machine_line(mach, malloc=True),
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
            f"{format_or(v['tokens_per_s_vs_bswa'], '.3f')} | {format_or(v['peak_mem_mb'], '.1f')} | "
            f"{format_or(v['peak_mem_vs_full'], '.2f')} | {v['train_flops_computed'] / 1e9:.1f} | "
            f"{v['achieved_gflops']:.1f} | {v['frac_matmul_peak']:.3f} | "
            f"{format_or(None if ceiling is None else ceiling * 1e3, '.0f')} | {format_or(v.get('ceiling_frac_peak'), '.3f')} |"
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
