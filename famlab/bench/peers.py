"""Peer benchmark: famlab's training step next to public implementations of the same ideas.

Run with ``make bench-peers`` (``python -m famlab.bench.peers``; ``--help`` lists the options).
The peers are installed only for this benchmark: ``pip install -e '.[peers]'``. A peer that is
not installed is reported with that hint and its comparison skipped.

Comparisons, at the model of ``famlab.bench`` (4 layers, d_model=256, 4 heads of 64, vocab 256,
feed-forward 4d, B=256, L_F=16; T=4096, batch 2, fp32), each pair at a matched parameter count
and segment length:

* famlab ``bswa`` (m=1) vs ``local-attention``'s ``LocalTransformer`` (window = B,
  ``look_backward=1``, ``exact_windowsize=False``: each block's tokens attend the previous block
  and their own block causally, the BSWA pattern with m=1). Its built-in embedding adds an
  absolute position table of ``max_seq_len x d`` and an untied head, so its layer stack
  (``num_tokens=None``) runs between a token embedding, a final LayerNorm and a tied head like
  famlab's. Its attention is einsum-based (the package has no SDPA path).
* famlab ``fam`` with ``mem_segment=0`` vs ``recurrent-memory-transformer-pytorch``'s RMT
  (segment length = B, ``num_memory_tokens`` = L_F, ``RecurrentMemoryTransformerWrapper`` over
  the sequence, gradients through all segments; ``use_flash_attn=True`` (SDPA), rotary over the
  whole head instead of absolute positions, no XL memories).
* famlab ``infini`` with ``mem_segment=0`` vs ``infini-transformer-pytorch``'s ``InfiniTransformer`` (segment
  length = B, run segment by segment with gradients through all memories; see :mod:`famlab.bench.peer_infini`).
* famlab ``rmt`` (``rmt_mem_tokens`` = L_F, ``mem_segment=0``) vs the same RMT (pair ``rmt-matched``): the
  same method on both sides, M memory tokens read before and written after each segment of B tokens,
  gradients through all segments.
* famlab ``full`` vs ``x-transformers``' ``TransformerWrapper(Decoder)`` (``attn_flash=True``,
  rotary over the whole head, no absolute positions, tied embedding, bias-free FF as famlab's).
* famlab ``block_recurrent`` vs ``block-recurrent-transformer-pytorch``: matched as :mod:`.peer_models` says.

Hyper-connections are off in every peer (``num_residual_streams=1``); dropout is 0. Each model's
parameter count and the ratio to its famlab counterpart are printed.

Throughput, as ``famlab.bench`` measures it: one training step is ``zero_grad``, forward to logits,
cross-entropy against random targets, ``backward`` (no optimizer), in ``train()`` mode; all models
in one process, round-robin rounds (warm-up rounds, then timed rounds, each round one step of every
model); tokens/s = batch * T / the median step time (``--stat min``: the minimum).

Targets (PASS/FAIL): famlab bswa >= 1.25x local-attention; famlab fam (m=0) >= 1.25x RMT; famlab infini
(m=0) >= 1.25x infini-transformer-pytorch; famlab rmt >= 1.0x RMT; famlab full >= 1.0x x-transformers.
Results: a Markdown table on stdout and in
``bench/results/peers_latest.md``, and JSON in ``bench/results/peers_<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from famlab.allocator import reuse_freed_memory
from famlab.bench.common import (
    add_options,
    base_config,
    benchmark_parser,
    code_line,
    code_version,
    fill_defaults,
    format_or,
    machine_info,
    machine_line,
    name_list,
    parse_and_apply_threads,
    report_results,
    target_status,
    timestamp,
)
from famlab.bench.peer_infini import InfiniLM
from famlab.bench.peer_models import BlockRecurrentLM, LocalAttentionLM, stack_shape, x_transformers_lm
from famlab.config import ModelConfig
from famlab.model import FamLM

INSTALL_HINT = "pip install -e '.[peers]'"


class Pair:
    """One comparison: a famlab variant, a peer, the target ratio of their tokens/s."""

    def __init__(self, name: str, module: str, dist: str, famlab_label: str, famlab_title: str, target: float):
        self.name, self.module, self.dist = name, module, dist
        self.famlab_label, self.famlab_title, self.target = famlab_label, famlab_title, target


RMT_PACKAGE = ("recurrent_memory_transformer_pytorch", "recurrent-memory-transformer-pytorch")  # module, dist
INFINI_PACKAGE = ("infini_transformer_pytorch", "infini-transformer-pytorch")
PAIRS = {
    "local-attention": Pair(
        "local-attention", "local_attention", "local-attention", "famlab-bswa", "famlab bswa", 1.25
    ),
    "rmt": Pair("rmt", *RMT_PACKAGE, "famlab-fam-m0", "famlab fam (m=0)", 1.25),
    "infini": Pair("infini", *INFINI_PACKAGE, "famlab-infini-m0", "famlab infini (m=0)", 1.25),
    "rmt-matched": Pair("rmt-matched", *RMT_PACKAGE, "famlab-rmt", "famlab rmt", 1.0),  # the same method
    "x-transformers": Pair("x-transformers", "x_transformers", "x-transformers", "famlab-full", "famlab full", 1.0),
    "block-recurrent": Pair(
        "block-recurrent",
        "block_recurrent_transformer_pytorch",
        "block-recurrent-transformer-pytorch",
        "famlab-block-recurrent",
        "famlab block_recurrent",
        1.0,
    ),
}


def peer_installed(pair: Pair) -> bool:
    return importlib.util.find_spec(pair.module) is not None


def peer_version(pair: Pair) -> str | None:
    try:
        return importlib.metadata.version(pair.dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------------------------
# models: every builder returns a module whose forward(tokens [b, T]) gives logits [b, T, vocab]


def famlab_config(base: ModelConfig, pair: str) -> ModelConfig:
    if pair == "local-attention":
        return base.replace(attention="bswa")
    if pair == "rmt":
        return base.replace(attention="fam", mem_segment=0)
    if pair == "block-recurrent":  # the peer's multi-query attention and GEGLU width
        return base.replace(attention="block_recurrent", n_kv_heads=1, ff="swiglu", d_ff=int(base.d_model * 8 / 3))
    if pair == "infini":
        return base.replace(attention="infini", mem_segment=0)
    if pair == "rmt-matched":  # as many memory tokens as the peer's (L_F)
        return base.replace(attention="rmt", mem_segment=0, rmt_mem_tokens=base.fam_len)
    return base.replace(attention="full")


class RMTLM(nn.Module):
    """``RecurrentMemoryTransformerWrapper`` over the whole sequence: logits of all segments."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        from recurrent_memory_transformer_pytorch import RecurrentMemoryTransformer, RecurrentMemoryTransformerWrapper

        sizes = dict(num_tokens=cfg.vocab_size, dim_head=cfg.head_dim, num_memory_tokens=cfg.fam_len)
        # SDPA attention, rotary over the whole head instead of absolute positions, no XL memories
        flags = dict(use_flash_attn=True, abs_pos_emb=False, rotary_pos_emb=True, use_xl_memories=False)
        rmt = RecurrentMemoryTransformer(cfg.d_model, seq_len=cfg.block_size, **sizes, **flags, **stack_shape(cfg))
        self.wrapper = RecurrentMemoryTransformerWrapper(rmt)

    def forward(self, tokens: Tensor) -> Tensor:
        logits, _ = self.wrapper(tokens)
        return logits


def build_peer(pair: str, cfg: ModelConfig, seq_len: int) -> nn.Module:
    """The peer of ``pair`` at the shape of ``cfg`` (a famlab config: sizes, B, m, L_F)."""
    if pair == "local-attention":
        return LocalAttentionLM(cfg.replace(attention="bswa"), seq_len)
    if pair == "rmt":
        return RMTLM(cfg.replace(attention="fam"))
    if pair == "infini":
        return InfiniLM(cfg)
    if pair == "rmt-matched":
        return RMTLM(cfg)  # num_memory_tokens = cfg.fam_len = famlab rmt's rmt_mem_tokens
    if pair == "x-transformers":
        return x_transformers_lm(cfg, seq_len)
    if pair == "block-recurrent":
        return BlockRecurrentLM(cfg.replace(attention="block_recurrent"), seq_len)
    raise ValueError(f"unknown peer {pair!r}: expected one of {', '.join(PAIRS)}")


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def ignore_peer_warnings() -> None:
    """Inside ``warnings.catch_warnings()``: hide the peers' deprecation noise (RMT enters
    ``torch.backends.cuda.sdp_kernel`` on every attention call)."""
    warnings.filterwarnings("ignore", message=r".*sdp_kernel.*", category=FutureWarning)


def train_step(model: nn.Module, inputs: Tensor, targets: Tensor) -> float:
    model.zero_grad(set_to_none=True)
    logits = model(inputs)
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    loss.backward()
    return float(loss.detach())


# ----------------------------------------------------------------------------------------------
# the benchmark


def build_models(args: argparse.Namespace, pairs: list[str]) -> dict[str, tuple[str, nn.Module]]:
    """label -> (pair, model), famlab model then peer, in pair order."""
    base = base_config(args)
    models: dict[str, tuple[str, nn.Module]] = {}
    for pair in pairs:
        cfg = famlab_config(base, pair)
        torch.manual_seed(args.seed)
        models[PAIRS[pair].famlab_label] = (pair, FamLM(cfg).train())
        torch.manual_seed(args.seed)
        models[pair] = (pair, build_peer(pair, cfg, args.seq_len).train())
    return models


def time_round_robin(
    models: dict[str, nn.Module], inputs: Tensor, targets: Tensor, warmup: int, iters: int, step: Callable = train_step
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {n: [] for n in models}
    for rnd in range(warmup + iters):
        for name, model in models.items():
            t0 = time.perf_counter()
            step(model, inputs, targets)
            if rnd >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    mach = machine_info()
    mach["malloc"] = reuse_freed_memory()  # freed activations reused, not page-faulted in every step
    present = [p for p in args.pair_list if peer_installed(PAIRS[p])]
    missing = [p for p in args.pair_list if p not in present]
    for p in missing:
        print(f"{PAIRS[p].dist} is not installed: {INSTALL_HINT} (skipping the {p} comparison)", file=sys.stderr)
    b, T = args.batch_size, args.seq_len
    data = torch.randint(0, args.vocab_size, (b, T + 1), generator=torch.Generator().manual_seed(args.seed))
    inputs, targets = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    with warnings.catch_warnings():
        ignore_peer_warnings()
        models = build_models(args, present)
        times = time_round_robin({n: m for n, (_, m) in models.items()}, inputs, targets, args.warmup, args.iters)

    rows = []
    for name, (pair, model) in models.items():
        med, mn = statistics.median(times[name]), min(times[name])
        step = mn if args.stat == "min" else med
        rows.append(
            {
                "name": name,
                "pair": pair,
                "kind": "famlab" if name.startswith("famlab-") else "peer",
                "version": None if name.startswith("famlab-") else peer_version(PAIRS[pair]),
                "params": num_params(model),
                "step_times_s": times[name],
                "step_time_median_s": med,
                "step_time_min_s": mn,
                "tokens_per_s": b * T / step,
            }
        )
    by_name = {r["name"]: r for r in rows}
    targets = {}
    for pair in args.pair_list:
        spec = PAIRS[pair]
        title = f"{spec.famlab_title} >= {spec.target:.2f}x {pair}"
        if pair in missing:
            targets[pair] = {
                "name": title,
                "threshold": spec.target,
                "value": None,
                "value_text": f"not installed ({INSTALL_HINT})",
                "status": "n/a",
            }
            continue
        ours, peer = by_name[spec.famlab_label], by_name[pair]
        ratio = ours["tokens_per_s"] / peer["tokens_per_s"]
        peer["params_vs_famlab"] = peer["params"] / ours["params"]
        ours["params_vs_famlab"] = 1.0
        ours["speed_vs_peer"] = ratio
        targets[pair] = {
            "name": title,
            "threshold": spec.target,
            "value": ratio,
            "value_text": f"{ratio:.3f}x ({ours['tokens_per_s']:.0f} vs {peer['tokens_per_s']:.0f} tokens/s; "
            f"params {peer['params_vs_famlab']:.3f}x)",
            "status": target_status(ratio >= spec.target),
        }
    mach["loadavg_end"] = list(os.getloadavg())
    base = base_config(args)
    config = {k: getattr(args, k) for k in ("seq_len", "batch_size", "warmup", "iters", "quick", "seed", "stat")}
    config.update({k: getattr(base, k) for k in ("d_model", "n_layers", "n_heads", "vocab_size", "block_size")})
    config.update(mem_segment=base.mem_segment, fam_len=base.fam_len, ff_dim=base.ff_dim, dtype="float32")
    return {
        "timestamp": timestamp(),
        "machine": mach,
        "code": code_version(),
        "config": config,
        "missing": {p: INSTALL_HINT for p in missing},
        "rows": rows,
        "targets": targets,
    }


def render_markdown(res: dict[str, Any]) -> str:
    c, mach = res["config"], res["machine"]
    lines = [
        f"# famlab peers bench {res['timestamp']}",
        "",
        f"Model: {c['n_layers']} layers, d_model={c['d_model']}, {c['n_heads']} heads, vocab {c['vocab_size']}, "
        f"FF {c['ff_dim']}; T={c['seq_len']}, batch={c['batch_size']}, B={c['block_size']} "
        f"(bswa m={c['mem_segment']}, fam m=0), L_F={c['fam_len']}, fp32. Training step = forward + cross-entropy + "
        f"backward; {c['stat']} of {c['iters']} timed rounds after {c['warmup']} warm-up rounds, models round-robin.",
        machine_line(mach, malloc=True),
        code_line(res["code"]),
        "",
        "| model | version | params | params vs famlab | median ms | min ms | tokens/s | famlab / peer |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['name']} | {r['version'] or ''} | {r['params']:,} | {r.get('params_vs_famlab', 1.0):.3f} | "
            f"{r['step_time_median_s'] * 1e3:.0f} | {r['step_time_min_s'] * 1e3:.0f} | {r['tokens_per_s']:.0f} | "
            f"{format_or(r.get('speed_vs_peer'), '.3f', '')} |"
        )
    for pair, hint in res["missing"].items():
        lines.append(f"| {pair} | not installed: `{hint}` | | | | | | |")
    lines += ["", "Targets:", ""]
    for t in res["targets"].values():
        lines.append(f"* {t['name']}: {t['value_text']} -> **{t['status']}**")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = benchmark_parser("famlab.bench.peers", __doc__, "smoke test: T=1024, fewer rounds")
    p.add_argument("--pairs", default=",".join(PAIRS), help=f"comma list of {', '.join(PAIRS)}")
    sizes = ("seq_len", "batch_size", "d_model", "n_layers", "n_heads", "vocab_size", "block_size", "mem_segment")
    changes = {
        "block_size": {"help": "B: famlab's block, local-attention's window, RMT's segment"},
        "mem_segment": {"help": "m of famlab bswa (= local-attention's look_backward)"},
        "fam_len": {"help": "L_F of famlab fam (= RMT's memory tokens)"},
        "iters": {"help": "timed rounds (default 5; --quick 2)"},
        "out_dir": {"help": "where the JSON and peers_latest.md go ('' = nowhere)"},
    }
    add_options(p, (*sizes, "fam_len", "threads", "warmup", "iters", "stat", "seed", "out_dir", "strict"), **changes)
    args = p.parse_args(argv)
    fill_defaults(args, {"seq_len": (4096, 1024), "warmup": (2, 1), "iters": (5, 2)})
    args.pair_list = name_list(p, args.pairs, PAIRS, "pair")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_and_apply_threads(parse_args, argv)
    return report_results(run_bench(args), render_markdown, args, json_prefix="peers_", latest="peers_latest.md")


if __name__ == "__main__":
    main()
