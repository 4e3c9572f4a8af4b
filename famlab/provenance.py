"""Provenance of a run: which code, which environment, which command.

:func:`collect` returns a JSON-safe dict, written by the trainer to ``<run_dir>/provenance.json``:

* ``git``: ``commit``, ``branch``, ``dirty`` (tracked changes or untracked files), ``diff`` (``git
  diff HEAD``: the uncommitted changes to tracked files, plus untracked files up to 256 kB as
  new-file patches, so the exact code can be rebuilt from the commit plus ``git apply`` of this
  text), ``untracked`` (names) and ``root``. Taken from the repository that
  holds the famlab package (falling back to the working directory); every value is None when
  there is no git or no repository. Git is called read-only with ``--no-optional-locks``, so it
  never rewrites the index of a checkout that another process is using.
* ``packages``: versions of torch, pytorch-lightning, optuna, omegaconf, wandb, pandas, numpy,
  famlab, transformers and peft (None when one is missing).
* ``command``: ``sys.argv``; ``cwd``; ``seed``; ``host``; ``python``; ``platform``; ``time`` (local
  ISO 8601 with offset) and ``time_utc``; ``cuda`` (torch's CUDA version and device names, if any);
  ``threads`` (torch's intra-op threads and ``OMP_NUM_THREADS``).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGES = {
    "torch": "torch",
    "lightning": "pytorch-lightning",
    "optuna": "optuna",
    "omegaconf": "omegaconf",
    "wandb": "wandb",
    "pandas": "pandas",
    "numpy": "numpy",
    "famlab": "famlab",
    # the hf extra: pretrained conversion (model.init_from) and LoRA (lora.rank > 0)
    "transformers": "transformers",
    "peft": "peft",
}
MAX_DIFF_CHARS = 2_000_000  # a diff larger than this is cut (and says so)
MAX_UNTRACKED_BYTES = 256_000  # untracked files up to this size are included in the diff


def _git(args: list[str], cwd: Path, ok_codes: tuple[int, ...] = (0,)) -> str | None:
    try:
        out = subprocess.run(
            ["git", "--no-optional-locks", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode in ok_codes else None


def git_info(path: str | Path | None = None) -> dict[str, Any]:
    """Commit, branch, dirty flag, diff and untracked files of the repository holding ``path``."""
    candidates = [Path(path)] if path is not None else [Path(__file__).resolve().parent, Path.cwd()]
    for cand in candidates:
        root = _git(["rev-parse", "--show-toplevel"], cand)
        if root:
            root_path = Path(root.strip())
            break
    else:
        return {"commit": None, "branch": None, "dirty": None, "diff": None, "untracked": None, "root": None}
    commit = _git(["rev-parse", "HEAD"], root_path)
    branch = _git(["rev-parse", "--abbrev-ref", "HEAD"], root_path)
    diff = _git(["diff", "HEAD", "--no-color", "--no-ext-diff"], root_path)
    status = _git(["status", "--porcelain", "--untracked-files=all"], root_path) or ""
    untracked = [line[3:] for line in status.splitlines() if line.startswith("??")]
    if diff is not None:  # untracked files as "new file" patches, so `git apply` restores them too
        for name in untracked:
            file = root_path / name
            try:
                small = file.is_file() and file.stat().st_size <= MAX_UNTRACKED_BYTES
            except OSError:
                small = False
            if small and len(diff) < MAX_DIFF_CHARS:
                patch = _git(["diff", "--no-index", "--no-color", "--", "/dev/null", name], root_path, (0, 1))
                diff += patch or ""
    if diff is not None and len(diff) > MAX_DIFF_CHARS:
        diff = diff[:MAX_DIFF_CHARS] + f"\n... [diff cut at {MAX_DIFF_CHARS} characters]\n"
    return {
        "commit": commit.strip() if commit else None,
        "branch": branch.strip() if branch else None,
        "dirty": bool(status.strip()),
        "diff": diff,
        "untracked": untracked,
        "root": str(root_path),
    }


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for key, dist in PACKAGES.items():
        try:
            out[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[key] = None
    return out


def cuda_info() -> dict[str, Any]:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return {}
    info: dict[str, Any] = {"version": torch.version.cuda, "available": torch.cuda.is_available()}
    if info["available"]:
        info["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def thread_info() -> dict[str, Any]:
    """torch's intra-op threads and the environment that set them (speed depends on both)."""
    try:
        import torch

        torch_threads = torch.get_num_threads()
    except ImportError:  # pragma: no cover - torch is a dependency
        torch_threads = None
    return {"torch": torch_threads, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def collect(*, seed: int | None = None, argv: list[str] | None = None, extra: dict[str, Any] | None = None) -> dict:
    """Everything above as one JSON-safe dict (``extra`` is merged in at the top level)."""
    now = _dt.datetime.now().astimezone()
    prov = {
        "git": git_info(),
        "packages": package_versions(),
        "command": list(sys.argv if argv is None else argv),
        "cwd": os.getcwd(),
        "seed": seed,
        "host": socket.gethostname(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "time": now.isoformat(timespec="seconds"),
        "time_utc": now.astimezone(_dt.UTC).isoformat(timespec="seconds"),
        "cuda": cuda_info(),
        "threads": thread_info(),
    }
    prov.update(extra or {})
    return prov


def write(path: str | Path, **kwargs: Any) -> dict:
    """:func:`collect` and write it as indented JSON to ``path``; returns the dict."""
    prov = collect(**kwargs)
    Path(path).write_text(json.dumps(prov, indent=2, default=str) + "\n")
    return prov


def add(path: str | Path, **sections: Any) -> dict:
    """Add (or replace) top-level entries of the provenance file at ``path``; returns the whole dict."""
    prov = json.loads(Path(path).read_text()) if Path(path).exists() else {}
    prov.update(sections)
    Path(path).write_text(json.dumps(prov, indent=2, default=str) + "\n")
    return prov
