"""The streaming benchmark's results (``python -m famlab.bench.stream``): flatness of peak RSS and
tokens/s over the stream lengths, the targets, and the Markdown report."""

from __future__ import annotations

from typing import Any

from famlab.bench.common import code_line, machine_line, target_status

CONSTANT_STATE = ("fam", "bswa")  # the variants the targets apply to
RSS_FLAT_TOL = 0.05  # peak RSS at the longest length within 5% of the shortest's
SPEED_FLAT_TOL = 0.10  # tokens/s at the longest length within 10% of the shortest's
PREFILL_TARGET = 0.80  # streaming prefill tokens/s >= this x the parallel forward's
# flatness targets: (key, what, ratio in the flatness table, tolerance)
FLATNESS_TARGETS = (
    ("rss_flat", "peak RSS", "rss_ratio", RSS_FLAT_TOL),
    ("speed_flat", "tokens/s", "speed_ratio", SPEED_FLAT_TOL),
)


def fmt_tokens(n: int) -> str:
    for unit, size in (("M", 1 << 20), ("k", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def flatness(rows: list[dict[str, Any]], names: list[str], stat: str) -> dict[str, dict[str, Any]]:
    """Per variant: peak RSS and tokens/s at its longest measured length over its shortest."""
    key = "tokens_per_s_median_chunk" if stat == "median" else "tokens_per_s_total"
    out = {}
    for name in names:
        done = sorted((r for r in rows if r["variant"] == name and not r["skipped"]), key=lambda r: r["tokens"])
        if len(done) < 2:
            out[name] = {"shortest": None, "longest": None, "rss_ratio": None, "speed_ratio": None}
            continue
        lo, hi = done[0], done[-1]
        out[name] = {
            "shortest": lo["tokens"],
            "longest": hi["tokens"],
            "rss_ratio": hi["peak_rss_mb"] / lo["peak_rss_mb"],
            "increase_mb_shortest": lo["stream_increase_mb"],
            "increase_mb_longest": hi["stream_increase_mb"],
            "speed_ratio": hi[key] / lo[key],
            "state_storage_bytes_shortest": lo["state_storage_bytes"],
            "state_storage_bytes_longest": hi["state_storage_bytes"],
        }
    return out


def make_targets(flat: dict[str, dict[str, Any]], pre: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    targets = {}
    for name in CONSTANT_STATE:
        f = flat.get(name)
        if f is None:
            continue
        span = "n/a" if f["shortest"] is None else f"{fmt_tokens(f['longest'])} vs {fmt_tokens(f['shortest'])}"
        for key, what, ratio_key, tol in FLATNESS_TARGETS:
            r = f[ratio_key]
            targets[f"{key}_{name}"] = {
                "name": f"{name}: {what} flat within {tol:.0%} ({span})",
                "threshold": tol,
                "value": r,
                "value_text": "n/a (needs two lengths)" if r is None else f"{r:.3f}x",
                "status": target_status(None if r is None else abs(r - 1) <= tol),
            }
    for p in pre:
        if p["variant"] not in CONSTANT_STATE:
            continue
        targets[f"prefill_{p['variant']}"] = {
            "name": f"{p['variant']}: streaming prefill >= {PREFILL_TARGET:.2f}x the parallel forward "
            f"({fmt_tokens(p['tokens'])} tokens)",
            "threshold": PREFILL_TARGET,
            "value": p["ratio"],
            "value_text": f"{p['ratio']:.3f}x ({p['stream_tokens_per_s']:.0f} vs {p['parallel_tokens_per_s']:.0f} tokens/s)",
            "status": target_status(p["ratio"] >= PREFILL_TARGET),
        }
    return targets


def render_markdown(res: dict[str, Any]) -> str:
    c, mach = res["config"], res["machine"]
    stat = "median chunk time" if c["stat"] == "median" else "total step time"
    lines = [
        f"# famlab streaming bench {res['timestamp']}",
        "",
        f"Model: {c['n_layers']} layers, d_model={c['d_model']}, {c['n_heads']} heads, vocab {c['vocab_size']}; "
        f"B={c['block_size']}, m={c['mem_segment']}, L_F={c['fam_len']}, fp32, batch 1, eval, no_grad. "
        f"Streams through `FamLM.step` in chunks of {c['chunk']} tokens, one fresh process per row; "
        f"tokens/s from the {stat}; full attention up to {fmt_tokens(c['full_max_tokens'])} tokens.",
        machine_line(mach),
        code_line(res["code"]),
    ]
    if res["stream"]:
        lines += [
            "",
            "| variant | tokens | tokens/s | tokens/s first 10% | tokens/s last 10% | peak RSS MB | "
            "stream increase MB | state MB (storage) | time s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        key = "tokens_per_s_median_chunk" if c["stat"] == "median" else "tokens_per_s_total"
        for r in res["stream"]:
            if r["skipped"]:
                lines.append(f"| {r['variant']} | {fmt_tokens(r['tokens'])} | skipped: {r['reason']} | | | | | | |")
                continue
            lines.append(
                f"| {r['variant']} | {fmt_tokens(r['tokens'])} | {r[key]:.0f} | {r['tokens_per_s_first_tenth']:.0f} | "
                f"{r['tokens_per_s_last_tenth']:.0f} | {r['peak_rss_mb']:.1f} | {r['stream_increase_mb']:.1f} | "
                f"{r['state_bytes'] / 2**20:.2f} ({r['state_storage_bytes'] / 2**20:.2f}) | {r['time_s']:.1f} |"
            )
        lines += ["", "| variant | longest / shortest | peak RSS ratio | tokens/s ratio |", "|---|---|---:|---:|"]
        for name, f in res["flatness"].items():
            if f["shortest"] is None:
                lines.append(f"| {name} | n/a | n/a | n/a |")
                continue
            lines.append(
                f"| {name} | {fmt_tokens(f['longest'])} / {fmt_tokens(f['shortest'])} | "
                f"{f['rss_ratio']:.3f} | {f['speed_ratio']:.3f} |"
            )
    if res["prefill"]:
        lines += [
            "",
            f"Prefill ({c['prefill_iters']} timed rounds after {c['prefill_warmup']}, medians, variants round-robin):",
            "",
            "| variant | tokens | streaming tokens/s | parallel tokens/s | streaming / parallel | max abs logit diff |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for p in res["prefill"]:
            lines.append(
                f"| {p['variant']} | {fmt_tokens(p['tokens'])} | {p['stream_tokens_per_s']:.0f} | "
                f"{p['parallel_tokens_per_s']:.0f} | {p['ratio']:.3f} | {p['max_abs_logit_diff']:.2e} |"
            )
    lines += ["", "Targets:", ""]
    for t in res["targets"].values():
        lines.append(f"* {t['name']}: {t['value_text']} -> **{t['status']}**")
    methods = {r["mem_method"] for r in res["stream"] if not r["skipped"]}
    if methods:
        lines += ["", f"Memory method: {'; '.join(sorted(methods))}."]
    return "\n".join(lines) + "\n"
