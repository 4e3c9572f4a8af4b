"""The PassKey demo (`make passkey-demo`): `--quick` trains the three variants for a few steps into a
tmp dir and writes a results table and JSON of the promised shape (numbers in [0, 1])."""

from __future__ import annotations

import json
import math
from pathlib import Path

from famlab.config import load_run_config
from famlab.experiments import passkey_demo


def test_receptive_field_and_lengths():
    cfg = load_run_config(passkey_demo.PRESET, ["model.attention=bswa", "model.mem_segment=1"])
    m = cfg.model
    assert passkey_demo.receptive_field(m) == m.n_layers * 2 * m.block_size
    assert passkey_demo.receptive_field(load_run_config(passkey_demo.PRESET, ["model.attention=fam"]).model) is None
    filler, lengths = passkey_demo.eval_lengths(cfg.data)
    assert lengths[0] == cfg.data.seq_len + 1  # 1x: the longest training example
    assert [b - lengths[0] for b in lengths] == [(k - 1) * filler for k in passkey_demo.MULTIPLES]


def test_quick_demo(tmp_path, capsys):
    report = passkey_demo.main(["--quick", "--out-dir", str(tmp_path)])
    (out,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    data = json.loads((out / "results.json").read_text())
    text = (out / "results.md").read_text()
    assert data == json.loads(json.dumps(report))
    assert data["quick"] is True and data["multiples"] == [1, 4, 16]
    assert [v["label"] for v in data["variants"]] == ["BSWA m=0", "BSWA m=1", "FAM m=0"]
    for v in data["variants"]:
        rf = v["receptive_field"]
        if v["attention"] == "bswa":
            assert rf == v["n_layers"] * (v["mem_segment"] + 1) * v["block_size"]
            assert f"| {v['label']} | {rf} |" in text
        else:
            assert rf is None and v["fam_len"] > 0
        assert (tmp_path / out.name / v["key"]).is_dir()
        run_dir = Path(v["run_dir"])
        assert run_dir.parent == out / v["key"]
        for name in ("config.yaml", "provenance.json", "metrics.jsonl", "eval.csv"):
            assert (run_dir / name).is_file(), name
        assert [r["multiple"] for r in v["results"]] == [1, 4, 16]
        lengths = [r["length"] for r in v["results"]]
        assert lengths == sorted(lengths) and len(set(lengths)) == 3
        for r in v["results"]:
            assert r["by_depth"] and r["n"] == sum(d["n"] for d in r["by_depth"])
            for x in [r, *r["by_depth"]]:
                for key in ("accuracy", "digit_accuracy"):
                    assert 0.0 <= x[key] <= 1.0 and not math.isnan(x[key])
    # the Markdown table: a header with the three lengths and one row per variant
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| variant | receptive field"))
    assert all(f"{k}x (" in header for k in (1, 4, 16))
    i = lines.index(header)
    rows = lines[i + 2 : i + 5]
    assert [row.split(" | ")[0] for row in rows] == ["| BSWA m=0", "| BSWA m=1", "| FAM m=0"]
    assert all(row.count("|") == 6 for row in rows) and not lines[i + 5].strip()
    assert "unbounded" in rows[2]
    assert "| variant | receptive field" in capsys.readouterr().out


def test_chosen_variants_multiples_and_a_zero_shot_base(tmp_path):
    """--variants/--multiples pick what runs; a base variant is evaluated as initialised: no run, no steps,
    and its scores equal a direct evaluation of the same weights."""
    import torch

    from famlab.eval import evaluate
    from famlab.train import build_model

    report = passkey_demo.main(
        ["--quick", "--variants", "full-base,fam-m0", "--multiples", "1,2", "--out-dir", str(tmp_path)]
    )
    base, fam = report["variants"]
    assert [base["key"], fam["key"]] == ["full-base", "fam-m0"] and report["multiples"] == [1, 2]
    assert base["train_steps"] == 0 and base["final_train_loss"] is None and fam["train_steps"] == 3
    assert not list(Path(base["run_dir"]).glob("*/config.yaml"))  # evaluated, never trained
    cfg = load_run_config(passkey_demo.PRESET, ["model.attention=full", *passkey_demo.QUICK, "seed=0"])
    torch.manual_seed(0)
    direct = evaluate(
        build_model(cfg).eval(),
        cfg.data,
        block_size=cfg.model.block_size,
        seed=0,
        lengths=[r["length"] for r in base["results"]],
        **passkey_demo.QUICK_EVAL,
    )
    assert [round(a, 6) for a in direct.groupby("length").digit_accuracy.mean()] == [
        round(r["digit_accuracy"], 6) for r in base["results"]
    ]
    try:
        passkey_demo.main(["--quick", "--variants", "bswa-m9"])
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("an unknown variant was accepted")


def test_parallel_jobs_give_the_same_results(tmp_path):
    args = ["--quick", "--variants", "bswa-m1,fam-m0"]
    one = passkey_demo.main([*args, "--out-dir", str(tmp_path / "one")])
    two = passkey_demo.main([*args, "--out-dir", str(tmp_path / "two"), "--jobs", "2"])
    assert [v["key"] for v in two["variants"]] == ["bswa-m1", "fam-m0"]  # the given order, not the run order
    for a, b in zip(one["variants"], two["variants"]):
        assert a["results"] == b["results"]
        assert math.isclose(a["final_train_loss"], b["final_train_loss"], rel_tol=1e-6)
        assert Path(b["run_dir"]).parent == Path(two["out_dir"]) / b["key"]
