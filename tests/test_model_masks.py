"""The spec's mask table (famlab.model.masks): written out by hand on small examples, cell by cell, and
every path built from it."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close, make_model, stream, tiny_cfg, tokens

from famlab.model import masks

T_, F_ = True, False


def test_reference_layout_is_the_table_written_out():
    # block at position 2 of 2 tokens, one older FAM key, two memory keys (positions 0, 1), L_F = 1;
    # keys:        old  s0   s1   F    x2   x3
    expected = [
        [F_, F_, F_, T_, T_, T_],  # FAM row: F and all of X only
        [T_, T_, T_, T_, T_, F_],  # token 2: older FAM, memory, F, X causally
        [T_, T_, T_, T_, T_, T_],  # token 3
    ]
    got = masks.reference_mask(L_F=1, start=2, nb=2, n_older=1, n_mem=2, window=None, device="cpu")
    assert got.tolist() == expected
    # txl window 1: token 2 sees memory position 1 only, token 3 no memory
    expected_window = [
        [F_, F_, F_, T_, T_, T_],
        [T_, F_, T_, T_, T_, F_],
        [T_, F_, F_, T_, T_, T_],
    ]
    got = masks.reference_mask(L_F=1, start=2, nb=2, n_older=1, n_mem=2, window=1, device="cpu")
    assert got.tolist() == expected_window


def test_layer_major_layout_is_the_table_written_out():
    # B = 2, m = 1, L_F = 1, P = 2, a fresh state (no memory, one FAM state S_0): 2 blocks
    # keys per block: [S_{i-1} | S_i | memory (2) | own (2)]
    got = masks.layer_major_mask(n=2, B=2, m=1, L_F=1, P=2, mem_len=0, n_hist=1, window=None, device="cpu")
    expected = [
        [[F_, T_, F_, F_, T_, F_], [F_, T_, F_, F_, T_, T_]],  # block 0: no S_{-1}, no memory yet
        [[T_, T_, T_, T_, T_, F_], [T_, T_, T_, T_, T_, T_]],  # block 1: S_0, S_1, block 0 as memory
    ]
    assert got.tolist() == expected


def test_wavefront_layout_is_the_table_written_out():
    # B = 2, m = 1, L_F = 1, P = 2, a state with one memory block and two FAM states: rows [F; x0; x1]
    # keys per block: [S_{i-1} | memory (2) | F | own (2)]
    got = masks.wavefront_mask(n=1, B=2, m=1, L_F=1, P=2, mem_len=2, n_hist=2, window=None, device="cpu")
    expected = [
        [
            [F_, F_, F_, T_, T_, T_],  # FAM row: F and the whole block
            [T_, T_, T_, T_, T_, F_],
            [T_, T_, T_, T_, T_, T_],
        ]
    ]
    assert got.tolist() == expected
    fresh = masks.wavefront_mask(n=1, B=2, m=1, L_F=1, P=2, mem_len=0, n_hist=1, window=None, device="cpu")
    assert fresh[0, 1:, :3].tolist() == [[F_, F_, F_], [F_, F_, F_]]  # nothing before the first block


def table_by_hand(L_F, B, m, P, n, mem_len, n_hist, window):
    """The spec's table for block-relative layouts, one cell at a time in plain Python: rows [F; X] of
    block i, keys [older FAM ((P-1)*L_F) | memory (m*B) | F | X]."""
    out = []
    for i in range(n):
        rows = []
        for r in range(L_F + B):
            is_tok, t = r >= L_F, i * B + r - L_F
            row = []
            for slot in range(P - 1):  # S_{i-P+1+slot}
                row += [is_tok and i - P + 1 + slot >= -(n_hist - 1)] * L_F
            for j in range(m * B):
                s = (i - m) * B + j
                exists = s >= -mem_len
                row.append(is_tok and exists and (window is None or t - s <= window))
            row += [True] * L_F
            row += [(not is_tok) or i * B + j <= t for j in range(B)]
            rows.append(row)
        out.append(rows)
    return out


@pytest.mark.parametrize(
    "L_F,B,m,P,n,mem_len,n_hist", [(2, 3, 2, 3, 4, 0, 1), (1, 4, 1, 2, 3, 4, 2), (3, 2, 3, 1, 5, 2, 1)]
)
def test_wavefront_layout_matches_the_table_cell_by_cell(L_F, B, m, P, n, mem_len, n_hist):
    got = masks.wavefront_mask(n, B, m, L_F, P, mem_len, n_hist, None, "cpu")
    assert got.tolist() == table_by_hand(L_F, B, m, P, n, mem_len, n_hist, None)


@pytest.mark.parametrize("window", [None, 0, 3])
def test_layer_major_layout_matches_the_table_cell_by_cell(window):
    L_F, B, m, P, n, mem_len, n_hist = 2, 3, 2, 2, 4, 3, 2
    got = masks.layer_major_mask(n, B, m, L_F, P, mem_len, n_hist, window, "cpu")
    by_hand = torch.tensor(table_by_hand(L_F, B, m, P, n, mem_len, n_hist, window))[:, L_F:]  # token rows
    # layer-major keys: [older FAM | F | memory | own]; the hand table's: [older FAM | memory | F | own]
    older, mem = (P - 1) * L_F, m * B
    by_hand = torch.cat(
        [by_hand[..., :older], by_hand[..., older + mem : older + mem + L_F], by_hand[..., older : older + mem]]
        + [by_hand[..., older + mem + L_F :]],
        -1,
    )
    assert torch.equal(got, by_hand)


def test_negative_control_a_wrong_rule_is_caught(monkeypatch):
    """A table with one wrong cell (FAM rows reading the memory segment) no longer matches the hand table."""
    good = masks.wavefront_mask(3, 3, 2, 2, 2, 0, 1, None, "cpu")
    assert good.tolist() == table_by_hand(2, 3, 2, 2, 3, 0, 1, None)
    monkeypatch.setattr(masks, "memory", lambda rows, keys, window: torch.ones_like(rows.is_token))
    wrong = masks.wavefront_mask(3, 3, 2, 2, 2, 3, 1, None, "cpu")
    assert wrong.tolist() != table_by_hand(2, 3, 2, 2, 3, 3, 1, None)


@pytest.mark.parametrize(
    "attention,impl", [("bswa", "reference"), ("bswa", "layer_major"), ("fam", "wave"), ("txl", "stream")]
)
def test_every_path_reads_the_one_table(attention, impl, monkeypatch):
    """Changing one rule of the table (memory unreadable) changes every path's output."""
    cfg = tiny_cfg(attention=attention, mem_segment=2, fam_prev_blocks=1)
    model = make_model(cfg)
    toks = tokens(cfg, 1, 4 * cfg.block_size)

    def run():
        return stream(model, toks, [5]) if impl == "stream" else model(toks, impl=impl)

    before = run()
    monkeypatch.setattr(masks, "memory", lambda rows, keys, window: torch.zeros_like(rows.is_token))
    after = run()
    blk = cfg.block_size
    assert_close(after[:, :blk], before[:, :blk], what="block 0 has no memory")
    assert not torch.allclose(after[:, blk:], before[:, blk:], atol=1e-4)
