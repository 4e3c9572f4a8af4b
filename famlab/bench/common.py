"""What the three benchmarks share: their command-line skeleton (options, ``--quick`` defaults, lists of
names), the machine and code-version records, the process memory high-water helpers, fresh-process runs,
and writing the results (Markdown on stdout and in ``<out_dir>/<latest>``, JSON beside it, ``--strict``)."""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import hashlib
import importlib
import json
import multiprocessing
import os
import platform
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from famlab.config import ModelConfig
from famlab.provenance import git_info

# ----------------------------------------------------------------------------------------------
# command line

# option (flag --seq-len for seq_len) -> argparse keywords; a benchmark picks the options it has, in its
# own order, and may change a keyword (its own default or help)
OPTIONS: dict[str, dict[str, Any]] = {
    "seq_len": {"type": int, "default": None, "help": "T (default 4096; --quick 1024)"},
    "batch_size": {"type": int, "default": 2},
    "d_model": {"type": int, "default": 256},
    "n_layers": {"type": int, "default": 4},
    "n_heads": {"type": int, "default": 4},
    "vocab_size": {"type": int, "default": 256},
    "block_size": {"type": int, "default": 256},
    "mem_segment": {"type": int, "default": 1},
    "fam_len": {"type": int, "default": 16},
    "threads": {"type": int, "default": None, "help": "torch threads (default: torch's choice)"},
    "warmup": {"type": int, "default": None, "help": "warm-up rounds (default 2; --quick 1)"},
    "iters": {"type": int, "default": None, "help": "timed rounds (default 7; --quick 2)"},
    "stat": {
        "choices": ("median", "min"),
        "default": "median",
        "help": "step-time statistic behind tokens/s (min resists a busy machine)",
    },
    "seed": {"type": int, "default": 0},
    "out_dir": {"default": "bench/results", "help": "where the JSON and latest.md go ('' = nowhere)"},
    "strict": {"action": "store_true", "help": "exit 1 if a target fails"},
}


def benchmark_parser(prog: str, doc: str, quick_help: str) -> argparse.ArgumentParser:
    """The parser of a benchmark module: its docstring's first paragraph, then ``--quick``."""
    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=quick_help)
    return p


def add_options(p: argparse.ArgumentParser, names: Iterable[str], **changes: dict[str, Any]) -> None:
    """Add the shared options ``names`` (keys of :data:`OPTIONS`) in that order; ``changes[name]``
    overrides some of an option's keywords."""
    for name in names:
        p.add_argument("--" + name.replace("_", "-"), **{**OPTIONS[name], **changes.get(name, {})})


def fill_defaults(args: argparse.Namespace, defaults: dict[str, tuple[Any, Any]]) -> None:
    """Options left at None get their (full, --quick) default."""
    for key, (full, small) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, small if args.quick else full)


def check_name(p: argparse.ArgumentParser, name: str, known: Iterable[str], what: str) -> str:
    """``name`` if it is one of ``known``, else the parser's usage error (exit 2)."""
    known = list(known)
    if name not in known:
        p.error(f"unknown {what} {name!r}: expected one of {', '.join(known)}")
    return name


def name_list(p: argparse.ArgumentParser, text: str, known: Iterable[str], what: str) -> list[str]:
    """A comma list of names, each one of ``known`` (else the parser's usage error)."""
    known = list(known)
    return [check_name(p, x.strip(), known, what) for x in text.split(",") if x.strip()]


def base_config(args: argparse.Namespace) -> ModelConfig:
    """The benchmarks' model from the size options; nothing random changes the work (no random
    position offset, no random state passing)."""
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


# ----------------------------------------------------------------------------------------------
# machine, code version


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


def machine_line(mach: dict[str, Any], malloc: bool = False) -> str:
    """The Markdown reports' ``Machine:`` line (with ``malloc``: the allocator setting in effect)."""
    line = (
        f"Machine: {mach['cpu_model']}, {mach['usable_cores']} usable cores, torch {mach['torch']}, "
        f"{mach['torch_threads']} threads, load avg {mach['loadavg_start'][0]:.2f} -> {mach['loadavg_end'][0]:.2f}"
    )
    return line + (f", malloc {mach.get('malloc', 'default')} (FAMLAB_MALLOC)." if malloc else ".")


def source_sha256(module: str = "famlab.model") -> str:
    """First 16 hex digits of the SHA-256 of a module's source as run: its file, or for a package every
    ``.py`` file below it (sorted by path, each path hashed with its bytes)."""
    path = Path(importlib.import_module(module).__file__)
    if path.name != "__init__.py":
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    digest = hashlib.sha256()
    for src in sorted(path.parent.rglob("*.py")):
        digest.update(src.relative_to(path.parent).as_posix().encode() + b"\0" + src.read_bytes())
    return digest.hexdigest()[:16]


def code_version() -> dict[str, Any]:
    """The commit measured, whether the tree was dirty, and a hash of the model's source as run."""
    info = git_info()
    return {"commit": info["commit"], "dirty": info["dirty"], "model_py_sha256": source_sha256("famlab.model")}


def code_line(code: dict[str, Any]) -> str:
    commit = (code["commit"] or "unknown")[:10]
    dirty = " with uncommitted changes" if code["dirty"] else ""
    return f"Code: commit {commit}{dirty}, famlab/model.py sha256 {code['model_py_sha256']}."


# ----------------------------------------------------------------------------------------------
# process memory: the kernel's resident-set counters


def status_kb(key: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``)."""
    match = re.search(rf"^{key}:\s+(\d+)\s+kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if not match:
        raise OSError(f"no {key} in /proc/self/status")
    return int(match.group(1))


def reset_hwm() -> bool:
    """Reset the RSS high-water mark ``VmHWM`` to the current RSS; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return status_kb("VmHWM") <= status_kb("VmRSS") + 1024
    except OSError:
        return False


def run_in_fresh_processes(module: str, function: str, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``module.function(job)`` for each job, one at a time, each in a new ``spawn`` process (no
    allocator or autograd state left over). The function is found by name, so that it pickles
    under ``python -m`` too."""
    child = getattr(importlib.import_module(module), function)
    ctx = multiprocessing.get_context("spawn")
    results = []
    for job in jobs:
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=1) as pool:
            results.append(pool.submit(child, job).result())
    return results


# ----------------------------------------------------------------------------------------------
# results


def timestamp() -> str:
    """The results' timestamp: local time, ``YYYYmmdd-HHMMSS`` (also in the JSON file's name)."""
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def format_or(x: float | None, spec: str, missing: str = "n/a") -> str:
    """``x`` formatted by ``spec``, or ``missing`` for None."""
    return missing if x is None else format(x, spec)


def target_status(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def parse_and_apply_threads(parse_args: Callable[[list[str] | None], argparse.Namespace], argv: list[str] | None):
    """Parse a benchmark's arguments and apply ``--threads``."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


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
