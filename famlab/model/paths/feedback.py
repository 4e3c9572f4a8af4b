"""The layer-major path of the feedback memory segment (``attention="fm"``, :mod:`famlab.model.memory.feedback`):
per layer, QKV of all tokens at once; then a loop over the blocks, since block i's memory is the K/V of this
layer's outputs for blocks i-m .. i-1: each block attends [memory | itself] in one SDPA call, and its
outputs' K/V join the ring. Equal to the reference loop (tested); the blocks of one layer are sequential,
the batch and heads are not."""

from __future__ import annotations

import torch
from torch import Tensor

from famlab.model import masks
from famlab.model.memory import FeedbackMemory
from famlab.model.ops import merge_heads, sdpa
from famlab.model.paths.layer_major import check_block_aligned
from famlab.model.positions import token_cos_sin
from famlab.model.state import FamState, LayerState


def block_mask(n_mem: int, nb: int, device) -> Tensor:
    """[nb, n_mem + nb]: the block's nb tokens against [n_mem memory keys (all) | itself (causal)]."""
    rows = masks.Rows(
        is_token=torch.ones(nb, 1, dtype=torch.bool, device=device), pos=torch.arange(nb, device=device)[:, None]
    )
    mem = masks.Keys(pos=torch.arange(-n_mem, 0, device=device)[None, :])
    own = masks.Keys(pos=torch.arange(nb, device=device)[None, :])
    return masks.table_mask(rows, [(masks.memory, mem), (masks.own_block, own)])


def forward(model, x: Tensor, state: FamState) -> tuple[Tensor, FamState]:
    """x [b, T, d] from the block-aligned ``state`` -> final hidden states [b, T, d] and the state after."""
    cfg = model.cfg
    B, T = cfg.block_size, x.shape[1]
    feedback = FeedbackMemory(cfg)
    check_block_aligned(model, state)
    n_full = T // B  # complete blocks: only these enter the memory
    cos, sin = token_cos_sin(cfg, state.pos, T, state.pos_offset, x.device, x.dtype)  # [b|1, 1, T, D]
    mask_of: dict[tuple[int, int], Tensor] = {}  # (memory keys, block tokens) -> mask
    new_layers = []
    for layer, ls in zip(model.layers, state.layers):
        q, k, v = layer.qkv(x, cos, sin)  # [b, H, T, D], [b, G, T, D]
        mem_k, mem_v = ls.mem_k, ls.mem_v  # [b, G, M, D], M <= m*B: K/V of this layer's past outputs
        outs = []
        out_k, out_v = ls.fm_k, ls.fm_v  # of the partial block, replaced below
        for start in range(0, T, B):
            s = slice(start, min(start + B, T))
            nb, n_mem = s.stop - start, mem_k.shape[2]
            if (n_mem, nb) not in mask_of:
                mask_of[n_mem, nb] = block_mask(n_mem, nb, x.device)
            mk, mv = feedback.cut(mem_k, mem_v)
            keys, vals = torch.cat([mk, k[:, :, s]], 2), torch.cat([mv, v[:, :, s]], 2)  # [b, G, n_mem + nb, D]
            attn = sdpa(q[:, :, s], keys, vals, mask_of[n_mem, nb])  # [b, H, nb, D]
            out = layer.finish(merge_heads(attn), x[:, s])  # [b, nb, d]
            outs.append(out)
            out_k, out_v = feedback.outputs_kv(layer, out, cos[:, :, s], sin[:, :, s])  # [b, G, nb, D]
            if nb == B:  # a complete block joins the ring, the oldest leaves
                mem_k, mem_v = feedback.push(mem_k, out_k), feedback.push(mem_v, out_v)
        x = torch.cat(outs, 1) if outs else x  # [b, T, d]
        part = T - n_full * B  # tokens of a partial last block: their output K/V (out_k) wait in fm_k/fm_v
        new_layers.append(
            LayerState(
                mem_k=mem_k,
                mem_v=mem_v,
                blk_k=k[:, :, n_full * B :],
                blk_v=v[:, :, n_full * B :],
                fm_k=out_k if part else ls.fm_k[:, :, :0],
                fm_v=out_v if part else ls.fm_v[:, :, :0],
            )
        )
    return x, FamState(state.pos + T, state.pos_offset, state.fam_fresh and n_full == 0, new_layers)
