"""``famlab report --run RUN_DIR``: one run's report page, a single self-contained HTML file.

The page (default ``RUN_DIR/report.html``; ``--out DIR`` writes ``DIR/report.html``) shows, from the files
in the run directory (:class:`famlab.runs.RunDir`; nothing is recomputed, no torch, no checkpoint read):

* the config summary: the attention kind and the model, data and train keys that tell runs apart
  (:data:`CONFIG_KEYS`, those the config has), from ``config.yaml``;
* provenance: git commit, branch, uncommitted changes, machine, start time and command, from ``provenance.json``;
* final metrics: ``final_metrics.json`` flattened (``train/loss``, ...), without its ``eval`` section;
* ``famlab eval``: the summary numbers of the ``eval`` section and the table of its CSV (``eval.csv``);
* ``famlab eval --suite``: per suite file ``eval/<suite>.csv``, the effective lengths and scores of its
  members' sections in ``final_metrics.json`` (per member and per task), the needle heatmap
  ``eval/<suite>_heatmap.png`` embedded as a base64 data URI, and one table per task (the rows of that task,
  without the columns only other tasks fill).

Numbers are shown exactly as the files hold them: table cells are the CSV's text, metric values their JSON
text (no rounding, so the page and the files never disagree). What is missing is listed instead of failing:
no suite evaluated reads ``not evaluated: run `famlab eval RUN --suite all``` (the members that a suite run
would add, where some are there), no plain evaluation ``not evaluated: run `famlab eval RUN```, a missing or
unreadable file says so. A RUN_DIR that is not a run (no ``config.yaml``; a run-name folder means its newest
run, as for ``famlab eval``) or an unreadable ``config.yaml`` raises ``ValueError`` with one line.
The page has no script and no external resource: it opens offline, in any browser, from anywhere.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import time
from pathlib import Path
from typing import Any

from famlab.config.metrics import SUITES
from famlab.runs import RunDir, flatten_config, flatten_metrics

__all__ = ["PAGE_FILE", "render_run_page", "resolve_run", "write_run_page"]

PAGE_FILE = "report.html"
CONFIG_KEYS = (  # the keys that tell runs apart (the rest is in config.yaml)
    "model.attention", "model.vocab_size", "model.d_model", "model.n_layers", "model.n_heads", "model.block_size",
    "model.mem_segment", "model.fam_len", "model.txl_window", "model.init_from",
    "data.task", "data.tokenizer", "data.seq_len", "data.batch_size", "data.stateful",
    "train.max_steps", "train.lr", "train.optimizer", "train.schedule", "train.precision",
    "seed", "preset", "name",
)  # fmt: skip
SUITE_MEMBERS = ("ruler", "mqar", "lm-position")  # what `--suite all` evaluates (niah is part of ruler)
STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 80em; }
table { border-collapse: collapse; margin: 0.5em 0 1em 0; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; font-size: 90%; }
th { background: #f4f4f4; } code { font-size: 90%; } p.missing { color: #a40; }
img.heatmap { max-width: 100%; border: 1px solid #ddd; }
"""


def resolve_run(run_dir: str | Path) -> RunDir:
    """The run of ``run_dir`` (a run-name folder: its newest run); ``ValueError`` naming it otherwise."""
    try:
        return RunDir.resolve(run_dir)
    except FileNotFoundError:
        raise ValueError(
            f"--run {str(run_dir)!r}: not a run directory (no config.yaml there or in a run below it); "
            "expected a folder famlab train made, e.g. runs/NAME/YYYYmmdd-HHMMSS"
        ) from None


def json_text(value: Any) -> str:
    """A metric value as final_metrics.json holds it (strings without quotes)."""
    return value if isinstance(value, str) else json.dumps(value)


def code(text: str) -> str:
    return f"<code>{html.escape(text)}</code>"


def missing(text: str) -> str:
    """A line for what is not there; `backticked` parts as code."""
    parts = text.split("`")
    return '<p class="missing">' + "".join(code(p) if i % 2 else html.escape(p) for i, p in enumerate(parts)) + "</p>"


def key_value_table(rows: dict[str, Any], table_id: str) -> str:
    body = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(json_text(v))}</td></tr>" for k, v in rows.items())
    return f'<table id="{html.escape(table_id)}">\n{body}\n</table>'


def rows_table(header: list[str], rows: list[list[str]], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table id="{html.escape(table_id)}">\n<tr>{head}</tr>\n{body}\n</table>'


def read_csv_text(path: Path) -> tuple[list[str], list[list[str]]]:
    """A CSV's header and rows as the text in the file (so the page shows exactly its numbers); a short row
    is padded with empty cells."""
    with path.open(newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    return header, [r + [""] * (len(header) - len(r)) for r in rows]


def csv_table(path: Path, table_id: str) -> str:
    try:
        header, rows = read_csv_text(path)
    except (OSError, ValueError, csv.Error) as err:
        return missing(f"{path}: unreadable ({err})")
    return rows_table(header, rows, table_id)


def task_tables(path: Path, suite: str) -> str:
    """One table per task of a suite CSV: that task's rows, without ``member``, ``task`` and the columns it
    leaves empty (columns other tasks brought in)."""
    try:
        header, rows = read_csv_text(path)
    except (OSError, ValueError, csv.Error) as err:
        return missing(f"{path}: unreadable ({err})")
    if "task" not in header:
        return rows_table(header, rows, f"suite-{suite}")
    t = header.index("task")
    out = []
    for task in dict.fromkeys(r[t] for r in rows):
        mine = [r for r in rows if r[t] == task]
        keep = [i for i, h in enumerate(header) if h not in ("member", "task") and any(r[i] != "" for r in mine)]
        table = rows_table([header[i] for i in keep], [[r[i] for i in keep] for r in mine], f"suite-{suite}-{task}")
        out.append(f"<h4>{html.escape(task)}</h4>\n{table}")
    return "\n".join(out)


def png_img(path: Path, alt: str) -> str:
    """The PNG embedded as a data URI (the page stays one file)."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img class="heatmap" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def summary_table(sections: dict[str, dict], table_id: str) -> str:
    """Effective lengths and scores: a row per member (``task`` = ``(all tasks)``) and one per task, a column
    per number the sections hold, each as its JSON text."""
    rows: list[dict[str, Any]] = []
    for member, section in sections.items():
        numbers = {k: v for k, v in section.items() if not isinstance(v, dict | str)}
        rows.append({"member": member, "task": "(all tasks)", **numbers})
        tasks = section.get("tasks")
        for task, values in (tasks if isinstance(tasks, dict) else {}).items():
            rows.append({"member": member, "task": task, **(values if isinstance(values, dict) else {})})
    header = list(dict.fromkeys(k for r in rows for k in r))
    return rows_table(header, [[json_text(r[h]) if h in r else "" for h in header] for r in rows], table_id)


def suite_sections(evaluation: dict[str, Any], suite: str) -> dict[str, dict]:
    """The sections of final_metrics.json's ``eval`` that ``--suite suite`` wrote: its members' (and for a
    suite of several members, its own), those whose ``csv`` is this suite's file."""
    names = (*SUITES[suite], suite) if len(SUITES[suite]) > 1 else SUITES[suite]
    found = {}
    for name in names:
        section = evaluation.get(name)
        if isinstance(section, dict) and Path(str(section.get("csv", ""))).name == f"{suite}.csv":
            found[name] = section
    return found


def read_json(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(the file's mapping, None) or (None, why it is not there)."""
    if not path.is_file():
        return None, f"no {path.name}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return None, f"{path.name} is unreadable: {err}"
    if not isinstance(data, dict):
        return None, f"{path.name} is not a JSON object"
    return data, None


def config_section(config: dict[str, Any]) -> str:
    flat = flatten_config(config)
    shown = {k: flat[k] for k in CONFIG_KEYS if k in flat and flat[k] is not None}
    attention = flat.get("model.attention")
    head = f"<p>Attention: <b>{html.escape(str(attention))}</b>.</p>" if attention is not None else ""
    return f"<h2>Config</h2>\n{head}\n{key_value_table(shown, 'config')}\n<p>The whole config: config.yaml.</p>"


def provenance_section(run: RunDir) -> str:
    prov, why = read_json(run.provenance_path)
    if prov is None:
        return f"<h2>Provenance</h2>\n{missing(why or '')}"
    git = prov.get("git") if isinstance(prov.get("git"), dict) else {}
    cuda = prov.get("cuda") if isinstance(prov.get("cuda"), dict) else {}
    command = prov.get("command")
    rows = {
        "git commit": git.get("commit"),
        "git branch": git.get("branch"),
        "uncommitted changes": git.get("dirty"),
        "host": prov.get("host"),
        "platform": prov.get("platform"),
        "python": prov.get("python"),
        "cuda devices": ", ".join(map(str, cuda["devices"])) if cuda.get("devices") else "none" if cuda else None,
        "started": prov.get("time"),
        "command": " ".join(map(str, command)) if isinstance(command, list) else command,
    }
    return f"<h2>Provenance</h2>\n{key_value_table({k: v for k, v in rows.items() if v is not None}, 'provenance')}"


def plain_eval_section(run: RunDir, evaluation: dict[str, Any]) -> str:
    plain = {k: v for k, v in evaluation.items() if not isinstance(v, dict)}
    parts = ["<h2>Evaluation (<code>famlab eval</code>)</h2>"]
    if not plain:
        return "\n".join([*parts, missing(f"not evaluated: run `famlab eval {run.path}`")])
    parts.append(key_value_table(plain, "eval-summary"))
    written = Path(str(plain.get("csv", "")))
    candidates = [written, run.path / written, run.eval_path]  # as written (relative to where eval ran), then here
    found = next((p for p in candidates if str(p) not in ("", ".") and p.is_file()), None)
    parts.append(csv_table(found, "eval-table") if found else missing(f"no evaluation table ({plain.get('csv')})"))
    return "\n".join(parts)


def suite_section(run: RunDir, evaluation: dict[str, Any], tokenizer: str) -> str:
    parts = ["<h2>Long-context suite (<code>famlab eval --suite</code>)</h2>"]
    suites = [s for s in SUITES if (run.eval_dir / f"{s}.csv").is_file()]
    evaluated = {m for m, s in evaluation.items() if isinstance(s, dict)}
    applicable = [m for m in SUITE_MEMBERS if m != "lm-position" or tokenizer == "bytes"]  # lm-position: bytes only
    absent = [m for m in applicable if m not in evaluated]
    command = f"famlab eval {run.path} --suite all"
    if not suites:
        parts.append(missing(f"not evaluated: run `{command}`"))
    elif absent:
        parts.append(missing(f"{', '.join(absent)}: not evaluated: run `{command}`"))
    for suite in suites:
        parts.append(f'<h3 id="suite-{html.escape(suite)}">Suite {code(suite)}</h3>')
        sections = suite_sections(evaluation, suite)
        if sections:
            parts += ["<p>Effective length (tokens; _x: in multiples of the training seq_len):</p>"]
            parts.append(summary_table(sections, f"summary-{suite}"))
        else:
            parts.append(missing(f"no summary of {suite} in final_metrics.json"))
        heatmap = run.eval_dir / f"{suite}_heatmap.png"
        if heatmap.is_file():
            parts.append(png_img(heatmap, f"{suite}: score by length and depth"))
        else:
            parts.append(missing(f"no heatmap ({heatmap.name}: no task of {suite} has a needle depth)"))
        parts.append(task_tables(run.eval_dir / f"{suite}.csv", suite))
    return "\n".join(parts)


def render_run_page(run_dir: str | Path) -> str:
    """The HTML of ``run_dir``'s report page (see the module docstring)."""
    run = resolve_run(run_dir)
    config = run.read_config()  # a corrupt config.yaml: ValueError naming it
    final, why = read_json(run.final_metrics_path)
    metrics = {k: v for k, v in (final or {}).items() if k != "eval"}
    evaluation = final.get("eval") if final and isinstance(final.get("eval"), dict) else {}
    tokenizer = str(flatten_config(config).get("data.tokenizer", "bytes"))
    final_html = key_value_table(flatten_metrics(metrics), "final-metrics") if final is not None else missing(why or "")
    title = f"famlab run {run.path.parent.name}/{run.path.name}"
    body = "\n".join(
        [
            f"<h1>{html.escape(title)}</h1>",
            f"<p>Run directory {code(str(run.path))}; page written {html.escape(time.strftime('%Y-%m-%d %H:%M:%S'))} "
            f"by {code('famlab report --run')}.</p>",
            config_section(config),
            provenance_section(run),
            f"<h2>Final metrics</h2>\n{final_html}",
            plain_eval_section(run, evaluation),
            suite_section(run, evaluation, tokenizer),
        ]
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>\n'
        f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def write_run_page(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the page to ``out/report.html`` (default: the run directory's ``report.html``); its path."""
    page = render_run_page(run_dir)
    folder = Path(out) if out is not None else resolve_run(run_dir).path
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PAGE_FILE
    path.write_text(page, encoding="utf-8")
    return path
