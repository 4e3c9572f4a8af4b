"""Executing the analysis notebooks with papermill and rendering them to HTML, with an index page."""

from __future__ import annotations

import html
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from famlab.report.notebooks import COST_NOTEBOOK, KERNEL, NOTEBOOKS, NotebookSpec, write_notebooks
from famlab.resources import notebook_dir as default_notebook_dir


@dataclass
class Entry:
    name: str
    title: str
    status: str  # one line: what the notebook found (`backticks` mark a command)
    ok: bool  # executed without an error (a skipped notebook is ok)
    html: str = ""
    ipynb: str = ""
    seconds: float = 0.0


def status_line(nb: NotebookSpec, params: dict[str, Any]) -> tuple[str, bool]:
    """The index line of one notebook (what its sweep or bench folder holds) and whether there is
    anything to analyse: a study without trials is ``not run: `famlab sweep run X --profile P```,
    and its notebook is not rendered (nor one without completed trials, nor the cost notebook
    without bench results)."""
    from famlab import analysis as fa

    if nb is COST_NOTEBOOK:
        bench = fa.load_bench(params["bench_dir"])
        return fa.bench_summary(bench, params["bench_dir"]), not bench.empty
    res = fa.load_sweep(params["spec"], params["profile"], storage=params["storage"], root=params["runs_root"])
    if res.ok:
        return res.summary(), True
    if res.spec is not None and res.trials.empty and not res.message.startswith("No results: cannot read"):
        return f"not run: `famlab sweep run {Path(res.spec.path).stem} --profile {res.spec.profile}`", False
    return res.message, False


def to_html(notebook_path: str | Path, html_path: str | Path, *, show_code: bool = False) -> Path:
    """Render an executed notebook to standalone HTML (images embedded as data URIs); the code
    cells' inputs are left out unless ``show_code`` (their outputs and the Markdown stay)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(notebook_path, as_version=4)
    exporter = HTMLExporter(template_name="lab")
    exporter.exclude_input = not show_code
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    body, _ = exporter.from_notebook_node(nb)
    Path(html_path).write_text(body, encoding="utf-8")
    return Path(html_path)


def kernel_manager_class(log_path: Path) -> type:
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

    extra = {"kernel_manager_class": kernel_manager_class(log)} if log is not None else {}
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
    runs_root: str | Path | None = None,
    bench_dir: str | Path | None = None,
    only: list[str] | None = None,
    notebook_dir: str | Path | None = None,
    timeout: int = 600,
    quiet: bool = False,
    show_code: bool = False,
) -> list[Entry]:
    """Execute the notebooks (all, or ``only`` these names) that have data, render HTML (code hidden
    unless ``show_code``) and the index; a notebook without data gets only its index line. The
    notebooks come from ``notebook_dir`` (default :func:`famlab.resources.notebook_dir`; built from the templates when
    that folder does not exist, e.g. for an installed package). ``runs_root`` and ``bench_dir`` None:
    found from the working directory or a parent (:mod:`famlab.analysis.locate`)."""
    import tempfile

    from famlab.analysis.locate import bench_dir as find_bench_dir
    from famlab.analysis.locate import runs_root as find_runs_root

    chosen = [nb for nb in NOTEBOOKS if only is None or nb.name in only]
    unknown = sorted(set(only or []) - {nb.name for nb in NOTEBOOKS})
    if unknown:
        raise ValueError(
            f"unknown notebook(s) {', '.join(unknown)}: expected some of {', '.join(n.name for n in NOTEBOOKS)}"
        )
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tables, logs = out / "tables", out / "logs"
    src = Path(notebook_dir) if notebook_dir else default_notebook_dir()
    tmp = None
    if not src.is_dir():
        tmp = tempfile.TemporaryDirectory()
        src = Path(tmp.name)
        write_notebooks(src)
    runs_root = find_runs_root(runs_root).resolve()
    bench_dir = find_bench_dir(bench_dir).resolve()
    entries = []
    try:
        for nb in chosen:
            if nb is COST_NOTEBOOK:
                params = {"bench_dir": str(bench_dir), "tables_dir": str(tables)}
            else:
                params = {
                    "storage": storage,
                    "profile": profile,
                    "spec": nb.name,
                    "runs_root": str(runs_root),
                    "tables_dir": str(tables),
                }
            t0 = time.perf_counter()
            try:
                status, has_data = status_line(nb, params)
            except Exception as err:  # the notebook shows the details
                status, has_data = f"cannot read results: {err}", True
            ok, executed = True, out / f"{nb.name}.ipynb"
            for stale in (executed, out / f"{nb.name}.html"):  # an earlier report's page of it
                stale.unlink(missing_ok=True)
            if not has_data:
                entries.append(Entry(nb.name, nb.title, status, ok))
                if not quiet:
                    print(f"skip {nb.name:16s}        {status}", flush=True)
                continue
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
                to_html(executed, out / f"{nb.name}.html", show_code=show_code)
                entry.html, entry.ipynb = f"{nb.name}.html", executed.name
            entries.append(entry)
            if not quiet:
                print(f"{'ok  ' if ok else 'FAIL'} {nb.name:16s} {entry.seconds:5.1f}s  {status}", flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    board = claims_board(profile, storage, runs_root)
    write_index(out, entries, profile=profile, storage=storage, board=board, runs_root=runs_root)
    return entries


def claims_board(profile: str, storage: str | None, runs_root: str | Path) -> Any:
    """The claims scoreboard of every study (:func:`famlab.analysis.scoreboard`), or None where it
    cannot be read (the index then says so)."""
    from famlab import analysis as fa

    try:
        return fa.scoreboard(profile, storage=storage, root=runs_root)
    except Exception as err:  # a broken store must not cost the rest of the report
        print(f"famlab report: the claims scoreboard could not be built: {err}", flush=True)
        return None


VERDICT_CLASS = {"holds": "holds", "contradicted": "contradicted", "inconclusive": "inconclusive"}


def scoreboard_html(board: Any, entries: list[Entry]) -> str:
    """The scoreboard as an HTML table: the paper's statement, famlab's effect with its interval,
    the verdict, and a link to the study's notebook."""
    if board is None:
        return "<p>The claims scoreboard could not be built (see the report's output).</p>"
    if board.empty:
        return "<p>No spec declares a claim.</p>"
    from famlab.analysis.scoreboard import verdict_counts

    pages = {e.name: e.html for e in entries if e.html}
    rows = []
    for _, r in board.iterrows():
        study = html.escape(str(r["study"]))
        page = pages.get(str(r["study"]))
        link = f'<a href="{html.escape(page)}">{study}</a>' if page else study
        cls = VERDICT_CLASS.get(str(r["verdict"]), "empty")
        rows.append(
            f'<tr class="{cls}"><td>{html.escape(str(r["paper"]))}</td><td>{html.escape(str(r["statement"]))}</td>'
            f"<td><code>{html.escape(str(r['effect']))}</code><br><small>{html.escape(str(r['evidence']))}</small></td>"
            f"<td><b>{html.escape(str(r['verdict']))}</b></td><td>{link}</td></tr>"
        )
    return (
        f'<h2>The paper\'s claims</h2>\n<p id="claims-summary">{html.escape(verdict_counts(board))}. '
        "Effect: the deciding comparison, mean of the per-seed differences (higher is better) with its 95% "
        "t-interval and the number of seeds; holds / contradicted when the interval lies wholly on one side, "
        "inconclusive when it cannot tell (famlab.analysis.verdicts).</p>\n"
        '<table id="claims"><tr><th>paper</th><th>claim</th><th>famlab effect (95% interval, n)</th>'
        f"<th>verdict</th><th>notebook</th></tr>\n{chr(10).join(rows)}\n</table>"
    )


def title_html(title: str) -> str:
    """Titles may hold <sub> markup (no MathJax: the HTML must render offline); plain text here."""
    return html.escape(title.replace("<sub>", "_").replace("</sub>", ""))


def status_html(status: str) -> str:
    """A status line as HTML: escaped, with `backticked` commands as code."""
    parts = html.escape(status).split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: plain text
        return html.escape(status)
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def write_index(
    out: Path,
    entries: list[Entry],
    *,
    profile: str,
    storage: str | None,
    board: Any = None,
    runs_root: str | Path = "runs",
) -> Path:
    """``<out>/index.html``: the claims scoreboard (where ``board`` is given), then one row per
    notebook with its status line and links."""
    from famlab.sweep.spec import redact

    rows = []
    for e in entries:
        link = f'<a href="{html.escape(e.html)}">{title_html(e.title)}</a>' if e.html else title_html(e.title)
        nb_link = f'<a href="{html.escape(e.ipynb)}">ipynb</a>' if e.ipynb else ""
        cls = "fail" if not e.ok else "ok" if e.html else "empty"
        rows.append(
            f'<tr class="{cls}"><td>{link}</td><td><code>{html.escape(e.name)}</code></td>'
            f"<td>{status_html(e.status)}</td><td>{nb_link}</td></tr>"
        )
    where = (
        html.escape(redact(storage))
        if storage
        else f"default SQLite stores under {html.escape(str(runs_root))}/sweeps/"
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>famlab report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 70em; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }}
tr.fail td {{ background: #fdd; }} tr.empty td {{ color: #777; }} code {{ font-size: 90%; }}
tr.holds td {{ background: #e6f4e6; }} tr.contradicted td {{ background: #fbe3e3; }}
tr.inconclusive td {{ background: #f4f4f4; }} small {{ color: #555; }}
</style></head><body>
<h1>famlab report</h1>
<p>Profile <code>{html.escape(profile)}</code>; storage: {where}; generated {time.strftime("%Y-%m-%d %H:%M:%S")}.
Tables as Markdown and LaTeX are in <a href="tables/">tables/</a>.</p>
{scoreboard_html(board, entries) if board is not None or entries else ""}
<h2>Analyses</h2>
<table><tr><th>analysis</th><th>notebook</th><th>status</th><th>executed</th></tr>
{chr(10).join(rows)}
</table></body></html>
"""
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
