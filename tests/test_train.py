"""Training runs: a tiny run learns and writes its run directory; resuming reproduces the
uninterrupted run; checkpoints load with weights_only; wandb offline/disabled; DDP on CPU;
stateful training carries a detached state; the RSP schedule."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from famlab.config import load_run_config, load_run_config_file
from famlab.data import build_datamodule
from famlab.model import FamState
from famlab.train import (
    FamLightningModule,
    load_checkpoint,
    load_model,
    read_metrics,
    train,
    wandb_mode,
    weighted_ce,
)

REPO = Path(__file__).resolve().parents[1]

# d_model 32, 2 layers, block 16; passkey needs >= 99 tokens without the instruction sentence
TINY = [
    "model.d_model=32",
    "model.n_layers=2",
    "model.n_heads=4",
    "model.block_size=16",
    "model.mem_segment=1",
    "model.fam_len=2",
    "data.task=passkey",
    "data.batch_size=4",
    "data.seq_len=128",
    "data.passkey_instruction=false",
    "data.val_batches=1",
    "logger.wandb=disabled",
    "train.accelerator=cpu",
    "train.log_every=1",
    "train.val_every=0",
    "train.checkpoint_every=0",
]
RECALL = ["data.task=recall", "data.seq_len=64", "data.recall_num_pairs=4"]


def tiny(tmp: Path, *extra: str):
    return load_run_config("tiny", [*TINY, f"out_dir={tmp}", *extra])


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(run_dir) if "train/loss" in r}


def rows_with(run_dir: Path, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in read_metrics(run_dir) if key in r}


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
    rows = read_metrics(run_dir)
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


def test_rsp_schedule_sets_model_attribute(tmp_path, monkeypatch):
    cfg = tiny(tmp_path, "train.rsp_start_step=3", "train.rsp_ramp_steps=2", "model.rsp_prob=0.6")
    module = FamLightningModule(cfg)
    assert module.rsp.prob == 0.6  # the config value, before any step
    for step, want in [(0, 0.0), (2, 0.0), (3, 0.3), (4, 0.6), (50, 0.6)]:
        monkeypatch.setattr(FamLightningModule, "global_step", property(lambda self, s=step: s))
        assert module.set_rsp_prob() == pytest.approx(want)
        assert module.rsp.prob == pytest.approx(want)


# ---------------------------------------------------------------- resume


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


def test_accumulated_steps_log_the_weighted_mean_of_their_micro_batches(tmp_path, monkeypatch):
    seen = []
    train_loss = FamLightningModule.train_loss

    def spy(self, batch):
        loss = train_loss(self, batch)
        seen.append((float(loss.detach()), float(self.last_weight)))
        return loss

    monkeypatch.setattr(FamLightningModule, "train_loss", spy)
    run = train(tiny(tmp_path, "train.accumulate_grad_batches=2", "train.max_steps=2", "train.val_every=0"))
    assert len(seen) == 4
    logged = train_losses(run)
    for step, ((l1, w1), (l2, w2)) in zip((1, 2), (seen[0:2], seen[2:4])):
        assert w1 > 0 and w2 > 0 and l1 != l2
        assert logged[step] == pytest.approx((l1 * w1 + l2 * w2) / (w1 + w2), rel=1e-5)
    assert rows_with(run, "train/weight")[2] == pytest.approx(seen[2][1] + seen[3][1])


# ---------------------------------------------------------------- stateful training


def test_stateful_state_is_carried_detached_and_reset(tmp_path):
    cfg = tiny(tmp_path, *RECALL, "data.stateful=true", "data.episode_windows=2", "model.rsp_prob=0")
    module = FamLightningModule(cfg).train()
    dm = build_datamodule(cfg.data, vocab_size=cfg.model.vocab_size, block_size=cfg.model.block_size, seed=0)
    batches = [dm.train_batch(k) for k in range(4)]
    assert [bool(b["new_episode"]) for b in batches] == [True, False, True, False]
    assert batches[1]["weight"].sum() > 0  # the second window holds the queries

    seen = []
    forward = module.model.forward

    def spy(tokens, **kw):
        seen.append(kw.get("state"))
        return forward(tokens, **kw)

    module.model.forward = spy
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    for batch in batches:
        loss = module.train_loss(batch)
        assert torch.isfinite(loss)
        loss.backward()  # would fail on a second pass through an earlier window's graph
        opt.step()
        opt.zero_grad()
        state = module.carried
        assert isinstance(state, FamState)
        tensors = [t for ls in state.layers for t in vars(ls).values() if t is not None]
        assert tensors and all(t.grad_fn is None and not t.requires_grad for t in tensors)
    assert all(seen[i].pos == 0 and seen[i].fam_fresh for i in (0, 2))  # new_episode: a fresh start
    assert isinstance(seen[1], FamState) and isinstance(seen[3], FamState)
    assert seen[1].pos == cfg.data.seq_len  # the state after window 0

    # carrying the state changes the loss of the second window
    module.model.forward = forward
    module.carried = None
    module.train_loss(batches[0])
    with torch.no_grad():
        carried = module.train_loss(batches[1])
        module.carried = None
        fresh, _, _ = module._run(batches[1], None, True)
    assert not torch.allclose(carried, fresh / batches[1]["weight"].sum())


def test_steps_without_targets_change_no_weight(tmp_path):
    """Stateful recall, two windows per episode: window 0 of each episode has no targets. Step 3
    (episode 2's first window) follows a step with targets, so AdamW has momentum and decays the
    weights; a step without targets must still leave every weight as it was."""
    base = [*RECALL, "data.stateful=true", "data.episode_windows=2", "model.rsp_prob=0"]
    base += ["train.warmup_steps=0", "train.schedule=constant", "train.weight_decay=0.1", "train.optimizer=adamw"]
    base += ["train.val_every=0"]  # the same LR at every step of the 1-, 2- and 3-step runs
    weights, finals = {}, {}
    for steps in (1, 2, 3):
        cfg = tiny(tmp_path / str(steps), *base, f"train.max_steps={steps}")
        run_dir = train(cfg)
        model, _ = load_model(run_dir)
        weights[steps] = {k: v.clone() for k, v in model.state_dict().items()}
        finals[steps] = json.loads((run_dir / "final_metrics.json").read_text())
    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # as train() does before building the model
    init = FamLightningModule(cfg).model.state_dict()
    params = [k for k in init if not k.startswith("rsp_")]
    assert all(torch.equal(weights[1][k], init[k]) for k in params), "a step without targets moved a weight"
    assert any(not torch.equal(weights[2][k], weights[1][k]) for k in params), "the step with targets did nothing"
    assert all(torch.equal(weights[3][k], weights[2][k]) for k in params), "a step without targets moved a weight"
    assert [finals[s]["skipped_steps"] for s in (1, 2, 3)] == [1, 1, 2]
    assert [finals[s]["step"] for s in (1, 2, 3)] == [1, 2, 3]


def test_weighted_ce():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    weight = torch.rand(2, 5)
    wce, wsum = weighted_ce(logits, target, weight)
    ce = torch.nn.functional.cross_entropy(logits.reshape(10, 7), target.reshape(10), reduction="none")
    assert torch.allclose(wce / wsum, (ce * weight.reshape(10)).sum() / weight.sum())


# ---------------------------------------------------------------- wandb


@pytest.fixture
def no_wandb_network(monkeypatch, tmp_path):
    """No API key, no netrc, and an unreachable server if anything tried to talk to one."""
    for key in ("WANDB_API_KEY", "WANDB_MODE", "NETRC"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    (tmp_path / "home").mkdir()


def test_wandb_mode_auto(no_wandb_network, monkeypatch, tmp_path):
    assert wandb_mode("auto") == "offline"
    assert wandb_mode("disabled") == "disabled" and wandb_mode("online") == "online"
    (tmp_path / "home" / ".netrc").write_text("machine 127.0.0.1\n  login user\n  password abc\n")
    assert wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode("auto") == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    (tmp_path / "home" / ".netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode("auto") == "online"


def test_wandb_offline_writes_run_files(no_wandb_network, tmp_path):
    cfg = tiny(tmp_path, "train.max_steps=2", "logger.wandb=offline", "logger.tags=[test]", "name=wb")
    run_dir = train(cfg)
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    assert (run_dir / "metrics.jsonl").exists()  # written with or without wandb


def test_metrics_file_exists_when_nothing_was_logged(tmp_path):
    """A run shorter than log_every, with no validation on the way, still has its metrics.jsonl (the
    analysis finds run directories by it)."""
    from famlab.analysis import load_runs

    run_dir = train(tiny(tmp_path, "train.max_steps=1", "train.log_every=50", "name=short"))
    assert (run_dir / "metrics.jsonl").is_file() and read_metrics(run_dir) == []
    assert str(run_dir.resolve()) in set(load_runs(tmp_path)["run_dir"])


# ---------------------------------------------------------------- DDP


def test_ddp_two_processes_on_cpu(tmp_path):
    """`famlab train` with strategy=ddp: Lightning re-launches the command as rank 1 (gloo)."""
    args = [*TINY, f"out_dir={tmp_path}", "name=ddp", "train.devices=2", "train.strategy=ddp"]
    args += ["train.max_steps=4", "train.checkpoint_every=2", "train.val_every=2"]
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    env.pop("FAMLAB_RUN_DIR", None)
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


# ---------------------------------------------------------------- train.compile


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


@pytest.mark.parametrize("what", ["fam_scan", "fam_update"])
def test_compile_fam_parts(tmp_path, what):
    model = FamLightningModule(tiny(tmp_path, f"train.compile={what}")).model
    assert all(what in vars(layer) for layer in model.layers) and model._compiled_call_impl is None
    other = "fam_update" if what == "fam_scan" else "fam_scan"
    assert not any(other in vars(layer) for layer in model.layers)
    # without FAM there is nothing to compile
    model = FamLightningModule(tiny(tmp_path, "model.attention=bswa", f"train.compile={what}")).model
    assert not any(what in vars(layer) for layer in model.layers) and model._compiled_call_impl is None
