"""Streaming: chunks of any length. Per layer the state holds the memory kinds' state (the memory-segment
ring of K/V, of the inputs or, for ``fm``, of the outputs; the FAM hidden state and its keys) and the current partial block's K/V, so memory does not grow
with the number of tokens consumed (except for ``full``, whose KV cache grows by design)."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from famlab.model import aux_losses, masks
from famlab.model.memory import memory_kinds
from famlab.model.ops import merge_heads, sdpa
from famlab.model.paths import block_recurrent
from famlab.model.positions import token_cos_sin
from famlab.model.state import FamState, LayerState


def forward(model, x_all: Tensor, state: FamState) -> tuple[Tensor, FamState]:
    """The layer stack on x_all [b, t, d] from ``state``, in segments that never cross a block boundary."""
    aux = aux_losses.active()
    if aux is not None and aux.reconstruction:  # a block's queries arrive in segments here: not collected
        raise ValueError(
            "the reconstruction loss is collected by forward() (impl layer_major or reference), not step()"
        )
    B = model.cfg.block_size
    kinds = memory_kinds(model.cfg)
    outs, start, T = [], 0, x_all.shape[1]
    while start < T:
        n = min(B - state.pos % B, T - start)
        x = x_all[:, start : start + n]
        new_layers = []
        for layer, ls in zip(model.layers, state.layers):
            run = segment if layer.brt is None else block_recurrent.segment  # a Block-Recurrent layer: its own
            x, ls = run(model, kinds, layer, ls, x, state)
            new_layers.append(ls)
        completed = (state.pos + n) % B == 0
        state = FamState(state.pos + n, state.pos_offset, state.fam_fresh and not completed, new_layers)
        for kind in kinds if completed else []:  # model-level work after a block (rmt's write memory)
            state = kind.after_block(model, state) if hasattr(kind, "after_block") else state
        outs.append(x)
        start += n
    return (torch.cat(outs, dim=1) if outs else x_all), state


def segment(model, kinds, layer, ls: LayerState, x: Tensor, state: FamState) -> tuple[Tensor, LayerState]:
    """One layer on a segment x [b, n, d] that lies inside one block. Returns (out, new layer state)."""
    cfg = model.cfg
    B = cfg.block_size
    n, o = x.shape[1], state.pos % B  # o tokens of this block came before
    cos, sin = token_cos_sin(cfg, state.pos, n, state.pos_offset, x.device, x.dtype)
    q, k, v, qk_raw = layer.qkv_raw(x, cos, sin)
    blk_k, blk_v = torch.cat([ls.blk_k, k], 2), torch.cat([ls.blk_v, v], 2)  # [b, G, o+n, D]
    # the keys held for this block: o of them, except for `full` after a parallel forward (then in memory)
    n_own = blk_k.shape[2]
    rows = masks.Rows(
        is_token=torch.ones(n, 1, dtype=torch.bool, device=x.device),
        pos=o + torch.arange(n, device=x.device)[:, None],
    )
    keys, vals, regions = [], [], []
    for kind in kinds:
        mk, mv, rule, mem_keys = kind.read(ls, o, x.device)
        keys.append(mk)
        vals.append(mv)
        regions.append((rule, mem_keys))
    own = masks.Keys(pos=o + n - n_own + torch.arange(n_own, device=x.device)[None, :])
    mask = masks.table_mask(rows, [*regions, (masks.own_block, own)], cfg.window)
    attn = sdpa(q, torch.cat([*keys, blk_k], 2), torch.cat([*vals, blk_v], 2), mask)
    fields = {}
    for kind in kinds:
        if hasattr(kind, "mix"):  # a memory read that is no keys (infini)
            attn, more = kind.mix(layer, ls, qk_raw, attn)
            fields |= more
    out = layer.finish(merge_heads(attn), x)
    for kind in kinds:
        fields |= kind.absorb(layer, ls, out, cos, sin)
    ls = dataclasses.replace(ls, blk_k=blk_k, blk_v=blk_v, **fields)
    if o + n < B:
        return out, ls
    # the block is complete: each memory kind takes it in
    fields = {}
    for kind in kinds:
        fields |= kind.update(
            layer, ls, blk_k, blk_v, block=state.pos // B, offset=state.pos_offset, fresh=state.fam_fresh, dtype=x.dtype
        )
    return out, dataclasses.replace(ls, **({"blk_k": blk_k[:, :, :0], "blk_v": blk_v[:, :, :0]} | fields))
