"""The Block-Recurrent Transformer's recurrent cell (Hutchins et al. 2022, arXiv 2203.07852; TransformerFAM
App. C.1; ``attention="block_recurrent"``), the parameters and arithmetic that a recurrent layer adds to a
plain BSWA layer. The paths (:mod:`famlab.model.paths.block_recurrent`) schedule it.

A recurrent layer keeps S state vectors c [b, S, d] (``model.brt_state_len``), the learned initial state
``state0`` before the first block. For block tau, with x the layer's input of the block:

* vertical (tokens): the token queries attend the BSWA keys ([memory segment | own block causally], RoPE) and,
  with a second set of queries ``wq_cross``(norm1(x)), the current state's keys/values (every state vector, no
  mask); the paper concatenates the two attention outputs and projects them back to d. Here that projection
  is split in two halves, the layer's own ``wo`` on the self-attention and this cell's ``wo`` on the
  cross-attention (W [a_self; a_cross] = W_self a_self + W_cross a_cross), so the layer's BSWA weights keep
  their names; then the layer's residual and feed-forward as usual: A = Wo a_self + Wo' a_cross + x;
  O = FF(LN(A)) + A.
* horizontal (state): cs = norm(c) + ``state_pos`` (learned state IDs, added after the norm as in the paper's
  code, meliad's ``KVQLayer``); from cs the state's self-attention queries, cross-attention queries, keys and
  values (one fused projection ``wqkv``; the keys/values are the ones the tokens read too). The state attends
  itself and the block's tokens (the block's own keys/values, all of them); [a_self; a_cross] is projected
  (``state_wo``, 2d -> d) and gated onto c (gate 1), then a pre-norm feed-forward of the layer's kind is
  gated onto that (gate 2): c' = g2(c1, FF(LN(c1))), c1 = g1(c, Wo_s [a_self; a_cross]). Gates replace the
  residual connections (the paper's Fig. 1).

Gates (``model.brt_gate``), as the paper's code (meliad ``nn_components.MLP._gate``):

* ``fixed``: g = sigmoid(b) with a learned per-dimension bias b (initialised N(0, 0.1)): c' = c*g + z*(1 - g),
  a learned exponential moving average (the paper's best setting).
* ``lstm``: f = sigmoid(W_f h + b_f + 1), i = sigmoid(W_i h + b_i - 1), c' = c*f + z*i, h the gate's input
  (gate 1: the concatenated attention output; gate 2: the feed-forward's hidden activation), the +1/-1
  biasing the gate to remember at initialisation; W_f, W_i at N(0, 0.1/fan_in), b_f, b_i at N(0, 0.1).

Choices where the paper is silent or famlab differs from it:

* Positions: the state has no RoPE (its vectors are told apart by the learned IDs); the tokens' cross
  queries carry no RoPE, and the state reads the block's keys *before* RoPE (as meliad, which rotates keys
  only for the tokens' self-attention), so what the state keeps does not depend on absolute positions (a
  random position offset changes nothing there).
* The state reads the block's own tokens only (meliad's window also holds the previous block, which the
  state has read already); a partial last block reads the state and updates it only once complete.
* Attention uses the usual 1/sqrt(D) scaling (the paper normalises keys and queries with a learned scale).
* Grouped-query heads (``n_kv_heads``): the state's keys/values have G heads like the tokens'.
* Gradients flow through the state across the blocks of a training window (``stop_grad`` acts on the
  memory segment only, as in BSWA); across training windows the state is detached like every other. Random
  state passing (``rsp_prob``, famlab.train.regularizers) carries the state: with probability ``rsp_prob`` a
  training window starts from the final state c of batch item 0 of the previous training call instead of
  ``state0`` (:meth:`famlab.model.memory.RecurrentMemory.carried`; the paper carries the state across
  training segments of a document, which stateful training does).
* Initialisation (:mod:`famlab.model.init`): linear layers as the scheme says; the gates and state IDs by
  the paper in every scheme (as norms keep their own); ``state0`` at the scale of the scheme's FAM prompt.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from famlab.config import ModelConfig
from famlab.model.layer import FeedForward
from famlab.model.ops import apply_rope, ff_activation, make_norm, merge_heads

Attend = Callable[..., Tensor]  # (q, k, v) -> attention output: ops.sdpa or ops.naive_attention


class StateProj(NamedTuple):
    """The state's projections for one block: self-attention queries q [b, H, S, D], cross-attention
    queries q_cross [b, H, S, D], keys k and values v [b, G, S, D] (read by the state and by the tokens)."""

    q: Tensor
    q_cross: Tensor
    k: Tensor
    v: Tensor


class TokenProj(NamedTuple):
    """A recurrent layer's projections of its input tokens: the BSWA q [b, H, n, D] and k [b, G, n, D] with
    RoPE, v [b, G, n, D], the keys before RoPE ``k_raw`` (what the state reads) and the queries for the
    state ``q_cross`` [b, H, n, D] (no RoPE)."""

    q: Tensor
    k: Tensor
    v: Tensor
    k_raw: Tensor
    q_cross: Tensor


class Gate(nn.Module):
    """c' from the old value c, the candidate z and the gate input h (``lstm`` only), per ``brt_gate``."""

    def __init__(self, cfg: ModelConfig, hidden: int):
        super().__init__()
        self.lstm = cfg.brt_gate == "lstm"
        if self.lstm:
            self.input = nn.Linear(hidden, cfg.d_model)
            self.forget = nn.Linear(hidden, cfg.d_model)
        else:
            self.bias = nn.Parameter(torch.empty(cfg.d_model))

    def forward(self, c: Tensor, z: Tensor, h: Tensor) -> Tensor:
        if self.lstm:
            f = torch.sigmoid(self.forget(h) + 1.0)  # biased to remember
            i = torch.sigmoid(self.input(h) - 1.0)
            return c * f + z * i
        g = torch.sigmoid(self.bias)
        return c * g + z * (1.0 - g)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The paper's code: biases N(0, 0.1); the lstm gate's weights N(0, 0.1 / fan_in)."""
        if self.lstm:
            for lin in (self.input, self.forget):
                nn.init.normal_(lin.weight, std=math.sqrt(0.1 / lin.in_features))
                nn.init.normal_(lin.bias, std=0.1)
        else:
            nn.init.normal_(self.bias, std=0.1)


class RecurrentCell(nn.Module):
    """What a recurrent layer adds to its :class:`~famlab.model.layer.Layer` (``layer.brt``)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d, H, G, D, S = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim, cfg.state_len
        self.state0 = nn.Parameter(torch.empty(S, d))  # the learned initial state
        self.state_pos = nn.Parameter(torch.empty(S, d))  # learned state IDs, added after the norm
        self.wq_cross = nn.Linear(d, H * D, bias=cfg.bias)  # token queries for the state
        self.wo = nn.Linear(d, d, bias=cfg.bias)  # the cross half of the tokens' output projection
        self.norm = make_norm(cfg)
        self.wqkv = nn.Linear(d, (2 * H + 2 * G) * D, bias=cfg.bias)  # state: q, q_cross, k, v
        self.state_wo = nn.Linear(2 * d, d, bias=cfg.bias)  # [a_self; a_cross] -> d
        self.gate_attn = Gate(cfg, 2 * d)
        self.norm2 = make_norm(cfg)
        self.ff = FeedForward(cfg)
        self.gate_ff = Gate(cfg, cfg.ff_dim)

    @torch.no_grad()
    def reset_own(self) -> None:
        """The paper's init of the gates and state IDs (N(0, 1): they are added to a normalised state)."""
        nn.init.normal_(self.state_pos, std=1.0)
        self.gate_attn.reset_parameters()
        self.gate_ff.reset_parameters()

    def initial(self, b: int, dtype) -> Tensor:
        """The state before the first block, [b, S, d]."""
        return self.state0.to(dtype).unsqueeze(0).expand(b, -1, -1)

    def tokens(self, layer, x: Tensor, cos: Tensor, sin: Tensor) -> TokenProj:
        """The layer's projections of x [b, n, d] (``Layer.qkv`` plus the queries for the state; one norm)."""
        b, n, _ = x.shape
        H, G, D = self.cfg.n_heads, self.cfg.kv_heads, self.cfg.head_dim
        xn = layer.norm1(x)
        qkv = layer.wqkv(xn).view(b, n, H + 2 * G, D).transpose(1, 2)  # [b, H+2G, n, D]
        qk, v = qkv.split((H + G, G), dim=1)
        q, k = apply_rope(qk, cos, sin).split((H, G), dim=1)
        q_cross = self.wq_cross(xn).view(b, n, H, D).transpose(1, 2)  # [b, H, n, D]
        return TokenProj(q, k, v, qk[:, H:], q_cross)

    def project_state(self, c: Tensor) -> StateProj:
        """c [b, S, d] -> its queries, cross queries, keys and values (norm, state IDs, one projection)."""
        b, S, _ = c.shape
        H, G, D = self.cfg.n_heads, self.cfg.kv_heads, self.cfg.head_dim
        cs = self.norm(c) + self.state_pos.to(c.dtype)
        proj = self.wqkv(cs).view(b, S, 2 * H + 2 * G, D).transpose(1, 2)  # [b, 2H+2G, S, D]
        return StateProj(*proj.split((H, H, G, G), dim=1))

    def read(self, q_cross: Tensor, state: StateProj, attend: Attend) -> Tensor:
        """The tokens' cross-attention to the state, projected: q_cross [b, H, n, D] -> [b, n, d], added to
        the layer's residual (every state vector visible: no mask)."""
        return self.wo(merge_heads(attend(q_cross, state.k, state.v)))

    def update(self, c: Tensor, state: StateProj, k_blk: Tensor, v_blk: Tensor, attend: Attend) -> Tensor:
        """The next state after a complete block: c [b, S, d] with its projections ``state``, the block's keys
        before RoPE ``k_blk`` and values ``v_blk`` [b, G, B, D]."""
        a_self = attend(state.q, state.k, state.v)  # [b, H, S, D]
        a_cross = attend(state.q_cross, k_blk, v_blk)  # [b, H, S, D]
        a = torch.cat([merge_heads(a_self), merge_heads(a_cross)], -1)  # [b, S, 2d]
        c1 = self.gate_attn(c, self.state_wo(a), a)
        hidden = ff_activation(self.ff.up(self.norm2(c1)), self.ff.swiglu)  # [b, S, ff_dim]
        return self.gate_ff(c1, self.ff.down(hidden), hidden)
