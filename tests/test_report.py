"""famlab.report: the notebook templates, the committed notebooks, and executing them with
papermill against the real tiny sweep store (tests/analysis_store.py) into HTML with an index."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import nbformat
import pytest
from analysis_store import store, write_bench_file  # noqa: F401
from browser import REQUIRE_ENV, Browser, chromium_binary

from famlab import analysis as fa
from famlab import report
from famlab.report.notebooks import SETUP
from famlab.resources import notebook_dir

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"


def _html_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_committed_notebooks_match_templates():
    for nb in report.NOTEBOOKS:
        path = notebook_dir() / f"{nb.name}.ipynb"
        assert path.exists(), f"missing {path}: run `famlab report --write-notebooks`"
        on_disk = nbformat.read(path, as_version=4)
        assert on_disk == report.build_notebook(nb), f"{path} differs from its template: --write-notebooks"
        assert all(not c.get("outputs") for c in on_disk.cells if c.cell_type == "code")
        tagged = [c for c in on_disk.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1
    specs = {p.stem for p in SWEEPS.glob("*.yaml")} - {"lr_search"}
    assert specs == {nb.name for nb in report.SWEEP_NOTEBOOKS}


def test_notebooks_are_thin_calls_into_famlab_analysis():
    """Every code cell is a few lines; what it computes comes from famlab.analysis (fa.*), whose
    names all exist; every notebook's first code cell after the parameters is the shared setup."""
    for nb in report.NOTEBOOKS:
        code = [c.source for c in report.build_notebook(nb).cells if c.cell_type == "code"]
        assert all(len(src.splitlines()) <= 12 for src in code), nb.name
        for name in re.findall(r"\bfa\.(\w+)", "\n".join(code)):
            assert hasattr(fa, name), f"{nb.name} calls fa.{name}, which famlab.analysis does not have"
        assert code[1].startswith(SETUP) and code[1].count("import") == SETUP.count("import")


def test_write_notebooks_and_a_report_without_the_notebook_folder(tmp_path, monkeypatch):
    written = report.write_notebooks(tmp_path / "nb")
    assert [p.stem for p in written] == [nb.name for nb in report.NOTEBOOKS]
    assert nbformat.read(written[0], as_version=4) == report.build_notebook(report.NOTEBOOKS[0])
    # a checkout whose bench/results/ is empty: the cost page reads the committed docs/results/
    (tmp_path / "bench" / "results").mkdir(parents=True)
    committed = tmp_path / "docs" / "results"
    committed.mkdir(parents=True)
    write_bench_file(committed / "bench_1.json", "20260101-000000", 512, {"bswa": 0.1, "fam": 0.11}, None)
    monkeypatch.chdir(tmp_path / "bench")  # from a subfolder, too
    entries = report.build_report(  # an installed package without analysis/: built from the templates
        tmp_path / "out", only=["cost"], notebook_dir=tmp_path / "missing", quiet=True
    )
    assert [(e.name, e.ok) for e in entries] == [("cost", True)]
    assert entries[0].status == f"1 bench files read from {committed}; sequence lengths [512]; variants ['bswa', 'fam']"
    page = _html_text(tmp_path / "out" / "cost.html")
    assert f"read from {committed}" in page and "cost.html" in _html_text(tmp_path / "out" / "index.html")


def test_inputs_are_found_from_the_working_directory_or_a_parent(tmp_path, monkeypatch):
    """famlab.analysis.locate: runs/ with sweeps/, bench/results/ with results, else docs/results/."""
    monkeypatch.chdir(tmp_path)
    assert fa.runs_root() == Path("runs") and fa.bench_dir() == Path("bench/results")  # nothing anywhere
    (tmp_path / "analysis").mkdir()
    (tmp_path / "runs" / "sweeps").mkdir(parents=True)
    (tmp_path / "analysis" / "runs").mkdir()  # a runs/ without stores is not the one
    assert fa.runs_root(start=tmp_path / "analysis") == tmp_path / "runs"
    assert fa.runs_root("elsewhere", start=tmp_path / "analysis") == Path("elsewhere")  # given: used as is
    for folder in ("bench/results", "docs/results"):
        (tmp_path / folder).mkdir(parents=True)
    assert fa.bench_dir(start=tmp_path / "analysis") == Path("bench/results")  # both empty
    write_bench_file(tmp_path / "docs/results/bench_1.json", "20260101-000000", 512, {"fam": 0.1}, None)
    assert fa.bench_dir(start=tmp_path / "analysis") == tmp_path / "docs/results"
    write_bench_file(tmp_path / "bench/results/bench_2.json", "20260101-000000", 512, {"fam": 0.1}, None)
    assert fa.bench_dir(start=tmp_path / "analysis") == tmp_path / "bench/results"  # fresh results first


def test_a_notebook_opened_in_analysis_finds_the_checkouts_store(store, tmp_path, monkeypatch):  # noqa: F811
    """A notebook run as Jupyter runs it (working directory analysis/, no parameters) reads the
    study from the checkout's runs/sweeps/<study>/<profile>.db, and imports this famlab."""
    db = tmp_path / "runs" / "sweeps" / "fam_length" / "tiny.db"
    db.parent.mkdir(parents=True)
    shutil.copy(store["url"].removeprefix("sqlite:///"), db)
    (tmp_path / "analysis").mkdir()
    cells = report.build_notebook(next(nb for nb in report.NOTEBOOKS if nb.name == "fam_length")).cells[:3]
    cells.append(nbformat.v4.new_code_cell("import famlab\nprint(famlab.__file__)"))
    nb = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": dict(report.KERNEL)})
    nbformat.write(nb, tmp_path / "analysis" / "fam_length.ipynb")
    monkeypatch.chdir(tmp_path / "analysis")
    monkeypatch.delenv("FAMLAB_STORAGE", raising=False)
    report.execute(tmp_path / "analysis" / "fam_length.ipynb", tmp_path / "executed.ipynb", {})
    outputs = [o for c in nbformat.read(tmp_path / "executed.ipynb", as_version=4).cells for o in c.get("outputs", [])]
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    assert f"study fam_length-tiny (Table 5) in sqlite:///{db}: 4 trials (complete 4)" in text
    assert "famlab sweep run" not in text
    assert str(Path(__file__).resolve().parents[1] / "famlab" / "__init__.py") in text  # this checkout's famlab


# the studies the tiny store holds (the other sweeps have no trials there), and the cost notebook
WITH_DATA = ("fam_length", "memory_segment", "cost")


def code_inputs(page: str) -> int:
    """How many code cells of a rendered page show their input (nbconvert marks the others noInput)."""
    cells = re.findall(r'class="jp-Cell jp-CodeCell[^"]*"', page)
    assert cells  # the page has code cells at all
    return sum("jp-mod-noInput" not in c for c in cells)


@pytest.fixture(scope="module")
def full_report(store, tmp_path_factory):  # noqa: F811
    """``famlab report`` over every notebook against the tiny store, run once for the tests below."""
    tmp = tmp_path_factory.mktemp("report")
    bench = tmp / "bench"
    bench.mkdir()
    write_bench_file(
        bench / "bench_1.json", "20260101-000000", 512, {"bswa": 0.1, "fam": 0.11}, {"bswa": 10, "fam": 11}
    )
    write_bench_file(
        bench / "bench_2.json", "20260101-000001", 1024, {"bswa": 0.2, "fam": 0.23}, {"bswa": 19, "fam": 21}
    )
    out = tmp / "reports"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        mp.delenv("FAMLAB_STORAGE", raising=False)
        code = report.main(["--storage", store["url"], "--out", str(out), "--bench-dir", str(bench)])
    return {"out": out, "code": code}


def test_report_executes_notebooks_and_renders_html(store, full_report, tmp_path):  # noqa: F811
    out = full_report["out"]
    assert full_report["code"] == 0
    index = _html_text(out / "index.html")
    names = [nb.name for nb in report.NOTEBOOKS]
    assert {p.stem for p in notebook_dir().glob("*.ipynb")} == set(names)
    for name in names:
        if name not in WITH_DATA:  # no trials: an index line with the command, no empty page
            assert f"not run: <code>famlab sweep run {name} --profile tiny</code>" in index, name
            assert not (out / f"{name}.html").exists() and f'href="{name}.html"' not in index
            continue
        assert f'href="{name}.html"' in index and (out / f"{name}.ipynb").exists()
        nb = nbformat.read(out / f"{name}.ipynb", as_version=4)
        errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
        assert not errors, (name, errors)
        page = _html_text(out / f"{name}.html")  # code hidden by default, Markdown and outputs kept
        assert code_inputs(page) == 0 and "load_sweep" not in page, name
        assert 'class="jp-Cell jp-MarkdownCell' in page and 'class="jp-OutputArea' in page, name
    shown = report.to_html(out / "fam_length.ipynb", tmp_path / "with_code.html", show_code=True)
    assert code_inputs(_html_text(shown)) >= 10 and "load_sweep" in _html_text(shown)  # negative control
    # the index opens with the claims scoreboard: every claim of every spec, linked to its notebook
    board = fa.scoreboard("tiny", storage=store["url"])
    claims_table = index[index.index('<table id="claims">') : index.index("<h2>Analyses</h2>")]
    assert index.index('id="claims"') < index.index("<h2>Analyses</h2>")
    assert claims_table.count('<tr class="') == len(board) >= 12
    for study in board["study"]:  # linked where the study has a page, named where it has none
        linked = f'<a href="{study}.html">{study}</a>' in claims_table
        assert linked == (study in WITH_DATA), study
        assert linked or f"<td>{study}</td>" in claims_table, study
    assert "1 inconclusive" not in index and fa.verdict_counts(board) in index

    fam = _html_text(out / "fam_length.html")
    assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', fam)) >= 2  # ablation and curves
    res = fa.load_sweep("fam_length", "tiny", storage=store["url"])
    for cell in fa.format_mean_ci(fa.ablation_table(res))["val/loss"]:
        assert cell in fam  # e.g. "2.345 ± 0.12"
    for value in fa.paper_table(res)[("famlab", "val/loss")]:
        assert f"{value:.4f}" in fam
    assert "paper Table 5" in fam and "spearman rho" in fam and "interior optimum" in fam
    assert "direction agrees with the paper" in fam and re.search(r"(yes|no) \(Spearman rho=[+-]\d\.\d\d over 2", fam)

    mem = _html_text(out / "memory_segment.html")
    assert "paper Table 11" in mem and "FAM wins (paper)" in mem
    assert len(re.findall(r"<img[^>]+data:image/png", mem)) >= 2

    cost = _html_text(out / "cost.html")
    assert "<img" in cost and "FAM / BSWA" in cost and "154.9" in cost
    tables = {p.name for p in (out / "tables").iterdir()}
    assert {"fam_length_paper.md", "fam_length_paper.tex", "memory_segment_eval.md", "cost_paper.tex"} <= tables
    md = (out / "tables" / "fam_length_paper.md").read_text()
    assert "paper Table 5 / XLSum" in md


def error_notebook(path: Path) -> Path:
    """A notebook whose one code cell failed (an error output), as papermill saves one."""
    error = nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="division by zero")
    error.traceback = ["Traceback (most recent call last)", "ZeroDivisionError: division by zero"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 / 0", outputs=[error])])
    nb.metadata["kernelspec"] = dict(report.KERNEL)
    nbformat.write(nb, path)
    return path


def cell_errors(facts: dict) -> list[str]:
    return [t for t in facts["stderr"] if "Traceback" in t or "Error" in t]


def test_report_in_a_headless_browser(full_report, tmp_path):
    """The report as a reader sees it, in Chromium: the index and a study page load, the plots are
    images that decode (non-zero natural size), no cell error shows, the code is hidden."""
    binary = chromium_binary()
    if binary is None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail("no chromium on PATH: `make chromium` installs it")
        pytest.skip("no chromium on PATH (`make chromium`)")
    out = full_report["out"]
    broken = tmp_path / "broken.html"  # negative controls: an image that does not decode, a failed cell,
    broken.write_text('<html><body><img src="data:image/png;base64,AAAA"></body></html>')
    failed = report.to_html(error_notebook(tmp_path / "failed.ipynb"), tmp_path / "failed.html")
    shown = report.to_html(out / "fam_length.ipynb", tmp_path / "with_code.html", show_code=True)  # code shown
    with Browser(binary) as browser:
        index = browser.page((out / "index.html").as_uri())
        assert index["title"] == "famlab report" and {f"{n}.html" for n in WITH_DATA} <= set(index["links"])
        assert "not run: famlab sweep run passkey --profile tiny" in index["text"]
        assert "passkey.html" not in index["links"]
        fam = browser.page((out / "fam_length.html").as_uri())
        assert "Ablation table" in fam["text"] and fam["markdown"] >= 5
        assert len(fam["images"]) >= 2 and all(i["width"] > 100 and i["height"] > 100 for i in fam["images"])
        assert not cell_errors(fam) and "Traceback" not in fam["text"]
        assert fam["inputs"] == 0 and "load_sweep" not in fam["text"]

        assert browser.page(broken.as_uri())["images"] == [{"width": 0, "height": 0}]
        assert cell_errors(browser.page(failed.as_uri()))
        with_code = browser.page(shown.as_uri())
        assert with_code["inputs"] >= 10 and "load_sweep" in with_code["text"]


def test_cli_dispatches_report(capsys):
    from famlab.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["report", "--help"])
    assert exc.value.code == 0 and "papermill" in capsys.readouterr().out
    assert main(["report", "--only", "nope", "--out", "/tmp/famlab-report-never"]) == 2
    assert "unknown notebook(s) nope" in capsys.readouterr().err


def test_a_sweep_notebook_heading_comes_from_its_spec(tmp_path, monkeypatch):
    from famlab.report.notebooks import sweep_notebook

    monkeypatch.chdir(tmp_path)  # ./sweeps/ comes before the packaged specs
    (tmp_path / "sweeps").mkdir()
    spec = "study: toy\ngrid: {model.fam_len: [1, 2]}\nnotebook:\n  title: Toy title\n  about: What varies.\n"
    (tmp_path / "sweeps" / "toy.yaml").write_text(spec + "  evaluate: true\n")
    nb = sweep_notebook("toy")
    assert (nb.name, nb.title, nb.about, nb.evaluate) == ("toy", "Toy title", "What varies.", True)
    (tmp_path / "sweeps" / "bare.yaml").write_text("study: bare\ngrid: {model.fam_len: [1, 2]}\n")
    with pytest.raises(ValueError, match="sweep spec 'bare' has no notebook: section with title and about"):
        sweep_notebook("bare")
