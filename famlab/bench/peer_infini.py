"""The Infini-attention peer of :mod:`famlab.bench.peers`: ``infini-transformer-pytorch``'s ``InfiniTransformer``
(lucidrains) at famlab's shape, over the whole sequence segment by segment.

Matched to famlab ``infini`` with ``mem_segment=0``: segment length = B, the same depth, width and heads (no
grouped-query heads: the peer has none), ``ff_mult`` = famlab's FF width / d (its gated FF of width
2/3 * mult * d then holds as many weights as famlab's 4d GELU MLP), the same memory rule (``use_mem_delta_rule``
= ``infini_delta_rule``). Its untied, biased output layer is replaced by a head tied to the token embedding, as
famlab's. Gradients flow through the memories of all segments (famlab's ``stop_grad=False``). What differs and
stays: the peer's attention is einsum-based (no SDPA), its first segment skips the memory read (famlab reads the
empty memory, 0, through the gate), its gates start at 10 (famlab's at 0), its norms are its own RMSNorm and its
FF has biases."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from famlab.config import ModelConfig


class TiedHead(nn.Module):
    """Logits from the token embedding's matrix (the peer's ``to_logits`` replaced)."""

    def __init__(self, emb: nn.Embedding):
        super().__init__()
        self.emb = emb

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.emb.weight.T


class InfiniLM(nn.Module):
    """``InfiniTransformer`` run segment by segment, each segment reading the memories the previous ones left."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        from infini_transformer_pytorch import InfiniTransformer

        self.segment = cfg.block_size
        self.model = InfiniTransformer(
            num_tokens=cfg.vocab_size,
            dim=cfg.d_model,
            depth=cfg.n_layers,
            dim_head=cfg.head_dim,
            heads=cfg.n_heads,
            ff_mult=cfg.ff_dim / cfg.d_model,
            use_mem_delta_rule=cfg.infini_delta_rule,
        )
        self.model.to_logits = TiedHead(self.model.token_emb)

    def forward(self, tokens: Tensor) -> Tensor:
        memories, outs = None, []
        for seg in tokens.split(self.segment, dim=1):
            logits, _, memories = self.model(seg, past_memories=memories, return_new_memories=True)
            outs.append(logits)
        return torch.cat(outs, 1)  # [b, T, vocab]
