"""Infini-attention (Munkhdalai et al. 2024, arXiv 2404.07143; ``attention="infini"``): per layer and per
key/value head a compressive memory, a linear-attention matrix M [D, D] with a normaliser z [D], beside
block-local softmax attention.

Semantics (segment = block of ``block_size`` B tokens; sigma(x) = ELU(x) + 1, elementwise, > 0):

* Block tau's tokens attend their own block causally (A_dot, softmax with RoPE, as BSWA) and, with
  ``mem_segment`` m > 0, the K/V of the m previous blocks as BSWA does (the paper's setting is m = 0).
* They read the memory of the blocks before: A_mem = sigma(Q) M_{tau-1} / (sigma(Q) z_{tau-1}) (eq. 3).
* The output per query head h: A = g_h A_mem + (1 - g_h) A_dot with g_h = sigmoid(beta_h) (eq. 6), beta a
  learned scalar per query head (``Layer.infini_beta``).
* After a complete block: M_tau = M_{tau-1} + sigma(K)^T V and z_tau = z_{tau-1} + sum_t sigma(K_t) (eq. 4);
  with ``infini_delta_rule`` M_tau = M_{tau-1} + sigma(K)^T (V - sigma(K) M_{tau-1} / (sigma(K) z_{tau-1}))
  (eq. 5; z as before). A partial last block reads the memory of the complete blocks only and enters the
  memory only once complete.

Choices where the paper is silent:

* Positions: the memory reads and writes the queries and keys *before* RoPE (a sum over all past blocks has
  no position to rotate to; ``infini-transformer-pytorch`` does the same); local attention uses RoPE'd ones.
* The first block: M_0 = 0 and z_0 = 0, and the denominator is clamped, sigma(Q) z >= :data:`EPS`, so the
  first block reads exactly 0 (0 / EPS); afterwards sigma(Q) z > 0 (all terms positive) is of the order of
  D * B, far above EPS, so the clamp does nothing. The delta rule's retrieval uses the same guard (its first
  block writes as the linear rule does).
* The gate beta starts at 0 in every init scheme (:func:`famlab.model.init.zero_gates`): memory and local
  attention mixed evenly (g = 1/2). No 1/sqrt(D) scale in the memory read (the paper has none).
* Grouped-query heads (``n_kv_heads`` G < H): M and z per key/value head, read by the queries of its group.
* ``stop_grad=True``: the queries' reads of M and z see them detached, so no gradient from a block reaches
  earlier blocks through the memory (nor through the m-block segment, as in BSWA); the forward is unchanged.
  (The delta rule's own read needs no cut: M's graph then reaches no output.)
* ``fam_len`` and ``txl_window`` are ignored (``effective_fam_len`` is 0).
* Random state passing (``rsp_prob``) carries M and z (:meth:`InfiniMemory.carried`): a training call may
  start from the final M and z of batch item 0 of the previous call instead of 0.

State per layer: ``infini_mem`` M [b, G, D, D], ``infini_norm`` z [b, G, D] and ``infini_k``, the partial
block's pre-RoPE keys [b, G, o, D] (its values are ``blk_v``): constant in length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from famlab.config import ModelConfig
from famlab.model import masks
from famlab.model.ops import expand_kv
from famlab.model.state import CarriedField

EPS = 1e-6  # the least denominator sigma(Q) z of a memory read (a read of the empty memory gives 0)


def features(x: Tensor) -> Tensor:
    """The linear-attention feature map sigma(x) = ELU(x) + 1 (elementwise, positive)."""
    return F.elu(x) + 1


def retrieve(mem: Tensor, norm: Tensor, sq: Tensor) -> Tensor:
    """sigma(Q) M / (sigma(Q) z): mem [b, G, ..., D, D], norm [b, G, ..., D] and features sq [b, H, ..., T, D]
    (the same middle dims) -> [b, H, ..., T, D]; each key/value head's memory read by its query group."""
    H = sq.shape[1]
    mem, norm = expand_kv(mem, H), expand_kv(norm, H)
    den = (sq @ norm.unsqueeze(-1)).clamp_min(EPS)  # [b, H, ..., T, 1]
    return (sq @ mem) / den


def gate(beta: Tensor, a_mem: Tensor, a_dot: Tensor) -> Tensor:
    """sigmoid(beta_h) A_mem + (1 - sigmoid(beta_h)) A_dot, per query head h; beta [H], the A's [..., H, T, D]."""
    g = beta.sigmoid().to(a_dot.dtype)[:, None, None]  # [H, 1, 1]
    return g * a_mem + (1 - g) * a_dot


def write(mem: Tensor, norm: Tensor, sk: Tensor, v: Tensor, delta: bool) -> tuple[Tensor, Tensor]:
    """The memory after one complete block with key features sk and values v [b, G, B, D]: M + sigma(K)^T V
    (delta rule: V less what M retrieves for sigma(K)) and z + sum_t sigma(K_t)."""
    if delta:
        v = v - retrieve(mem, norm, sk)
    return mem + sk.transpose(-1, -2) @ v, norm + sk.sum(-2)  # [b, G, D, D], [b, G, D]


class InfiniMemory:
    """The compressive memory of one model config (``infini_delta_rule``, ``stop_grad``)."""

    name = "infini"

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        self.delta = cfg.infini_delta_rule
        self.stop_grad = cfg.stop_grad
        self.H = cfg.n_heads

    @staticmethod
    def applies(cfg: ModelConfig) -> bool:
        return cfg.attention == "infini"

    @staticmethod
    def carried(cfg: ModelConfig) -> dict[str, CarriedField]:
        """What a start may carry over (random state passing): every layer's compressive memory M
        [G, D, D] and normaliser z [G, D] (position-free: written from pre-RoPE keys). Not the partial
        block's keys (``infini_k``): a start has no partial block."""
        every, G, D = tuple(range(cfg.n_layers)), cfg.kv_heads, cfg.head_dim
        return {"infini_mem": CarriedField(every, (G, D, D)), "infini_norm": CarriedField(every, (G, D))}

    def cut(self, mem: Tensor, norm: Tensor) -> tuple[Tensor, Tensor]:
        """M and z as a read sees them: detached with stop-gradient."""
        return (mem.detach(), norm.detach()) if self.stop_grad else (mem, norm)

    def write(self, mem: Tensor, norm: Tensor, sk: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """:func:`write` by this config's rule."""
        return write(mem, norm, sk, v, self.delta)

    def mixed(self, layer, mem: Tensor, norm: Tensor, q_raw: Tensor, a_dot: Tensor) -> Tensor:
        """A block's output A from its local attention a_dot [b, H, T, D] and its pre-RoPE queries q_raw
        [b, H, T, D], reading the memory (mem, norm) of the blocks before it."""
        return gate(layer.infini_beta, retrieve(*self.cut(mem, norm), features(q_raw)), a_dot)

    # --- the protocol (see famlab.model.memory) ---------------------------------------------

    def initial(self, model, b: int, *, offset, carried, device, dtype) -> list[dict[str, Tensor]]:
        """Each layer's fields before the first token: M = 0, z = 0 (or the ``carried`` M and z), no partial
        block."""
        G, D = self.cfg.kv_heads, self.cfg.head_dim
        part = torch.zeros(b, G, 0, D, device=device, dtype=dtype)
        if carried is not None:
            return [{"infini_mem": c["infini_mem"], "infini_norm": c["infini_norm"], "infini_k": part} for c in carried]
        mem = torch.zeros(b, G, D, D, device=device, dtype=dtype)
        norm = torch.zeros(b, G, D, device=device, dtype=dtype)
        return [{"infini_mem": mem, "infini_norm": norm, "infini_k": part} for _ in range(self.cfg.n_layers)]

    def read(self, ls, o: int, device) -> tuple[Tensor, Tensor, masks.MaskMod, masks.Keys]:
        """No keys to attend: the memory enters through :meth:`mix`."""
        none = ls.infini_k[:, :, :0]
        return none, none, masks.memory, masks.Keys(pos=torch.zeros(1, 0, device=device))

    def mix(self, layer, ls, qk_raw: Tensor, a_dot: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """A segment of the current block: its output (local attention a_dot [b, H, n, D] gated with the
        memory read) and its pre-RoPE keys joining the partial block's (qk_raw [b, H+G, n, D])."""
        q_raw, k_raw = qk_raw.split((self.H, qk_raw.shape[1] - self.H), dim=1)
        out = self.mixed(layer, ls.infini_mem, ls.infini_norm, q_raw, a_dot)
        return out, {"infini_k": torch.cat([ls.infini_k, k_raw], 2)}  # [b, G, o+n, D]

    def absorb(self, layer, ls, out: Tensor, cos: Tensor, sin: Tensor) -> dict[str, Tensor]:
        return {}

    def update(self, layer, ls, blk_k: Tensor, blk_v: Tensor, *, block, offset, fresh, dtype) -> dict[str, Tensor]:
        """After a complete block (pre-RoPE keys ``ls.infini_k``, values ``blk_v``): it enters the memory."""
        mem, norm = self.write(ls.infini_mem, ls.infini_norm, features(ls.infini_k), blk_v)
        return {"infini_mem": mem, "infini_norm": norm, "infini_k": ls.infini_k[:, :, :0]}
