"""Peer models of :mod:`famlab.bench.peers` (the pairs are described there).

Block-Recurrent: famlab ``block_recurrent`` (m=1, one recurrent layer, S = B state vectors) vs
``block-recurrent-transformer-pytorch``'s ``BlockRecurrentTransformer`` (``block_width`` = B, one block of
XL memory, ``num_state_vectors`` = S, the same recurrent layer, ``use_flash_attn=True``). The peer has
one key/value head (multi-query) and a GEGLU feed-forward, so famlab's side runs with ``n_kv_heads=1``
and SwiGLU at the peer's width (d_ff = int(8d/3)); famlab's cell has a state feed-forward and two gates
where the peer has one gate and no state feed-forward, so the peer's feed-forward is widened until the
parameter counts match. The peer processes the sequence block by block through all layers (its only
path); its untied head and final LayerNorm stay.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from famlab.config import ModelConfig
from famlab.model import FamLM


class BlockRecurrentLM(nn.Module):
    """``BlockRecurrentTransformer`` over the whole sequence (its own block loop), logits only; its
    feed-forward widened so its parameter count matches famlab's model of ``cfg``."""

    def __init__(self, cfg: ModelConfig, seq_len: int):
        super().__init__()
        from block_recurrent_transformer_pytorch import BlockRecurrentTransformer

        B = cfg.block_size
        sizes = dict(num_tokens=cfg.vocab_size, dim=cfg.d_model, depth=cfg.n_layers, dim_head=cfg.head_dim)
        sizes |= dict(heads=cfg.n_heads, max_seq_len=-(-seq_len // B) * B, block_width=B)
        sizes |= dict(recurrent_layers=tuple(i + 1 for i in cfg.recurrent_layers), num_state_vectors=cfg.state_len)

        def build(ff_mult: float) -> nn.Module:
            return BlockRecurrentTransformer(ff_mult=ff_mult, use_flash_attn=True, **sizes)

        width = cfg.ff_dim  # the peer's FF: int(d * ff_mult * 2/3) hidden units, 3 * d of parameters each
        missing = FamLM(cfg).num_params() - sum(p.numel() for p in build(width * 1.5 / cfg.d_model).parameters())
        width += round(missing / (3 * cfg.d_model * cfg.n_layers))
        self.peer = build((width + 0.5) * 1.5 / cfg.d_model)  # + 0.5: int() rounds down to `width`

    def forward(self, tokens: Tensor) -> Tensor:
        logits, _, _ = self.peer(tokens)
        return logits


def stack_shape(cfg: ModelConfig) -> dict[str, Any]:
    """The layer-stack keywords every peer's constructor takes, at famlab's shape; hyper-connections
    off (one residual stream)."""
    return {"depth": cfg.n_layers, "heads": cfg.n_heads, "ff_mult": cfg.ff_dim / cfg.d_model, "num_residual_streams": 1}


class LocalAttentionLM(nn.Module):
    """``local_attention.LocalTransformer``'s layer stack between a token embedding, a final
    LayerNorm and a head tied to the embedding (famlab's ends)."""

    def __init__(self, cfg: ModelConfig, seq_len: int):
        super().__init__()
        from local_attention import LocalTransformer

        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.stack = LocalTransformer(
            num_tokens=None,
            max_seq_len=seq_len,
            dim=cfg.d_model,
            dim_head=cfg.head_dim,
            local_attn_window_size=cfg.block_size,
            causal=True,
            look_backward=cfg.mem_segment,
            exact_windowsize=False,
            **stack_shape(cfg),
        )
        self.norm = nn.LayerNorm(cfg.d_model, bias=False)
        nn.init.normal_(self.tok_emb.weight, std=0.02)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.norm(self.stack(self.tok_emb(tokens))) @ self.tok_emb.weight.T


def x_transformers_lm(cfg: ModelConfig, seq_len: int) -> nn.Module:
    from x_transformers import Decoder, TransformerWrapper

    return TransformerWrapper(
        num_tokens=cfg.vocab_size,
        max_seq_len=seq_len,
        use_abs_pos_emb=False,
        tie_embedding=True,
        attn_layers=Decoder(
            dim=cfg.d_model,
            attn_dim_head=cfg.head_dim,
            rotary_pos_emb=True,
            rotary_emb_dim=cfg.head_dim,
            attn_flash=True,
            ff_no_bias=True,
            **stack_shape(cfg),
        ),
    )
