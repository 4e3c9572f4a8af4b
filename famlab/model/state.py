"""The streaming state (:class:`FamState`, one :class:`LayerState` per layer) and its (de)serialisation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor


def own_storage(t: Tensor) -> Tensor:
    """``t``, or a copy of it if ``t`` is a view holding a larger storage alive."""
    return t.clone(memory_format=torch.contiguous_format) if t.untyped_storage().nbytes() > t.nbytes else t


@dataclass
class LayerState:
    """What one layer remembers between chunks. K/V are stored with RoPE applied."""

    mem_k: Tensor  # [b, G, M, D] keys of the cached previous blocks (M <= m*B; grows for `full`)
    mem_v: Tensor
    blk_k: Tensor  # [b, G, o, D] keys of the current, partial block (o < B)
    blk_v: Tensor
    fam: Tensor | None = None  # [b, L_F, d] FAM hidden state: this layer's FAM input for the block
    fam_k: Tensor | None = None  # [b, G, p*L_F, D] keys of the last p FAM states, oldest first
    fam_v: Tensor | None = None
    fm_k: Tensor | None = None  # [b, G, o, D] fm only: keys of the current partial block's layer outputs
    fm_v: Tensor | None = None
    brt_state: Tensor | None = None  # [b, S, d] block_recurrent, recurrent layers: the state the block reads
    brt_k: Tensor | None = None  # [b, G, o, D] block_recurrent, recurrent layers: the partial block's keys before RoPE
    infini_mem: Tensor | None = None  # [b, G, D, D] infini only: compressive memory M of the complete blocks
    infini_norm: Tensor | None = None  # [b, G, D] infini only: its normaliser z
    infini_k: Tensor | None = None  # [b, G, o, D] infini only: pre-RoPE keys of the current partial block
    rmt_k: Tensor | None = None  # [b, G, M, D] rmt only: keys of the current block's read memory rows
    rmt_v: Tensor | None = None
    rmt_mem: Tensor | None = None  # [b, M, d] rmt only, layer 0 only: the memory (the write rows' input)


LAYER_FIELDS = tuple(f.name for f in dataclasses.fields(LayerState))


class CarriedField(NamedTuple):
    """A :class:`LayerState` field that is *memory* a training call can start from (random state passing
    carries it from one call to the next): the layers whose state holds it and the shape of one sequence's
    tensor (without the batch dimension). Each memory kind names its own (``carried(cfg)``)."""

    layers: tuple[int, ...]
    shape: tuple[int, ...]


@dataclass
class FamState:
    pos: int  # tokens consumed so far
    pos_offset: Tensor | None  # [b] random position offset (training only), None = 0
    fam_fresh: bool  # True until the first FAM update: that update uses a zero residual
    layers: list[LayerState]

    def detach(self) -> FamState:
        """The same state cut from the autograd graph (for stateful training across steps)."""
        return self.map(Tensor.detach)

    def clone(self) -> FamState:
        """A copy of the state in memory of its own."""
        return self.map(Tensor.clone)

    @torch.compiler.disable  # storage sizes are not traceable: a compiled forward breaks its graph here
    def compact(self) -> FamState:
        """The same state, each tensor that is a view into larger storage copied (autograd keeps
        its graph). The parallel paths slice the state out of per-layer K/V of the whole chunk;
        without this, a kept state (a prefill, a carried training window) would hold those alive."""
        return self.map(own_storage)

    def map(self, fn) -> FamState:
        """The state with ``fn`` applied to every tensor (None stays None)."""

        def f(t: Tensor | None) -> Tensor | None:
            return None if t is None else fn(t)

        layers = [LayerState(*(f(getattr(ls, name)) for name in LAYER_FIELDS)) for ls in self.layers]
        return FamState(self.pos, f(self.pos_offset), self.fam_fresh, layers)


def state_to_dict(state: FamState | None) -> dict[str, Any] | None:
    """A detached FamState as plain tensors/ints/bools (``torch.load(weights_only=True)``-safe)."""
    if state is None:
        return None
    return {
        "pos": int(state.pos),
        "pos_offset": None if state.pos_offset is None else state.pos_offset.detach().cpu(),
        "fam_fresh": bool(state.fam_fresh),
        "layers": [
            {f: (None if getattr(ls, f) is None else getattr(ls, f).detach().cpu()) for f in LAYER_FIELDS}
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
    """``state`` on ``device`` (itself if it is there already)."""
    if state.layers and state.layers[0].mem_k.device == device:
        return state
    return state_from_dict(state_to_dict(state), device)
