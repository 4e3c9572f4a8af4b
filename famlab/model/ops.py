"""Tensor operations shared by the layers and every path: RoPE, attention, head reshapes, norms and the
feed-forward activation.

Shapes: b batch, T tokens, d model width, H query heads, G key/value heads, D head size."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from famlab.config import ModelConfig


def rope_cos_sin(positions: Tensor, head_dim: int, base: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """RoPE tables for float ``positions`` [b|1, T] -> ``cos2`` = [cos, cos] and ``sin2`` = [-sin, sin],
    each [b|1, 1, T, D] (full head width, so :func:`apply_rope` is three kernels).

    Angles are computed in fp32 (fp64 for fp64 models), as common implementations do; this is
    where a random position offset can make a difference at all (a shared offset cancels in q.k
    under exact arithmetic).
    """
    calc = torch.float64 if dtype == torch.float64 else torch.float32
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=calc) / head_dim)
    angles = positions.to(calc)[:, None, :, None] * inv_freq  # [b|1, 1, T, D/2]
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    return torch.cat((cos, cos), -1), torch.cat((-sin, sin), -1)  # [b|1, 1, T, D] each


def apply_rope(x: Tensor, cos2: Tensor, sin2: Tensor) -> Tensor:
    """Rotate-half RoPE on x [b, heads, T, D]: with x = [x1, x2] (halves), returns
    [x1 cos - x2 sin, x2 cos + x1 sin] = x * cos2 + [x2, x1] * sin2 (``roll`` swaps the halves)."""
    return torch.addcmul(x * cos2, x.roll(x.shape[-1] // 2, dims=-1), sin2)


def expand_kv(x: Tensor, n_heads: int) -> Tensor:
    """Repeat G key/value heads (dim 1) to H query heads for grouped-query attention."""
    groups = n_heads // x.shape[1]
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Scaled dot-product attention; q [b, H, ..., Tq, D], k/v [b, G, ..., Tk, D], mask True=attend."""
    return F.scaled_dot_product_attention(q, expand_kv(k, q.shape[1]), expand_kv(v, q.shape[1]), mask)


def merge_heads(x: Tensor) -> Tensor:
    """[b, H, T, D] -> [b, T, H*D]."""
    b, H, T, D = x.shape
    return x.transpose(1, 2).reshape(b, T, H * D)


def attention_probs(q: Tensor, k: Tensor, mask: Tensor | None = None) -> Tensor:
    """softmax(q k^T / sqrt(D)): q [b, H, Tq, D], k [b, G, Tk, D] (repeated to H heads) -> [b, H, Tq, Tk];
    mask True = attend."""
    scores = q @ expand_kv(k, q.shape[1]).transpose(-1, -2) / math.sqrt(q.shape[-1])  # [b, H, Tq, Tk]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1)


def naive_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """The textbook softmax attention, for the reference path."""
    return attention_probs(q, k, mask) @ expand_kv(v, q.shape[1])


def additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean mask (True = attend) as an additive one (0 / -inf), converted once instead of in every SDPA."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


def linear_plus(linear: nn.Module, x: Tensor, residual: Tensor | None) -> Tensor:
    """``linear(x) + residual``; for a bias-free ``nn.Linear`` one ``addmm`` (the add rides on the matmul
    instead of another pass over memory). Wrapped layers (e.g. peft's LoRA) take the plain path."""
    if residual is None:
        return linear(x)
    if type(linear) is not nn.Linear or linear.bias is not None or residual.shape[-1] != linear.out_features:
        return linear(x) + residual
    out_shape = torch.broadcast_shapes(residual.shape, (*x.shape[:-1], linear.out_features))
    if tuple(out_shape) != tuple(x.shape[:-1]) + (linear.out_features,):
        return linear(x) + residual
    flat = torch.addmm(
        residual.expand(out_shape).reshape(-1, out_shape[-1]), x.reshape(-1, x.shape[-1]), linear.weight.t()
    )
    return flat.view(out_shape)


def ff_activation(h: Tensor, swiglu: bool) -> Tensor:
    """The feed-forward's nonlinearity on the up projection's output: GELU, or SwiGLU (silu(gate) * up
    over the two halves). Used by :class:`~famlab.model.layer.FeedForward` and the wavefront alike."""
    if swiglu:
        gate, up = h.chunk(2, dim=-1)
        return F.silu(gate) * up
    return F.gelu(h)


def plain_norm(x: Tensor, eps: float, rms: bool) -> Tensor:
    """RMSNorm or LayerNorm over the last dim without the affine part (the wavefront path folds that
    into the next matmul, see :func:`famlab.model.paths.wavefront.stacked_params`)."""
    return F.rms_norm(x, x.shape[-1:], eps=eps) if rms else F.layer_norm(x, x.shape[-1:], eps=eps)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)


def norm_type(cfg: ModelConfig) -> type[nn.Module]:
    """The norm module class :func:`make_norm` builds for ``cfg``."""
    return nn.RMSNorm if cfg.norm == "rmsnorm" else nn.LayerNorm
