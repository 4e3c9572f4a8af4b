"""The layer-major path of Infini-attention (``attention="infini"``, :mod:`famlab.model.memory.infini`): per
layer, QKV of all tokens at once; every block's local attention (its own block causally, and with
``mem_segment`` m > 0 the m blocks before, as BSWA) in one SDPA call, blocks as batch; the compressive
memory before every block at once: for the linear rule a cumulative sum over blocks of sigma(K)^T V, for the
delta rule (whose update reads the memory) a sequential scan over the complete blocks; then every block's
memory read in one batched matmul. Equal to the reference loop (tested)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from famlab.model import masks
from famlab.model.memory import InfiniMemory, SegmentMemory
from famlab.model.memory.infini import features, gate, retrieve
from famlab.model.ops import additive, sdpa
from famlab.model.paths.layer_major import check_block_aligned
from famlab.model.positions import token_cos_sin
from famlab.model.state import FamState, LayerState


def memories(infini: InfiniMemory, mem: Tensor, norm: Tensor, sk: Tensor, v: Tensor, n_full: int):
    """The memory before each of n blocks, from (mem [b, G, D, D], norm [b, G, D]) before the first and the
    blocks' key features and values sk, v [b, G, n, B, D] (only the n_full complete ones enter). Returns
    M_before [b, G, n, D, D], z_before [b, G, n, D] and the memory after the complete blocks."""
    n = sk.shape[2]
    if infini.delta:  # sequential: a block's update reads the memory before it
        mems, norms = [mem], [norm]
        for sk_i, v_i in zip(sk.unbind(2)[:n_full], v.unbind(2)[:n_full]):
            mem, norm = infini.write(mem, norm, sk_i, v_i)
            mems.append(mem)
            norms.append(norm)
        mems, norms = torch.stack(mems, 2), torch.stack(norms, 2)  # [b, G, n_full+1, D, D], [b, G, n_full+1, D]
    else:  # linear: the memory after block i is M_0 + sum_{j <= i} sigma(K_j)^T V_j
        ups = sk[:, :, :n_full].transpose(-1, -2) @ v[:, :, :n_full]  # [b, G, n_full, D, D]
        mems = torch.cat([mem[:, :, None], mem[:, :, None] + ups.cumsum(2)], 2)  # [b, G, n_full+1, D, D]
        norms = torch.cat([norm[:, :, None], norm[:, :, None] + sk[:, :, :n_full].sum(-2).cumsum(2)], 2)
    return mems[:, :, :n], norms[:, :, :n], mems[:, :, n_full], norms[:, :, n_full]


def forward(model, x: Tensor, state: FamState) -> tuple[Tensor, FamState]:
    """x [b, T, d] from the block-aligned ``state`` -> final hidden states [b, T, d] and the state after."""
    b, T, d = x.shape
    check_block_aligned(model, state)
    n_blk = -(-T // model.cfg.block_size)  # blocks, the last one possibly partial
    mem_len = state.layers[0].mem_k.shape[2]
    cfg = SegmentMemory.within_reach(model.cfg, n_blk, mem_len)
    B, H, G, D = cfg.block_size, cfg.n_heads, cfg.kv_heads, cfg.head_dim
    segment, infini = SegmentMemory(cfg), InfiniMemory(cfg)
    n_full = T // B  # complete blocks: only these enter the memories
    Tp = n_blk * B
    x = F.pad(x, (0, 0, 0, Tp - T))  # zero rows after the end; causal masking hides them, no memory takes them
    cos, sin = token_cos_sin(cfg, state.pos, Tp, state.pos_offset, x.device, x.dtype)
    mask = masks.layer_major_mask(n_blk, B, cfg.mem_segment, 0, 1, mem_len, 0, None, x.device)  # [n, B, Lk]
    mask = additive(mask, x.dtype).repeat(b, 1, 1).unsqueeze(1)  # [b*n, 1, B, Lk]
    new_layers = []
    for layer, ls in zip(model.layers, state.layers):
        q, k, v, qk_raw = layer.qkv_raw(x, cos, sin)  # [b, H, Tp, D], [b, G, Tp, D] x2, [b, H+G, Tp, D]
        # local attention: each block against [its m-block memory segment | itself], blocks as batch
        k_ext, mem_k = segment.windows(ls.mem_k, k, n_blk)  # mem_k [b, G, n, m*B, D] or None
        v_ext, mem_v = segment.windows(ls.mem_v, v, n_blk)
        k_own, v_own = k.view(b, G, n_blk, B, D), v.view(b, G, n_blk, B, D)
        parts_k, parts_v = [], []
        if mem_k is not None:
            mem_k, mem_v = segment.cut(mem_k, mem_v)
            parts_k.append(mem_k)
            parts_v.append(mem_v)
        keys = torch.cat([t.transpose(1, 2) for t in (*parts_k, k_own)], dim=3).flatten(0, 1)  # [b*n, G, Lk, D]
        vals = torch.cat([t.transpose(1, 2) for t in (*parts_v, v_own)], dim=3).flatten(0, 1)
        q_blk = q.reshape(b, H, n_blk, B, D).transpose(1, 2).flatten(0, 1)  # [b*n, H, B, D]
        a_dot = sdpa(q_blk, keys, vals, mask)  # [b*n, H, B, D]
        # the compressive memory: every block reads the memory of the complete blocks before it
        sqk = features(qk_raw).view(b, H + G, n_blk, B, D)
        sq, sk = sqk.split((H, G), dim=1)  # [b, H, n, B, D], [b, G, n, B, D]
        mems, norms, mem, norm = memories(infini, ls.infini_mem, ls.infini_norm, sk, v_own, n_full)
        a_mem = retrieve(*infini.cut(mems, norms), sq)  # [b, H, n, B, D]
        attn = gate(layer.infini_beta, a_mem.transpose(1, 2).flatten(0, 1), a_dot)  # [b*n, H, B, D]
        attn = attn.view(b, n_blk, H, B, D).permute(0, 1, 3, 2, 4).reshape(b, Tp, H * D)  # heads merged
        x = layer.finish(attn, x)
        new_layers.append(
            LayerState(
                mem_k=segment.after_chunk(k_ext, mem_len, n_full),
                mem_v=segment.after_chunk(v_ext, mem_len, n_full),
                blk_k=k[:, :, n_full * B : T],
                blk_v=v[:, :, n_full * B : T],
                infini_mem=mem,
                infini_norm=norm,
                infini_k=qk_raw[:, H:, n_full * B : T],
            )
        )
    return x[:, :T], FamState(state.pos + T, state.pos_offset, state.fam_fresh, new_layers)
