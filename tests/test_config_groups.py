"""Config groups (``model=fam_m0``, ``data=passkey_symbols``), ``experiment=`` and presets that start from
other presets (``defaults:``): each is the same config as the plain keys it stands for, in a fixed order."""

from __future__ import annotations

import pytest

from famlab.cli import main
from famlab.config import ConfigError
from famlab.config.loading import GROUP_DIR, group_names, group_sections, load_run_config


def test_every_group_choice_equals_its_plain_keys():
    from omegaconf import OmegaConf

    assert group_sections() == ["data", "model"]
    for section in group_sections():
        for name in group_names(section):
            keys = OmegaConf.to_container(OmegaConf.load(GROUP_DIR / section / f"{name}.yaml"))
            plain = [f"{section}.{k}={v}" for k, v in keys.items()]
            assert load_run_config("tiny", [f"{section}={name}"]) == load_run_config("tiny", plain), (section, name)


def test_groups_compose_in_order_between_the_preset_and_the_dotlist():
    cfg = load_run_config("tiny", ["model=fam_m0", "data=passkey_symbols"])
    assert (cfg.model.attention, cfg.model.mem_segment, cfg.data.tokenizer) == ("fam", 0, "symbols")
    assert cfg.model.d_model == load_run_config("tiny").model.d_model  # the preset's other keys stay
    # a later choice wins over an earlier one; a dotlist key wins over every group, wherever it is written
    assert load_run_config("tiny", ["model=fam_m0", "model=bswa_m2"]).model.attention == "bswa"
    assert load_run_config("tiny", ["model.mem_segment=3", "model=fam_m0"]).model.mem_segment == 3
    # negative control: without the group, the preset's own value
    tiny = load_run_config("tiny")
    assert (tiny.model.mem_segment, tiny.data.tokenizer) == (1, "bytes")


def test_experiment_is_preset():
    assert load_run_config(None, ["experiment=passkey_demo"]) == load_run_config("passkey_demo")
    assert load_run_config(None, ["experiment=passkey_demo", "model=bswa_m1"]).model.attention == "bswa"


@pytest.mark.parametrize(
    "override,message",
    [
        ("model=fam_mo", "model='fam_mo': no such model group (available: bswa_m0, "),
        ("data=passkey", "data='passkey': no such data group"),
        ("experiment=tiy", "preset='tiy': no such preset"),
    ],
)
def test_an_unknown_choice_is_one_line_with_the_choices(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_run_config("tiny", [override])


def test_unknown_group_choice_through_the_cli_is_exit_2(capsys):
    assert main(["train", "preset=tiny", "model=bswa_m9", "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model='bswa_m9'" in err and "did you mean bswa_m" in err


def test_a_preset_starts_from_its_defaults(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("defaults: [tiny]\nmodel:\n  fam_len: 7\n")
    got, want = load_run_config(str(child)).to_dict(), load_run_config("tiny", ["model.fam_len=7"]).to_dict()
    assert got.pop("preset") == "child" and want.pop("preset") == "tiny" and got == want
    grandchild = tmp_path / "grandchild.yaml"
    grandchild.write_text(f"defaults: [{child}, passkey_demo]\ntrain:\n  max_steps: 5\n")
    cfg = load_run_config(str(grandchild))
    demo = load_run_config("passkey_demo")
    assert cfg.model == demo.model  # passkey_demo comes after child, and its model section names fam_len
    assert cfg.train.max_steps == 5 and cfg.data == demo.data
    # negative control: without defaults, a partial preset starts from the library defaults
    bare = tmp_path / "bare.yaml"
    bare.write_text("model:\n  fam_len: 7\n")
    assert load_run_config(str(bare)).model.d_model != load_run_config("tiny").model.d_model


def test_bad_defaults_are_one_line(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(f"defaults: [{b}]\n")
    b.write_text(f"defaults: [{a}]\n")
    with pytest.raises(ConfigError, match=r"its defaults form a cycle \(a -> b -> a\)"):
        load_run_config(str(a))
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults: [[tiny]]\n")
    with pytest.raises(ConfigError, match=r"defaults=\[\['tiny'\]\] is not allowed: expected a list of preset names"):
        load_run_config(str(bad))
    missing = tmp_path / "missing.yaml"
    missing.write_text("defaults: [tinyy]\n")
    with pytest.raises(ConfigError, match="preset='tinyy': no such preset .*did you mean tiny"):
        load_run_config(str(missing))
