"""Token and FAM positions for RoPE, written once for every path.

Positions are float64 (FAM positions may be fractional; a random position offset may be large) and turned
into RoPE tables by :func:`~famlab.model.ops.rope_cos_sin`."""

from __future__ import annotations

import torch
from torch import Tensor

from famlab.config import ModelConfig
from famlab.model.ops import rope_cos_sin


def with_offset(pos: Tensor, offset: Tensor | None) -> Tensor:
    """pos [1, k] plus a per-sequence offset [b] -> [b|1, k] (float64)."""
    return pos if offset is None else pos + offset.to(torch.float64)[:, None]


def token_positions(start: int, n: int, device) -> Tensor:
    """Positions of n tokens from absolute position ``start``: [1, n] float64."""
    return torch.arange(n, device=device, dtype=torch.float64).unsqueeze(0) + start


def fam_positions(cfg: ModelConfig, blocks: Tensor) -> Tensor:
    """Positions of the FAM states feeding ``blocks`` [k] (absolute block indices) -> [1, k*L_F] float64.

    last: the last L_F positions of the previous block (block 0: the L_F positions before the first
    token); float: L_F fractional positions evenly spaced between the previous block's last token and
    this block's first; zero: all 0."""
    B, L_F = cfg.block_size, cfg.effective_fam_len
    r = torch.arange(L_F, device=blocks.device, dtype=torch.float64)
    start = blocks.to(torch.float64)[:, None] * B  # [k, 1]: first token of each block
    pos = {
        "last": start - L_F + r,
        "float": start - 1 + (r + 1) / (L_F + 1),
        "zero": 0 * start + 0 * r,
    }[cfg.fam_pos]
    return pos.reshape(1, -1)


def rope_for(cfg: ModelConfig, pos: Tensor, offset: Tensor | None, dtype) -> tuple[Tensor, Tensor]:
    """RoPE tables [b|1, 1, k, D] for positions [1, k] shifted by ``offset``."""
    return rope_cos_sin(with_offset(pos, offset), cfg.head_dim, cfg.rope_base, dtype)


def token_cos_sin(cfg: ModelConfig, start: int, n: int, offset: Tensor | None, device, dtype):
    """RoPE tables of n tokens from position ``start``: each [b|1, 1, n, D]."""
    return rope_for(cfg, token_positions(start, n, device), offset, dtype)


def fam_cos_sin(cfg: ModelConfig, blocks: Tensor, offset: Tensor | None, dtype) -> tuple[Tensor, Tensor]:
    """RoPE tables of the FAM states feeding ``blocks`` [k]: each [b|1, 1, k*L_F, D]."""
    return rope_for(cfg, fam_positions(cfg, blocks), offset, dtype)
