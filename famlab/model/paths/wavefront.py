"""The wavefront path (FAM only): the reference's [F; X] rows, scheduled as a wavefront over (layer, block).

At wave w, every layer l with 0 <= w - l < n runs block i = w - l on [F; X] (its FAM input, then the block's
tokens: X is layer l-1's output for block i from wave w-1, F is layer l's own FAM output from wave w-1). The
active layers run as one batch (``bmm`` over stacked weights, one SDPA call), so the sequential chain is
n + L - 1 waves of full-size work, where the layer-major path has L * n small FAM updates. A partial last
block is zero-padded (causal masking hides the padding from its tokens) and produces no FAM, as everywhere
else."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from famlab.model import aux_losses, masks
from famlab.model.memory import SegmentMemory
from famlab.model.ops import additive, apply_rope, ff_activation, norm_type, plain_norm, sdpa
from famlab.model.paths.layer_major import check_block_aligned
from famlab.model.positions import fam_cos_sin, token_cos_sin
from famlab.model.state import FamState, LayerState

UNSUPPORTED = (
    "impl='wave' needs FAM (attention='fam', fam_len > 0), T > 0, the layers as FamLM builds them (plain "
    "nn.Linear/norm modules without hooks), no compiled FAM updates and no auxiliary losses collected; use "
    "impl='fast' or 'layer_major'"
)
HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def supported(model, T: int) -> bool:
    """The wavefront reads the layers' weights and stacks them instead of calling the modules, so every
    layer must be as ``FamLM`` builds it: plain ``nn.Linear`` and norm modules (not peft's LoRA wrappers or
    parametrizations) with no hooks (pruning and weight norm recompute ``weight`` in a pre-hook; global
    hooks, which tools such as FlopCounterMode register to observe every module, are not looked at), norms
    with weights and ``cfg.norm_eps``, biases on all layers or none. Compiled FAM updates
    (``compile_fam_updates``) belong to the layer-major path, which then runs instead; so do the auxiliary losses
    (an active :mod:`famlab.model.aux_losses` collector: the wavefront does not report to it)."""
    if not (model.cfg.effective_fam_len and T) or model.cfg.attention == "sum_fam" or aux_losses.active():
        return False
    norm = norm_type(model.cfg)
    has_bias = set()
    for layer in model.layers:
        linears, norms = (layer.wqkv, layer.wo, layer.ff.up, layer.ff.down), (layer.norm1, layer.norm2)
        if {"fam_scan", "fam_update"} & vars(layer).keys():  # compiled FAM updates
            return False
        if any(type(t) is not nn.Linear for t in linears) or any(type(t) is not norm for t in norms):
            return False
        if any(getattr(mod, hooks, None) for mod in (layer, layer.ff, *linears, *norms) for hooks in HOOKS):
            return False
        if any(t.weight is None or t.eps != model.cfg.norm_eps for t in norms):
            return False
        has_bias |= {getattr(t, "bias", None) is not None for t in linears + (norms if norm is nn.LayerNorm else ())}
    return len(has_bias) <= 1


def bmm(x: Tensor, w: Tensor, bias: Tensor | None, residual: Tensor | None = None) -> Tensor:
    """x [L, rows, in] @ w [L, in, out] (+ bias [L, 1, out]) (+ residual [L, rows, out]): the layers'
    linears as one batched matmul, additions riding on it."""
    add = residual if bias is None else (bias if residual is None else residual + bias)
    return torch.bmm(x, w) if add is None else torch.baddbmm(add, x, w)


def cat(parts: list[Tensor], dim: int) -> Tensor:
    """``torch.cat`` that does not copy a single part."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


def stacked_params(model) -> dict[str, Tensor | None]:
    """Every layer's weights stacked on a leading layer axis, matrices as [L, in, out] for ``bmm``,
    biases as [L, 1, out] (None without biases). Built each call, so autograd routes the gradients
    back to the layers' own parameters. The norms' affine parts are folded into the matmul that
    follows them: (n(x) * g + c) @ W + b = n(x) @ (g W) + (c W + b), so the loop over waves runs a
    plain normalization and no per-row scaling."""

    def stack(path: str, attr: str) -> Tensor | None:
        ts = [getattr(layer.get_submodule(path), attr, None) for layer in model.layers]
        return None if ts[0] is None else torch.stack(ts)

    out: dict[str, Tensor | None] = {}
    for key, lin, norm in (
        ("qkv", "wqkv", "norm1"),
        ("o", "wo", None),
        ("up", "ff.up", "norm2"),
        ("down", "ff.down", None),
    ):
        weight = stack(lin, "weight").transpose(1, 2)  # [L, in, out]
        bias = stack(lin, "bias")  # [L, out]
        bias = None if bias is None else bias.unsqueeze(1)  # [L, 1, out]
        if norm is not None:
            norm_bias = stack(norm, "bias")  # RMSNorm and bias-free LayerNorm: none
            if norm_bias is not None:  # c @ W, [L, 1, out]
                shift = torch.bmm(norm_bias.unsqueeze(1), weight)
                bias = shift if bias is None else bias + shift
            weight = stack(norm, "weight").unsqueeze(2) * weight  # g W
        out[key], out[key + "_b"] = weight, bias
    return out


def forward(model, x: Tensor, state: FamState) -> tuple[Tensor, FamState]:
    b, T, d = x.shape
    cfg = SegmentMemory.within_reach(model.cfg, -(-T // model.cfg.block_size), state.layers[0].mem_k.shape[2])
    B, m, L_F, P = cfg.block_size, cfg.mem_segment, cfg.effective_fam_len, cfg.fam_prev_blocks
    H, G, D = cfg.n_heads, cfg.kv_heads, cfg.head_dim
    L, Q = len(model.layers), L_F + B  # Q rows per block: [F; X]
    segment = SegmentMemory(cfg)
    check_block_aligned(model, state)
    g0, n, n_full = state.pos // B, -(-T // B), T // B
    x = F.pad(x, (0, 0, 0, n * B - T))  # [b, n*B, d]
    # RoPE tables per block for the rows [F; X]: [b|1, n, Q, D]
    tok_cos, tok_sin = token_cos_sin(cfg, state.pos, n * B, state.pos_offset, x.device, x.dtype)
    fam_cos, fam_sin = fam_cos_sin(cfg, torch.arange(g0, g0 + n + 1, device=x.device), state.pos_offset, x.dtype)
    cos = torch.cat([fam_cos[:, 0, : n * L_F].unflatten(1, (n, L_F)), tok_cos[:, 0].unflatten(1, (n, B))], 2)
    sin = torch.cat([fam_sin[:, 0, : n * L_F].unflatten(1, (n, L_F)), tok_sin[:, 0].unflatten(1, (n, B))], 2)
    mem_len = state.layers[0].mem_k.shape[2]
    n_hist = state.layers[0].fam_k.shape[2] // L_F  # FAM states in the state (the last is F's)
    masks_add = additive(masks.wavefront_mask(n, B, m, L_F, P, mem_len, n_hist, cfg.window, x.device), x.dtype)
    # tables in reverse block order: a wave's layers lo..hi run blocks w-lo down to w-hi, which
    # is then the slice [n-1-(w-lo), n-(w-hi)) in layer order (a view, no gather)
    cos, sin, masks_rev = cos.flip(1), sin.flip(1), masks_add.flip(0)
    # from block `steady` on, every older FAM state and memory block exists: one broadcast mask
    steady = max(P - n_hist if P > 1 else 0, -(-(m * B - mem_len) // B) if m else 0, 0)
    w_ = stacked_params(model)
    # per layer: FAM input, pending block input, memory blocks (k, v), older FAM keys (k, v)
    fams = [ls.fam for ls in state.layers]
    xin: list[Tensor | None] = [None] * L
    mems = [segment.padded_blocks(ls.mem_k, ls.mem_v) for ls in state.layers]
    olds: list[list[tuple[Tensor, Tensor]]] = []
    for ls in state.layers:
        hk, hv = ls.fam_k[:, :, : (n_hist - 1) * L_F], ls.fam_v[:, :, : (n_hist - 1) * L_F]
        fpad = hk.new_zeros(b, G, (P - n_hist) * L_F, D)  # absent older states, masked out
        hk, hv = torch.cat([fpad, hk], 2), torch.cat([fpad, hv], 2)  # [b, G, (P-1)*L_F, D]
        olds.append(list(zip(hk.split(L_F, 2), hv.split(L_F, 2))) if P > 1 else [])
    blocks_in = x.unflatten(1, (n, B)).unbind(1)  # n x [b, B, d]
    outs: list[Tensor | None] = [None] * n
    zero_first = state.fam_fresh and cfg.fam_zero_residual
    rms, swiglu = cfg.norm == "rmsnorm", cfg.ff == "swiglu"
    part: list[tuple[Tensor, Tensor]] = [(x.new_zeros(b, G, 0, D),) * 2] * L  # partial block's k/v
    for w in range(n + L - 1):
        lo, hi = max(0, w - n + 1), min(L - 1, w)  # active layers; layer l runs block w - l
        nl, act = hi - lo + 1, range(lo, hi + 1)
        p = w_ if nl == L else {k: None if t is None else t[lo : hi + 1] for k, t in w_.items()}
        blocks = list(range(w - lo, w - hi - 1, -1))  # the block each active layer runs
        rev = slice(n - 1 - (w - lo), n - (w - hi))  # those blocks in the reversed tables
        xin[0] = blocks_in[w] if lo == 0 else None
        f_in = torch.stack([fams[l] for l in act])  # [nl, b, L_F, d]
        z = torch.cat([f_in, torch.stack([xin[l] for l in act])], 2).flatten(1, 2)  # [nl, b*Q, d]
        # --- attention: the layer's Q rows against [older FAM | memory | F | X]
        qkv = bmm(plain_norm(z, cfg.norm_eps, rms), p["qkv"], p["qkv_b"])
        qkv = qkv.view(nl, b, Q, H + 2 * G, D).transpose(2, 3)  # [nl, b, H+2G, Q, D]
        qk, v = qkv.split((H + G, G), dim=2)
        c, s = cos[:, rev].transpose(0, 1).unsqueeze(2), sin[:, rev].transpose(0, 1).unsqueeze(2)  # [nl,b|1,1,Q,D]
        q, k = apply_rope(qk, c, s).split((H, G), dim=2)
        keys, vals = [], []
        if P > 1:  # [nl, b, G, (P-1)*L_F, D]
            keys.append(torch.stack([cat([kv[0] for kv in olds[l]], 2) for l in act]))
            vals.append(torch.stack([cat([kv[1] for kv in olds[l]], 2) for l in act]))
        if m:  # [nl, b, G, m*B, D]
            mk = torch.stack([cat([kv[0] for kv in mems[l]], 2) for l in act])
            mv = torch.stack([cat([kv[1] for kv in mems[l]], 2) for l in act])
            mk, mv = segment.cut(mk, mv)
            keys.append(mk)
            vals.append(mv)
        keys = torch.cat([*keys, k], 3).flatten(0, 1)  # [nl*b, G, K, D]
        vals = torch.cat([*vals, v], 3).flatten(0, 1)
        if blocks[-1] >= steady:
            mask = masks_add[-1]  # [Q, K], broadcast over layers, batch and heads
        else:
            mask = masks_rev[rev].unsqueeze(1).expand(nl, b, Q, -1).flatten(0, 1).unsqueeze(1)  # [nl*b,1,Q,K]
        attn = sdpa(q.flatten(0, 1), keys, vals, mask)  # [nl*b, H, Q, D]
        attn = attn.view(nl, b, H, Q, D).permute(0, 1, 3, 2, 4).reshape(nl, b * Q, d)  # heads merged
        # --- output projection and FF; the first update from a fresh FAM has a zero residual
        resid = z
        if zero_first and w <= hi:  # layer w runs block 0 now
            f_res = torch.stack([torch.zeros_like(fams[l]) if l == w else fams[l] for l in act])
            resid = torch.cat([f_res, z.view(nl, b, Q, d)[:, :, L_F:]], 2).flatten(1, 2)
        a = bmm(attn, p["o"], p["o_b"], resid)
        h = ff_activation(bmm(plain_norm(a, cfg.norm_eps, rms), p["up"], p["up_b"]), swiglu)
        out = bmm(h, p["down"], p["down_b"], a).view(nl, b, Q, d)
        # --- hand the results on: F to this layer's next wave, X to the next layer
        f_out, x_out = out.split((L_F, B), dim=2)
        kf, kx = k.split((L_F, B), dim=3)
        vf, vx = v.split((L_F, B), dim=3)
        for l, i, fo, xo, kfl, vfl, kxl, vxl in zip(
            act, blocks, f_out.unbind(0), x_out.unbind(0), kf.unbind(0), vf.unbind(0), kx.unbind(0), vx.unbind(0)
        ):
            if i < n_full:  # only a complete block produces the next FAM and becomes memory
                fams[l] = fo
                mems[l] = segment.push_block(mems[l], (kxl, vxl))
                if P > 1:
                    olds[l] = [*olds[l][1:], (kfl, vfl)]
            else:
                part[l] = (kxl[:, :, : T - n_full * B], vxl[:, :, : T - n_full * B])
            if l + 1 < L:
                xin[l + 1] = xo
            else:
                outs[i] = xo
    return torch.cat(outs, 1)[:, :T], final_state(model, state, T, fams, mems, olds, part, fam_cos, fam_sin)


def final_state(model, state: FamState, T: int, fams, mems, olds, part, fam_cos, fam_sin) -> FamState:
    """The state after the chunk's T tokens, as the layer-major path leaves it, from the wavefront's
    per-layer FAM, memory blocks, older FAM keys and partial block."""
    cfg = SegmentMemory.within_reach(model.cfg, -(-T // model.cfg.block_size), state.layers[0].mem_k.shape[2])
    B, m, L_F, P = cfg.block_size, cfg.mem_segment, cfg.effective_fam_len, cfg.fam_prev_blocks
    n_full = T // B
    empty = state.layers[0].mem_k[:, :, :0]
    mem_len = state.layers[0].mem_k.shape[2]
    n_hist = state.layers[0].fam_k.shape[2] // L_F
    keep = min(m * B, mem_len + n_full * B)
    n_states = min(P, n_hist + n_full)
    new_layers = []
    fc, fs = fam_cos[:, :, n_full * L_F : (n_full + 1) * L_F], fam_sin[:, :, n_full * L_F : (n_full + 1) * L_F]
    for l, layer in enumerate(model.layers):
        mk = torch.cat([kv[0] for kv in mems[l]], 2) if m else empty
        mv = torch.cat([kv[1] for kv in mems[l]], 2) if m else empty
        _, fk, fv = layer.qkv(fams[l], fc, fs)  # keys of the final FAM state
        ok = [kv[0] for kv in olds[l]] + [fk]
        ov = [kv[1] for kv in olds[l]] + [fv]
        new = LayerState(
            mem_k=mk[:, :, m * B - keep :],
            mem_v=mv[:, :, m * B - keep :],
            blk_k=part[l][0],
            blk_v=part[l][1],
            fam=fams[l],
            fam_k=torch.cat(ok, 2)[:, :, -n_states * L_F :],
            fam_v=torch.cat(ov, 2)[:, :, -n_states * L_F :],
        )
        new_layers.append(new)
    fresh = state.fam_fresh and n_full == 0
    return FamState(state.pos + T, state.pos_offset, fresh, new_layers)
