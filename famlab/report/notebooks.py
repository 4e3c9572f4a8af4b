"""The analysis notebooks as templates: one per sweep spec (except ``lr_search``) and ``cost``.

The committed ``analysis/*.ipynb`` are generated from these (``famlab report --write-notebooks``),
without outputs and with deterministic cell ids; a test checks that they match.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from famlab.resources import notebook_dir, spec_file

KERNEL = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


@dataclass(frozen=True)
class NotebookSpec:
    name: str  # notebook file stem (and spec name for sweeps)
    title: str
    about: str  # what is varied, what the paper found, how famlab measures it
    evaluate: bool = False  # the spec evaluates each run: add the evaluation table and plot
    state_size: bool = False  # the settings are memory kinds: add the score against the state size
    suite: bool = False  # the spec runs famlab eval --suite (eval_suite): add the heatmaps and effective lengths


# the sweeps that have a notebook, in the report's order; each spec's `notebook:` section (title, about,
# evaluate, suite) is its heading, so a study is described once, in its YAML
SWEEP_ORDER = (
    "fam_length",
    "memory_segment",
    "passkey",
    "stop_gradient",
    "fam_init",
    "fam_position",
    "fam_prev_blocks",
    "position_offset",
    "state_passing",
    "txl_vs_bswa",
    "block_size",
    "passkey_recipe",
    "feedback_memory",
    "memory_kinds",
    "recall_kinds",
    "long_context_suite",
)


def sweep_notebook(name: str) -> NotebookSpec:
    """The notebook of the sweep spec ``name``, from the spec's ``notebook:`` section."""
    from omegaconf import OmegaConf

    section = OmegaConf.to_container(OmegaConf.load(spec_file(name))).get("notebook")
    if not isinstance(section, dict) or not {"title", "about"} <= section.keys():
        raise ValueError(f"sweep spec {name!r} has no notebook: section with title and about")
    flags = {key: bool(section.get(key, False)) for key in ("evaluate", "state_size", "suite")}
    return NotebookSpec(name, section["title"], section["about"], **flags)


SWEEP_NOTEBOOKS = tuple(sweep_notebook(name) for name in SWEEP_ORDER)
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

SETUP = (
    "import matplotlib.pyplot as plt\n"
    "import pandas as pd\n"
    "from IPython.display import Markdown, display\n\n"
    "from famlab import analysis as fa\n\n"
    'pd.set_option("display.precision", 4)\n'
    'pd.set_option("display.max_colwidth", None)\n'
)


def setup_source(load: str) -> str:
    """The first code cell after the parameters: the imports and display options every notebook
    shares, then ``load`` (what this notebook reads)."""
    return SETUP + load


def sweep_cells(nb: NotebookSpec) -> list[tuple[str, str, list[str]]]:
    """(kind, source, tags) of every cell of a sweep notebook."""
    cells = [
        (
            "markdown",
            f"# {nb.title}\n\n{nb.about}\n\n"
            "famlab's objective is usually a loss (lower is better); the paper's numbers are task scores "
            "(higher is better). The tables show famlab's seed means beside the paper's numbers; the agreement "
            "table compares the *orderings*: its column *direction agrees with the paper* is yes when famlab's "
            "score (the negated loss) and the paper's score rank the settings alike (Spearman rho > 0), and "
            "says whether the best setting is the same too.\n\n"
            "Re-run with `famlab report` or `papermill` (parameters below).",
            [],
        ),
        (
            "code",
            "# Parameters (papermill overrides these)\n"
            "storage = None  # Optuna storage URL; None: $FAMLAB_STORAGE or <runs_root>/sweeps/<study>/<profile>.db\n"
            'profile = "tiny"  # the spec profile: tiny (CPU) or paper (cluster)\n'
            f'spec = "{nb.name}"  # a spec name from sweeps/ or a path to a spec YAML\n'
            "runs_root = None  # folder of the default SQLite stores; None: the nearest runs/ with sweeps/ (here or up)\n"
            "tables_dir = None  # if set, the tables are also written there as Markdown and LaTeX",
            ["parameters"],
        ),
        (
            "code",
            setup_source(
                "res = fa.load_sweep(spec, profile, storage=storage, root=runs_root)\n"
                'display(Markdown(f"**{res.summary()}**" if res.ok else f"**{res.summary()}**\\n\\nNothing to analyse."))'
            ),
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
    if nb.state_size:
        cells += [
            ("markdown", "## Accuracy against state size (floats carried from block to block)", []),
            (
                "code",
                'for where in ("all", "beyond"):  # every evaluated length, then those past the training length\n'
                "    table = fa.state_size_table(res, where=where) if res.ok else None\n"
                "    if table is None or table.empty:\n"
                '        display(Markdown(f"No state sizes or no evaluation ({where} lengths) stored on the trials."))\n'
                "        continue\n"
                "    display(table)\n"
                "    fig = fa.plot_state_size(res, where=where)\n"
                "    plt.show()",
                [],
            ),
        ]
    if nb.suite:
        cells += [
            ("markdown", "## Long-context suite: needle heatmaps side by side (mean over seeds)", []),
            (
                "code",
                "fig = fa.plot_suite_heatmaps(res) if res.ok else None\n"
                "if res.ok and fig is None:\n"
                '    display(Markdown("No suite tables stored on the trials."))\n'
                "elif fig is not None:\n"
                "    plt.show()",
                [],
            ),
            ("markdown", "## Effective length (x the training length, mean ± 95% t-interval over seeds)", []),
            ("code", "if res.ok:\n    display(fa.effective_length_table(res))", []),
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


def cost_cells(nb: NotebookSpec) -> list[tuple[str, str, list[str]]]:
    return [
        ("markdown", f"# {nb.title}\n\n{nb.about}", []),
        (
            "code",
            "# Parameters (papermill overrides these)\n"
            "bench_dir = None  # folder of famlab.bench bench_*.json; None: bench/results/, else docs/results/\n"
            "tables_dir = None  # if set, the tables are also written there as Markdown and LaTeX",
            ["parameters"],
        ),
        (
            "code",
            setup_source(
                "bench_dir = fa.bench_dir(bench_dir)\n"
                "bench = fa.load_bench(bench_dir)\n"
                'display(Markdown(f"**{fa.bench_summary(bench, bench_dir)}**"))'
            ),
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

    cells = cost_cells(nb) if nb is COST_NOTEBOOK else sweep_cells(nb)
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


def write_notebooks(directory: str | Path | None = None) -> list[Path]:
    """Write every notebook template into ``directory`` (default: :func:`famlab.resources.notebook_dir`),
    outputs stripped."""
    import nbformat

    directory = Path(directory) if directory is not None else notebook_dir()
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for nb in NOTEBOOKS:
        path = directory / f"{nb.name}.ipynb"
        nbformat.write(build_notebook(nb), path)
        paths.append(path)
    return paths
