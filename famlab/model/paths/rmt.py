"""The parallel paths of the Recurrent Memory Transformer (``attention="rmt"``, :mod:`famlab.model.memory.rmt`):
the blocks are sequential (block i's memory is block i-1's write rows after the whole stack).

* :func:`forward` (``fast``/``layer_major``): per block, all layers, each one causal SDPA call over the rows
  [read memory | block | write memory] at once (the batch and heads batched).
* :func:`reference`: the same rows built one kind at a time with their positions, the mask written out from
  the rules (read: read causally; token: all read, block causally; write: all read, all block, write
  causally), naive softmax attention. Obviously right, slow; the tests hold the others to it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from famlab.model.memory import RmtMemory
from famlab.model.ops import expand_kv, merge_heads, naive_attention
from famlab.model.paths.layer_major import check_block_aligned
from famlab.model.positions import rope_for, token_positions
from famlab.model.state import FamState, LayerState


def forward(model, x: Tensor, state: FamState) -> tuple[Tensor, FamState]:
    """x [b, T, d] from the block-aligned ``state`` -> final hidden states [b, T, d] and the state after."""
    cfg = model.cfg
    B, T = cfg.block_size, x.shape[1]
    rmt = RmtMemory(cfg)
    M = rmt.M
    check_block_aligned(model, state)
    n_blk = -(-T // B)
    mem = state.layers[0].rmt_mem  # [b, M, d]
    outs, last = [], None
    for i, start in enumerate(range(0, T, B)):
        nb = min(B, T - start)
        if i:
            mem = rmt.carry(mem, i, n_blk)
        g = state.pos + start  # absolute position of the block's first token
        parts = [rmt.read_positions(g, x.device), token_positions(g, nb, x.device)]
        rows = [mem, x[:, start : start + nb]]
        if nb == B:  # only a complete block writes a memory
            parts.append(rmt.write_positions(g, x.device))
            rows.append(mem)
        cos, sin = rope_for(cfg, torch.cat(parts, 1), state.pos_offset, x.dtype)
        h = torch.cat(rows, 1)  # [b, M + nb (+ M), d]
        kvs = []
        for layer in model.layers:
            q, k, v = layer.qkv(h, cos, sin)  # [b, H, L, D], [b, G, L, D]
            attn = F.scaled_dot_product_attention(q, expand_kv(k, q.shape[1]), expand_kv(v, q.shape[1]), is_causal=True)
            h = layer.finish(merge_heads(attn), h)
            kvs.append((k[:, :, : M + nb], v[:, :, : M + nb]))  # the read rows' and the block's
        outs.append(h[:, M : M + nb])
        if nb == B:
            mem = rmt.next_memory(model, h[:, M + B :])
        last = kvs
    if T % B:  # a partial last block: its read rows' and tokens' K/V continue in the state
        pairs = [((k[:, :, :M], v[:, :, :M]), (k[:, :, M:], v[:, :, M:])) for k, v in last]
    else:  # at a block boundary: the next block's read rows
        mem = mem.detach() if rmt.depth == 0 else mem  # as streaming's state (the trainer detaches anyway)
        empty = x.new_zeros(x.shape[0], cfg.kv_heads, 0, cfg.head_dim)
        pairs = [(kv, (empty, empty)) for kv in rmt.read_pass(model, mem, state.pos + T, state.pos_offset)]
    new_layers = []
    for i, (ls, ((rk, rv), (bk, bv))) in enumerate(zip(state.layers, pairs)):
        new_layers.append(LayerState(ls.mem_k, ls.mem_v, bk, bv, rmt_k=rk, rmt_v=rv, rmt_mem=mem if i == 0 else None))
    h = torch.cat(outs, 1) if outs else x
    return h, FamState(state.pos + T, state.pos_offset, state.fam_fresh, new_layers)


def reference_mask(M: int, nb: int, device) -> Tensor:
    """[2M + nb, 2M + nb] rows/keys [read (M) | block tokens (nb) | write (M)], True = attend, by the rules."""
    kind = torch.tensor([0] * M + [1] * nb + [2] * M, device=device)  # 0 read, 1 token, 2 write
    idx = torch.arange(2 * M + nb, device=device)
    q_kind, k_kind = kind[:, None], kind[None, :]
    same_causal = (q_kind == k_kind) & (idx[None, :] <= idx[:, None])
    return same_causal | (k_kind < q_kind)  # a row sees its own kind causally, every row of an earlier kind


def reference(model, x: Tensor, state: FamState) -> tuple[Tensor, None]:
    """Block by block through all layers on the explicit rows [read | block | write] (write rows even
    for a partial block: they come after every token and change none). From a fresh state only."""
    if state.pos:
        raise ValueError("impl='reference' runs from a fresh state only (state.pos must be 0)")
    cfg = model.cfg
    B, T = cfg.block_size, x.shape[1]
    rmt = RmtMemory(cfg)
    M = rmt.M
    mem = state.layers[0].rmt_mem
    n_blk = -(-T // B)
    outs = []
    for i in range(n_blk):
        start = i * B
        nb = min(B, T - start)
        if i:
            mem = rmt.carry(mem, i, n_blk)
        read_pos = start - M + torch.arange(M, dtype=torch.float64)
        tok_pos = start + torch.arange(nb, dtype=torch.float64)
        write_pos = start + B + torch.arange(M, dtype=torch.float64)
        pos = torch.cat([read_pos, tok_pos, write_pos])[None].to(x.device)  # [1, 2M + nb]
        cos, sin = rope_for(cfg, pos, state.pos_offset, x.dtype)
        mask = reference_mask(M, nb, x.device)
        h = torch.cat([mem, x[:, start : start + nb], mem], 1)  # [b, 2M + nb, d]
        for layer in model.layers:
            q, k, v = layer.qkv(h, cos, sin)
            h = layer.finish(merge_heads(naive_attention(q, k, v, mask)), h)
        outs.append(h[:, M : M + nb])
        if nb == B:
            mem = model.norm_f(h[:, M + B :])  # the next memory: the last layer's write rows, final norm
    return (torch.cat(outs, 1) if outs else x), None
