"""Cost of the variants from ``famlab.bench`` JSON results (training-step time and peak memory by
sequence length), beside the paper's inference cost (Tables 13/14)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from famlab import paper
from famlab.analysis.plots import pyplot


def load_bench(paths: str | Path | Iterable[str | Path] = "bench/results") -> pd.DataFrame:
    """``famlab.bench`` JSON results (files or folders of ``bench_*.json``): one row per (file,
    variant) with the sequence length and model config, step time (median and min, seconds),
    tokens/s, peak training-step memory (MB; NaN when measured with --no-memory) and GFLOP/s."""
    if isinstance(paths, str | Path):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(p.glob("bench_*.json")) if p.is_dir() else [p] if p.exists() else [])
    rows = []
    for f in files:
        try:
            data = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        cfg = data.get("config", {})
        for v in data.get("variants", []):
            rows.append(
                {
                    "file": f.name,
                    "timestamp": data.get("timestamp", ""),
                    "variant": v.get("name"),
                    "attention": v.get("attention"),
                    "impl": v.get("impl"),
                    "seq_len": cfg.get("seq_len"),
                    "batch_size": cfg.get("batch_size"),
                    "d_model": cfg.get("d_model"),
                    "n_layers": cfg.get("n_layers"),
                    "block_size": cfg.get("block_size"),
                    "mem_segment": cfg.get("mem_segment"),
                    "fam_len": cfg.get("fam_len"),
                    "dtype": cfg.get("dtype"),
                    "quick": cfg.get("quick"),
                    "step_time_s": v.get("step_time_median_s", v.get("step_time_s")),
                    "step_time_min_s": v.get("step_time_min_s"),
                    "tokens_per_s": v.get("tokens_per_s"),
                    "peak_mem_mb": v.get("peak_mem_mb"),
                    "achieved_gflops": v.get("achieved_gflops"),
                }
            )
    df = pd.DataFrame(rows)
    for c in ("step_time_s", "step_time_min_s", "tokens_per_s", "peak_mem_mb", "achieved_gflops"):
        if c in df.columns:
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def bench_summary(bench: pd.DataFrame, where: str | Path = "bench/results") -> str:
    """One line on what bench results there are and which folder they were read from (or how to
    make some)."""
    if bench.empty:
        return (
            f"No bench results in {where} (nor committed ones in docs/results/): run `make bench` or "
            "`python -m famlab.bench --quick --no-memory --seq-len 1024` first."
        )
    lengths = sorted(int(t) for t in bench["seq_len"].dropna().unique())
    return (
        f"{bench['file'].nunique()} bench files read from {where}; sequence lengths {lengths}; "
        f"variants {sorted(bench['variant'].unique())}"
    )


VARIANT_ORDER = ("full", "bswa", "txl", "fam", "fam-ref")
MODEL_KEYS = ("batch_size", "d_model", "n_layers", "block_size", "mem_segment", "fam_len", "dtype")


def cost_table(bench: pd.DataFrame) -> pd.DataFrame:
    """Step time (ms) and peak memory (MB) by sequence length (down) and variant (across), for the
    model config with the most sequence lengths; the newest file wins a repeated (T, variant).
    Also the FAM / BSWA ratios."""
    if bench.empty:
        return pd.DataFrame()
    keys = [k for k in MODEL_KEYS if k in bench.columns]
    configs = bench.groupby(keys, dropna=False)["seq_len"].nunique()
    best = configs.idxmax()
    best = best if isinstance(best, tuple) else (best,)
    sel = bench
    for k, v in zip(keys, best):
        sel = sel[sel[k].isna()] if pd.isna(v) else sel[sel[k] == v]
    # the newest measurement of each quantity wins (a --no-memory run keeps an older memory number)
    sel = sel.sort_values("timestamp").groupby(["seq_len", "variant"], sort=False).last().reset_index()
    out = pd.DataFrame(index=pd.Index(sorted(int(t) for t in sel["seq_len"].unique()), name="seq_len"))
    variants = [v for v in VARIANT_ORDER if v in set(sel["variant"])]
    variants += [v for v in dict.fromkeys(sel["variant"]) if v not in variants]
    for col, name, scale in (("step_time_s", "step time ms", 1000.0), ("peak_mem_mb", "peak memory MB", 1.0)):
        wide = sel.pivot(index="seq_len", columns="variant", values=col) * scale
        wide.index = wide.index.astype(int)
        for v in variants:
            out[(name, v)] = wide[v] if v in wide.columns else math.nan
    if {"fam", "bswa"} <= set(variants):
        out[("FAM / BSWA", "step time")] = out[("step time ms", "fam")] / out[("step time ms", "bswa")]
        out[("FAM / BSWA", "peak memory")] = out[("peak memory MB", "fam")] / out[("peak memory MB", "bswa")]
    out.columns = pd.MultiIndex.from_tuples(out.columns, names=["quantity", "variant"])
    out.attrs["config"] = dict(zip(keys, best))
    return out


def paper_cost_table() -> pd.DataFrame:
    """Tables 13/14 with the FAM / BSWA ratios."""
    ref = paper.TABLE_13_14.frame()
    ref["FAM / BSWA memory"] = ref["FAM memory GB"] / ref["BSWA memory GB"]
    ref["FAM / BSWA time"] = ref["FAM time s"] / ref["BSWA time s"]
    return ref


def plain_log_y(ax) -> None:
    """A log y axis labelled with plain numbers (1, 2, 3, 5 x 10^k), no minor labels."""
    from matplotlib import ticker

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    ax.yaxis.set_minor_locator(ticker.NullLocator())
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 10 else f"{v:g}"))


def plot_cost(bench: pd.DataFrame):
    """Top: training-step time and peak memory against sequence length per variant (famlab bench).
    Bottom: the paper's inference memory and time (Tables 13/14) for BSWA and FAM."""
    table = cost_table(bench)
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    colors = {v: f"C{i}" for i, v in enumerate(VARIANT_ORDER)}
    if table.empty:
        for ax in axes[0]:
            ax.text(0.5, 0.5, "no bench results", ha="center", va="center", transform=ax.transAxes)
    else:
        cfg = table.attrs.get("config", {})
        shown = ", ".join(
            f"{k}={v}" for k, v in cfg.items() if k in ("d_model", "n_layers", "block_size", "batch_size")
        )
        titles = (f"famlab training-step time ({shown})", "famlab training-step peak memory (extra RSS)")
        for ax, quantity, unit, title in (
            (axes[0, 0], "step time ms", "ms", titles[0]),
            (axes[0, 1], "peak memory MB", "MB", titles[1]),
        ):
            sub = table[quantity]
            plotted = 0
            for v in sub.columns:
                ys = sub[v].to_numpy(dtype=float)
                if np.all(np.isnan(ys)):
                    continue
                style = "s--" if v.startswith("fam") else "o-"
                ax.plot(sub.index, ys, style, color=colors.get(v, "k"), label=v, ms=6)
                plotted += 1
            if not plotted:
                ax.text(0.5, 0.5, "not measured\n(bench --no-memory)", ha="center", va="center", transform=ax.transAxes)
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                ax.legend(fontsize=8, title="variant", title_fontsize=8)
                if len(sub.index) > 1:
                    ax.set_xscale("log", base=2)
                    plain_log_y(ax)
                ax.set_xticks(list(sub.index))
                ax.set_xticklabels([f"{int(t)}" for t in sub.index])
            ax.set_xlabel("sequence length T (tokens)")
            ax.set_ylabel(f"{quantity.rsplit(' ', 1)[0]} ({unit})")
            ax.set_title(title, fontsize=10)
            ax.grid(alpha=0.3, which="both")
    ref = paper_cost_table()
    for ax, what, unit in ((axes[1, 0], "memory", "GB"), (axes[1, 1], "time", "s")):
        ax.plot(ref.index, ref[f"BSWA {what} {unit}"], "o-", color=colors["bswa"], label="BSWA")
        ax.plot(ref.index, ref[f"FAM {what} {unit}"], "s--", color=colors["fam"], label="FAM")
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(ref.index))
        ax.set_xticklabels([f"{t // 1000}k" for t in ref.index])
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel(f"inference {what} ({unit})")
        ratio = (ref[f"FAM / BSWA {what}"] - 1).abs().max() * 100
        ax.set_title(f"paper {paper.TABLE_13_14.name}: inference {what} (FAM within {ratio:.1f}% of BSWA)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
