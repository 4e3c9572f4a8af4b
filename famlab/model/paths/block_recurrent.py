"""The paths of the Block-Recurrent Transformer (``attention="block_recurrent"``; the cell and its semantics are
in :mod:`famlab.model.recurrent_cell`): tokens attend as in BSWA (their own block causally and the memory
segment of the last m blocks), and in the recurrent layers also cross-attend a state of S vectors that each
complete block updates.

* :func:`reference`: block by block, through all layers, naive attention. The definition.
* :func:`forward` (``fast``/``layer_major``): per layer. A run of plain layers is exactly the layer-major BSWA
  path (:func:`famlab.model.paths.layer_major.forward` on those layers); a recurrent layer runs its BSWA
  attention for all blocks in one SDPA call, then a loop over the blocks for the state (block i reads state
  c_i and makes c_{i+1} from c_i and the layer's inputs of block i only), then the tokens' cross-attention
  to their block's state for all blocks in one SDPA call. Layer-major order is valid because a recurrent
  layer's state depends on that layer's inputs of earlier blocks only.
* :func:`segment`: streaming, one recurrent layer on a segment inside one block (``step``; the plain layers
  run :func:`famlab.model.paths.stream.segment`).

Equal to each other in fp64 (logits and gradients; tests/test_model_block_recurrent.py).
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor

from famlab.model import masks
from famlab.model.memory import SegmentMemory
from famlab.model.ops import additive, merge_heads, naive_attention, sdpa
from famlab.model.paths import layer_major
from famlab.model.positions import rope_for, token_cos_sin, token_positions
from famlab.model.state import FamState, LayerState


def reference(model, x: Tensor, state: FamState) -> tuple[Tensor, None]:
    """For each block, for each layer: keys [memory blocks | own block], naive attention; a recurrent layer
    also reads its state and, once the block is complete, updates it. Runs from a fresh state only."""
    if state.pos:
        raise ValueError("impl='reference' runs from a fresh state only (state.pos must be 0)")
    cfg = model.cfg
    B, T = cfg.block_size, x.shape[1]
    segment = SegmentMemory(cfg)
    mem: list[list[tuple[Tensor, Tensor]]] = [[] for _ in model.layers]  # per layer, per block (input K/V)
    states = [ls.brt_state for ls in state.layers]  # per layer: [b, S, d] or None
    outs = []
    for start in range(0, T, B):
        h = x[:, start : start + B]
        nb = h.shape[1]
        cos, sin = rope_for(cfg, token_positions(start, nb, x.device), state.pos_offset, x.dtype)
        for li, layer in enumerate(model.layers):
            cell = layer.brt
            if cell is None:
                q, k, v = layer.qkv(h, cos, sin)
            else:
                q, k, v, k_raw, q_cross = cell.tokens(layer, h, cos, sin)
            mem_k, mem_v = k[:, :, :0], v[:, :, :0]
            if mem[li]:  # stop-gradient cuts the memory blocks
                mem_k, mem_v = segment.cut(*(torch.cat([kv[j] for kv in mem[li]], 2) for j in (0, 1)))
            mask = masks.reference_mask(0, start, nb, 0, mem_k.shape[2], None, x.device)
            attn = naive_attention(q, torch.cat([mem_k, k], 2), torch.cat([mem_v, v], 2), mask)
            residual = h
            if cell is not None:
                proj = cell.project_state(states[li])
                residual = h + cell.read(q_cross, proj, naive_attention)
                if nb == B:  # only a complete block updates the state
                    states[li] = cell.update(states[li], proj, k_raw, v, naive_attention)
            h = layer.finish(merge_heads(attn), residual)
            mem[li] = segment.push_block(mem[li], (k, v))
        outs.append(h)
    return torch.cat(outs, 1), None


def forward(model, x: Tensor, state: FamState) -> tuple[Tensor, FamState]:
    """x [b, T, d] from the block-aligned ``state`` -> final hidden states [b, T, d] and the state after."""
    layer_major.check_block_aligned(model, state)
    B, T = model.cfg.block_size, x.shape[1]
    new_layers: list[LayerState] = []
    run: list[int] = []  # consecutive plain layers, run together by the layer-major path

    def flush(x: Tensor) -> Tensor:
        if run:
            plain = SimpleNamespace(cfg=model.cfg, layers=[model.layers[i] for i in run])
            sub = FamState(state.pos, state.pos_offset, state.fam_fresh, [state.layers[i] for i in run])
            x, after = layer_major.forward(plain, x, sub)
            new_layers.extend(after.layers)
            run.clear()
        return x

    for i, layer in enumerate(model.layers):
        if layer.brt is None:
            run.append(i)
            continue
        x = flush(x)
        x, ls = recurrent_layer(model.cfg, layer, state.layers[i], x, state)
        new_layers.append(ls)
    x = flush(x)
    fresh = state.fam_fresh and T < B
    return x, FamState(state.pos + T, state.pos_offset, fresh, new_layers)


def recurrent_layer(cfg, layer, ls: LayerState, x: Tensor, state: FamState) -> tuple[Tensor, LayerState]:
    """One recurrent layer on x [b, T, d] (from a block boundary): its outputs and its state after."""
    b, T, _ = x.shape
    cell = layer.brt
    n_blk, n_full = -(-T // cfg.block_size), T // cfg.block_size  # blocks (the last possibly partial), complete
    mem_len = ls.mem_k.shape[2]
    cfg = SegmentMemory.within_reach(cfg, n_blk, mem_len)
    B, G, D = cfg.block_size, cfg.kv_heads, cfg.head_dim
    segment = SegmentMemory(cfg)
    Tp = n_blk * B
    x = F.pad(x, (0, 0, 0, Tp - T))  # zero rows after the end; causal masking hides them, no state reads them
    cos, sin = token_cos_sin(cfg, state.pos, Tp, state.pos_offset, x.device, x.dtype)
    q, k, v, k_raw, q_cross = cell.tokens(layer, x, cos, sin)  # [b, H|G, Tp, D]
    # BSWA: every block against [its memory window | itself] in one SDPA call, blocks as batch
    k_ext, mem_k = segment.windows(ls.mem_k, k, n_blk)  # mem_k [b, G, n, m*B, D] or None
    v_ext, mem_v = segment.windows(ls.mem_v, v, n_blk)
    keys, vals = [k.view(b, G, n_blk, B, D)], [v.view(b, G, n_blk, B, D)]
    if mem_k is not None:
        mem_k, mem_v = segment.cut(mem_k, mem_v)
        keys, vals = [mem_k, *keys], [mem_v, *vals]
    keys = torch.cat([t.transpose(1, 2) for t in keys], 3).flatten(0, 1)  # [b*n, G, m*B + B, D]
    vals = torch.cat([t.transpose(1, 2) for t in vals], 3).flatten(0, 1)
    mask = masks.layer_major_mask(n_blk, B, cfg.mem_segment, 0, 1, mem_len, 0, None, x.device)  # [n, B, K]
    mask = additive(mask, x.dtype).repeat(b, 1, 1).unsqueeze(1)  # [b*n, 1, B, K]
    attn = sdpa(by_block(q, n_blk), keys, vals, mask)  # [b*n, H, B, D]
    # the state, block by block: block i reads c_i; a complete block i makes c_{i+1}
    c = ls.brt_state
    k_blocks, v_blocks = k_raw.view(b, G, n_blk, B, D).unbind(2), v.view(b, G, n_blk, B, D).unbind(2)
    read_k, read_v = [], []
    for i in range(n_blk):
        proj = cell.project_state(c)
        read_k.append(proj.k)
        read_v.append(proj.v)
        if i < n_full:
            c = cell.update(c, proj, k_blocks[i], v_blocks[i], sdpa)
    # the tokens' cross-attention to their block's state, all blocks in one SDPA call
    state_k, state_v = torch.stack(read_k, 1).flatten(0, 1), torch.stack(read_v, 1).flatten(0, 1)  # [b*n, G, S, D]
    cross = sdpa(by_block(q_cross, n_blk), state_k, state_v)  # [b*n, H, B, D]
    out = layer.finish(blocks_merged(attn, b, n_blk), x + cell.wo(blocks_merged(cross, b, n_blk)))
    new = LayerState(
        mem_k=segment.after_chunk(k_ext, mem_len, n_full),
        mem_v=segment.after_chunk(v_ext, mem_len, n_full),
        blk_k=k[:, :, n_full * B : T],
        blk_v=v[:, :, n_full * B : T],
        brt_state=c,
        brt_k=k_raw[:, :, n_full * B : T],
    )
    return out[:, :T], new


def by_block(t: Tensor, n_blk: int) -> Tensor:
    """[b, heads, n*B, D] -> [b*n, heads, B, D]: blocks as batch."""
    b, heads, Tp, D = t.shape
    return t.view(b, heads, n_blk, Tp // n_blk, D).transpose(1, 2).flatten(0, 1)


def blocks_merged(t: Tensor, b: int, n_blk: int) -> Tensor:
    """[b*n, H, B, D] -> [b, n*B, H*D]: back in sequence order, heads merged."""
    _, H, B, D = t.shape
    return t.view(b, n_blk, H, B, D).permute(0, 1, 3, 2, 4).reshape(b, n_blk * B, H * D)


def segment(model, kinds, layer, ls: LayerState, x: Tensor, state: FamState) -> tuple[Tensor, LayerState]:
    """Streaming: one recurrent layer on a segment x [b, n, d] inside one block (``o`` tokens of it before):
    BSWA attention over [memory | the block so far], the cross-attention to the state; once the block is
    complete the state takes it in and the block joins the memory."""
    cfg = model.cfg
    B, n, o = cfg.block_size, x.shape[1], state.pos % cfg.block_size
    cell = layer.brt
    cos, sin = token_cos_sin(cfg, state.pos, n, state.pos_offset, x.device, x.dtype)
    q, k, v, k_raw, q_cross = cell.tokens(layer, x, cos, sin)
    blk_k, blk_v = torch.cat([ls.blk_k, k], 2), torch.cat([ls.blk_v, v], 2)  # [b, G, o+n, D]
    brt_k = torch.cat([ls.brt_k, k_raw], 2)  # [b, G, o+n, D], before RoPE
    rows = masks.Rows(
        is_token=torch.ones(n, 1, dtype=torch.bool, device=x.device),
        pos=o + torch.arange(n, device=x.device)[:, None],
    )
    keys, vals, regions = [], [], []
    for kind in kinds:  # the memory segment (the recurrent state adds no keys here)
        mk, mv, rule, mem_keys = kind.read(ls, o, x.device)
        keys.append(mk)
        vals.append(mv)
        regions.append((rule, mem_keys))
    own = masks.Keys(pos=torch.arange(o + n, device=x.device)[None, :])
    mask = masks.table_mask(rows, [*regions, (masks.own_block, own)], cfg.window)
    attn = sdpa(q, torch.cat([*keys, blk_k], 2), torch.cat([*vals, blk_v], 2), mask)
    proj = cell.project_state(ls.brt_state)
    out = layer.finish(merge_heads(attn), x + cell.read(q_cross, proj, sdpa))
    ls = dataclasses.replace(ls, blk_k=blk_k, blk_v=blk_v, brt_k=brt_k)
    if o + n < B:
        return out, ls
    fields = {"brt_state": cell.update(ls.brt_state, proj, brt_k, blk_v, sdpa)}
    for kind in kinds:  # the memory segment takes the block in
        fields |= kind.update(
            layer, ls, blk_k, blk_v, block=state.pos // B, offset=state.pos_offset, fresh=state.fam_fresh, dtype=x.dtype
        )
    empty = blk_k[:, :, :0]
    return out, dataclasses.replace(ls, blk_k=empty, blk_v=empty, brt_k=empty, **fields)
