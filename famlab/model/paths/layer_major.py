"""The layer-major path: per layer, QKV of all tokens at once; a sequential scan over blocks that updates only
the L_F FAM rows (``Layer.fam_scan``); then every block's attention in one SDPA call (each block against [its
FAM keys | its memory segment | itself]). ``full`` attention: one causal SDPA per layer over the KV cache.
With an auxiliary-loss collector active, the FAM updates report their attention (``Layer.fam_update``) and each
layer its blocks' reconstruction terms (:func:`reconstruct`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from famlab.model import aux_losses, masks
from famlab.model.memory import FamMemory, SegmentMemory
from famlab.model.ops import additive, expand_kv, merge_heads, sdpa
from famlab.model.positions import fam_cos_sin, token_cos_sin
from famlab.model.state import FamState, LayerState


def check_block_aligned(model, state: FamState) -> None:
    """The parallel paths start at a block boundary; a state inside a block continues with ``step``."""
    if state.pos % model.cfg.block_size or state.layers[0].blk_k.shape[2]:
        raise ValueError(
            f"the parallel forward starts at a block boundary; state.pos={state.pos} is inside "
            f"a block of {model.cfg.block_size}: use step() to continue from it"
        )


def forward(model, x: Tensor, state: FamState) -> tuple[Tensor, FamState]:
    if model.cfg.attention == "full":
        return forward_full(model, x, state)
    b, T, d = x.shape
    check_block_aligned(model, state)
    n_blk = -(-T // model.cfg.block_size)  # blocks, the last one possibly partial
    cfg = SegmentMemory.within_reach(model.cfg, n_blk, state.layers[0].mem_k.shape[2])
    B, L_F, P = cfg.block_size, cfg.effective_fam_len, cfg.fam_prev_blocks
    segment, fam_memory = SegmentMemory(cfg), FamMemory(cfg)
    g0 = state.pos // B  # absolute index of the first block
    n_full = T // B  # complete blocks: only these update the FAM
    Tp = n_blk * B
    x = F.pad(x, (0, 0, 0, Tp - T))  # zero rows after the end; causal masking hides them
    cos, sin = token_cos_sin(cfg, state.pos, Tp, state.pos_offset, x.device, x.dtype)
    mem_len = state.layers[0].mem_k.shape[2]
    n_hist = FamMemory.n_hist(state.layers[0], L_F) if L_F else 0  # FAM states in the state
    mask = masks.layer_major_mask(n_blk, B, cfg.mem_segment, L_F, P, mem_len, n_hist, cfg.window, x.device)
    # [b*n, 1, B, Lk], additive once here rather than converted in every layer's SDPA
    mask = additive(mask, x.dtype).repeat(b, 1, 1).unsqueeze(1)
    if L_F:
        fam_cos, fam_sin = fam_cos_sin(
            cfg, torch.arange(g0, g0 + n_full + 1, device=x.device), state.pos_offset, x.dtype
        )  # [b|1, 1, (n_full+1)*L_F, D]
    new_layers = []
    for layer, ls in zip(model.layers, state.layers):
        q, k, v = layer.qkv(x, cos, sin)  # [b, H, Tp, D], [b, G, Tp, D]
        G, D = k.shape[1], k.shape[3]
        # keys/values of [memory | own] per block: windows of (m+1)B over [state memory; k]
        k_ext, mem_k = segment.windows(ls.mem_k, k, n_blk)
        v_ext, mem_v = segment.windows(ls.mem_v, v, n_blk)
        k_own, v_own = k.view(b, G, n_blk, B, D), v.view(b, G, n_blk, B, D)
        parts_k, parts_v = [], []
        if L_F:
            zero_first = state.fam_fresh and cfg.fam_zero_residual
            fam, fk, fv = layer.fam_scan(ls.fam, fam_cos, fam_sin, k_own, v_own, n_full, zero_first)
            fk_all, fv_all = fam_memory.history(ls, fk, fv)  # FAM states S_{-(P-1)} .. S_{n_full}
            parts_k.append(fam_memory.windows(fk_all, n_blk))
            parts_v.append(fam_memory.windows(fv_all, n_blk))
        if mem_k is not None:
            mem_k, mem_v = segment.cut(mem_k, mem_v)
            parts_k.append(mem_k)
            parts_v.append(mem_v)
        # one SDPA call, blocks as batch: [b*n, heads, B, D] against [b*n, G, Lk, D]
        # (4-D inputs with a boolean mask reach the fused CPU kernel; 5-D ones do not)
        keys = torch.cat([t.transpose(1, 2) for t in (*parts_k, k_own)], dim=3).flatten(0, 1)
        vals = torch.cat([t.transpose(1, 2) for t in (*parts_v, v_own)], dim=3).flatten(0, 1)
        q_blk = q.reshape(b, -1, n_blk, B, D).transpose(1, 2).flatten(0, 1)  # [b*n, H, B, D]
        attn = sdpa(q_blk, keys, vals, mask)  # [b*n, H, B, D]
        aux = aux_losses.active()
        if L_F and n_full and aux is not None and aux.reconstruction:
            reconstruct(aux, q_blk, attn, fk, fv, b, n_full)
        attn = attn.view(b, n_blk, -1, B, D).permute(0, 1, 3, 2, 4).reshape(b, Tp, -1)  # [b, Tp, H*D]
        x = layer.finish(attn, x)
        # the state after the last token: memory = last m complete blocks, partial block, FAM
        new = LayerState(
            mem_k=segment.after_chunk(k_ext, mem_len, n_full),
            mem_v=segment.after_chunk(v_ext, mem_len, n_full),
            blk_k=k[:, :, n_full * B : T],
            blk_v=v[:, :, n_full * B : T],
        )
        if L_F:
            new.fam = fam
            new.fam_k = fam_memory.kept(fk_all, n_hist, n_full)
            new.fam_v = fam_memory.kept(fv_all, n_hist, n_full)
        new_layers.append(new)
    fresh = state.fam_fresh and n_full == 0
    return x[:, :T], FamState(state.pos + T, state.pos_offset, fresh, new_layers)


def reconstruct(aux, q_blk: Tensor, attn: Tensor, fk: Tensor, fv: Tensor, b: int, n_full: int) -> None:
    """Report each complete block's queries and attention outputs (q_blk, attn [b*n, H, B, D]) with the keys/values
    of the FAM its update made, S_{i+1} (from ``fk``/``fv`` = S_0 .. S_{n_full}, [b, G, (n_full+1)*L_F, D]), to the
    auxiliary-loss collector (:mod:`famlab.model.aux_losses`)."""
    L_F = fk.shape[2] // (n_full + 1)

    def blocks(t: Tensor) -> Tensor:  # [b*n, H, B, D] -> the complete blocks', [b*n_full, H, B, D]
        return t.unflatten(0, (b, -1))[:, :n_full].flatten(0, 1)

    def next_fam(t: Tensor) -> Tensor:  # S_1 .. S_{n_full}: [b, G, n_full*L_F, D] -> [b*n_full, G, L_F, D]
        return t[:, :, L_F:].unflatten(2, (n_full, L_F)).transpose(1, 2).flatten(0, 1)

    aux.add_reconstruction(blocks(q_blk), blocks(attn), next_fam(fk), next_fam(fv))


def forward_full(model, x: Tensor, state: FamState) -> tuple[Tensor, FamState]:
    """``full`` attention: causal over the KV cache (memory plus any partial block left by ``step``)."""
    T = x.shape[1]
    past = state.layers[0].mem_k.shape[2] + state.layers[0].blk_k.shape[2]
    cos, sin = token_cos_sin(model.cfg, state.pos, T, state.pos_offset, x.device, x.dtype)
    mask = masks.causal_cache_mask(past, T, x.device) if past else None
    new_layers = []
    for layer, ls in zip(model.layers, state.layers):
        q, k, v = layer.qkv(x, cos, sin)
        k_all, v_all = torch.cat([ls.mem_k, ls.blk_k, k], 2), torch.cat([ls.mem_v, ls.blk_v, v], 2)
        if mask is None:
            k_g, v_g = expand_kv(k_all, q.shape[1]), expand_kv(v_all, q.shape[1])
            attn = F.scaled_dot_product_attention(q, k_g, v_g, is_causal=True)
        else:
            attn = sdpa(q, k_all, v_all, mask)
        x = layer.finish(merge_heads(attn), x)
        new_layers.append(LayerState(k_all, v_all, k[:, :, :0], v[:, :, :0]))
    return x, FamState(state.pos + T, state.pos_offset, state.fam_fresh, new_layers)
