"""The ``famlab`` command line (argparse).

::

    famlab train preset=tiny model.attention=fam model.fam_len=16 train.max_steps=300
    famlab train resume=runs/tiny-fam/20260101-120000 train.max_steps=600
    famlab eval runs/tiny-fam/20260101-120000 [data.passkey_eval_lengths=[1,2,4]] [--device cuda]
    famlab data fetch [--cache-dir DIR]
    famlab sweep [run|status] SPEC [--profile tiny|paper] [--storage URL] [--workers N]
    famlab report [--storage URL] [--profile tiny|paper] [--out reports/]
    famlab claims [--profile tiny|paper] [--storage URL] [--markdown]

``famlab sweep`` has its own parser in :mod:`famlab.cli.sweep`; ``python -m famlab.cli`` runs :func:`main`.

Settings are ``key=value`` dotlist overrides (values parsed as YAML) on top of a preset
(``preset=NAME`` or a YAML path; ``famlab/config/presets``: tiny, small, paper). ``famlab train resume=X``
without ``preset=`` starts from the resumed run's own config (its ``config.yaml``). A bad setting
(unknown key, wrong type, out of range), an unreadable or foreign checkpoint (``resume=``, ``famlab eval``),
a corrupt run ``config.yaml``, an unwritable ``out_dir``, a malformed sweep spec or an unusable ``--storage`` URL
prints one ``famlab: error: ...`` line and exits with 2 (tests/test_fuzz_bad_input.py holds every command to it).

Exit statuses of ``famlab train`` (:mod:`famlab.train.stops`): 0 done; 2 bad settings or unreadable resume
checkpoint (no run directory made); 3 diverged: a non-finite training loss (deterministic: the same config
diverges again; final_metrics.json has ``"stopped"`` and ``"stop_kind": "diverged"``); 4 a checkpoint
could not be written (disk full: the previous checkpoint is kept, ``resume=`` continues; no final_metrics.json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from famlab.cli.complete import add_completion_parser, autocomplete, complete_setting, completion_code
from famlab.cli.sweep import SWEEP_ACTIONS, sweep_main, sweep_parser
from famlab.config import ConfigError, load_run_config, load_run_config_dict, load_run_config_file, preset_names
from famlab.config.metrics import SUITES
from famlab.config.model import ATTENTION_KINDS
from famlab.runs import RunDir, merge_eval

__all__ = ["SWEEP_ACTIONS", "main", "sweep_main"]

EXAMPLES_TRAIN = """examples:
  famlab train preset=tiny
  famlab train preset=tiny model.attention=bswa model.mem_segment=3 train.max_steps=300
  famlab train preset=small data.task=text data.stateful=true logger.wandb=online logger.group=ablation
  famlab train resume=runs/tiny-fam/20260101-120000 train.max_steps=600
  famlab train -m preset=tiny model.fam_len=2,4,8 seed=0,1   (a grid of 6 runs, run as a sweep)

sections and some keys (see famlab/config/run.py and famlab/config/data.py for all):
  model.*   attention=KINDS, block_size, mem_segment, fam_len, d_model, n_layers, ...
  data.*    task=passkey|text|recall, batch_size, seq_len, seq_len_schedule, seq_len_adaptive, stateful, ...
  train.*   max_steps, lr, optimizer=adamw|adafactor, schedule=constant|cosine, warmup_steps,
            grad_clip, precision, devices, strategy, accelerator, val_every, log_every,
            checkpoint_every, rsp_start_step, rsp_ramp_steps, ...
  logger.*  wandb=auto|online|offline|disabled, project, entity, group, tags, name
  seed, out_dir, name, resume

exit status: 0 done; 2 bad settings or an unreadable resume checkpoint (no run directory made);
  3 diverged: a non-finite training loss (deterministic; final_metrics.json has "stopped");
  4 a checkpoint could not be written (the previous one is kept; resume= continues)
""".replace("KINDS", "|".join(ATTENTION_KINDS))  # every attention kind, from the one registry


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="famlab",
        description="Train, evaluate and ablate BSWA and TransformerFAM models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="run `famlab COMMAND --help` for the options of a command; `famlab train KEY=VALUE ... --print-config`\n"
        "prints the resolved config without training; `famlab train -m KEY=A,B ...` runs a grid as a sweep;\n"
        'shell completion: eval "$(famlab completion bash)"',
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p_train = sub.add_parser(
        "train",
        help="train a model (a run directory with config, provenance, metrics, checkpoints)",
        description="Train a model. Each run writes <out_dir>/<name>/<YYYYmmdd-HHMMSS>/ with config.yaml, "
        "provenance.json, metrics.jsonl, checkpoints/, final_metrics.json (and wandb/).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES_TRAIN,
    )
    p_train.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help=f"preset=NAME (one of {', '.join(preset_names())}, or a YAML path) and dotlist settings",
    ).completer = complete_setting
    p_train.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p_train.add_argument(
        "-m",
        "--multirun",
        action="store_true",
        help="Hydra's multirun: KEY=A,B,C lists (and range(...)) make a grid run as a sweep (famlab sweep)",
    )
    p_train.add_argument("--workers", type=int, default=1, help="-m: worker processes (default 1)")

    p_eval = sub.add_parser(
        "eval",
        help="evaluate a run's checkpoint with its task's evaluation",
        description="Load a run's checkpoint (default: checkpoints/last.ckpt) and config, run the task's "
        "evaluation (famlab.eval.evaluate), print the table, write it as CSV into the run directory "
        "and add a summary to final_metrics.json.",
    )
    p_eval.add_argument("run_dir", help="a run directory (or a run-name directory: its newest run)")
    p_eval.add_argument(
        "overrides", nargs="*", metavar="key=value", help="settings, e.g. data.passkey_eval_samples=16"
    ).completer = complete_setting
    p_eval.add_argument("--checkpoint", help="a checkpoint file (default: <run_dir>/checkpoints/last.ckpt)")
    p_eval.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p_eval.add_argument("--out", help="CSV path (default: <run_dir>/eval.csv)")
    p_eval.add_argument(
        "--suite",
        choices=list(SUITES),
        help="run the long-context suite (famlab.eval.suite) instead: eval/<suite>.csv, a heatmap, effective lengths",
    )
    p_eval.add_argument(
        "--threshold", type=float, default=0.85, help="--suite: the score an effective length keeps (default 0.85)"
    )

    p_data = sub.add_parser("data", help="data utilities", description="Data utilities.")
    data_sub = p_data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    p_fetch = data_sub.add_parser(
        "fetch",
        help="download the text corpus into the cache",
        description="Download (or verify) the text corpus used by data.task=text.",
    )
    p_fetch.add_argument("--cache-dir", default=None, help="default: data.cache_dir (~/.cache/famlab)")
    sub.add_parser(
        "sweep",
        help="run or inspect an Optuna sweep (sweeps/*.yaml); `famlab sweep --help` for its options",
        add_help=False,
        parents=[sweep_parser(add_help=False)],  # its arguments, for shell completion (sweep_main parses them)
    )
    p_claims = sub.add_parser(
        "claims",
        help="the claims scoreboard: every paper claim a sweep checks, famlab's effect with its 95%% interval, the verdict",
        description="Read every sweep that checks a claim of the paper (specs with a `claims:` section) and "
        "print one line per claim: holds, contradicted or inconclusive, from paired differences over seeds "
        "(famlab.analysis.verdicts); `not run` where the sweep has no results.",
    )
    p_claims.add_argument("--profile", default="tiny", help="the spec profile (tiny or paper)")
    p_claims.add_argument("--storage", default=None, help="Optuna storage URL (default: each spec's SQLite store)")
    p_claims.add_argument(
        "--runs-root",
        default=None,
        help="where the default SQLite stores live (default: the nearest runs/ with sweeps/, here or in a parent)",
    )
    p_claims.add_argument("--markdown", action="store_true", help="print a Markdown table (paper, statement, effect)")
    p_claims.add_argument("--csv", default=None, help="also write the full scoreboard (every column) to this CSV")
    add_completion_parser(sub)
    sub.add_parser(
        "report",
        help="execute the analysis notebooks against the sweep results, render HTML into reports/",
        add_help=False,
    )
    return parser


def cmd_claims(args: argparse.Namespace) -> int:
    from famlab.analysis.scoreboard import claim_studies, scoreboard, scoreboard_markdown, scoreboard_text
    from famlab.sweep.urls import normalize_storage, storage_problem

    storage = normalize_storage(args.storage) if args.storage else None
    if storage and (problem := storage_problem(storage)):
        return _error(problem)
    if not claim_studies(args.profile):
        return _error(f"--profile {args.profile!r}: no spec with claims has this profile (e.g. tiny, paper)")
    board = scoreboard(args.profile, storage=storage, root=args.runs_root)
    print(scoreboard_markdown(board) if args.markdown else scoreboard_text(board))
    if args.csv:
        board.to_csv(args.csv, index=False)
    return 0


def _error(msg: str) -> int:
    print(f"famlab: error: {msg}", file=sys.stderr)
    return 2


def _split_overrides(items: list[str]) -> tuple[str | None, list[str]]:
    preset, rest = None, []
    for item in items:
        if item.startswith("preset="):
            preset = item.split("=", 1)[1] or None
        else:
            rest.append(item)
    return preset, rest


def _train_config(items: list[str]) -> Any:
    preset, overrides = _split_overrides(items)
    resume = [o.split("=", 1)[1] for o in overrides if o.startswith("resume=")]
    if preset is None and resume and resume[-1]:
        ckpt = RunDir.resolve_checkpoint(resume[-1])
        run = RunDir.of_checkpoint(ckpt)
        if run.is_run():
            return load_run_config_file(run.config_path, overrides)
        from famlab.train import CKPT_KEY, read_checkpoint

        extra = read_checkpoint(ckpt, map_location="cpu", needs=("state_dict", CKPT_KEY))[CKPT_KEY]
        if not isinstance(extra, dict) or not isinstance(extra.get("config"), dict):
            raise ConfigError(f"resume: {str(ckpt)!r} is not a famlab checkpoint (no run config in it)")
        base = extra["config"]
        return load_run_config_dict(base, overrides, str(ckpt))
    return load_run_config(preset, overrides)


def run_line(run_dir: Path, mode: str, *, done: bool = False) -> str:
    """``run: DIR (wandb: ...)``: where a run writes, and how its offline wandb run is synced."""
    if mode != "offline":
        return f"run: {run_dir} (wandb: {mode})"
    found = sorted((Path(run_dir) / "wandb").glob("offline-run-*")) if done else []
    offline = found[-1] if found else Path(run_dir) / "wandb" / "offline-run-*"
    return f"run: {run_dir} (wandb: offline; sync with: wandb sync {offline})"


def cmd_train(args: argparse.Namespace, argv: list[str]) -> int:
    from famlab.cli.multirun import has_sweep, multirun_main

    if args.multirun:
        if args.workers < 1:
            return _error(f"--workers {args.workers}: expected an integer >= 1")
        return multirun_main(args.overrides, workers=args.workers)
    try:
        cfg = _train_config(args.overrides)
    except (ValueError, FileNotFoundError) as e:
        swept = has_sweep(args.overrides)
        if swept:
            return _error(f"{swept}: several values sweep only with -m (famlab train -m {swept} ...); a list is [a,b]")
        return _error(str(e))
    if args.print_config:
        from famlab.config import run_config_to_yaml

        print(run_config_to_yaml(cfg), end="")
        return 0
    if problem := RunDir.writable_problem(cfg.out_dir, "out_dir"):  # before torch and the model
        return _error(problem)
    from famlab.train import TrainingStopped, global_rank, train, wandb_mode

    try:
        run_dir = train(cfg, argv=argv, on_start=lambda path, mode: print(run_line(path, mode), flush=True))
    except (ConfigError, FileNotFoundError) as e:
        return _error(str(e))
    except TrainingStopped as e:  # 3: diverged (deterministic), 4: a checkpoint could not be written
        print(f"famlab: error: training stopped: {' '.join(str(e).split())}", file=sys.stderr)
        return e.exit_status
    if global_rank() == 0:
        summary = RunDir(run_dir).read_final_metrics()
        shown = {k: v for k, v in summary.items() if k in ("step", "train/loss_recent_mean", "val/loss")}
        print(run_line(run_dir, "disabled" if cfg.train.fast_dev_run else wandb_mode(cfg.logger.wandb), done=True))
        if shown:
            print(
                "final: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
            )
    return 0


def summarize_eval(df: Any) -> dict[str, float]:
    """One number per metric: the ``overall`` row where the table has one (text), else the mean."""
    metrics = [c for c in ("accuracy", "digit_accuracy", "example_accuracy", "bpb") if c in df.columns]
    if "scope" in df.columns and (df["scope"] == "overall").any():
        row = df[df["scope"] == "overall"].iloc[0]
        return {m: float(row[m]) for m in metrics}
    return {m: float(df[m].mean()) for m in metrics}


SPLIT_KEYS = ("text_corpus", "text_val_docs", "text_test_docs")  # data keys that decide the text split


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from famlab.train import load_model

    if args.checkpoint and not Path(args.checkpoint).expanduser().is_file():
        return _error(f"--checkpoint {args.checkpoint!r}: no such checkpoint file")
    try:
        run = RunDir.resolve(args.run_dir)
        trained = load_run_config_file(run.config_path)
        cfg = load_run_config_file(run.config_path, args.overrides)
        model, _ = load_model(args.checkpoint or run.path)
    except (ValueError, FileNotFoundError) as e:
        return _error(str(e))
    for key in SPLIT_KEYS:  # the held-out documents are the ones training never saw: keep its split
        if cfg.data.task == "text" and getattr(cfg.data, key) != getattr(trained.data, key):
            return _error(
                f"data.{key}={getattr(cfg.data, key)!r} differs from the run's {getattr(trained.data, key)!r}: "
                "the test documents would no longer be the ones held out from training"
            )
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    from famlab.eval import evaluate

    model = model.to(device)
    if args.suite:
        return cmd_eval_suite(args, run, cfg, model, device)
    try:
        df = evaluate(
            model,
            cfg.data,
            block_size=cfg.model.block_size,
            seed=cfg.seed,
            device=device,
            progress=lambda line: print(line, flush=True),
        )
    except ValueError as e:
        return _error(str(e))
    import pandas as pd

    with pd.option_context("display.max_rows", 500, "display.width", 160):
        print(df.to_string(index=False))
    out = Path(args.out) if args.out else run.eval_path
    df.to_csv(out, index=False)
    summary = summarize_eval(df)
    plain = {"task": cfg.data.task, "checkpoint": str(args.checkpoint or run.last_checkpoint), "csv": str(out)}
    run.update_final_metrics(eval=merge_eval(run.read_final_metrics().get("eval"), plain={**plain, **summary}))
    from famlab.train.loggers import log_eval_to_wandb

    logged = log_eval_to_wandb(cfg, run, df, summary)
    if logged:
        print(f"wandb: logged to run {logged} ({run.path / 'wandb'})")
    what = "overall" if "scope" in df.columns else f"mean over {len(df)} cells"
    print(f"eval {cfg.data.task} ({what}): " + ", ".join(f"{k} {v:.4g}" for k, v in summary.items()))
    print(f"wrote {out} and {run.final_metrics_path}")
    return 0


def cmd_eval_suite(args: argparse.Namespace, run: RunDir, cfg: Any, model: Any, device: str) -> int:
    from famlab.eval.suite import report_lines, run_suite, write_suite

    try:
        result = run_suite(
            model,
            cfg.data,
            args.suite,
            block_size=cfg.model.block_size,
            seed=cfg.seed,
            device=device,
            progress=lambda line: print(line, flush=True),
            threshold=args.threshold,
        )
    except ValueError as e:
        return _error(str(e))
    csv, png = write_suite(result, run.eval_dir)
    print("\n".join(report_lines(result)))
    files = {"csv": str(csv), **({"heatmap": str(png)} if png else {})}
    sections = {member: {**summary, **files} for member, summary in result.summary.items()}
    run.update_final_metrics(eval=merge_eval(run.read_final_metrics().get("eval"), suite=sections))
    from famlab.train.loggers import log_suite_to_wandb

    logged = log_suite_to_wandb(cfg, run, result.suite, result.table, sections, png)
    if logged:
        print(f"wandb: logged to run {logged} ({run.path / 'wandb'})")
    print(f"wrote {csv}{f', {png}' if png else ''} and {run.final_metrics_path}")
    return 0


def cmd_data(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.data_command != "fetch":
        parser.parse_args(["data", "--help"])
        return 2
    from famlab.config import DataConfig
    from famlab.data.text import fetch

    path = fetch(args.cache_dir or DataConfig().cache_dir, quiet=False)
    print(f"text corpus ready in {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``famlab`` script; returns the exit status (2 for bad settings)."""
    from_sys = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    autocomplete(parser)  # a shell asking for completions ($_ARGCOMPLETE): answer and exit
    if argv[:1] == ["sweep"]:
        return sweep_main(argv[1:])
    if argv[:1] == ["report"]:  # its own parser: famlab.report
        from famlab.report import main as report_main

        return report_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "train":
        return cmd_train(args, list(sys.argv) if from_sys else ["famlab", *argv])
    if args.command == "eval":
        return cmd_eval(args)
    if args.command == "claims":
        return cmd_claims(args)
    if args.command == "completion":
        print(completion_code(args.shell))
        return 0
    return cmd_data(args, parser)
