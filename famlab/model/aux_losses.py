"""The paper's two auxiliary losses on the FAM (App. C.4 and C.5), collected during a forward pass.

``with collect(diversity=True, reconstruction=True) as aux: logits = model(tokens)`` runs the forward with an
:class:`AuxCollector` active; the paths that update the FAM report to it (``active()``), and afterwards
``aux.diversity_loss()`` / ``aux.reconstruction_loss()`` are scalars with their autograd graph. Nothing is
collected without an active collector (the paths check one context variable), so a forward outside
``collect`` is the same as without this module.

**Diversity loss** (App. C.4). For each FAM update (a layer l, a batch item b, a complete block tau), the mean
over query heads and the L_F FAM query rows of the update's attention probabilities over its L_F + B keys
[F; block] gives one distribution p_{l,b,tau}. L_d = mean over (l, b, tau) of sum_k p log p (the negative
entropy, 0 log 0 = 0): minimising ``weight * L_d`` maximises the entropy. Choices where the paper is silent:
every layer's updates count, averaged (the paper's formula has no layer index); SUM FAM's updates count with
their summary queries; only complete blocks update the FAM, so a partial last block adds nothing. The fast
paths run SDPA, which returns no probabilities: ``Layer.fam_update`` recomputes them explicitly from the same
q/k when a collector wants them (L_F rows per block, cheap).

**Reconstruction loss** (App. C.5, Compressive-Transformer style). For each layer and complete block tau, the
block's queries Q (heads split, RoPE applied) attend the keys/values of the *updated* FAM F' = S_{tau+1} only
(the layer's projections, RoPE at S_{tau+1}'s positions: what block tau+1's tokens read), with no mask: one
softmax attention, recon = softmax(Q K(F')^T / sqrt(D)) V(F'). Its target is what the block's queries read in
the forward: the layer's attention output for the block's tokens (heads split, before the output projection:
an attention output, as Compressive Transformer reconstructs attention outputs; a layer output would mostly be
its residual). L_r = mean squared error over every element (layers, batch, blocks, heads, tokens, D).
Stop-gradient as Compressive Transformer: the target and the queries are detached, so the loss trains what the
FAM holds (through F', its update and the FAM's initial value), not how the block's tokens attend.

**Paths.** ``Layer.fam_update`` (the layer-major scan and streaming) reports the diversity term; the layer-major
path reports the reconstruction term per layer from its batched blocks; the reference loop reports both from its
[F; X] rows (the tests hold the two equal). The wavefront does not report: while a collector is active,
``impl="fast"`` runs layer-major instead and ``impl="wave"`` is refused. Streaming (``step``) refuses the
reconstruction term (a block's queries arrive in segments there). Compiled FAM updates are not supported
(``train.compile`` must be ``none``).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from famlab.model.ops import expand_kv

ACTIVE: contextvars.ContextVar[AuxCollector | None] = contextvars.ContextVar("famlab_aux_losses", default=None)


def active() -> AuxCollector | None:
    """The collector of the forward pass in progress, or None (no auxiliary loss wanted)."""
    return ACTIVE.get()


@contextlib.contextmanager
def collect(diversity: bool = True, reconstruction: bool = True) -> Iterator[AuxCollector]:
    """An :class:`AuxCollector` active for the forward passes inside the ``with`` block."""
    aux = AuxCollector(diversity, reconstruction)
    token = ACTIVE.set(aux)
    try:
        yield aux
    finally:
        ACTIVE.reset(token)


class AuxCollector:
    """Sums of the auxiliary losses' terms over the FAM updates and blocks the paths report."""

    def __init__(self, diversity: bool, reconstruction: bool):
        self.diversity, self.reconstruction = diversity, reconstruction
        self.div_sum: Tensor | float = 0.0
        self.div_count = 0  # distributions p_{l,b,tau}
        self.rec_sum: Tensor | float = 0.0
        self.rec_count = 0  # squared errors

    def add_fam_attention(self, probs: Tensor) -> None:
        """One FAM update's attention probabilities [b, H, L_F, K] over its keys [F; block]."""
        p = probs.mean(dim=(1, 2))  # [b, K]: mean over heads and FAM rows
        self.div_sum = self.div_sum + torch.xlogy(p, p).sum()
        self.div_count += p.shape[0]

    def add_reconstruction(self, q: Tensor, target: Tensor, k_fam: Tensor, v_fam: Tensor) -> None:
        """Blocks' queries q [n, H, B, D] and attention outputs ``target`` [n, H, B, D] against the keys/values
        of the FAM each block's update made, k_fam/v_fam [n, G, L_F, D] (n: any number of blocks)."""
        H = q.shape[1]
        recon = F.scaled_dot_product_attention(q.detach(), expand_kv(k_fam, H), expand_kv(v_fam, H))
        self.rec_sum = self.rec_sum + (recon - target.detach()).square().sum()
        self.rec_count += target.numel()

    def losses(self) -> dict[str, Tensor]:
        """The wanted losses by name (``diversity``, ``reconstruction``)."""
        wanted = {"diversity": self.diversity, "reconstruction": self.reconstruction}
        return {name: getattr(self, f"{name}_loss")() for name, on in wanted.items() if on}

    def diversity_loss(self) -> Tensor:
        """L_d: the mean of sum p log p over the collected distributions (0 when no block was complete)."""
        return torch.as_tensor(self.div_sum / max(self.div_count, 1))

    def reconstruction_loss(self) -> Tensor:
        """L_r: the mean squared reconstruction error over the collected elements (0 when no block was
        complete)."""
        return torch.as_tensor(self.rec_sum / max(self.rec_count, 1))
