"""famlab.hf.lora: LoRA adapters through peft on a converted FamLM, and runs that fine-tune a converted
folder with them (``model.init_from`` + the ``lora`` section), alone and in a sweep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from hf_fixtures import make_hf, save_tiny_converted, tokens  # noqa: E402

from famlab import hf  # noqa: E402
from famlab.config import load_run_config  # noqa: E402
from famlab.train import load_model, train  # noqa: E402


@pytest.fixture(scope="module")
def converted_dir(tmp_path_factory):
    return save_tiny_converted(tmp_path_factory.mktemp("converted") / "tiny")


def test_lora_trains_only_adapters_and_fam_prompt_then_merges_exactly():
    torch.manual_seed(0)
    model = hf.convert(make_hf("llama"), attention="fam", block_size=8, mem_segment=1, fam_len=4)
    hf.add_lora(model, rank=4, alpha=8)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "fam_prompt" in trainable and all(n == "fam_prompt" or ".lora_" in n for n in trainable)
    assert len([n for n in trainable if "lora_A" in n]) == 2 * 4  # wqkv, wo, ff.up, ff.down per layer
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    x = tokens(T=33)
    for _ in range(2):  # two steps: B moves first (it starts at 0), then A too
        logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k]) and not k.startswith(hf.SKIPPED_KEYS)}
    assert "fam_prompt" in changed and any("lora_A" in k for k in changed) and any("lora_B" in k for k in changed)
    assert all(k == "fam_prompt" or ".lora_" in k for k in changed), changed
    model.eval()
    with torch.no_grad():
        unmerged = model(x)
        hf.merge_lora(model)
        merged = model(x)
    assert not hf.has_lora(model) and type(model.layers[0].wqkv) is torch.nn.Linear
    assert all(p.requires_grad for p in model.parameters())
    assert torch.allclose(merged, unmerged, atol=1e-5)
    assert (merged - hf.convert(make_hf("llama"), attention="full")(x)).abs().max() > 0  # the adapters did something


def test_lora_trains_the_sum_fam_summaries():
    model = hf.convert(make_hf("llama"), attention="sum_fam", block_size=8, mem_segment=0, fam_len=4)
    hf.add_lora(model, rank=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and ".lora_" not in n}
    assert trainable == {"fam_prompt", "layers.0.fam_summary", "layers.1.fam_summary"}


def test_lora_target_that_matches_no_layer_is_refused():
    """With tied embeddings there is no ``head`` linear: a ``head`` target is a config error, not skipped."""
    untied = hf.convert(make_hf("llama"), attention="bswa", block_size=8, mem_segment=1)
    hf.add_lora(untied, rank=2, targets=["wo", "head"])
    from peft.tuners.lora import LoraLayer

    assert isinstance(untied.head, LoraLayer) and isinstance(untied.layers[0].wo, LoraLayer)
    tied = hf.convert(make_hf("llama-tied-bias"), attention="bswa", block_size=8, mem_segment=1)
    assert tied.head is None
    with pytest.raises(ValueError, match=r"lora\.targets=\['wo', 'head'\].*'head' matches none.*tie_embeddings"):
        hf.add_lora(tied, rank=2, targets=["wo", "head"])
    assert not hf.has_lora(tied)  # refused before any adapter went in
    hf.add_lora(tied, rank=2, targets="wo")  # one name, not a regex or its letters
    assert isinstance(tied.layers[1].wo, LoraLayer) and not isinstance(tied.layers[1].ff.up, LoraLayer)
    with pytest.raises(ValueError, match="already has LoRA adapters; merge_lora"):
        hf.add_lora(tied, rank=2, targets=["ff.up"])


def test_lora_target_error_from_the_command_line_is_one_line(tmp_path, capsys):
    """famlab train with a LoRA target the pretrained model lacks: exit status 2 and one error line."""
    from famlab.cli import main

    tied = save_tiny_converted(tmp_path / "tied", kind="llama-tied-bias")
    argv = ["train", "preset=tiny", f"model.init_from={tied}", "lora.rank=2", "lora.targets=[wo,head]"]
    argv += [f"out_dir={tmp_path / 'runs'}", "logger.wandb=disabled", "train.max_steps=1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lora.targets=['wo', 'head'] is not allowed" in err[0] and "'head' matches none" in err[0]
    assert not (tmp_path / "runs").exists()  # refused before a run directory was made


def test_train_from_pretrained_with_lora(converted_dir, tmp_path):
    cfg = load_run_config(
        "paper_lora",
        [
            f"model.init_from={converted_dir}",
            "model.block_size=32",
            "model.fam_len=2",
            "model.mem_segment=1",
            "lora.rank=4",
            "data.batch_size=2",
            "data.seq_len=128",
            "data.tokenizer=bytes",  # the tiny random base has no tokenizer (vocab 256: bytes)
            "data.passkey_instruction=false",
            "data.passkey_train_blocks_min=4",
            "data.val_batches=1",
            "data.num_workers=0",
            "train.max_steps=2",
            "train.lr=1e-2",
            "train.precision=32-true",
            "train.matmul_precision=highest",
            "train.accumulate_grad_batches=1",
            "train.val_every=0",
            "train.checkpoint_every=0",
            "train.log_every=1",
            "train.accelerator=cpu",
            "logger.wandb=disabled",
            f"out_dir={tmp_path}",
        ],
    )
    assert cfg.train.optimizer == "adafactor" and cfg.train.schedule == "constant"
    run_dir = train(cfg)
    model, run_cfg = load_model(run_dir)  # LoRA merged on load
    assert run_cfg.model.d_model == 64 and run_cfg.model.n_kv_heads == 2  # shape from the converted folder
    assert not hf.has_lora(model)
    merged = hf.load_converted(run_dir / "merged")
    x = tokens(T=40)
    with torch.no_grad():
        assert torch.allclose(model(x), merged(x), atol=1e-6)
    base = hf.load_converted(converted_dir)
    base_sd, tuned_sd = base.state_dict(), merged.state_dict()
    assert not torch.equal(base_sd["layers.0.wqkv.weight"], tuned_sd["layers.0.wqkv.weight"])
    assert torch.equal(base_sd["tok_emb.weight"], tuned_sd["tok_emb.weight"])  # not a LoRA target
    assert torch.equal(base_sd["layers.1.norm1.weight"], tuned_sd["layers.1.norm1.weight"])
    resaved = json.loads((hf.save_converted(model, tmp_path / "resaved") / "famlab.json").read_text())
    assert resaved["source"]["fine_tuned_from"] == str(converted_dir.resolve())  # the run's base folder


def test_sweep_over_one_pretrained_base(converted_dir, tmp_path):
    """A sweep varies the memory segment and FAM length on top of one converted base: every trial trains
    from the base's weights with LoRA, its shape taken from the folder."""
    import optuna
    import yaml
    from optuna.trial import TrialState

    from famlab.sweep import load_spec, make_storage, run_sweep

    spec_path = tmp_path / "pretrained.yaml"
    overrides = {
        "model.init_from": str(converted_dir),
        "model.block_size": 16,
        "lora.rank": 2,
        "data.task": "recall",
        "data.seq_len": 64,
        "data.batch_size": 2,
        "data.val_batches": 1,
        "train.max_steps": 2,
        "train.val_every": 2,
        "train.warmup_steps": 1,
        "train.checkpoint_every": 0,
        "logger.wandb": "disabled",
    }
    spec_path.write_text(
        yaml.safe_dump(
            {
                "study": "pretrained",
                "preset": "tiny",
                "overrides": overrides,
                "grid": {"model.mem_segment": [0, 1], "model.fam_len": [2]},
                "seeds": [0],
                "objective": {"metric": "val/loss", "direction": "minimize"},
                "profiles": {"tiny": {}},
            }
        )
    )
    spec = load_spec(str(spec_path))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    run_sweep(spec, url, workers=1, out_root=tmp_path / "runs")
    study = optuna.load_study(study_name=spec.study_name, storage=make_storage(url))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(t.params["model.mem_segment"] for t in complete) == [0, 1]
    for t in complete:
        _, run_cfg = load_model(t.user_attrs["run_dir"])
        assert run_cfg.model.init_from == str(converted_dir) and run_cfg.lora.rank == 2
        assert run_cfg.model.d_model == 64 and run_cfg.model.mem_segment == t.params["model.mem_segment"]
        assert (Path(t.user_attrs["run_dir"]) / "merged" / "model.safetensors").is_file()
