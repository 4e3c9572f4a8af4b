"""Memory kinds: what a block reads besides its own tokens, and how that changes from block to block.

A memory kind is a class, built from the :class:`~famlab.config.ModelConfig`, with

* ``applies(cfg) -> bool`` (static): whether a model of this config has this memory;
* the initial state: the fields it adds to each :class:`~famlab.model.state.LayerState` before the first
  token (``initial``);
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
default of None, so the state's serialisation follows), and give the parallel paths its batched read/update
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


__all__ = [
    "MEMORY_KINDS",
    "FamMemory",
    "FeedbackMemory",
    "InfiniMemory",
    "RecurrentMemory",
    "RmtMemory",
    "SegmentMemory",
    "memory_kinds",
]
