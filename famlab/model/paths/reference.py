"""The reference: for each block, for each layer, the layer on [F; X] with the spec's mask table and a naive
softmax attention. Obviously right, slow; the other paths are held equal to it by the tests.

``fm`` (feedback memory segment, :mod:`famlab.model.memory.feedback`): the same loop, but what enters a
layer's memory after a block is the K/V of that layer's *output* for the block, not of its input.
``sum_fam`` (App. C.3): the FAM rows' queries and residual come from the layer's static summary, not F.
``infini`` (:mod:`famlab.model.memory.infini`): each block's attention output is gated with its read of the
layer's compressive memory (M, z), which each complete block then enters.
With an auxiliary-loss collector active, each layer's complete blocks report their terms (:func:`report_aux`)."""

from __future__ import annotations

import torch
from torch import Tensor

from famlab.model import aux_losses, masks
from famlab.model.memory import FeedbackMemory, InfiniMemory, SegmentMemory
from famlab.model.memory.infini import features
from famlab.model.ops import attention_probs, merge_heads, naive_attention
from famlab.model.positions import fam_positions, rope_for, token_positions
from famlab.model.state import FamState


def forward(model, x: Tensor, state: FamState) -> tuple[Tensor, None]:
    """Keys are [older FAM states | memory blocks | F | X], by :func:`famlab.model.masks.reference_mask`.
    Runs from a fresh state only; returns no state."""
    if state.pos:
        raise ValueError("impl='reference' runs from a fresh state only (state.pos must be 0)")
    cfg = model.cfg
    B, L_F, P = cfg.block_size, cfg.effective_fam_len, cfg.fam_prev_blocks
    segment = SegmentMemory(cfg)
    T = x.shape[1]
    fams = [ls.fam for ls in state.layers]
    mem: list[list[tuple[Tensor, Tensor]]] = [[] for _ in model.layers]  # per layer, per block
    old_fam: list[list[tuple[Tensor, Tensor]]] = [[] for _ in model.layers]
    infini = InfiniMemory(cfg) if InfiniMemory.applies(cfg) else None
    compressive = [(ls.infini_mem, ls.infini_norm) for ls in state.layers]  # per layer (M, z): infini only
    outs = []
    for blk, start in enumerate(range(0, T, B)):
        h = x[:, start : start + B]
        nb = h.shape[1]
        pos = token_positions(start, nb, x.device)
        if L_F:
            pos = torch.cat([fam_positions(cfg, torch.tensor([blk], device=x.device)), pos], 1)
        cos, sin = rope_for(cfg, pos, state.pos_offset, x.dtype)
        for li, layer in enumerate(model.layers):
            older = old_fam[li][max(0, len(old_fam[li]) - (P - 1)) :] if P > 1 else []
            z = torch.cat([fams[li], h], 1) if L_F else h  # [b, L_F + nb, d]
            q, k, v, qk_raw = layer.qkv_raw(z, cos, sin)
            mem_k, mem_v = [kv[0] for kv in mem[li]], [kv[1] for kv in mem[li]]
            if mem_k:  # stop-gradient cuts memory blocks only, never FAM
                mem_k, mem_v = segment.cut(torch.cat(mem_k, 2), torch.cat(mem_v, 2))
                mem_k, mem_v = [mem_k], [mem_v]
            keys = torch.cat([*(kv[0] for kv in older), *mem_k, k], 2)
            vals = torch.cat([*(kv[1] for kv in older), *mem_v, v], 2)
            n_older, n_mem = len(older) * L_F, sum(t.shape[2] for t in mem_k)
            mask = masks.reference_mask(L_F, start, nb, n_older, n_mem, cfg.window, x.device)
            fresh = blk == 0 and state.fam_fresh and cfg.fam_zero_residual
            residual = torch.cat([torch.zeros_like(fams[li]) if fresh else fams[li], h], 1) if L_F else h
            if layer.fam_summary is not None:  # SUM FAM: the FAM rows' queries and residual are the summary's
                summary = layer.summary(h.shape[0], x.dtype)  # [b, L_F, d]
                q_sum, _, _ = layer.qkv(summary, cos[:, :, :L_F], sin[:, :, :L_F])
                q = torch.cat([q_sum, q[:, :, L_F:]], 2)  # [b, H, L_F + nb, D]
                residual = torch.cat([summary, h], 1)  # [b, L_F + nb, d]
            attn = naive_attention(q, keys, vals, mask)
            if infini is not None:  # gate in the read of the memory of the blocks before (pre-RoPE q)
                q_raw, k_raw = qk_raw.split((cfg.n_heads, cfg.kv_heads), dim=1)
                attn = infini.mixed(layer, *compressive[li], q_raw, attn)
                if nb == B:  # a complete block enters the memory
                    compressive[li] = infini.write(*compressive[li], features(k_raw), v)
            out = layer.finish(merge_heads(attn), residual)
            aux = aux_losses.active()
            if aux is not None and L_F and nb == B:
                report_aux(aux, model, layer, blk, state.pos_offset, q, keys, mask, attn, out[:, :L_F])
            if L_F and nb == B:  # only a complete block produces the next FAM
                old_fam[li].append((k[:, :, :L_F], v[:, :, :L_F]))
                fams[li] = out[:, :L_F]
            if cfg.attention == "fm":  # the memory holds this layer's outputs, keyed at their token positions
                mem[li] = segment.push_block(mem[li], FeedbackMemory.outputs_kv(layer, out, cos, sin))
            else:
                mem[li] = segment.push_block(mem[li], (k[:, :, L_F:], v[:, :, L_F:]))
            h = out[:, L_F:]
        outs.append(h)
    return torch.cat(outs, 1), None


def report_aux(aux, model, layer, blk: int, offset, q: Tensor, keys: Tensor, mask: Tensor, attn: Tensor, fam: Tensor):
    """The auxiliary losses' terms of one layer's complete block (:mod:`famlab.model.aux_losses`), from the rows
    [F; X]: q [b, H, L_F + B, D], keys [b, G, K, D] and mask [L_F + B, K] of the attention, its output attn
    [b, H, L_F + B, D], and the updated FAM ``fam`` [b, L_F, d]."""
    L_F = fam.shape[1]
    if aux.diversity:  # the FAM rows' probabilities over their keys [F; X] (the last L_F + B; the rest are masked)
        probs = attention_probs(q[:, :, :L_F], keys, mask[:L_F])
        aux.add_fam_attention(probs[..., -(q.shape[2]) :])
    if aux.reconstruction:  # the block's queries against the updated FAM's keys, at the next block's FAM positions
        cos, sin = rope_for(
            model.cfg, fam_positions(model.cfg, torch.tensor([blk + 1], device=q.device)), offset, q.dtype
        )
        _, k_fam, v_fam = layer.qkv(fam, cos, sin)
        aux.add_reconstruction(q[:, :, L_F:], attn[:, :, L_F:], k_fam, v_fam)
