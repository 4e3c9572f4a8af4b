"""famlab.bench (the training-step benchmark): a --quick smoke run at tiny sizes, the targets at their
thresholds, and the command line's checks."""

from __future__ import annotations

import json

import pytest

from famlab import bench
from famlab.bench.train_step_report import make_targets


def _expected_status(target: dict) -> str:
    return "n/a" if target["value"] is None else ("PASS" if target["value"] >= target["threshold"] else "FAIL")


def test_quick_bench_writes_expected_json(tmp_path, capsys):
    args = ["--quick", "--seq-len", "256", "--block-size", "64", "--fam-len", "4", "--d-model", "64"]
    args += ["--n-heads", "2", "--n-layers", "1", "--batch-size", "2", "--threads", "1", "--iters", "2"]
    args += ["--matmul-size", "128", "--variants", "full,bswa,fam,fam-layer-major,fam-ref", "--out-dir", str(tmp_path)]
    res = bench.main(args)
    out = capsys.readouterr().out
    assert "| variant | impl |" in out
    data = json.loads(next(tmp_path.glob("bench_*.json")).read_text())
    assert (tmp_path / "latest.md").read_text().startswith("# famlab bench")
    assert data["timestamp"] == res["timestamp"]
    assert {"machine", "config", "matmul", "variants", "targets"} <= data.keys()
    assert {"cpu_model", "torch", "torch_threads", "usable_cores"} <= data["machine"].keys()
    assert data["config"]["seq_len"] == 256 and data["config"]["batch_size"] == 2
    assert data["matmul"]["peak_gflops"] > 0
    assert all(s["gflops"] > 0 for s in data["matmul"]["shapes"])
    names = [v["name"] for v in data["variants"]]
    assert names == ["full", "bswa", "fam", "fam-layer-major", "fam-ref"]
    for v in data["variants"]:
        for key in ("step_time_s", "tokens_per_s", "train_flops_computed", "train_flops_useful", "achieved_gflops"):
            assert v[key] > 0, (v["name"], key)
        assert v["peak_mem_mb"] > 0 and v["peak_mem_vs_full"] > 0
        assert v["train_flops_useful"] <= v["train_flops_computed"]
        assert v["tokens_per_s_vs_bswa"] > 0
    assert next(v for v in data["variants"] if v["name"] == "fam-ref")["impl"] == "reference"
    assert next(v for v in data["variants"] if v["name"] == "fam-layer-major")["impl"] == "layer_major"
    assert {"throughput", "flops"} == data["targets"].keys()
    for target in data["targets"].values():  # both measured: each PASS or FAIL by its value, and printed so
        assert target["value"] is not None and target["status"] == _expected_status(target)
        assert f"{target['name']}: {target['value_text']} -> **{target['status']}**" in out
    for v in data["variants"]:  # the matmul ceiling: every FLOP at its shape's measured rate
        assert v["ceiling_step_s"] > 0
        assert v["ceiling_frac_peak"] == pytest.approx(
            v["train_flops_computed"] / v["ceiling_step_s"] / (data["matmul"]["peak_gflops"] * 1e9)
        )
        assert v["frac_of_ceiling"] == pytest.approx(v["ceiling_step_s"] / v["step_time_s"])
    by_name = {v["name"]: v for v in data["variants"]}
    assert data["targets"]["throughput"]["ceiling"] == pytest.approx(
        by_name["bswa"]["ceiling_step_s"] / by_name["fam"]["ceiling_step_s"]
    )
    assert data["targets"]["flops"]["ceiling"] == by_name["fam"]["ceiling_frac_peak"]
    assert "ceiling" in out
    scan = data["fam_scan"]  # layer 0's scan alone, timed on the arguments of a real forward
    assert len(scan["layer_times_s"]) == 2 and scan["layer_time_s"] > 0 and scan["gflops"] > 0
    assert scan["step_time_s"] == pytest.approx(scan["layer_time_s"])  # one layer here
    assert "FAM scan alone" in out


def _row(name: str, tokens_per_s: float, frac: float, ceiling_s: float | None) -> dict:
    return {
        "name": name,
        "tokens_per_s": tokens_per_s,
        "frac_matmul_peak": frac,
        "ceiling_step_s": ceiling_s,
        "ceiling_frac_peak": None if ceiling_s is None else frac * 2,
        "achieved_gflops": 5.0,
    }


@pytest.mark.parametrize("fam_speed, status", [(90.0, "PASS"), (89.9, "FAIL")])
def test_throughput_target_is_fam_over_bswa_tokens_per_s_at_090(fam_speed, status):
    targets = make_targets([_row("bswa", 100.0, 0.4, 2.0), _row("fam", fam_speed, 0.5, 2.5)], peak=10e9)
    t = targets["throughput"]
    assert t["value"] == pytest.approx(fam_speed / 100.0) and t["status"] == status
    assert t["ceiling"] == pytest.approx(2.0 / 2.5)  # BSWA's ceiling step over FAM's
    assert t["value_text"] == f"{fam_speed / 100:.3f}x (matmul ceiling 0.800x)"
    assert targets["flops"]["status"] == "PASS" and targets["flops"]["value"] == 0.5
    assert targets["flops"]["value_text"] == "50.0% (5.0 of 10.0 GFLOP/s) (matmul ceiling 100.0%)"


def test_targets_without_fam_or_bswa_are_not_applicable():
    only_bswa = make_targets([_row("bswa", 100.0, 0.4, None)], peak=1e9)
    assert {t["status"] for t in only_bswa.values()} == {"n/a"}
    assert only_bswa["throughput"]["value_text"] == "n/ax" and only_bswa["flops"]["value_text"] == "n/a"
    below = make_targets([_row("fam", 1.0, 0.49, None)], peak=1e9)["flops"]  # no ceiling measured
    assert below["status"] == "FAIL" and "ceiling" not in below["value_text"]


def test_unknown_variant_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(["--variants", "bswa,nope"])
    assert exc.value.code == 2
    assert "unknown variant 'nope': expected one of full, bswa, txl, fam" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--profile", "fam,bswa"])  # one variant, not a list
    args = bench.parse_args(["--quick", "--variants", " bswa , fam ,"])
    assert args.variant_list == ["bswa", "fam"] and (args.seq_len, args.iters, args.matmul_size) == (1024, 2, 512)
    assert bench.parse_args(["--quick", "--seq-len", "300"]).seq_len == 300  # an explicit value wins
