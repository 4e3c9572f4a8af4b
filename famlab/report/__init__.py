"""``famlab report``: execute the analysis notebooks against the sweep results, render them to HTML.

::

    famlab report [--storage URL] [--profile tiny] [--out reports/] [--only fam_length,cost] [--show-code]
    famlab report --write-notebooks            # regenerate analysis/*.ipynb from the templates here

Every notebook in ``analysis/`` (one per sweep spec, plus ``cost.ipynb`` for the bench results) is
executed with papermill (its ``parameters`` cell gets the storage URL, profile, spec and the
folders), saved executed as ``<out>/<name>.ipynb``, rendered with nbconvert's HTMLExporter (plots
embedded as PNG images; the code cells hidden unless ``--show-code``) to ``<out>/<name>.html``;
``<out>/index.html`` links them with one status line each. Tables also go to ``<out>/tables/`` as
Markdown and LaTeX. A missing store or study is not an error: that notebook is not rendered and its
index line says how to run it (``not run: `famlab sweep run passkey --profile tiny```); the cost
notebook reads the committed ``docs/results/`` when ``bench/results/`` has no results. Works offline.

The notebooks are generated from the templates in this module (:func:`build_notebook`), committed
without outputs; ``--write-notebooks`` rewrites them after a template change.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from famlab.report.notebooks import (
    COST_NOTEBOOK,
    KERNEL,
    NOTEBOOKS,
    SWEEP_NOTEBOOKS,
    NotebookSpec,
    build_notebook,
    write_notebooks,
)
from famlab.report.render import Entry, build_report, execute, to_html, write_index

__all__ = [
    "COST_NOTEBOOK",
    "KERNEL",
    "NOTEBOOKS",
    "SWEEP_NOTEBOOKS",
    "Entry",
    "NotebookSpec",
    "build_notebook",
    "build_report",
    "execute",
    "main",
    "to_html",
    "write_index",
    "write_notebooks",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="famlab report",
        description="Execute the analysis notebooks (analysis/*.ipynb) with papermill against the sweep "
        "results and render them as HTML into --out, with an index.html linking them.",
    )
    parser.add_argument(
        "--storage", default=None, help="Optuna storage URL for every study (default: each spec's SQLite store)"
    )
    parser.add_argument("--profile", default="tiny", help="the spec profile (tiny or paper)")
    parser.add_argument("--out", default="reports", help="output folder (default reports/)")
    parser.add_argument(
        "--runs-root",
        default=None,
        help="where the default SQLite stores live (default: the nearest runs/ with sweeps/, here or in a parent)",
    )
    parser.add_argument(
        "--bench-dir",
        default=None,
        help="famlab.bench JSON results for the cost notebook (default: bench/results/, else the committed "
        "docs/results/)",
    )
    parser.add_argument("--only", default=None, help="comma list of notebooks, e.g. fam_length,cost")
    parser.add_argument("--notebooks", default=None, help="folder of the notebooks (default: analysis/)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    parser.add_argument(
        "--show-code", action="store_true", help="keep the notebooks' code cells in the HTML (hidden by default)"
    )
    parser.add_argument(
        "--write-notebooks", action="store_true", help="regenerate analysis/*.ipynb from the templates and exit"
    )
    args = parser.parse_args(argv)
    if args.write_notebooks:
        for path in write_notebooks(args.notebooks):
            print(f"wrote {path}")
        return 0
    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    try:
        entries = build_report(
            args.out,
            storage=args.storage,
            profile=args.profile,
            runs_root=args.runs_root,
            bench_dir=args.bench_dir,
            only=only,
            notebook_dir=args.notebooks,
            timeout=args.timeout,
            show_code=args.show_code,
        )
    except ValueError as err:
        print(f"famlab report: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {Path(args.out) / 'index.html'}")
    return 0 if all(e.ok for e in entries) else 1
