"""The Block-Recurrent Transformer's state (``attention="block_recurrent"``, :mod:`famlab.model.recurrent_cell`)
as a memory kind: S state vectors per recurrent layer, updated once per complete block.

Only ``initial`` does anything here: it puts the learned initial state (``brt_state`` [b, S, d], or a carried one) and an empty
partial block of keys before RoPE (``brt_k`` [b, G, 0, D]) on each recurrent layer's state (None on the
others). The tokens do not read the state through the shared softmax of ``read`` (they cross-attend it with
queries of their own, a separate attention), and the state is not updated through ``absorb``/``update``:
a recurrent layer's segments run :func:`famlab.model.paths.block_recurrent.segment`, which does both. So
``read`` gives no keys and ``absorb``/``update`` keep nothing, for every layer."""

from __future__ import annotations

import torch
from torch import Tensor

from famlab.config import ModelConfig
from famlab.model import masks
from famlab.model.state import CarriedField


class RecurrentMemory:
    """The recurrent layers' state of one model config."""

    name = "recurrent"

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg

    @staticmethod
    def applies(cfg: ModelConfig) -> bool:
        return cfg.attention == "block_recurrent"

    @staticmethod
    def carried(cfg: ModelConfig) -> dict[str, CarriedField]:
        """What a start may carry over (random state passing): each recurrent layer's state ``brt_state``
        [S, d]. Not the partial block's keys (``brt_k``): a start has no partial block."""
        return {"brt_state": CarriedField(cfg.recurrent_layers, (cfg.state_len, cfg.d_model))}

    def initial(self, model, b: int, *, offset, carried, device, dtype) -> list[dict[str, Tensor | None]]:
        """Each layer's fields before the first token: a recurrent layer's learned initial state (or the
        ``carried`` one) and no partial block; None on the other layers."""
        cfg = self.cfg
        empty = torch.zeros(b, cfg.kv_heads, 0, cfg.head_dim, device=device, dtype=dtype)
        out: list[dict[str, Tensor | None]] = []
        for i, layer in enumerate(model.layers):
            if layer.brt is None:
                out.append({"brt_state": None, "brt_k": None})
            else:
                state = layer.brt.initial(b, dtype).to(device) if carried is None else carried[i]["brt_state"]
                out.append({"brt_state": state, "brt_k": empty})
        return out

    def read(self, ls, o: int, device) -> tuple[Tensor, Tensor, masks.MaskMod, masks.Keys]:
        """No keys in the shared softmax (see the module docstring)."""
        none = ls.blk_k[:, :, :0]
        return none, none, masks.memory, masks.Keys(pos=torch.zeros(1, 0, device=device))

    def absorb(self, layer, ls, out: Tensor, cos: Tensor, sin: Tensor) -> dict[str, Tensor]:
        return {}

    def update(self, layer, ls, blk_k: Tensor, blk_v: Tensor, *, block, offset, fresh, dtype) -> dict[str, Tensor]:
        return {}
