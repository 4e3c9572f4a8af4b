"""``famlab report --run RUN_DIR`` (famlab.report.run_page): one run's page, checked against the files of a real
tiny run (trained 2 steps, ``famlab eval`` and ``famlab eval --suite niah``): every table holds exactly the numbers
of final_metrics.json and of the CSVs, the heatmap is the PNG on disk, what was not evaluated is listed, a folder
that is not a run is one error line, and the page renders in Chromium without console errors."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import struct
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from browser import REQUIRE_ENV, Browser, chromium_binary

from famlab.cli import main
from famlab.report import render_run_page
from famlab.runs import RunDir, flatten_metrics

SYMBOLS = ["data.task=passkey", "data.tokenizer=symbols", "data.seq_len=64", "data.val_batches=0"]
SMALL = ["data.passkey_eval_lengths=[1,2]", "data.passkey_eval_depth_buckets=2", "data.passkey_eval_samples=2"]


class Page(HTMLParser):
    """The tables (by id: header row and body rows as cell texts), images and text of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[dict[str, str]] = []
        self.text: list[str] = []
        self.table: list[list[str]] | None = None
        self.cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.table = self.tables.setdefault(attrs.get("id", f"table{len(self.tables)}"), [])
        elif tag == "tr" and self.table is not None:
            self.table.append([])
        elif tag in ("td", "th") and self.table is not None:
            self.cell = []
        elif tag == "img":
            self.images.append(attrs)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None and self.table is not None:
            self.table[-1].append("".join(self.cell))
            self.cell = None
        elif tag == "table":
            self.table = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)
        self.text.append(data)

    def pairs(self, table_id: str) -> dict[str, str]:
        return {row[0]: row[1] for row in self.tables[table_id]}

    def frame(self, table_id: str) -> pd.DataFrame:
        """A table as pandas reads the same cells from a CSV (so types are inferred as for the file)."""
        header, *rows = self.tables[table_id]
        return pd.read_csv(io.StringIO(pd.DataFrame(rows, columns=header).to_csv(index=False)))

    def plain_text(self) -> str:
        return " ".join("".join(self.text).split())


def json_value(cell: str, like):
    """A cell of a key/value table as the value final_metrics.json holds (strings as they are)."""
    return cell if isinstance(like, str) else json.loads(cell)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny run at three stages: trained only, plus ``famlab eval``, plus ``famlab eval --suite niah``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("run_page")
    train = ["train", "preset=tiny", f"out_dir={tmp / 'runs'}", "name=s", "train.max_steps=2", "model.d_model=32"]
    quiet = ["train.checkpoint_every=0", "train.val_every=0", "logger.wandb=disabled", "train.accelerator=cpu"]
    try:
        assert main([*train, *SYMBOLS, *quiet]) == 0
        (run,) = (tmp / "runs" / "s").iterdir()
        trained = shutil.copytree(run, tmp / "trained" / run.name)
        assert main(["eval", str(run), *SMALL, "--device", "cpu"]) == 0
        plain = shutil.copytree(run, tmp / "plain" / run.name)
        assert main(["eval", str(run), *SMALL, "--device", "cpu", "--suite", "niah"]) == 0
    finally:
        torch.set_num_threads(threads)
    return {"suite": run, "plain": plain, "trained": trained}


def test_the_page_holds_exactly_the_runs_numbers(runs, capsys):
    run = runs["suite"]
    capsys.readouterr()
    assert main(["report", "--run", str(run)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {run / 'report.html'}"
    page = Page((run / "report.html").read_text(encoding="utf-8"))
    final = json.loads((run / "final_metrics.json").read_text())
    provenance = json.loads((run / "provenance.json").read_text())

    config = page.pairs("config")
    assert (config["model.attention"], config["model.d_model"], config["data.seq_len"]) == ("fam", "32", "64")
    assert (config["data.tokenizer"], config["train.max_steps"], config["seed"]) == ("symbols", "2", "0")
    assert "Attention: fam." in page.plain_text()
    prov = page.pairs("provenance")
    assert prov["git commit"] == provenance["git"]["commit"] and len(prov["git commit"]) == 40
    assert (prov["host"], prov["started"]) == (provenance["host"], provenance["time"])
    assert prov["command"].startswith("famlab train preset=tiny")

    # final metrics: every scalar of final_metrics.json but its eval section, with the same value
    expected = flatten_metrics({k: v for k, v in final.items() if k != "eval"})
    shown = page.pairs("final-metrics")
    assert set(shown) == set(expected) and "train/loss" in shown
    assert {k: json_value(shown[k], v) for k, v in expected.items()} == expected

    # famlab eval: its summary numbers and its CSV, cell for cell
    plain = {k: v for k, v in final["eval"].items() if not isinstance(v, dict)}
    summary = page.pairs("eval-summary")
    assert {k: json_value(summary[k], v) for k, v in plain.items()} == plain and set(summary) == set(plain)
    pd.testing.assert_frame_equal(page.frame("eval-table"), pd.read_csv(run / "eval.csv"))

    # the suite: effective lengths per member and task as final_metrics.json has them
    niah = final["eval"]["niah"]
    header, *rows = page.tables["summary-niah"]
    table = {row[1]: dict(zip(header, row)) for row in rows}
    assert set(table) == {"(all tasks)", *niah["tasks"]}
    for key in ("threshold", "score", "effective_length", "effective_length_x", "mean_effective_length_x"):
        assert json.loads(table["(all tasks)"][key]) == niah[key], key
    for task, values in niah["tasks"].items():
        assert {k: json.loads(table[task][k]) for k in values} == values, task
    # a table per task: the CSV's rows of that task, without the member and task columns
    csv = pd.read_csv(run / "eval" / "niah.csv")
    for task, rows in csv.groupby("task", sort=False):
        want = rows.drop(columns=["member", "task"]).dropna(axis=1, how="all").reset_index(drop=True)
        pd.testing.assert_frame_equal(page.frame(f"suite-niah-{task}"), want)
    tasks = [t.removeprefix("suite-niah-") for t in page.tables if t.startswith("suite-niah-")]
    assert tasks == list(dict.fromkeys(csv.task)) and len(tasks) == 4

    # the heatmap: the PNG on disk, embedded
    (img,) = page.images
    prefix = "data:image/png;base64,"
    assert img["src"].startswith(prefix)
    embedded = base64.b64decode(img["src"][len(prefix) :], validate=True)
    on_disk = (run / "eval" / "niah_heatmap.png").read_bytes()
    assert png_size(embedded) == png_size(on_disk) and embedded == on_disk
    # what --suite all would add (lm-position reads bytes: not for a symbols run)
    assert f"ruler, mqar: not evaluated: run famlab eval {run} --suite all" in page.plain_text()


def test_the_page_follows_the_files(runs, tmp_path):
    """Negative control for the test above: change a number in final_metrics.json and a cell of a CSV, and
    the page shows the new ones."""
    run = Path(shutil.copytree(runs["suite"], tmp_path / "run"))
    RunDir(run).update_final_metrics(**{"train/loss": 1.25})
    (run / "eval" / "niah.csv").write_text((run / "eval" / "niah.csv").read_text().replace(",64,1.0,", ",65,1.0,"))
    page = Page(render_run_page(run))
    assert page.pairs("final-metrics")["train/loss"] == "1.25"
    assert 65 in set(page.frame("suite-niah-niah_passkey").length)


def test_what_is_missing_is_listed(runs, capsys):
    trained, plain = runs["trained"], runs["plain"]
    page = Page(render_run_page(trained)).plain_text()
    assert page.count(f"not evaluated: run famlab eval {trained}") == 2  # the plain evaluation and the suite
    assert f"not evaluated: run famlab eval {trained} --suite all" in page
    after_eval = Page(render_run_page(plain))
    assert "eval-table" in after_eval.tables and not after_eval.images
    text = after_eval.plain_text()
    assert f"not evaluated: run famlab eval {plain} --suite all" in text and "Suite niah" not in text
    assert text.count(f"not evaluated: run famlab eval {plain}") == 1  # the suite's line only
    (trained / "provenance.json").unlink()
    (trained / "final_metrics.json").write_text("{not json")
    broken = Page(render_run_page(trained)).plain_text()
    assert "no provenance.json" in broken and "final_metrics.json is unreadable" in broken


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err and captured.out == "", captured
    return lines[0]


def test_a_folder_that_is_not_a_run_is_one_error_line(runs, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for bad in (empty, tmp_path / "missing", runs["suite"] / "config.yaml"):
        assert main(["report", "--run", str(bad)]) == 2
        err = one_error_line(capsys)
        assert err == (
            f"famlab: error: --run {str(bad)!r}: not a run directory (no config.yaml there or in a run below it); "
            "expected a folder famlab train made, e.g. runs/NAME/YYYYmmdd-HHMMSS"
        )
    assert list(empty.iterdir()) == []
    corrupt = Path(shutil.copytree(runs["trained"], tmp_path / "corrupt"))
    (corrupt / "config.yaml").write_text("model: [unclosed\n")
    assert main(["report", "--run", str(corrupt)]) == 2
    assert one_error_line(capsys).startswith(
        f"famlab: error: {str(corrupt / 'config.yaml')!r}: not a readable run config: "
    )
    assert not (corrupt / "report.html").exists()
    assert main(["report", "--run", str(runs["trained"]), "--only", "cost"]) == 2
    assert one_error_line(capsys).endswith("takes no --only: only --out DIR goes with --run")
    # a run-name folder means its newest run, as for famlab eval; --out puts the page elsewhere
    assert main(["report", "--run", str(runs["plain"].parent), "--out", str(tmp_path / "pages")]) == 0
    assert "eval-table" in Page((tmp_path / "pages" / "report.html").read_text()).tables


def test_the_run_page_in_a_headless_browser(runs, tmp_path):
    """The page as a reader sees it: it loads without a console error, the heatmap decodes at the PNG's size."""
    binary = chromium_binary()
    if binary is None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail("no chromium on PATH: `make chromium` installs it")
        pytest.skip("no chromium on PATH (`make chromium`)")
    run = runs["suite"]
    page = run / "report.html"
    page.write_text(render_run_page(run), encoding="utf-8")
    broken = tmp_path / "broken.html"  # negative control: a script error and a console error are seen
    broken.write_text('<html><body><script>console.error("boom"); null.x;</script></body></html>')
    width, height = png_size((run / "eval" / "niah_heatmap.png").read_bytes())
    with Browser(binary) as browser:
        facts = browser.page(page.as_uri())
        assert facts["console_errors"] == []
        assert facts["title"] == f"famlab run s/{run.name}" and "Long-context suite" in facts["text"]
        assert facts["images"] == [{"width": width, "height": height}]
        assert "ruler, mqar: not evaluated" in facts["text"]
        errors = browser.page(broken.as_uri())["console_errors"]
        assert errors[0] == "boom" and "TypeError" in errors[1]
