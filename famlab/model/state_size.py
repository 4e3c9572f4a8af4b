"""The size of the streaming state a model carries from one block to the next (Zoology's "state size").

:func:`state_floats` counts the floats in a :class:`~famlab.model.state.FamState` of one sequence at a block
boundary, once every memory is full: the memory segment ring, the FAM rows and the keys/values of the last P
FAM states, and whatever else a memory kind keeps. It counts generically: every tensor reachable from the
state's dataclass fields (lists, tuples, dicts and nested dataclasses included), by ``numel``, so a memory kind
added later is counted without naming its fields. At a block boundary the current partial block's K/V (and
``fm``'s partial outputs) are empty and count 0; the position offset is None outside training.

Choices: floats, not bytes (the dtype is the run's); one sequence (``init_state(1)``); the state after enough
complete blocks that it stops growing (a ring fills one block at a time, so the count first repeats once every
ring is full). A state that still grows after ``max_blocks`` blocks is unbounded (``full`` attention, whose KV
cache holds every token): None.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

MAX_BLOCKS = 64  # blocks streamed before a still-growing state is called unbounded


def tensor_floats(obj: Any) -> int:
    """The number of tensor elements reachable from ``obj`` (a tensor, a dataclass, a list/tuple/dict of them;
    anything else counts 0)."""
    if isinstance(obj, Tensor):
        return obj.numel()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(tensor_floats(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    if isinstance(obj, list | tuple):
        return sum(tensor_floats(x) for x in obj)
    if isinstance(obj, dict):
        return sum(tensor_floats(x) for x in obj.values())
    return 0


@torch.no_grad()
def state_floats(model, max_blocks: int = MAX_BLOCKS) -> int | None:
    """Floats per sequence in ``model``'s state at a block boundary once the state has stopped growing
    (the count at two consecutive boundaries is equal); None if it still grows after ``max_blocks`` blocks.

    Streams blocks of token 0 through ``model.step`` (the counts depend on shapes only)."""
    B = model.cfg.block_size
    device = next(model.parameters()).device
    state = model.init_state(1, device=device)
    tokens = torch.zeros(1, B, dtype=torch.long, device=device)
    was = model.training
    model.eval()
    try:
        last = None
        for _ in range(max_blocks):
            _, state = model.step(tokens, state)
            count = tensor_floats(state)
            if count == last:
                return count
            last = count
    finally:
        model.train(was)
    return None
