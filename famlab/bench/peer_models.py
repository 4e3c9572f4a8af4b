"""Peer models of :mod:`famlab.bench.peers` whose matching to famlab takes more than a constructor call.

famlab ``block_recurrent`` (m=1, one recurrent layer, S = B state vectors) vs
``block-recurrent-transformer-pytorch``'s ``BlockRecurrentTransformer`` (``block_width`` = B, one block of
XL memory, ``num_state_vectors`` = S, the same recurrent layer, ``use_flash_attn=True``). The peer has
one key/value head (multi-query) and a GEGLU feed-forward, so famlab's side runs with ``n_kv_heads=1``
and SwiGLU at the peer's width (d_ff = int(8d/3)); famlab's cell has a state feed-forward and two gates
where the peer has one gate and no state feed-forward, so the peer's feed-forward is widened until the
parameter counts match. The peer processes the sequence block by block through all layers (its only
path); its untied head and final LayerNorm stay.
"""

from __future__ import annotations

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
