"""``famlab report``: execute the analysis notebooks against the sweep results, render them to HTML.

::

    famlab report [--storage URL] [--profile tiny] [--out reports/] [--only fam_length,cost] [--show-code]
    famlab report --write-notebooks            # regenerate analysis/*.ipynb from the templates here
    famlab report --run RUN_DIR [--out DIR]    # one run's page: RUN_DIR/report.html (or DIR/report.html)

``--run`` is an option of this one parser rather than a subcommand (``famlab report run RUN_DIR``): the
sweep report keeps its bare form, and the run page takes no other option than ``--out``
(:mod:`famlab.report.run_page`: config, provenance, final metrics, ``famlab eval``'s table, the suite's
effective lengths, tables and needle heatmaps, in one self-contained HTML file; what is missing is listed,
e.g. ``not evaluated: run `famlab eval RUN --suite all```). A folder that is not a run, an unreadable
``config.yaml`` or an unwritable ``--out`` prints one ``famlab: error: ...`` line and exits with 2.

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
from famlab.report.run_page import render_run_page, write_run_page
from famlab.runs import RunDir

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
    "render_run_page",
    "to_html",
    "write_index",
    "write_notebooks",
    "write_run_page",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="famlab report",
        description="Execute the analysis notebooks (analysis/*.ipynb) with papermill against the sweep "
        "results and render them as HTML into --out, with an index.html linking them; or, with --run RUN_DIR, "
        "write one run's report page.",
    )
    parser.add_argument(
        "--storage", default=None, help="Optuna storage URL for every study (default: each spec's SQLite store)"
    )
    parser.add_argument("--profile", default="tiny", help="the spec profile (tiny or paper)")
    parser.add_argument("--out", default=None, help="output folder (default reports/; with --run: the run directory)")
    parser.add_argument(
        "--run",
        default=None,
        metavar="RUN_DIR",
        help="write one run's report page instead (config, provenance, final metrics, evaluations, suite "
        "heatmaps): RUN_DIR/report.html, or report.html in --out",
    )
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
    if args.run is not None:
        return run_page_main(parser, args)
    if args.write_notebooks:
        for path in write_notebooks(args.notebooks):
            print(f"wrote {path}")
        return 0
    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    out = args.out if args.out is not None else "reports"
    try:
        entries = build_report(
            out,
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
    print(f"wrote {Path(out) / 'index.html'}")
    return 0 if all(e.ok for e in entries) else 1


def run_page_main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``famlab report --run RUN_DIR [--out DIR]``: the run's page, or one ``famlab: error:`` line and 2."""
    given = [
        f"--{dest.replace('_', '-')}"
        for dest, value in vars(args).items()
        if dest not in ("run", "out") and value != parser.get_default(dest)
    ]
    if given:
        return error(f"--run {args.run!r} takes no {', '.join(given)}: only --out DIR goes with --run")
    if args.out is not None and (problem := RunDir.writable_problem(args.out, "--out")):
        return error(problem)
    try:
        path = write_run_page(args.run, args.out)
    except ValueError as err:
        return error(str(err))
    except OSError as err:
        where = args.out if args.out is not None else args.run
        return error(f"cannot write report.html into {str(where)!r}: {err.strerror or err}")
    print(f"wrote {path}")
    return 0


def error(message: str) -> int:
    print(f"famlab: error: {message}", file=sys.stderr)
    return 2
