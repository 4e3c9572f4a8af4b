"""famlab.bench.common: the benchmarks' shared options and name checks, results writing with --strict,
the RSS high-water helpers, and the code-version record."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys

import pytest

from famlab.bench import common


def _parser() -> argparse.ArgumentParser:
    p = common.benchmark_parser("famlab.test", "A test benchmark.\n\nMore.", "smoke test")
    common.add_options(p, ("seq_len", "d_model", "iters", "out_dir"), d_model={"default": None, "help": "d"})
    return p


def test_shared_options_with_changes_and_quick_defaults():
    p = _parser()
    assert p.description == "A test benchmark."
    args = p.parse_args(["--quick", "--iters", "9"])
    common.fill_defaults(args, {"seq_len": (4096, 1024), "d_model": (256, 64), "iters": (7, 2)})
    assert (args.seq_len, args.d_model, args.iters, args.out_dir) == (1024, 64, 9, "bench/results")
    args = p.parse_args([])
    common.fill_defaults(args, {"seq_len": (4096, 1024), "d_model": (256, 64), "iters": (7, 2)})
    assert (args.seq_len, args.d_model, args.iters) == (4096, 256, 7)
    assert "--seq-len" in p.format_help() and "T (default 4096; --quick 1024)" in p.format_help()


def test_name_list_strips_and_rejects_unknown_names(capsys):
    p = _parser()
    assert common.name_list(p, " a, b ,,a", ("a", "b"), "pair") == ["a", "b", "a"]
    with pytest.raises(SystemExit) as exc:
        common.name_list(p, "a,c", ("a", "b"), "pair")
    assert exc.value.code == 2
    assert "famlab.test: error: unknown pair 'c': expected one of a, b" in capsys.readouterr().err


def _result(status: str) -> dict:
    return {"timestamp": "20260101-000000", "targets": {"t": {"status": status}}, "x": [1, 2]}


def test_report_results_writes_json_and_latest_and_strict_fails_only_on_fail(tmp_path, capsys):
    args = argparse.Namespace(out_dir=str(tmp_path / "out"), strict=True)
    res = common.report_results(_result("PASS"), lambda r: f"# {r['x']}\n", args, json_prefix="p_", latest="l.md")
    path = tmp_path / "out" / "p_20260101-000000.json"
    assert res["json_path"] == str(path) and json.loads(path.read_text()) == _result("PASS")
    assert (tmp_path / "out" / "l.md").read_text() == "# [1, 2]\n"
    assert capsys.readouterr().out == f"# [1, 2]\n\nwrote {path} and {tmp_path / 'out' / 'l.md'}\n"
    common.report_results(_result("n/a"), str, args, json_prefix="p_", latest="l.md")  # n/a is no failure
    with pytest.raises(SystemExit) as exc:
        common.report_results(_result("FAIL"), str, args, json_prefix="p_", latest="l.md")
    assert exc.value.code == 1
    nowhere = argparse.Namespace(out_dir="", strict=False)
    res = common.report_results(_result("FAIL"), str, nowhere, json_prefix="q_", latest="m.md")
    assert "json_path" not in res and not list(tmp_path.glob("**/q_*"))


def test_target_status_and_format_or():
    assert [common.target_status(x) for x in (True, False, None)] == ["PASS", "FAIL", "n/a"]
    assert common.format_or(0.12345, ".3f") == "0.123" and common.format_or(None, ".3f") == "n/a"
    assert common.format_or(None, ".3f", "") == ""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/status")
def test_reset_hwm_brings_the_high_water_mark_down_to_the_current_rss():
    # 256 MiB touched, then unmapped: the high-water mark stays above the RSS. An anonymous mmap, not a
    # bytearray: a test before this one in the same process may have raised malloc's mmap threshold
    # (famlab.bench's allocator settings), and heap memory freed by malloc can stay resident.
    import mmap

    buf = mmap.mmap(-1, 256 * 2**20)
    for i in range(0, len(buf), 4096):
        buf[i] = 1
    buf.close()
    assert common.status_kb("VmHWM") > common.status_kb("VmRSS") + 100 * 1024
    if not common.reset_hwm():
        pytest.skip("/proc/self/clear_refs not writable here")
    assert common.status_kb("VmHWM") <= common.status_kb("VmRSS") + 1024
    with pytest.raises(OSError, match="no VmNope"):
        common.status_kb("VmNope")


def test_source_sha256_of_a_module_and_of_every_file_of_a_package(tmp_path, monkeypatch):
    (tmp_path / "single_mod.py").write_text("X = 1\n")
    pkg = tmp_path / "some_pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("A = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert common.source_sha256("single_mod") == hashlib.sha256(b"X = 1\n").hexdigest()[:16]
    before = common.source_sha256("some_pkg")
    assert len(before) == 16 and before == common.source_sha256("some_pkg")
    (pkg / "sub" / "a.py").write_text("A = 2\n")  # a file below the package changes: so does the hash
    assert common.source_sha256("some_pkg") != before


def test_code_line_and_machine_line():
    code = {"commit": "0123456789abcdef", "dirty": True, "model_py_sha256": "feed"}
    assert common.code_line(code) == "Code: commit 0123456789 with uncommitted changes, famlab/model.py sha256 feed."
    assert common.code_line({**code, "commit": None, "dirty": False}).startswith("Code: commit unknown, famlab")
    mach = {"cpu_model": "CPU", "usable_cores": 2, "torch": "2.x", "torch_threads": 2, "loadavg_start": [1.0]}
    mach["loadavg_end"] = [2.5]
    line = "Machine: CPU, 2 usable cores, torch 2.x, 2 threads, load avg 1.00 -> 2.50"
    assert common.machine_line(mach) == line + "."
    assert common.machine_line({**mach, "malloc": "heap"}, malloc=True) == line + ", malloc heap (FAMLAB_MALLOC)."
    assert common.machine_line(mach, malloc=True).endswith("malloc default (FAMLAB_MALLOC).")
