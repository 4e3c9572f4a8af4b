"""``famlab report``: execute the analysis notebooks against the sweep results, render them to HTML.

::

    famlab report [--storage URL] [--profile tiny] [--out reports/] [--only fam_length,cost]
    famlab report --write-notebooks            # regenerate analysis/*.ipynb from the templates here

Every notebook in ``analysis/`` (one per sweep spec, plus ``cost.ipynb`` for the bench results) is
executed with papermill (its ``parameters`` cell gets the storage URL, profile, spec and the
folders), saved executed as ``<out>/<name>.ipynb``, rendered with nbconvert's HTMLExporter (plots
embedded as PNG images) to ``<out>/<name>.html``; ``<out>/index.html`` links them with one status
line each. Tables also go to ``<out>/tables/`` as Markdown and LaTeX. A missing store or study
is not an error: that notebook shows a message. Works offline.

The notebooks are generated from the templates in this module (:func:`build_notebook`), committed
without outputs; ``--write-notebooks`` rewrites them after a template change.
"""

from __future__ import annotations

import argparse
import html
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO / "analysis"
KERNEL = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


@dataclass(frozen=True)
class NotebookSpec:
    name: str  # notebook file stem (and spec name for sweeps)
    title: str
    about: str  # what is varied, what the paper found, how famlab measures it
    evaluate: bool = False  # the spec evaluates each run: add the evaluation table and plot


SWEEP_NOTEBOOKS = (
    NotebookSpec(
        "fam_length",
        "FAM length L<sub>F</sub> (paper Table 5)",
        "The number of FAM rows L<sub>F</sub> at a fixed block size. The paper (1B, B = 1024) finds an interior "
        "optimum at L<sub>F</sub> = 64. famlab's tiny profile keeps the ratio L<sub>F</sub>/B, so its settings are matched "
        "to the paper's rows with the same L<sub>F</sub>/B.",
    ),
    NotebookSpec(
        "memory_segment",
        "Memory segment of BSWA vs FAM (paper Table 11)",
        "BSWA with m cached blocks (M0, M1, ...) against FAM. The paper finds that more memory helps BSWA "
        "only up to a point and that FAM beats every BSWA setting on every task.",
    ),
    NotebookSpec(
        "passkey",
        "PassKey retrieval (paper figure)",
        "Accuracy of retrieving a key hidden in filler text, by filler length, for BSWA memory segments, "
        "M1 with stop-gradient and FAM with m = 0. The paper (figure only) shows FAM retrieving far past the "
        "training length while BSWA fails beyond its receptive field.",
        evaluate=True,
    ),
    NotebookSpec(
        "stop_gradient",
        "Stop-gradient on the memory segment",
        "BSWA m = 1 with and without stop-gradient on the memory segment's keys and values. The paper "
        "argues that stop-gradient collapses the receptive field to the window (M1_SG worse than M1 on PassKey).",
        evaluate=True,
    ),
    NotebookSpec(
        "fam_position",
        "FAM positions (paper Table 7)",
        "RoPE positions of the FAM rows: the last positions of the block (default), fractional positions "
        "after it, or zero. The paper: last 47.7 / 73.6, float 47.6 / 73.4, zero 47.3 / 72.1 (PG-19 / Isabelle).",
    ),
    NotebookSpec(
        "fam_prev_blocks",
        "Previous FAM states attended (paper Table 6)",
        "How many previous FAM states P the block tokens attend (block τ sees F<sub>τ-P</sub> .. F<sub>τ-1</sub>). "
        "The paper (1B, XLSum) finds no real effect: 15.9, 15.8, 15.7, 15.1, 16.2 for P = 1, 2, 3, 4, 6, and keeps "
        "P = 1.",
    ),
    NotebookSpec(
        "position_offset",
        "Random position offset (RPO)",
        "FAM trained with and without the random position offset. The paper reports FAM beating FAM without "
        "RPO (figure only). With exact RoPE a shared offset cancels in q·k, so expect small effects in fp32.",
    ),
    NotebookSpec(
        "state_passing",
        "Random state passing (paper figure)",
        "P(RSP), the probability of starting a training sequence from the saved FAM state instead of the "
        "prompt. The paper's sweep peaks at 0.8 and shows a large drop without RSP. The runs are also "
        "evaluated on long held-out texts (bits per byte by position).",
        evaluate=True,
    ),
    NotebookSpec(
        "txl_vs_bswa",
        "BSWA vs TransformerXL (paper Table 8)",
        "BSWA with m = 1 against a TransformerXL-style per-token window over the same cached memory. The "
        "paper finds them about equal.",
    ),
    NotebookSpec(
        "block_size",
        "Block size x memory segment (beyond the paper)",
        "Block size B and memory segment m for BSWA and FAM at a fixed training length. The paper has no "
        "block-size ablation, so there are no reference numbers here.",
    ),
    NotebookSpec(
        "passkey_recipe",
        "PassKey recipe search (beyond the paper)",
        "FAM with m = 0 on PassKey as symbols (the `make passkey-demo` preset): learning rate x FAM length x "
        "random position offset, each run evaluated at 1x, 4x and 16x its training length. It looks for a recipe under "
        "which FAM learns the task on a CPU budget and keeps retrieving past the training length; the paper "
        "has no such table.",
        evaluate=True,
    ),
)
COST_NOTEBOOK = NotebookSpec(
    "cost",
    "Cost: time and memory against sequence length",
    "Training-step time and peak memory of full attention, BSWA, TransformerXL and FAM from the famlab bench "
    "(`make bench`, `python -m famlab.bench --seq-len T`), beside the paper's inference cost (Tables 13/14: "
    "FAM costs 0.5-2.3% more than BSWA, less at longer sequences).",
)
NOTEBOOKS = (*SWEEP_NOTEBOOKS, COST_NOTEBOOK)


# ----------------------------------------------------------------------------------------------
# templates


def _sweep_cells(nb: NotebookSpec) -> list[tuple[str, str, list[str]]]:
    """(kind, source, tags) of every cell of a sweep notebook."""
    cells = [
        (
            "markdown",
            f"# {nb.title}\n\n{nb.about}\n\n"
            "famlab's objective is usually a loss (lower is better); the paper's numbers are task scores "
            "(higher is better). The tables show famlab's seed means beside the paper's numbers; the agreement "
            "table compares the *orderings* (Spearman rank correlation of famlab's score, the negated loss, "
            "with the paper's score).\n\n"
            "Re-run with `famlab report` or `papermill` (parameters below).",
            [],
        ),
        (
            "code",
            "# Parameters (papermill overrides these)\n"
            "storage = None  # Optuna storage URL; None: $FAMLAB_STORAGE or <runs_root>/sweeps/<study>/<profile>.db\n"
            'profile = "tiny"  # the spec profile: tiny (CPU) or paper (cluster)\n'
            f'spec = "{nb.name}"  # a spec name from sweeps/ or a path to a spec YAML\n'
            'runs_root = "runs"  # where the default SQLite stores live\n'
            "tables_dir = None  # if set, the tables are also written there as Markdown and LaTeX",
            ["parameters"],
        ),
        (
            "code",
            "import matplotlib.pyplot as plt\n"
            "import pandas as pd\n"
            "from IPython.display import Markdown, display\n\n"
            "from famlab import analysis as fa\n\n"
            'pd.set_option("display.precision", 4)\n'
            'pd.set_option("display.max_colwidth", None)\n'
            "res = fa.load_sweep(spec, profile, storage=storage, root=runs_root)\n"
            'display(Markdown(f"**{res.summary()}**" if res.ok else f"**{res.summary()}**\\n\\nNothing to analyse."))',
            [],
        ),
        ("markdown", "## Trials", []),
        ("code", "if res.ok:\n    display(fa.trial_table(res))", []),
        ("markdown", "## Ablation table (mean ± 95% t-interval over seeds)", []),
        ("code", "if res.ok:\n    display(fa.format_mean_ci(fa.ablation_table(res)))", []),
        ("markdown", "## Side by side with the paper", []),
        (
            "code",
            "if res.ok:\n"
            "    display(fa.paper_table(res))\n"
            "    agreement = fa.paper_agreement(res)\n"
            "    if agreement.empty:\n"
            '        display(Markdown("The paper has no numbers for these settings."))\n'
            "    else:\n"
            "        display(agreement)",
            [],
        ),
        ("markdown", "## The paper's findings, checked", []),
        (
            "code",
            "if res.ok:\n"
            "    claims = fa.paper_claims(res)\n"
            '    display(claims if not claims.empty else Markdown("No findings of the paper to check."))',
            [],
        ),
        ("markdown", "## Plots", []),
        ("code", "if res.ok:\n    fig = fa.plot_ablation(res)\n    plt.show()", []),
        ("code", "if res.ok:\n    fig = fa.plot_curves(res)\n    plt.show()", []),
    ]
    if nb.evaluate:
        cells += [
            ("markdown", "## Evaluation", []),
            (
                "code",
                "values = fa.eval_values(res) if res.ok else []\n"
                "if res.ok and not values:\n"
                '    display(Markdown("No evaluation tables stored on the trials."))\n'
                "for value in values:  # accuracy and digit accuracy (PassKey), bits per byte (text)\n"
                '    display(Markdown(f"### {value} (mean over seeds)"))\n'
                "    display(fa.eval_table(res, value))\n"
                "    fig = fa.plot_eval(res, value)\n"
                "    plt.show()",
                [],
            ),
        ]
    cells.append(
        (
            "code",
            "if res.ok and tables_dir:\n"
            "    written = fa.export_tables(fa.all_tables(res), tables_dir, prefix=res.study)\n"
            '    print("wrote", ", ".join(p.name for p in written))',
            [],
        )
    )
    return cells


def _cost_cells(nb: NotebookSpec) -> list[tuple[str, str, list[str]]]:
    return [
        ("markdown", f"# {nb.title}\n\n{nb.about}", []),
        (
            "code",
            "# Parameters (papermill overrides these)\n"
            'bench_dir = "bench/results"  # folder of famlab.bench JSON results (bench_*.json)\n'
            "tables_dir = None  # if set, the tables are also written there as Markdown and LaTeX",
            ["parameters"],
        ),
        (
            "code",
            "import matplotlib.pyplot as plt\n"
            "import pandas as pd\n"
            "from IPython.display import Markdown, display\n\n"
            "from famlab import analysis as fa\n\n"
            'pd.set_option("display.precision", 4)\n'
            'pd.set_option("display.max_colwidth", None)\n'
            "bench = fa.load_bench(bench_dir)\n"
            'display(Markdown(f"**{fa.bench_summary(bench, bench_dir)}**"))',
            [],
        ),
        ("markdown", "## famlab training step: time and peak memory by sequence length", []),
        (
            "code",
            "cost = fa.cost_table(bench)\n"
            "if not cost.empty:\n"
            '    display(Markdown("Model: " + ", ".join(f"{k}={v}" for k, v in cost.attrs["config"].items())))\n'
            "    display(cost)",
            [],
        ),
        ("markdown", "## Paper: inference cost (Tables 13/14)", []),
        ("code", "paper_cost = fa.paper_cost_table()\ndisplay(paper_cost)", []),
        ("markdown", "## Plots", []),
        ("code", "fig = fa.plot_cost(bench)\nplt.show()", []),
        (
            "code",
            "if tables_dir:\n"
            '    tables = {"paper": paper_cost, **({"famlab": cost} if not cost.empty else {})}\n'
            '    written = fa.export_tables(tables, tables_dir, prefix="cost")\n'
            '    print("wrote", ", ".join(p.name for p in written))',
            [],
        ),
    ]


def build_notebook(nb: NotebookSpec):
    """The notebook of one analysis, without outputs (deterministic cell ids)."""
    import nbformat

    cells = _cost_cells(nb) if nb is COST_NOTEBOOK else _sweep_cells(nb)
    out = []
    for i, (kind, source, tags) in enumerate(cells):
        make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        cell = make(source, id=f"{nb.name.replace('_', '-')}-{i:02d}")
        if tags:
            cell.metadata["tags"] = tags
        out.append(cell)
    notebook = nbformat.v4.new_notebook(cells=out)
    notebook.metadata["kernelspec"] = dict(KERNEL)
    notebook.metadata["language_info"] = {"name": "python"}
    return notebook


def write_notebooks(directory: str | Path = NOTEBOOK_DIR) -> list[Path]:
    """Write every notebook template into ``directory`` (outputs stripped)."""
    import nbformat

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for nb in NOTEBOOKS:
        path = directory / f"{nb.name}.ipynb"
        nbformat.write(build_notebook(nb), path)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------------
# execution and rendering


@dataclass
class Entry:
    name: str
    title: str
    status: str  # one line: what the notebook found
    ok: bool  # executed without an error
    html: str = ""
    ipynb: str = ""
    seconds: float = 0.0


def _status(nb: NotebookSpec, params: dict[str, Any]) -> str:
    from famlab import analysis as fa

    if nb is COST_NOTEBOOK:
        return fa.bench_summary(fa.load_bench(params["bench_dir"]), params["bench_dir"])
    res = fa.load_sweep(params["spec"], params["profile"], storage=params["storage"], root=params["runs_root"])
    return res.summary()


def to_html(notebook_path: str | Path, html_path: str | Path) -> Path:
    """Render an executed notebook to standalone HTML (images embedded as data URIs)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(notebook_path, as_version=4)
    exporter = HTMLExporter(template_name="lab")
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    body, _ = exporter.from_notebook_node(nb)
    Path(html_path).write_text(body, encoding="utf-8")
    return Path(html_path)


def _kernel_manager_class(log_path: Path) -> type:
    """A kernel manager whose kernel writes its stdout/stderr (ipykernel's start-up and shutdown
    chatter, crashes) to ``log_path`` instead of the terminal."""
    from jupyter_client.manager import AsyncKernelManager

    class LoggingKernelManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
            with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
                kw.setdefault("stdout", log)
                kw.setdefault("stderr", log)
                await super()._async_launch_kernel(kernel_cmd, **kw)

    return LoggingKernelManager


def execute(
    nb_path: str | Path, out_path: str | Path, params: dict[str, Any], timeout: int = 600, log: Path | None = None
) -> None:
    """Execute a notebook with papermill (parameters injected after its ``parameters`` cell)."""
    import papermill as pm

    extra = {"kernel_manager_class": _kernel_manager_class(log)} if log is not None else {}
    pm.execute_notebook(
        str(nb_path),
        str(out_path),
        parameters=params,
        kernel_name=KERNEL["name"],
        progress_bar=False,
        log_output=False,
        execution_timeout=timeout,
        cwd=os.getcwd(),
        **extra,
    )


def build_report(
    out: str | Path = "reports",
    *,
    storage: str | None = None,
    profile: str = "tiny",
    runs_root: str | Path = "runs",
    bench_dir: str | Path = "bench/results",
    only: list[str] | None = None,
    notebook_dir: str | Path | None = None,
    timeout: int = 600,
    quiet: bool = False,
) -> list[Entry]:
    """Execute the notebooks (all, or ``only`` these names), render HTML and the index. The
    notebooks come from ``notebook_dir`` (default ``analysis/``; built from the templates when
    that folder does not exist, e.g. for an installed package)."""
    import tempfile

    chosen = [nb for nb in NOTEBOOKS if only is None or nb.name in only]
    unknown = sorted(set(only or []) - {nb.name for nb in NOTEBOOKS})
    if unknown:
        raise ValueError(
            f"unknown notebook(s) {', '.join(unknown)}: expected some of {', '.join(n.name for n in NOTEBOOKS)}"
        )
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tables, logs = out / "tables", out / "logs"
    src = Path(notebook_dir) if notebook_dir else NOTEBOOK_DIR
    tmp = None
    if not src.is_dir():
        tmp = tempfile.TemporaryDirectory()
        src = Path(tmp.name)
        write_notebooks(src)
    entries = []
    try:
        for nb in chosen:
            if nb is COST_NOTEBOOK:
                params = {"bench_dir": str(Path(bench_dir).resolve()), "tables_dir": str(tables)}
            else:
                params = {
                    "storage": storage,
                    "profile": profile,
                    "spec": nb.name,
                    "runs_root": str(Path(runs_root).resolve()),
                    "tables_dir": str(tables),
                }
            t0 = time.perf_counter()
            try:
                status = _status(nb, params)
            except Exception as err:  # the notebook shows the details
                status = f"cannot read results: {err}"
            ok, executed = True, out / f"{nb.name}.ipynb"
            try:
                logs.mkdir(exist_ok=True)
                log = logs / f"{nb.name}.log"
                log.unlink(missing_ok=True)
                execute(src / f"{nb.name}.ipynb", executed, params, timeout, log=log)
            except Exception as err:
                ok = False
                status = f"notebook failed: {str(err).strip().splitlines()[-1] if str(err).strip() else err!r}"
            entry = Entry(nb.name, nb.title, status, ok, seconds=time.perf_counter() - t0)
            if executed.exists():
                to_html(executed, out / f"{nb.name}.html")
                entry.html, entry.ipynb = f"{nb.name}.html", executed.name
            entries.append(entry)
            if not quiet:
                print(f"{'ok  ' if ok else 'FAIL'} {nb.name:16s} {entry.seconds:5.1f}s  {status}", flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    write_index(out, entries, profile=profile, storage=storage)
    return entries


def _title_html(title: str) -> str:
    """Titles may hold <sub> markup (no MathJax: the HTML must render offline); plain text here."""
    return html.escape(title.replace("<sub>", "_").replace("</sub>", ""))


def write_index(out: Path, entries: list[Entry], *, profile: str, storage: str | None) -> Path:
    from famlab.sweep import redact

    rows = []
    for e in entries:
        link = f'<a href="{html.escape(e.html)}">{_title_html(e.title)}</a>' if e.html else _title_html(e.title)
        nb_link = f'<a href="{html.escape(e.ipynb)}">ipynb</a>' if e.ipynb else ""
        cls = "fail" if not e.ok else "empty" if e.status.startswith("No ") else "ok"
        rows.append(
            f'<tr class="{cls}"><td>{link}</td><td><code>{html.escape(e.name)}</code></td>'
            f"<td>{html.escape(e.status)}</td><td>{nb_link}</td></tr>"
        )
    where = html.escape(redact(storage)) if storage else "default SQLite stores under runs/sweeps/"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>famlab report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 70em; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }}
tr.fail td {{ background: #fdd; }} tr.empty td {{ color: #777; }} code {{ font-size: 90%; }}
</style></head><body>
<h1>famlab report</h1>
<p>Profile <code>{html.escape(profile)}</code>; storage: {where}; generated {time.strftime("%Y-%m-%d %H:%M:%S")}.
Tables as Markdown and LaTeX are in <a href="tables/">tables/</a>.</p>
<table><tr><th>analysis</th><th>notebook</th><th>status</th><th>executed</th></tr>
{chr(10).join(rows)}
</table></body></html>
"""
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


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
    parser.add_argument("--runs-root", default="runs", help="where the default SQLite stores live (default runs/)")
    parser.add_argument("--bench-dir", default="bench/results", help="famlab.bench JSON results for the cost notebook")
    parser.add_argument("--only", default=None, help="comma list of notebooks, e.g. fam_length,cost")
    parser.add_argument("--notebooks", default=None, help="folder of the notebooks (default: analysis/)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    parser.add_argument(
        "--write-notebooks", action="store_true", help="regenerate analysis/*.ipynb from the templates and exit"
    )
    args = parser.parse_args(argv)
    if args.write_notebooks:
        for path in write_notebooks(args.notebooks or NOTEBOOK_DIR):
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
        )
    except ValueError as err:
        print(f"famlab report: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {Path(args.out) / 'index.html'}")
    return 0 if all(e.ok for e in entries) else 1


if __name__ == "__main__":
    sys.exit(main())
