"""The spec's mask table (``../shared/spec/transformerfam.md``), written once.

Within a block, the query rows are [F; X] (the block's FAM input, then its tokens) and the keys are
[older FAM states | memory segment | F | X]:

================  ==============  ==================================  ======  =========
query \\ keys      older FAM       memory segment                      F       X
================  ==============  ==================================  ======  =========
FAM row           no              no                                  all     all
block token       yes             yes (txl: within the window)        all     causal
================  ==============  ==================================  ======  =========

Each rule is a ``mask_mod`` in torchtitan's style: a function of the query rows and the keys of one region
that says, cell by cell, who may attend whom (broadcast tensors; True = attend). :func:`table_mask` lays
regions side by side and also masks keys that do not exist (memory or FAM states from before the first
block, zero padding). Every path describes its own key layout with :class:`Rows`/:class:`Keys` and calls
:func:`table_mask`; no path writes a rule of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Rows:
    """Query rows, broadcastable to [..., Q, 1]: whether each is a block token (else a FAM row) and a token
    row's position (any value for FAM rows)."""

    is_token: Tensor
    pos: Tensor


@dataclass
class Keys:
    """One region of keys, broadcastable to [..., 1, K]: each key's position (tokens: the token's position;
    FAM keys: unused) and whether it exists."""

    pos: Tensor
    exists: Tensor | bool = True


MaskMod = Callable[[Rows, Keys, "int | None"], Tensor]


def older_fam(rows: Rows, keys: Keys, window: int | None) -> Tensor:
    """Older FAM states (``fam_prev_blocks`` > 1): block tokens only."""
    return rows.is_token


def memory(rows: Rows, keys: Keys, window: int | None) -> Tensor:
    """The memory segment: block tokens only; with a txl ``window``, only keys at most ``window`` back."""
    if window is None:
        return rows.is_token
    return rows.is_token & (rows.pos - keys.pos <= window)


def current_fam(rows: Rows, keys: Keys, window: int | None) -> Tensor:
    """The block's own FAM input F: every row."""
    return torch.ones_like(rows.is_token)


def own_block(rows: Rows, keys: Keys, window: int | None) -> Tensor:
    """The block's own tokens X: FAM rows see all of them, tokens see themselves and earlier ones."""
    return ~rows.is_token | (keys.pos <= rows.pos)


def table_mask(rows: Rows, regions: list[tuple[MaskMod, Keys]], window: int | None = None) -> Tensor:
    """Boolean mask [..., Q, sum K] (True = attend) of ``rows`` against the ``regions`` side by side,
    each region's cells by its rule and its keys' existence."""
    parts = []
    for rule, keys in regions:
        ok = rule(rows, keys, window) & keys.exists
        shape = torch.broadcast_shapes(ok.shape, rows.is_token.shape, keys.pos.shape)
        parts.append(ok.expand(shape))
    lead = torch.broadcast_shapes(*(p.shape[:-1] for p in parts))
    return torch.cat([p.expand(*lead, p.shape[-1]) for p in parts], dim=-1)


# ----------------------------------------------------------------------------------------------
# the layouts of the paths


def fam_keys(blk: Tensor, first_slot: int, n_slots: int, L_F: int, P: int, n_hist: int) -> Keys:
    """FAM keys of blocks ``blk`` [n, 1, 1], slots ``first_slot`` .. of the P a block reads: slot s (of L_F
    keys) holds S_{blk-P+1+s}; the state holds S_{-(n_hist-1)} .. S_0, so a slot exists if its index is
    >= -(n_hist-1)."""
    slot = torch.arange(first_slot * L_F, (first_slot + n_slots) * L_F, device=blk.device)[None, None, :] // L_F
    return Keys(pos=torch.zeros_like(slot), exists=blk - P + 1 + slot >= -(n_hist - 1))


def memory_keys(blk: Tensor, B: int, m: int, mem_len: int) -> Keys:
    """Memory keys of blocks ``blk`` [n, 1, 1]: key j sits at index blk*B + j of [zero pad; state memory;
    tokens] (position (blk - m)*B + j in the chunk), and exists if past the pad."""
    j = torch.arange(m * B, device=blk.device)[None, None, :]
    return Keys(pos=(blk - m) * B + j, exists=blk * B + j >= m * B - mem_len)


def block_rows(n: int, L_F: int, B: int, device) -> tuple[Tensor, Rows]:
    """Block indices [n, 1, 1] and the rows [F (L_F); X (B)] of every block, positions in the chunk."""
    blk = torch.arange(n, device=device)[:, None, None]
    r = torch.arange(L_F + B, device=device)[None, :, None]
    return blk, Rows(is_token=r >= L_F, pos=blk * B + r - L_F)


def reference_mask(L_F: int, start: int, nb: int, n_older: int, n_mem: int, window, device) -> Tensor:
    """[L_F + nb, K] for the reference loop's block at ``start`` (nb tokens): rows [F; X], keys
    [n_older older FAM keys | n_mem memory keys just before the block | F | X], all existing."""
    r = torch.arange(L_F + nb, device=device)[:, None]
    rows = Rows(is_token=r >= L_F, pos=start + r - L_F)

    def keys(first: int, n: int) -> Keys:
        return Keys(pos=first + torch.arange(n, device=device)[None, :])

    regions = [(older_fam, keys(0, n_older)), (memory, keys(start - n_mem, n_mem))]
    regions += [(current_fam, keys(0, L_F)), (own_block, keys(start, nb))]
    return table_mask(rows, regions, window)


def layer_major_mask(n: int, B: int, m: int, L_F: int, P: int, mem_len: int, n_hist: int, window, device):
    """[n, B, K] for the layer-major path's blocks: token rows against [FAM states S_{i-P+1} .. S_i (P*L_F) |
    memory (m*B) | own block (B)]."""
    blk, rows = block_rows(n, 0, B, device)
    regions = []
    if L_F:
        regions += [(older_fam, fam_keys(blk, 0, P - 1, L_F, P, n_hist))]
        regions += [(current_fam, fam_keys(blk, P - 1, 1, L_F, P, n_hist))]
    if m:
        regions.append((memory, memory_keys(blk, B, m, mem_len)))
    regions.append((own_block, Keys(pos=blk * B + torch.arange(B, device=device)[None, None, :])))
    return table_mask(rows, regions, window)


def wavefront_mask(n: int, B: int, m: int, L_F: int, P: int, mem_len: int, n_hist: int, window, device):
    """[n, L_F + B, K] for the wavefront's blocks: rows [F; X] against [older FAM ((P-1)*L_F) | memory (m*B) |
    F | X]."""
    blk, rows = block_rows(n, L_F, B, device)
    regions = []
    if P > 1:
        regions.append((older_fam, fam_keys(blk, 0, P - 1, L_F, P, n_hist)))
    if m:
        regions.append((memory, memory_keys(blk, B, m, mem_len)))
    regions.append((current_fam, fam_keys(blk, P - 1, 1, L_F, P, n_hist)))
    regions.append((own_block, Keys(pos=blk * B + torch.arange(B, device=device)[None, None, :])))
    return table_mask(rows, regions, window)


def causal_cache_mask(past: int, T: int, device) -> Tensor:
    """[T, past + T] for ``full`` attention after a KV cache of ``past`` keys: query i sees keys 0 .. past+i."""
    rows = Rows(
        is_token=torch.ones(T, 1, dtype=torch.bool, device=device), pos=past + torch.arange(T, device=device)[:, None]
    )
    return table_mask(rows, [(own_block, Keys(pos=torch.arange(past + T, device=device)[None, :]))])
