"""The library defaults (``famlab train`` without a preset) are a small run that exercises the memory, and
the presets do not lean on them for the memory shape (changing a default cannot move a preset)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from famlab.config import load_run_config, preset_names
from famlab.config.loading import preset_path

MEMORY_SHAPE = ("block_size", "mem_segment", "fam_len")


def test_defaults_have_blocks_beyond_the_window():
    cfg = load_run_config()
    blocks = cfg.data.seq_len // cfg.model.block_size
    assert cfg.model.attention == "fam" and cfg.model.fam_len > 0
    # the last block attends m earlier blocks directly: the ones before reach it only through FAM
    assert blocks >= 4 and blocks > cfg.model.mem_segment + 1
    assert cfg.data.seq_len % cfg.model.block_size == 0


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_sets_its_memory_shape_and_lengths(preset):
    data = OmegaConf.to_container(OmegaConf.load(preset_path(preset)))
    assert all(key in data["model"] for key in MEMORY_SHAPE), preset
    assert "seq_len" in data["data"], preset
    # negative control: the defaults differ from at least one preset, so the check above matters
    assert any(
        getattr(load_run_config(p).model, k) != getattr(load_run_config().model, k)
        for p in preset_names()
        for k in MEMORY_SHAPE
    )
