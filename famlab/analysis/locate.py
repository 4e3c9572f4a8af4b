"""Where the analysis finds its inputs when it is not told: the sweep stores (``runs/``) and the bench
results (``bench/results/``, else the committed ``docs/results/``).

A notebook opened in Jupyter from ``analysis/`` runs with ``analysis/`` as its working directory, a
report from the repository root: both look in the working directory first, then in its parents, so
``runs/`` at the top of the checkout is found from either.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

RUNS_DIR = "runs"  # famlab sweep run's default --out-root
BENCH_DIR = "bench/results"  # where famlab.bench writes
COMMITTED_BENCH_DIR = "docs/results"  # the results committed with the repository


def find_up(relative: str | Path, holds: Callable[[Path], bool], start: str | Path | None = None) -> Path | None:
    """The first ``<folder>/<relative>`` for which ``holds`` is true, ``folder`` being ``start``
    (default: the working directory) and then each of its parents; None if there is none."""
    here = Path(start if start is not None else Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / relative
        if holds(candidate):
            return candidate
    return None


def has_stores(folder: Path) -> bool:
    """Whether ``folder`` is a runs root with sweep stores (``sweeps/`` inside)."""
    return (folder / "sweeps").is_dir()


def has_bench_files(folder: Path) -> bool:
    """Whether ``folder`` holds famlab.bench results (``bench_*.json``)."""
    return folder.is_dir() and any(folder.glob("bench_*.json"))


def runs_root(root: str | Path | None = None, start: str | Path | None = None) -> Path:
    """The folder of the default SQLite stores (``<root>/sweeps/<study>/<profile>.db``): ``root``
    when given, else the nearest ``runs/`` holding ``sweeps/`` in the working directory or a parent
    (so a notebook run from ``analysis/`` finds the checkout's ``runs/``), else ``./runs``."""
    if root is not None:
        return Path(root)
    return find_up(RUNS_DIR, has_stores, start) or Path(RUNS_DIR)


def bench_dir(folder: str | Path | None = None, start: str | Path | None = None) -> Path:
    """The folder of bench results to read: ``folder`` when given, else the nearest ``bench/results/``
    with ``bench_*.json`` files (working directory or a parent), else the nearest committed
    ``docs/results/`` with some, else ``./bench/results`` (empty: the page says how to make some)."""
    if folder is not None:
        return Path(folder)
    return (
        find_up(BENCH_DIR, has_bench_files, start)
        or find_up(COMMITTED_BENCH_DIR, has_bench_files, start)
        or Path(BENCH_DIR)
    )
