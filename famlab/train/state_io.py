"""FamState <-> plain dict, for checkpoints (``torch.load(weights_only=True)``-safe).

TEMPORARY: moved here as they were; the model slice moves them into ``famlab.model.state`` and the
integrator then deletes this file and imports them from ``famlab.model``."""

from __future__ import annotations

from typing import Any

import torch

from famlab.model import FamState, LayerState


def state_to_dict(state: FamState | None) -> dict[str, Any] | None:
    """A detached FamState as plain tensors/ints/bools (``torch.load(weights_only=True)``-safe)."""
    if state is None:
        return None
    fields = ("mem_k", "mem_v", "blk_k", "blk_v", "fam", "fam_k", "fam_v")
    return {
        "pos": int(state.pos),
        "pos_offset": None if state.pos_offset is None else state.pos_offset.detach().cpu(),
        "fam_fresh": bool(state.fam_fresh),
        "layers": [
            {f: (None if getattr(ls, f) is None else getattr(ls, f).detach().cpu()) for f in fields}
            for ls in state.layers
        ],
    }


def state_from_dict(data: dict[str, Any] | None, device: Any = None) -> FamState | None:
    if data is None:
        return None

    def mv(t: Any) -> Any:
        return None if t is None else t.to(device)

    layers = [LayerState(**{k: mv(v) for k, v in ls.items()}) for ls in data["layers"]]
    return FamState(int(data["pos"]), mv(data["pos_offset"]), bool(data["fam_fresh"]), layers)


def state_to(state: FamState, device: torch.device) -> FamState:
    if state.layers and state.layers[0].mem_k.device == device:
        return state
    return state_from_dict(state_to_dict(state), device)
