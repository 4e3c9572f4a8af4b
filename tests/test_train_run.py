"""famlab.train.run: a tiny run learns and writes its run directory; checkpoints load with weights_only;
the LR and RSP schedules; resuming reproduces the uninterrupted run; DDP on CPU; train.compile."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_runs import RECALL, TINY, rows_with, tiny, train_losses

from famlab.config import load_run_config_file
from famlab.runs import RunDir
from famlab.train import FamLightningModule, load_checkpoint, load_model, train

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- one tiny run, many checks

N_LEARN = 40


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    cfg = tiny(
        tmp,
        f"train.max_steps={N_LEARN}",
        "train.lr=3e-3",
        "train.warmup_steps=5",
        "train.schedule=cosine",
        "train.min_lr_ratio=0.5",
        "train.val_every=20",
        "train.checkpoint_every=20",
        "train.rsp_start_step=10",
        "train.rsp_ramp_steps=10",
        "model.rsp_prob=0.8",
        "name=learn",
    )
    return cfg, train(cfg)


def test_tiny_run_learns(learned):
    _, run_dir = learned
    losses = train_losses(run_dir)
    assert sorted(losses) == list(range(1, N_LEARN + 1))
    first = sum(losses[s] for s in range(1, 6)) / 5
    last = sum(losses[s] for s in range(N_LEARN - 4, N_LEARN + 1)) / 5
    assert all(math.isfinite(v) for v in losses.values())
    assert last < first - 0.8, (first, last)
    val = rows_with(run_dir, "val/loss")
    assert sorted(val) == [20, 40] and val[40] < val[20]
    final = json.loads((run_dir / "final_metrics.json").read_text())
    assert final["step"] == N_LEARN and math.isfinite(final["val/loss"]) and final["val/loss"] < first


def test_run_directory_contents(learned):
    cfg, run_dir = learned
    assert run_dir.parent == Path(cfg.out_dir) / "learn" and len(run_dir.name) == len("20260101-120000")
    assert load_run_config_file(run_dir / "config.yaml") == cfg
    prov = json.loads((run_dir / "provenance.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode == 0:
        assert prov["git"]["commit"] == head.stdout.strip()
        assert isinstance(prov["git"]["dirty"], bool) and isinstance(prov["git"]["diff"], str)
    for pkg in ("torch", "lightning", "optuna", "omegaconf", "wandb", "pandas", "numpy", "famlab"):
        assert prov["packages"][pkg], pkg
    assert {"transformers", "peft"} <= prov["packages"].keys()  # the hf extra's, None where not installed
    assert prov["seed"] == cfg.seed and prov["host"] and prov["python"] and prov["time"] and prov["command"]
    assert prov["malloc"] in ("heap", "unavailable")  # a CPU run keeps freed memory for reuse (famlab.allocator)
    rows = RunDir(run_dir).read_metrics()
    keys = set().union(*rows)
    for key in ("train/loss", "train/lr", "train/tokens_per_s", "train/rsp_prob", "train/grad_norm", "val/loss"):
        assert key in keys, key
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["last.ckpt", "step00000020.ckpt", "step00000040.ckpt"]
    assert not (run_dir / "wandb").exists()  # logger.wandb=disabled writes nothing


def test_checkpoint_loads_weights_only(learned):
    cfg, run_dir = learned
    for path in (run_dir / "checkpoints").iterdir():
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert ckpt["famlab"]["config"] == cfg.to_dict()
        assert ckpt["global_step"] in (20, 40) and "optimizer_states" in ckpt and "lr_schedulers" in ckpt
        assert ckpt["FamDataModule"]["batches_served"] == ckpt["global_step"]
    model, loaded_cfg = load_model(run_dir)
    assert loaded_cfg == cfg and not model.training
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert torch.equal(model.tok_emb.weight, ckpt["state_dict"]["model.tok_emb.weight"])
    assert torch.isfinite(model(torch.zeros(1, 20, dtype=torch.long))).all()


def test_lr_and_rsp_schedules_applied(learned):
    cfg, run_dir = learned
    lrs, rsp = rows_with(run_dir, "train/lr"), rows_with(run_dir, "train/rsp_prob")
    for step in range(1, N_LEARN + 1):  # logged before the update of optimizer step `step`
        assert lrs[step] == pytest.approx(cfg.train.lr * cfg.train.lr_factor_at(step - 1), rel=1e-5)
        assert rsp[step] == pytest.approx(cfg.train.rsp_prob_at(step - 1, 0.8), abs=1e-6)
    assert all(rsp[s] == 0.0 for s in range(1, 11))  # before rsp_start_step
    assert 0 < rsp[11] < rsp[15] < 0.8
    assert all(rsp[s] == pytest.approx(0.8) for s in range(20, N_LEARN + 1))  # after the ramp


@pytest.mark.parametrize(
    "extra",
    [
        # FAM with RPO and RSP on, a curriculum that changes seq_len after the stop, AdamW
        [
            "train.schedule=constant",
            "train.warmup_steps=2",
            "data.seq_len_schedule=[[0,112],[4,128]]",
            "model.rsp_prob=0.5",
        ],
        # stateful recall (the carried state crosses the stop mid-episode), Adafactor
        [*RECALL, "data.stateful=true", "data.episode_windows=4", "train.optimizer=adafactor", "train.lr=1e-2"],
    ],
    ids=["passkey", "stateful-recall"],
)
def test_resume_matches_uninterrupted(tmp_path, extra):
    common = [*extra, "train.checkpoint_every=3", "train.val_every=3"]
    full = train(tiny(tmp_path, *common, "train.max_steps=6", "name=full"))
    half = train(tiny(tmp_path, *common, "train.max_steps=3", "name=half"))
    resumed = train(tiny(tmp_path, *common, "train.max_steps=6", "name=resumed", f"resume={half}"))
    from_periodic = train(
        tiny(tmp_path, *common, "train.max_steps=6", "name=mid", f"resume={full}/checkpoints/step00000003.ckpt")
    )
    want = train_losses(full)
    assert sorted(want) == [1, 2, 3, 4, 5, 6] and all(math.isfinite(v) for v in want.values())
    assert train_losses(half) == {s: want[s] for s in (1, 2, 3)}
    for run in (resumed, from_periodic):
        got = train_losses(run)
        assert sorted(got) == [4, 5, 6]
        for step in (4, 5, 6):
            assert got[step] == pytest.approx(want[step], rel=1e-6, abs=1e-7), (step, got, want)
        # the data stream continued where it stopped (the curriculum position included)
        assert rows_with(run, "train/seq_len") == {s: rows_with(full, "train/seq_len")[s] for s in (4, 5, 6)}
        assert rows_with(run, "train/lr") == {s: rows_with(full, "train/lr")[s] for s in (4, 5, 6)}
        assert rows_with(run, "val/loss")[6] == pytest.approx(rows_with(full, "val/loss")[6], rel=1e-6)
        last = load_checkpoint(run / "checkpoints" / "last.ckpt")
        assert last["global_step"] == 6 and last["FamDataModule"]["batches_served"] == 6
        # the last-50-steps mean covers the steps before the stop too (kept in the checkpoint)
        final = json.loads((run / "final_metrics.json").read_text())["train/loss_recent_mean"]
        assert final == pytest.approx(json.loads((full / "final_metrics.json").read_text())["train/loss_recent_mean"])
    if "data.stateful=true" in extra:
        assert load_checkpoint(half / "checkpoints" / "last.ckpt")["famlab"]["carried_state"] is not None


def test_resume_applies_the_new_optimizer_and_schedule_settings(tmp_path):
    # `resume=RUN train.max_steps=N` with a cosine schedule (and here a new lr and weight decay): from the
    # first resumed step on, the LR is the new config's schedule at that step, not the old run's value
    common = ["train.schedule=cosine", "train.warmup_steps=1", "train.checkpoint_every=3", "train.val_every=0"]
    half = train(tiny(tmp_path, *common, "train.lr=3e-3", "train.max_steps=3", "name=half"))
    new = tiny(tmp_path, *common, "train.lr=1e-3", "train.weight_decay=0.0", "train.max_steps=6", "name=resumed")
    resumed = train(
        tiny(
            tmp_path,
            *common,
            "train.lr=1e-3",
            "train.weight_decay=0.0",
            "train.max_steps=6",
            "name=resumed",
            f"resume={half}",
        )
    )
    lrs = rows_with(resumed, "train/lr")
    assert sorted(lrs) == [4, 5, 6]
    for step in (4, 5, 6):  # logged step k ran at factor(k - 1)
        assert lrs[step] == pytest.approx(1e-3 * new.train.lr_factor_at(step - 1), rel=1e-9), (step, lrs)
    groups = load_checkpoint(resumed / "checkpoints" / "last.ckpt")["optimizer_states"][0]["param_groups"]
    assert all(g["weight_decay"] == 0.0 and g["initial_lr"] == 1e-3 for g in groups)
    assert load_checkpoint(resumed / "checkpoints" / "last.ckpt")["global_step"] == 6


def test_ddp_two_processes_on_cpu(tmp_path):
    """`famlab train` with strategy=ddp: Lightning re-launches the command as rank 1 (gloo)."""
    args = [*TINY, f"out_dir={tmp_path}", "name=ddp", "train.devices=2", "train.strategy=ddp"]
    args += ["train.max_steps=4", "train.checkpoint_every=2", "train.val_every=2"]
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    env.pop("FAMLAB_RUN_DIR", None)
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    proc = subprocess.run(
        [sys.executable, "-m", "famlab.cli", "train", "preset=tiny", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "ddp").iterdir()
    losses = train_losses(run_dir)
    assert sorted(losses) == [1, 2, 3, 4] and all(math.isfinite(v) for v in losses.values())
    assert rows_with(run_dir, "train/tokens")[4] == 4 * 2 * 4 * 128  # steps x ranks x batch x seq_len
    assert math.isfinite(rows_with(run_dir, "val/loss")[4])
    for name in ("last.ckpt", "step00000002.ckpt", "step00000004.ckpt"):
        assert load_checkpoint(run_dir / "checkpoints" / name)["global_step"] in (2, 4)
    assert json.loads((run_dir / "final_metrics.json").read_text())["step"] == 4
    distributed = json.loads((run_dir / "provenance.json").read_text())["distributed"]
    assert distributed["cluster_environment"] == "LightningEnvironment"  # Lightning launched rank 1 itself
    assert distributed["world_size"] == 2 and distributed["slurm"] is None


@pytest.mark.parametrize(
    "data,compile_keys",
    [
        # the scan compiled in the mode that replays CUDA graphs on a GPU; on a CPU the same code path
        # runs (step marks, the carried state copied out of the graphs' buffers); stateful recall
        (
            [*RECALL, "data.stateful=true", "data.episode_windows=2"],
            ["train.compile=fam_scan", "train.compile_mode=reduce-overhead"],
        ),
        pytest.param([], ["train.compile=model"], marks=pytest.mark.slow),  # 2 min of compiling on 2 cores
    ],
    ids=["fam_scan-reduce-overhead-stateful", "model"],
)
def test_compiled_training_matches_eager(tmp_path, data, compile_keys):
    common = [*data, "train.max_steps=3", "train.val_every=3"]
    eager = train(tiny(tmp_path, *common, "name=eager"))
    compiled = train(tiny(tmp_path, *common, *compile_keys, "name=compiled"))
    want, got = train_losses(eager), train_losses(compiled)
    assert sorted(want) == [1, 2, 3]
    assert got == pytest.approx(want, rel=1e-4, abs=1e-5)
    assert rows_with(compiled, "val/loss")[3] == pytest.approx(rows_with(eager, "val/loss")[3], rel=1e-4)
    cfg = load_run_config_file(compiled / "config.yaml")
    assert [f"train.compile={cfg.train.compile}"] == compile_keys[:1]
    model = FamLightningModule(cfg).model
    if cfg.train.compile == "fam_scan":  # compiled per layer; the forward itself is not
        assert all("fam_scan" in vars(layer) for layer in model.layers) and model._compiled_call_impl is None
    else:
        assert model._compiled_call_impl is not None and not any("fam_scan" in vars(x) for x in model.layers)
