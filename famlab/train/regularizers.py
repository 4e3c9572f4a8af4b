"""Training regularisers of the FAM paper that decide the state a training call starts from: the random
position offset (RPO) and random state passing (RSP). The model knows nothing of them: they build the
start with :meth:`FamLM.initial_state <famlab.model.FamLM.initial_state>`.

The random draws come in a fixed order and count, so one seed gives one training run: the offset first
(``torch.rand(2, b)``, float64, on the model's device), then the RSP coin (``torch.rand(())``) only while
P(RSP) > 0 and a remembered memory is valid (so never for a kind without carried memory)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from famlab.config import ModelConfig
from famlab.model import FamLM, FamState
from famlab.model.memory import carried_fields

LEGACY_KEYS = {"model.rsp_state": "rsp.state", "model.rsp_valid": "rsp.valid"}  # checkpoints before the move


def draw_pos_offset(batch_size: int, device=None) -> Tensor:
    """RPO: u * 2*pi*1e4 * round(v), u, v ~ U(0, 1) per sequence [b] (float64): half the sequences keep
    offset 0."""
    u, v = torch.rand(2, batch_size, device=device, dtype=torch.float64)
    return u * 2 * math.pi * 1e4 * v.round()


def buffer_name(field: str) -> str:
    """The :class:`RandomStatePassing` buffer that remembers the carried state field ``field``. The FAM's
    keeps the name ``state`` it had when RSP carried FAM only (checkpoints of FAM runs load as before)."""
    return "state" if field == "fam" else f"state_{field}"


class RandomStatePassing(nn.Module):
    """RSP: with probability ``prob``, a training call starts from the final memory of batch item 0 of the
    previous training call instead of the learned (or empty) initial memory (and without the zero-residual
    rule). The memory is what the model's memory kinds carry (:func:`~famlab.model.memory.carried_fields`):
    FAM rows (``fam``, ``sum_fam``), RMT's memory, Infini-attention's M and z, the Block-Recurrent state;
    never cached K/V (memory segment, partial blocks) or positions. Kinds without such memory (``full``,
    ``bswa``, ``txl``, ``fm``) have no RSP: nothing is remembered and no coin is drawn.

    ``prob`` is the probability in use now (a schedule sets it between steps); the remembered memory (one
    buffer per field, stacked over the layers holding it: :func:`buffer_name`) and whether it is valid are
    buffers, so checkpoints keep them. Remembering happens after every training call of a model with carried
    memory and ``cfg.rsp_prob > 0``, also before a schedule turns RSP on."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.prob = cfg.rsp_prob
        self.fields = carried_fields(cfg)
        self.enabled = bool(self.fields)
        for name, field in self.fields.items():
            self.register_buffer(buffer_name(name), torch.zeros(len(field.layers), *field.shape))
        if self.enabled:
            self.register_buffer("valid", torch.zeros((), dtype=torch.bool))

    def draw(self, batch_size: int, dtype) -> list[dict[str, Tensor]] | None:
        """The memory to start from (per layer, each carried field [b, ...]: the remembered one for every batch
        item), or None (the learned initial memory)."""
        if not (self.enabled and self.prob > 0 and bool(self.valid) and bool(torch.rand(()) < self.prob)):
            return None
        carried: list[dict[str, Tensor]] = [{} for _ in range(self.cfg.n_layers)]
        for name, field in self.fields.items():
            kept = getattr(self, buffer_name(name)).to(dtype).unsqueeze(1)
            per_layer = kept.expand(-1, batch_size, *field.shape).clone()
            for i, t in zip(field.layers, per_layer):
                carried[i][name] = t
        return carried

    @torch.no_grad()
    def remember(self, final: FamState | None) -> None:
        """Keep the final memory of batch item 0 of a training call (detached)."""
        if self.enabled and self.cfg.rsp_prob > 0 and final is not None:
            for name, field in self.fields.items():
                getattr(self, buffer_name(name)).copy_(
                    torch.stack([getattr(final.layers[i], name)[0] for i in field.layers])
                )
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
    carried = rsp.draw(batch_size, model.tok_emb.weight.dtype)
    return model.initial_state(batch_size, pos_offset=offset, carried=carried, device=device)


def upgrade_checkpoint(state_dict: dict[str, Tensor], rsp: RandomStatePassing | None = None) -> None:
    """Bring an old training checkpoint's ``state_dict`` up to date (in place): move its RSP buffers of FAM
    (``model.rsp_state``/``model.rsp_valid``) to their place now; and, given the module's ``rsp``, give a
    checkpoint of a kind whose memory RSP did not carry yet (no ``rsp.valid``) ``rsp``'s buffers as they
    are before any training call: nothing remembered."""
    for old, new in LEGACY_KEYS.items():
        if old in state_dict:
            state_dict[new] = state_dict.pop(old)
    if rsp is not None and rsp.enabled and "rsp.valid" not in state_dict:
        fresh = RandomStatePassing(rsp.cfg)
        state_dict.update({f"rsp.{k}": v for k, v in fresh.state_dict().items()})
