"""famlab.config.loading: presets, overrides, run files; one-line errors for unknown keys, bad types and ranges."""

from __future__ import annotations

import pytest

from famlab.config import (
    PRESET_DIR,
    ConfigError,
    ModelConfig,
    RunConfig,
    load_run_config,
    load_run_config_dict,
    load_run_config_file,
    parse_overrides,
    preset_names,
    preset_path,
    run_config_to_yaml,
)


def test_presets_load():
    assert {"tiny", "small", "paper"} <= set(preset_names())
    for name in preset_names():
        cfg = load_run_config(name)
        assert isinstance(cfg, RunConfig) and isinstance(cfg.model, ModelConfig)
        assert cfg.preset == name and cfg.run_name == f"{name}-{cfg.model.attention}"
    paper = load_run_config("paper")
    m, t = paper.model, paper.train
    assert (m.block_size, m.mem_segment, m.fam_len, m.rsp_prob) == (1024, 3, 64, 0.8)
    assert (m.n_layers, m.d_model, m.rope_base) == (18, 1536, 10000.0)
    assert (t.optimizer, t.schedule, t.lr, t.betas) == ("adafactor", "constant", 1e-4, [0.9, 0.99])
    assert paper.data.seq_len == 8704 and paper.data.batch_size * t.accumulate_grad_batches == 128
    tiny = load_run_config("tiny")
    assert tiny.model.d_model <= 128 and tiny.train.max_steps <= 1000


def test_overrides_apply():
    cfg = load_run_config(
        "tiny",
        [
            "model.attention=bswa",
            "model.fam_len=16",
            "model.n_kv_heads=2",
            "train.lr=1e-3",
            "train.betas=[0.8,0.9]",
            "data.seq_len_schedule=[[0,256],[10,512]]",
            "logger.tags=[a,b]",
            "seed=7",
            "name=mine",
        ],
    )
    assert cfg.model.attention == "bswa" and cfg.model.fam_len == 16 and cfg.model.n_kv_heads == 2
    assert cfg.train.lr == 1e-3 and cfg.train.betas == [0.8, 0.9]
    assert cfg.data.seq_len_schedule == [[0, 256], [10, 512]]
    assert cfg.logger.tags == ["a", "b"] and cfg.seed == 7 and cfg.run_name == "mine"
    # the preset's other values stay; later overrides win; preset= may come with the overrides
    assert cfg.model.d_model == load_run_config("tiny").model.d_model
    assert load_run_config(None, ["preset=tiny", "train.lr=1", "train.lr=2"]).train.lr == 2.0
    assert load_run_config(None, ["preset=tiny"]).preset == "tiny"
    assert load_run_config().preset == "" and load_run_config().model == ModelConfig()


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.fam_lenn=3", "model.fam_lenn: unknown key; did you mean model.fam_len?"),
        ("data.tsk=text", "data.tsk: unknown key; did you mean data.task?"),
        ("train.max_step=3", "train.max_step: unknown key; did you mean train.max_steps?"),
        ("logger.projet=x", "logger.projet: unknown key; did you mean logger.project?"),
        ("sed=3", "sed: unknown key; did you mean seed?"),
        ("modl.fam_len=3", "modl.fam_len: unknown key; did you mean model.fam_len?"),
        ("lr=1", "lr: unknown key; did you mean train.lr?"),  # a section's key without its section
        ("fam_len=8", "fam_len: unknown key; did you mean model.fam_len?"),
    ],
)
def test_unknown_key_suggests_closest(override, message):
    with pytest.raises(ValueError) as err:
        load_run_config("tiny", [override])
    assert str(err.value) == message


def test_yaml_boolean_words_stay_text_for_text_keys():
    # YAML 1.1 reads yes/no/on/off as booleans; a text-valued key keeps the word as written
    cfg = load_run_config("tiny", ["name=yes", "logger.group=no", "logger.project=on"])
    assert (cfg.name, cfg.logger.group, cfg.logger.project) == ("yes", "no", "on")
    assert load_run_config("tiny", ["train.deterministic=yes"]).train.deterministic is True  # booleans stay booleans
    with pytest.raises(ValueError) as err:
        load_run_config("tiny", ["logger.wandb=off"])
    assert str(err.value).startswith("logger.wandb='off' is not allowed")


def test_unknown_key_in_preset_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  d_modle: 64\n")
    with pytest.raises(
        ValueError, match=r"^model.d_modle: unknown key; did you mean model.d_model\? \(in preset mine\)$"
    ):
        load_run_config(str(path))
    with pytest.raises(ValueError, match="no such preset.*did you mean tiny"):
        load_run_config("tiyn")


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.lr=abc", "train.lr"),
        ("train.lr=-1", "train.lr"),
        ("train.max_steps=0", "train.max_steps"),
        ("train.max_steps=1.5", "train.max_steps"),
        ("train.optimizer=sgd", "train.optimizer"),
        ("train.schedule=linear", "train.schedule"),
        ("train.betas=[0.9]", "train.betas"),
        ("train.precision=8", "train.precision"),
        ("train.devices=0", "train.devices"),
        ("train.compile=yes", "train.compile"),
        ("train.compile_mode=fast", "train.compile_mode"),
        ("model.n_heads=3", "model.n_heads"),
        ("model.d_model=abc", "model.d_model"),
        ("model.attention=linear", "model.attention"),
        ("model.rsp_prob=1.5", "model.rsp_prob"),
        ("data.batch_size=0", "data.batch_size"),
        ("data.task=vision", "data.task"),
        ("logger.wandb=maybe", "logger.wandb"),
        ("seed=-1", "seed"),
        ("model=3", "model"),
        ("train.lr", "train.lr"),  # not key=value
    ],
)
def test_bad_values_give_one_line_naming_the_key(override, key):
    with pytest.raises(ValueError) as err:
        load_run_config("tiny", [override])
    msg = str(err.value)
    assert isinstance(err.value, ConfigError)
    assert "\n" not in msg and key in msg, msg
    assert "ModelConfig." not in msg and "DataConfig." not in msg  # dotted run keys, not class names


def test_stateful_needs_block_multiples():
    ok = load_run_config("tiny", ["data.task=recall", "data.stateful=true", "data.seq_len=128", "model.block_size=64"])
    assert ok.data.stateful
    with pytest.raises(ValueError, match=r"data.seq_len=100 .*multiple of model.block_size=64"):
        load_run_config("tiny", ["data.task=recall", "data.stateful=true", "data.seq_len=100", "model.block_size=64"])


def test_yaml_roundtrip(tmp_path):
    cfg = load_run_config("tiny", ["model.fam_len=8", "logger.tags=[x]", "resume=somewhere"])
    path = tmp_path / "config.yaml"
    path.write_text(run_config_to_yaml(cfg))
    assert load_run_config_file(path) == cfg
    assert load_run_config_file(path, ["train.lr=0.5"]).train.lr == 0.5
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_presets_are_found_by_name_or_path(tmp_path):
    path = preset_path("tiny")
    assert path.name == "tiny.yaml" and path.is_file() and sorted(PRESET_DIR.glob("*.yaml"))
    mine = tmp_path / "mine.yml"
    mine.write_text("model:\n  fam_len: 3\n")
    assert preset_path(str(mine)) == mine
    cfg = load_run_config(str(mine))
    assert cfg.model.fam_len == 3 and cfg.preset == "mine"
    with pytest.raises(ConfigError, match="no such preset"):
        preset_path(str(tmp_path / "missing.yaml"))


def test_overrides_parse_as_yaml_and_must_be_key_value():
    parsed = parse_overrides(["train.lr=1e-3", "model.attention=fam", "logger.tags=[a,b]", "name=no"])
    assert parsed == {
        "train": {"lr": 1e-3},
        "model": {"attention": "fam"},
        "logger": {"tags": ["a", "b"]},
        "name": "no",
    }
    with pytest.raises(ConfigError, match=r"^override '=3': expected key=value"):
        parse_overrides(["=3"])


def test_checkpoint_config_dict_names_its_source():
    cfg = load_run_config("tiny")
    assert load_run_config_dict(cfg.to_dict(), ["seed=3"]).seed == 3
    with pytest.raises(ConfigError, match=r"^model.fam_lenn: unknown key; did you mean model.fam_len\? \(in ckpt\)$"):
        load_run_config_dict({"model": {"fam_lenn": 1}}, source="ckpt")
