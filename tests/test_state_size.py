"""famlab.model.state_size: the floats a model carries from block to block per sequence, counted generically
from the state, against hand counts; written into final_metrics.json and readable as a results column."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import make_model, tiny_cfg

from famlab.model.state_size import state_floats, tensor_floats


@pytest.mark.parametrize("m", [1, 2, 3])
@pytest.mark.parametrize("attention", ["bswa", "txl"])
def test_bswa_is_its_kv_ring(attention, m):
    cfg = tiny_cfg(attention=attention, mem_segment=m, n_kv_heads=2)
    G, D, B = cfg.kv_heads, cfg.head_dim, cfg.block_size
    assert state_floats(make_model(cfg)) == cfg.n_layers * 2 * m * B * G * D


@pytest.mark.parametrize("P", [1, 3])
@pytest.mark.parametrize("m", [0, 2])
def test_fam_is_its_rows_their_keys_and_the_ring(m, P):
    cfg = tiny_cfg(attention="fam", mem_segment=m, fam_prev_blocks=P, fam_len=3)
    L_F, d, G, D, B = cfg.fam_len, cfg.d_model, cfg.kv_heads, cfg.head_dim, cfg.block_size
    per_layer = L_F * d + 2 * P * L_F * G * D + 2 * m * B * G * D  # F, K/V of the last P states, segment ring
    assert state_floats(make_model(cfg)) == cfg.n_layers * per_layer


def test_fm_and_sum_fam_by_hand():
    fm = tiny_cfg(attention="fm", mem_segment=2)
    assert state_floats(make_model(fm)) == fm.n_layers * 2 * 2 * fm.block_size * fm.kv_heads * fm.head_dim
    s = tiny_cfg(attention="sum_fam", mem_segment=1)  # the summary is a parameter, not state
    per_layer = s.fam_len * s.d_model + 2 * s.fam_len * s.kv_heads * s.head_dim + 2 * s.block_size * s.d_model
    assert state_floats(make_model(s)) == s.n_layers * per_layer


def test_the_count_is_the_state_after_any_number_of_blocks_once_full():
    cfg = tiny_cfg(attention="fam", mem_segment=2, fam_prev_blocks=2)
    model = make_model(cfg)
    want = state_floats(model)
    counts = []
    for n_blocks in (5, 9):  # two block counts past the filling of every ring
        state = model.init_state(1)
        _, state = model.step(torch.zeros(1, n_blocks * cfg.block_size, dtype=torch.long), state)
        counts.append(tensor_floats(state))
    assert counts == [want, want]
    # negative control: before the rings are full the state is smaller
    _, young = model.step(torch.zeros(1, cfg.block_size, dtype=torch.long), model.init_state(1))
    assert tensor_floats(young) < want


def test_full_attention_is_unbounded():
    assert state_floats(make_model(tiny_cfg(attention="full")), max_blocks=6) is None


def test_every_tensor_field_counts_without_being_named():
    @dataclasses.dataclass
    class Inner:
        a: torch.Tensor
        skip: int = 3

    @dataclasses.dataclass
    class Outer:
        layers: list
        extra: dict
        none: object = None

    obj = Outer([Inner(torch.zeros(2, 3)), Inner(torch.zeros(0, 5))], {"x": (torch.zeros(4), 1.5)})
    assert tensor_floats(obj) == 2 * 3 + 0 + 4


def test_final_metrics_hold_state_floats_and_frames_show_it(tmp_path):
    from tiny_runs import tiny

    from famlab.analysis.frames import load_runs
    from famlab.config.metrics import logged_metrics
    from famlab.runs import RunDir
    from famlab.train import load_model, train

    cfg = tiny(tmp_path / "fam", "train.max_steps=1", "data.val_batches=0")
    run = train(cfg)
    final = RunDir(run).read_flat_final_metrics()
    model, _ = load_model(run)
    assert final["state_floats"] == state_floats(model) > 0
    assert "state_floats" in logged_metrics(cfg)
    full = tiny(tmp_path / "full", "train.max_steps=1", "data.val_batches=0", "model.attention=full")
    assert RunDir(train(full)).read_flat_final_metrics()["state_floats"] is None
    assert "state_floats" not in logged_metrics(full) and "state_floats" in logged_metrics(full, numeric=False)
    frame = load_runs(tmp_path / "fam")
    assert frame["state_floats"].tolist() == [final["state_floats"]]
