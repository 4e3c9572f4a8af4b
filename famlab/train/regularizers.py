"""Training regularisers of the FAM paper that decide the state a training call starts from: the random
position offset (RPO) and random state passing (RSP). The model knows nothing of them: they build the
start with :meth:`FamLM.initial_state <famlab.model.FamLM.initial_state>`.

The random draws come in a fixed order and count, so one seed gives one training run: the offset first
(``torch.rand(2, b)``, float64, on the model's device), then the RSP coin (``torch.rand(())``) only while
P(RSP) > 0 and a remembered FAM is valid."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from famlab.config import ModelConfig
from famlab.model import FamLM, FamState

LEGACY_KEYS = {"model.rsp_state": "rsp.state", "model.rsp_valid": "rsp.valid"}  # checkpoints before the move


def draw_pos_offset(batch_size: int, device=None) -> Tensor:
    """RPO: u * 2*pi*1e4 * round(v), u, v ~ U(0, 1) per sequence [b] (float64): half the sequences keep
    offset 0."""
    u, v = torch.rand(2, batch_size, device=device, dtype=torch.float64)
    return u * 2 * math.pi * 1e4 * v.round()


class RandomStatePassing(nn.Module):
    """RSP: with probability ``prob``, a training call starts from the final FAM of batch item 0 of the
    previous training call instead of the learned initial FAM (and without the zero-residual rule).

    ``prob`` is the probability in use now (a schedule sets it between steps); the remembered FAM and
    whether it is valid are buffers, so checkpoints keep them. Remembering happens after every training
    call of a model with FAM and ``cfg.rsp_prob > 0``, also before a schedule turns RSP on."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.prob = cfg.rsp_prob
        self.enabled = cfg.effective_fam_len > 0
        if self.enabled:
            self.register_buffer("state", torch.zeros(cfg.n_layers, cfg.effective_fam_len, cfg.d_model))
            self.register_buffer("valid", torch.zeros((), dtype=torch.bool))

    def draw(self, batch_size: int, dtype) -> list[Tensor] | None:
        """Per-layer FAM [b, L_F, d] to start from (the remembered one), or None (the learned initial FAM)."""
        if not (self.enabled and self.prob > 0 and bool(self.valid) and bool(torch.rand(()) < self.prob)):
            return None
        return list(self.state.to(dtype).unsqueeze(1).expand(-1, batch_size, -1, -1).clone())

    @torch.no_grad()
    def remember(self, final: FamState | None) -> None:
        """Keep the final FAM of batch item 0 of a training call (detached)."""
        if self.enabled and self.cfg.rsp_prob > 0 and final is not None:
            self.state.copy_(torch.stack([ls.fam[0] for ls in final.layers]))
            self.valid.fill_(True)

    @property
    def needs_final_state(self) -> bool:
        """Whether a training call must return its final state for :meth:`remember`."""
        return self.enabled and self.cfg.rsp_prob > 0


def training_start(model: FamLM, rsp: RandomStatePassing, batch_size: int, device=None) -> FamState:
    """The state a training call without a carried state starts from: the RPO offset (if
    ``model.random_pos_offset``), then the RSP draw (on the model's device by default)."""
    device = device or model.tok_emb.weight.device
    offset = draw_pos_offset(batch_size, device) if model.cfg.random_pos_offset else None
    fams = rsp.draw(batch_size, model.tok_emb.weight.dtype)
    return model.initial_state(batch_size, pos_offset=offset, fams=fams, device=device)


def upgrade_checkpoint(state_dict: dict[str, Tensor]) -> None:
    """Move an old checkpoint's RSP buffers (``model.rsp_state``/``model.rsp_valid``) to their place now."""
    for old, new in LEGACY_KEYS.items():
        if old in state_dict:
            state_dict[new] = state_dict.pop(old)
