"""PassKey demo: tiny BSWA (m=0, m=1) and FAM (m=0) trained on PassKey, evaluated past the training length.

``make passkey-demo`` (``python -m famlab.experiments.passkey_demo [--quick] [--out-dir DIR]``) trains
the three variants with one shared recipe (the preset ``famlab/config/presets/passkey_demo.yaml``, see
``docs/passkey_demo.md`` for why each setting is what it is), each through famlab's own
:func:`famlab.train.train` (so every run has its run directory, config, provenance and metrics),
then evaluates each with :func:`famlab.eval.evaluate` (streaming, greedy decoding) at 1x, 4x and
16x the longest training filler, in ``--depth-buckets`` key-depth buckets. It prints a Markdown
table (variant x length: accuracy and digit accuracy, plus each BSWA model's receptive field in
tokens, about ``n_layers * (m+1) * B``) and writes ``<out-dir>/<YYYYmmdd-HHMMSS>/results.md`` and
``results.json``; the runs live under ``<out-dir>/<YYYYmmdd-HHMMSS>/<variant>/``.

Lengths: the training examples are at most ``seq_len + 1`` bytes (prompt + answer), of which
``fixed_len`` bytes are the key sentence, question and answer; the rest is filler. The evaluation
length at multiple k is ``fixed_len + k * (seq_len + 1 - fixed_len)`` bytes, so the filler (the
distance the key must be carried) is k times the longest training filler.

``--quick``: a few optimizer steps per model and a small evaluation (a smoke test of the
pipeline, not a result). ``--set key=value`` (repeatable) adds a setting to every run. ``--jobs N``
trains N variants at once, each in its own process with ``--threads`` threads (``make passkey-demo``
uses 2 on a 2-core machine: FAM on one core, the two BSWA models one after the other on the other).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PRESET = "passkey_demo"
MULTIPLES = (1, 4, 16)


@dataclass(frozen=True)
class Variant:
    key: str  # run name and JSON key
    label: str  # table label
    overrides: tuple[str, ...]
    train: bool = True  # False: evaluate the preset's initial weights (a pretrained base) without training


VARIANTS = (
    Variant("bswa-m0", "BSWA m=0", ("model.attention=bswa", "model.mem_segment=0")),
    Variant("bswa-m1", "BSWA m=1", ("model.attention=bswa", "model.mem_segment=1")),
    Variant("fam-m0", "FAM m=0", ("model.attention=fam", "model.mem_segment=0")),
    Variant("fam-m1", "FAM m=1", ("model.attention=fam", "model.mem_segment=1")),
    # zero-shot: the base's own weights (model.init_from), no fine-tuning
    Variant("full-base", "full attention, base (no fine-tuning)", ("model.attention=full",), train=False),
    Variant("bswa-m1-base", "BSWA m=1, base (no fine-tuning)", ("model.attention=bswa", "model.mem_segment=1"), False),
)
BY_KEY = {v.key: v for v in VARIANTS}
# the variants each preset runs by default (--variants overrides)
PRESET_VARIANTS = {
    "passkey_demo": ("bswa-m0", "bswa-m1", "fam-m0"),
    "smollm2_passkey": ("full-base", "bswa-m1-base", "bswa-m1", "fam-m1"),
}
PRESET_MULTIPLES = {"passkey_demo": (1, 4, 16), "smollm2_passkey": (1, 4)}

# --quick: the same pipeline in seconds (a handful of steps, short sequences, a small evaluation)
QUICK = (
    "train.max_steps=3",
    "train.warmup_steps=1",
    "train.rsp_start_step=1",
    "train.rsp_ramp_steps=1",
    "train.log_every=1",
    "train.checkpoint_every=0",
    "data.batch_size=4",
    "data.seq_len=128",
    "data.seq_len_schedule=[]",
    "model.block_size=16",
)
QUICK_EVAL = {"depth_buckets": 2, "samples": 2}


def receptive_field(model_cfg: Any) -> int | None:
    """Tokens a BSWA/TXL model can reach back: about n_layers * (m+1) * B; None (unbounded) otherwise."""
    if model_cfg.attention in ("bswa", "txl") or (model_cfg.attention == "fam" and not model_cfg.effective_fam_len):
        return model_cfg.n_layers * (model_cfg.mem_segment + 1) * model_cfg.block_size
    return None


def eval_lengths(data_cfg: Any, multiples: tuple[int, ...] = MULTIPLES, vocab_size: int = 256) -> tuple[int, list[int]]:
    """(longest training filler, evaluation lengths in tokens with k times that filler)."""
    from famlab.data.passkey import pieces_for

    fixed = pieces_for(data_cfg, vocab_size).fixed_len("9" * data_cfg.passkey_key_digits)
    filler = data_cfg.seq_len + 1 - fixed
    return filler, [fixed + k * filler for k in multiples]


def run_variant(
    variant: Variant,
    overrides: list[str],
    out: Path,
    *,
    seed: int,
    eval_kw: dict[str, int],
    preset: str = PRESET,
    multiples: tuple[int, ...] = MULTIPLES,
) -> dict:
    from famlab.config import load_run_config
    from famlab.eval import evaluate
    from famlab.runs import RunDir
    from famlab.train import build_model, load_model, resolve_pretrained, train

    cfg = load_run_config(
        preset, [*variant.overrides, *overrides, f"out_dir={out}", f"name={variant.key}", f"seed={seed}"]
    )
    t0 = time.time()
    if variant.train:
        run_dir = train(cfg, argv=[*sys.argv, f"# variant {variant.key}"])
        model, cfg = load_model(run_dir)
    else:  # the base as it is: no run, results under out/<variant>/
        cfg = resolve_pretrained(cfg)
        import torch

        torch.manual_seed(cfg.seed)  # weights not taken from init_from (a FAM prompt) are reproducible
        model = build_model(dataclasses.replace(cfg, lora=dataclasses.replace(cfg.lora, rank=0))).eval()
        run_dir = out / variant.key
        run_dir.mkdir(parents=True, exist_ok=True)
    train_s = time.time() - t0
    filler, lengths = eval_lengths(cfg.data, multiples, cfg.model.vocab_size)
    t1 = time.time()
    df = evaluate(model, cfg.data, block_size=cfg.model.block_size, seed=seed, lengths=lengths, **eval_kw)
    eval_s = time.time() - t1
    run = RunDir(run_dir)
    df.to_csv(run.eval_path, index=False)
    losses = [r["train/loss"] for r in run.read_metrics() if "train/loss" in r] if variant.train else []
    tail = losses[-10:]
    results = []
    for k, length in zip(multiples, lengths):
        cell = df[df.length == length]
        n = int(cell.n.sum())
        results.append(
            {
                "multiple": k,
                "length": int(length),
                "filler": int(k * filler),
                "n": n,
                "accuracy": float((cell.accuracy * cell.n).sum() / n),
                "digit_accuracy": float((cell.digit_accuracy * cell.n).sum() / n),
                "by_depth": [
                    {
                        "depth_lo": float(r.depth_lo),
                        "depth_hi": float(r.depth_hi),
                        "n": int(r.n),
                        "accuracy": float(r.accuracy),
                        "digit_accuracy": float(r.digit_accuracy),
                    }
                    for r in cell.itertuples()
                ],
            }
        )
    return {
        "key": variant.key,
        "label": variant.label,
        "attention": cfg.model.attention,
        "mem_segment": cfg.model.mem_segment,
        "fam_len": cfg.model.effective_fam_len,
        "block_size": cfg.model.block_size,
        "n_layers": cfg.model.n_layers,
        "receptive_field": receptive_field(cfg.model),
        "tokenizer": cfg.data.tokenizer,
        "run_dir": str(run_dir),
        "train_steps": cfg.train.max_steps if variant.train else 0,
        "train_wall_s": round(train_s, 1),
        "eval_wall_s": round(eval_s, 1),
        "final_train_loss": (sum(tail) / len(tail)) if tail else None,
        "results": results,
    }


def _variant_job(key: str, threads: int, *args, **kwargs) -> dict:
    """``run_variant`` in a worker process of ``--jobs``: its own torch threads, quiet Lightning."""
    import torch

    from famlab.train import quiet_lightning

    if threads:
        torch.set_num_threads(threads)
    quiet_lightning()
    return run_variant(BY_KEY[key], *args, **kwargs)


def run_variants(keys: list[str], jobs: int, threads: int, *args, **kwargs) -> list[dict]:
    """Every variant's results, in ``keys`` order; with ``jobs`` > 1 in that many processes at once,
    FAM variants (the slowest per step) started first so the others fill the remaining processes."""
    if jobs <= 1:
        out = []
        for key in keys:
            print(f"== {BY_KEY[key].label}: {'training' if BY_KEY[key].train else 'evaluating'}", flush=True)
            out.append(run_variant(BY_KEY[key], *args, **kwargs))
        return out
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    order = sorted(keys, key=lambda k: "fam" not in k)  # stable: FAM first, then the given order
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {}
        for key in order:
            print(f"== {BY_KEY[key].label}: queued ({jobs} processes)", flush=True)
            futures[key] = pool.submit(_variant_job, key, threads, *args, **kwargs)
        return [futures[key].result() for key in keys]


def _cell(r: dict) -> str:
    return f"{r['accuracy']:.2f} ({r['digit_accuracy']:.2f})"


def markdown(report: dict) -> str:
    """The results as Markdown: the main table (variant x length) and accuracy by key depth."""
    variants = report["variants"]
    first = variants[0]["results"]
    head = [f"{r['multiple']}x ({r['length']} tok)" for r in first]
    lines = [
        "| variant | receptive field (tokens) | " + " | ".join(head) + " |",
        "|---|---|" + "---|" * len(head),
    ]
    for v in variants:
        unbounded = "unbounded (FAM)" if v["attention"] == "fam" else "unbounded (full attention)"
        rf = str(v["receptive_field"]) if v["receptive_field"] is not None else unbounded
        lines.append(f"| {v['label']} | {rf} | " + " | ".join(_cell(r) for r in v["results"]) + " |")
    lines += [
        "",
        "Cells: accuracy (all digits right), in brackets digit accuracy; "
        f"{first[0]['n']} prompts per cell, key depth uniform. Lengths are prompt + answer tokens "
        f"({report.get('tokenizer', 'bytes')}); the filler is {', '.join(str(r['filler']) for r in first)} tokens "
        "(1x = the longest training filler).",
        "",
        "Accuracy by key depth (0 = key right after the start, 1 = just before the question):",
        "",
    ]
    depths = [f"{d['depth_lo']:.2f}-{d['depth_hi']:.2f}" for d in first[0]["by_depth"]]
    lines += ["| variant | length | " + " | ".join(depths) + " |", "|---|---|" + "---|" * len(depths)]
    for v in variants:
        for r in v["results"]:
            cells = " | ".join(f"{d['accuracy']:.2f}" for d in r["by_depth"])
            lines.append(f"| {v['label']} | {r['multiple']}x | {cells} |")
    lines += [
        "",
        "| variant | steps | train wall (s) | eval wall (s) | final train loss | run dir |",
        "|---|---|---|---|---|---|",
    ]
    for v in variants:
        loss = "n/a" if v["final_train_loss"] is None else f"{v['final_train_loss']:.3f}"
        lines.append(
            f"| {v['label']} | {v['train_steps']} | {v['train_wall_s']} | {v['eval_wall_s']} | {loss} | `{v['run_dir']}` |"
        )
    lines += ["", f"Total wall time: {report['wall_time_s']:.0f} s{' (--quick)' if report['quick'] else ''}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m famlab.experiments.passkey_demo",
        description="Train BSWA and FAM variants of a preset on PassKey; evaluate at multiples of the training filler.",
    )
    parser.add_argument("--preset", default=PRESET, help=f"the shared recipe (default {PRESET}; smollm2_passkey)")
    parser.add_argument(
        "--variants", default=None, help=f"comma-separated, from: {', '.join(BY_KEY)} (default: the preset's)"
    )
    parser.add_argument("--multiples", default=None, help="comma-separated filler multiples (default: the preset's)")
    parser.add_argument("--quick", action="store_true", help="a few steps per model (a smoke test, not a result)")
    parser.add_argument("--out-dir", default=None, help="results go to OUT_DIR/<YYYYmmdd-HHMMSS>/ (runs/<preset>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=None, help="prompts per (length, depth bucket) cell")
    parser.add_argument("--depth-buckets", type=int, default=None, help="key-depth buckets per length")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per run (0: torch's default)")
    parser.add_argument("--jobs", type=int, default=1, help="variants trained at once, each in its own process")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting for every run")
    args = parser.parse_args(argv)
    keys = args.variants.split(",") if args.variants else PRESET_VARIANTS.get(args.preset, PRESET_VARIANTS[PRESET])
    unknown = [k for k in keys if k not in BY_KEY]
    if unknown:
        parser.error(f"--variants {','.join(unknown)} is not allowed: expected names from {', '.join(BY_KEY)}")
    multiples = (
        tuple(int(k) for k in args.multiples.split(","))
        if args.multiples
        else PRESET_MULTIPLES.get(args.preset, MULTIPLES)
    )
    out_dir = args.out_dir or f"runs/{args.preset}"

    import torch

    from famlab.train import quiet_lightning

    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_lightning()
    t0 = time.time()
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out_dir).expanduser() / stamp
    for i in range(1, 1000):
        if not out.exists():
            break
        out = Path(out_dir).expanduser() / f"{stamp}-{i}"
    out.mkdir(parents=True)
    overrides = [*(QUICK if args.quick else ()), *args.set]
    eval_kw = dict(QUICK_EVAL) if args.quick else {}
    if args.samples:
        eval_kw["samples"] = args.samples
    if args.depth_buckets:
        eval_kw["depth_buckets"] = args.depth_buckets
    variants = run_variants(
        keys,
        args.jobs,
        args.threads,
        overrides,
        out,
        seed=args.seed,
        eval_kw=eval_kw,
        preset=args.preset,
        multiples=multiples,
    )
    report = {
        "quick": bool(args.quick),
        "preset": args.preset,
        "tokenizer": variants[0]["tokenizer"] if variants else "bytes",
        "overrides": overrides,
        "seed": args.seed,
        "multiples": list(multiples),
        "out_dir": str(out),
        "time": stamp,
        "threads": torch.get_num_threads(),
        "jobs": args.jobs,
        "wall_time_s": round(time.time() - t0, 1),
        "variants": variants,
    }
    text = markdown(report)
    (out / "results.md").write_text(f"# PassKey: {args.preset} ({stamp})\n\n" + text)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(text)
    print(f"wrote {out / 'results.md'} and {out / 'results.json'}")
    return report


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
