"""The analysis notebooks as templates: one per sweep spec (except ``lr_search``) and ``cost``.

The committed ``analysis/*.ipynb`` are generated from these (``famlab report --write-notebooks``),
without outputs and with deterministic cell ids; a test checks that they match.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from famlab.resources import notebook_dir

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
            'bench_dir = "bench/results"  # folder of famlab.bench JSON results (bench_*.json)\n'
            "tables_dir = None  # if set, the tables are also written there as Markdown and LaTeX",
            ["parameters"],
        ),
        (
            "code",
            setup_source(
                'bench = fa.load_bench(bench_dir)\ndisplay(Markdown(f"**{fa.bench_summary(bench, bench_dir)}**"))'
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
