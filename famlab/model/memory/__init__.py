"""Memory kinds: what a block reads besides its own tokens, and how that changes from block to block.

A memory kind is a class, built from the :class:`~famlab.config.ModelConfig`, with

* ``applies(cfg) -> bool`` (static): whether a model of this config has this memory;
* ``carried(cfg) -> {field: CarriedField}`` (static): the fields of its state that are *memory* a training
  call may start from (random state passing carries them from one call's end to the next call's start),
  with the layers holding each and one sequence's shape; ``{}`` for a kind whose state is only cached K/V
  tied to positions (the memory segment, partial blocks), which a start never carries;
* the initial state: the fields it adds to each :class:`~famlab.model.state.LayerState` before the first
  token (``initial(model, b, *, offset, carried, device, dtype)``: from ``carried``, per-layer dicts of its
  ``carried`` fields [b, ...], when given; else the learned or empty start);
* ``read(layer_state, o, device) -> (k, v, mask_mod, keys)``: the keys/values a token at offset ``o`` of
  the current block reads, with the rule of :mod:`famlab.model.masks` that governs them and the keys'
  positions (relative to the block's start);
* ``absorb(layer, layer_state, out, cos, sin) -> fields``: the layer state's new fields after each segment
  of a block, from the layer's outputs ``out`` there (only the feedback memory keeps anything: the others
  return ``{}``);
* optionally ``mix(layer, layer_state, qk_raw, attn) -> (attn, fields)``: a memory that is no keys to attend
  (Infini-attention's compressive memory) changes the attention output ``attn`` [b, H, n, D] of a segment,
  given its pre-RoPE queries and keys ``qk_raw`` [b, H+G, n, D].
* ``update(...) -> fields``: the layer state's new fields after a complete block (they may keep
  ``blk_k``/``blk_v``, which are cleared otherwise);
* ``after_block(model, state) -> state`` (optional): model-level work once a complete block has run through
  all layers (``rmt``: the write rows make the next memory; it clears ``blk_k``/``blk_v`` itself).

:data:`MEMORY_KINDS` lists them in key order (a block's keys are the kinds' keys in this order, then its own
tokens). The streaming path runs only through this protocol. The parallel paths (layer-major, wavefront,
reference) use each kind's batched layouts (``windows``, ``push_block``, ``history``, ...), which a kind adds
beside the protocol.

Adding a memory kind: write ``famlab/model/memory/<kind>.py`` with such a class (its ``applies`` reading the
config's ``attention`` value), register it in :data:`MEMORY_KINDS`, add its fields to ``LayerState`` (with a
default of None, so the state's serialisation follows), say which of them are carried memory (``carried``:
random state passing then carries them, and its checkpoint buffers follow), and give the parallel paths its batched read/update
(the reference loop first: it is the definition the tests hold the others to).
"""

from __future__ import annotations

from famlab.config import ModelConfig
from famlab.model.memory.fam import FamMemory
from famlab.model.memory.feedback import FeedbackMemory
from famlab.model.memory.infini import InfiniMemory
from famlab.model.memory.recurrent import RecurrentMemory
from famlab.model.memory.rmt import RmtMemory
from famlab.model.memory.segment import SegmentMemory
from famlab.model.state import CarriedField

# in key order (infini's memory and the recurrent state have no keys)
MEMORY_KINDS = {
    "fam": FamMemory,
    "segment": SegmentMemory,
    "feedback": FeedbackMemory,
    "infini": InfiniMemory,
    "rmt": RmtMemory,
    "recurrent": RecurrentMemory,
}


def memory_kinds(cfg: ModelConfig) -> list:
    """The memory kinds a model of ``cfg`` has, built, in key order."""
    return [kind(cfg) for kind in MEMORY_KINDS.values() if kind.applies(cfg)]


def carried_fields(cfg: ModelConfig) -> dict[str, CarriedField]:
    """The state fields a start of a model of ``cfg`` may carry over (every memory kind's ``carried``, in key
    order); empty for a model whose state holds no such memory (``full``, ``bswa``, ``txl``, ``fm``)."""
    out: dict[str, CarriedField] = {}
    for kind in MEMORY_KINDS.values():
        if kind.applies(cfg):
            out |= kind.carried(cfg)
    return out


__all__ = [
    "MEMORY_KINDS",
    "FamMemory",
    "FeedbackMemory",
    "InfiniMemory",
    "RecurrentMemory",
    "RmtMemory",
    "SegmentMemory",
    "carried_fields",
    "memory_kinds",
]
