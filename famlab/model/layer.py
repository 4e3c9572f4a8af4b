"""One pre-LN transformer layer (:class:`Layer`) and its feed-forward (:class:`FeedForward`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from famlab.config import ModelConfig
from famlab.model import aux_losses
from famlab.model.ops import apply_rope, attention_probs, ff_activation, linear_plus, make_norm, merge_heads, sdpa


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swiglu = cfg.ff == "swiglu"
        self.up = nn.Linear(cfg.d_model, cfg.ff_dim * (2 if self.swiglu else 1), bias=cfg.bias)
        self.down = nn.Linear(cfg.ff_dim, cfg.d_model, bias=cfg.bias)

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """FF(x), plus ``residual`` if given (added inside the output matmul when it is a plain Linear)."""
        return linear_plus(self.down, ff_activation(self.up(x), self.swiglu), residual)


class Layer(nn.Module):
    """One pre-LN transformer layer, split into the two halves the attention variants need:
    ``qkv`` (norm, projections, RoPE) and ``finish`` (output projection, residual, FF)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.norm1, self.norm2 = make_norm(cfg), make_norm(cfg)
        self.wqkv = nn.Linear(cfg.d_model, (cfg.n_heads + 2 * cfg.kv_heads) * cfg.head_dim, bias=cfg.bias)
        self.wo = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.ff = FeedForward(cfg)
        # SUM FAM (App. C.3): a static learned summary of L_F rows whose queries update the FAM
        self.fam_summary = nn.Parameter(torch.empty(cfg.fam_len, cfg.d_model)) if cfg.attention == "sum_fam" else None
        # Block-Recurrent Transformer: FamLM sets a RecurrentCell (famlab.model.recurrent_cell) on its recurrent layers
        self.brt = None
        # Infini-attention: per query head, the gate beta between memory and local attention (init 0)
        self.infini_beta = nn.Parameter(torch.empty(cfg.n_heads)) if cfg.attention == "infini" else None

    def qkv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [b, T, d] -> q [b, H, T, D], k and v [b, G, T, D], RoPE applied to q and k."""
        q, k, v, _ = self.qkv_raw(x, cos, sin)
        return q, k, v

    def qkv_raw(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``qkv`` and the queries and keys before RoPE, qk_raw [b, H+G, T, D] (queries, then keys; a view),
        which Infini-attention's compressive memory reads."""
        b, T, _ = x.shape
        H, G, D = self.cfg.n_heads, self.cfg.kv_heads, self.cfg.head_dim
        qkv = self.wqkv(self.norm1(x)).view(b, T, H + 2 * G, D).transpose(1, 2)  # [b, H+2G, T, D]
        qk, v = qkv.split((H + G, G), dim=1)
        q, k = apply_rope(qk, cos, sin).split((H, G), dim=1)  # one RoPE call for q and k together
        return q, k, v, qk

    def fam_update(
        self, fam: Tensor, cos: Tensor, sin: Tensor, k_blk: Tensor, v_blk: Tensor, zero_residual: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One FAM update: the L_F rows of ``fam`` [b, L_F, d] (RoPE tables for their positions)
        attend [themselves; the whole block] (k_blk/v_blk [b, G, B, D]); A_F = Attn + F (or + 0);
        F' = FF(LN(A_F)) + A_F. Returns F' and the keys/values of ``fam`` ([b, G, L_F, D] each).
        One step of ``fam_scan``; streaming runs it once per completed block.

        SUM FAM (``fam_summary`` set): the queries and the residual are the static summary S's (at the same
        positions), not F's; F enters only through its keys/values: A_F = Attn(Q(S), [K(F); K(X)]) + S
        (``zero_residual`` has no effect).

        With an auxiliary-loss collector active (:mod:`famlab.model.aux_losses`) that wants the diversity loss,
        the update's attention probabilities are reported to it."""
        q, k, v = self.qkv(fam, cos, sin)
        residual = 0.0 if zero_residual else fam
        if self.fam_summary is not None:
            residual = self.summary(fam.shape[0], fam.dtype)  # [b, L_F, d]
            q, _, _ = self.qkv(residual, cos, sin)
        keys = torch.cat([k, k_blk], 2)  # [b, G, L_F + B, D]
        aux = aux_losses.active()
        if aux is not None and aux.diversity:  # SDPA returns no probabilities: the same softmax, explicitly
            aux.add_fam_attention(attention_probs(q, keys))
        attn = sdpa(q, keys, torch.cat([v, v_blk], 2))
        return self.finish(merge_heads(attn), residual), k, v

    def summary(self, b: int, dtype) -> Tensor:
        """SUM FAM's static summary rows, [b, L_F, d]."""
        return self.fam_summary.to(dtype).unsqueeze(0).expand(b, -1, -1)

    def fam_scan(
        self, fam: Tensor, cos: Tensor, sin: Tensor, k_own: Tensor, v_own: Tensor, n_full: int, zero_first: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The sequential part of the layer-major path: for each complete block i, ``fam_update`` of S_i
        with block i (k_own/v_own [b, G, n, B, D]; cos/sin for S_0..S_{n_full} [., ., (n_full+1)*L_F, D]).

        Returns the final FAM state and the keys/values of S_0..S_{n_full}, each [b, G, (n_full+1)*L_F, D].
        ``FamLM.compile_fam_updates`` may compile it."""
        L_F = fam.shape[1]
        fks, fvs = [], []
        # slice the blocks once: indexing inside the loop would make backward zero-fill and sum a
        # full-size gradient per block
        k_blocks, v_blocks = k_own.unbind(2), v_own.unbind(2)
        for i in range(n_full):
            rows = slice(i * L_F, (i + 1) * L_F)
            zero = i == 0 and zero_first
            fam, kf, vf = self.fam_update(fam, cos[:, :, rows], sin[:, :, rows], k_blocks[i], v_blocks[i], zero)
            fks.append(kf)  # keys/values of S_i, [b, G, L_F, D]
            fvs.append(vf)
        _, kf, vf = self.qkv(fam, cos[:, :, n_full * L_F :], sin[:, :, n_full * L_F :])  # of S_{n_full}
        fks.append(kf)
        fvs.append(vf)
        return fam, torch.cat(fks, 2), torch.cat(fvs, 2)

    def finish(self, attn: Tensor, residual: Tensor | float) -> Tensor:
        """attn [b, T, H*D] (heads merged) -> layer output [b, T, d]: A = Wo(attn) + residual;
        O = FF(LN(A)) + A."""
        a = linear_plus(self.wo, attn, residual if isinstance(residual, Tensor) else None)
        return self.ff(self.norm2(a), residual=a)
