"""The Recurrent Memory Transformer (RMT; Bulatov et al. 2022, arXiv 2207.06881), decoder variant
(``attention="rmt"``).

Each block (``block_size`` tokens, the paper's segment) runs through the whole stack with ``rmt_mem_tokens``
(M) memory rows around it: rows [read memory (M) | block tokens (B) | write memory (M)]. The read and the
write rows both take the current memory as their input (as the official repo's ``MemoryCell``, which feeds
``[memory_state, segment, memory_state]``); the last layer's outputs at the write rows, *after* the final
norm (the official repo takes ``hidden_states[-1]`` of a GPT-2, which is after ``ln_f``), become the next
block's memory: top to bottom, not per layer. The first block's memory is a learned parameter
``FamLM.rmt_memory`` [M, d] (initialised at the embedding scale by every init scheme).

Choices (the official repo's where it has one):

* Attention within a block is plain causal over [read | block | write] (the official decoder runs its
  causal LM over the concatenation): read rows attend the read rows before them, block tokens attend all
  read rows and their block causally, write rows attend all read rows, the whole block and the write rows
  before them. No attention across blocks except through the memory: ``mem_segment`` must be 0 (BSWA with
  m = 0 inside the block; validated in the config).
* RoPE positions (the official GPT-2 restarts positions at 0 in each segment, so only distances matter):
  the read rows of the block starting at token s sit at s-M .. s-1 (just before it), the write rows at
  s+B .. s+B+M-1 (just after it), so the next block's read rows (at s+B-M .. s+B-1) sit where its memory's
  tokens ended. The random position offset shifts them with the tokens.
* A partial last block produces no memory (its write rows would not change its tokens' outputs).
* Backprop through time: ``rmt_bptt_depth`` = k keeps the gradient through the last k memory transitions
  of a forward call's window (the memory entering block i of n is detached unless i >= n - k), the
  official repo's ``k2`` (its default branch detaches a local variable only, so it truncates nothing;
  here the detach is real and tested). A loss on any block thus reaches at most k blocks back through
  the memory. -1 = never detach. ``stop_grad=True`` means depth 0 (the memory is always detached, so the
  gradient never crosses a block boundary). Streaming (``step_with_grad``) has no window: it keeps the
  whole graph, except with depth 0. Across training windows the state is detached (as for every kind).
* ``fam_len`` and the FAM switches are ignored (``effective_fam_len`` is 0). Random state passing
  (``rsp_prob``) carries the memory ``rmt_mem`` of batch item 0 at the end of a training call to the next
  call's start (instead of the learned first memory); ``n_kv_heads``, ``ff``, ``norm``, ``tie_embeddings`` apply as in every layer.

State (constant in length): per layer the K/V of the current block's read rows (``rmt_k``/``rmt_v``,
M keys) and of the partial block (``blk_k``/``blk_v``); layer 0 holds the memory ``rmt_mem`` [b, M, d]
(the write rows' input). When a block completes, :meth:`RmtMemory.after_block` runs the write rows
through all layers against the cached K/V, then the next block's read rows.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from famlab.config import ModelConfig
from famlab.model import masks
from famlab.model.ops import expand_kv, merge_heads, sdpa
from famlab.model.positions import rope_for, token_positions
from famlab.model.state import CarriedField, FamState


class RmtMemory:
    """RMT's memory tokens of one model config (M rows, BPTT depth)."""

    name = "rmt"

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        self.M, self.B = cfg.rmt_mem_tokens, cfg.block_size
        self.depth = 0 if cfg.stop_grad else cfg.rmt_bptt_depth

    @staticmethod
    def applies(cfg: ModelConfig) -> bool:
        return cfg.attention == "rmt"

    @staticmethod
    def carried(cfg: ModelConfig) -> dict[str, CarriedField]:
        """What a start may carry over (random state passing): the memory ``rmt_mem`` [M, d] (layer 0 holds
        it). The read rows' K/V follow from it at the first block's positions."""
        return {"rmt_mem": CarriedField((0,), (cfg.rmt_mem_tokens, cfg.d_model))}

    # --- positions, memory and truncation (shared by every path) -----------------------------

    def read_positions(self, start: int, device) -> Tensor:
        """[1, M] float64: the read rows of the block starting at token ``start``."""
        return token_positions(start - self.M, self.M, device)

    def write_positions(self, start: int, device) -> Tensor:
        """[1, M] float64: the write rows of the block starting at ``start`` (after its B tokens)."""
        return token_positions(start + self.B, self.M, device)

    def initial_memory(self, model, b: int, dtype) -> Tensor:
        """The learned first memory, [b, M, d]."""
        return model.rmt_memory.to(dtype).unsqueeze(0).expand(b, -1, -1)

    @staticmethod
    def next_memory(model, h_write: Tensor) -> Tensor:
        """The last layer's write-row outputs [b, M, d] -> the next memory (after the final norm)."""
        return model.norm_f(h_write)

    def carry(self, mem: Tensor, i: int, n: int) -> Tensor:
        """The memory entering block i (i >= 1) of a window of n blocks: detached unless it is one of the
        last ``depth`` transitions (depth -1: never detached; 0: always)."""
        keep = self.depth < 0 or i >= n - self.depth
        return mem if keep else mem.detach()

    def read_pass(self, model, mem: Tensor, start: int, offset: Tensor | None) -> list[tuple[Tensor, Tensor]]:
        """The read rows of the block at ``start`` (input ``mem`` [b, M, d]) through the stack, causal among
        themselves: per layer their keys and values, each [b, G, M, D]."""
        cos, sin = rope_for(self.cfg, self.read_positions(start, mem.device), offset, mem.dtype)
        h, kvs = mem, []
        for layer in model.layers:
            q, k, v = layer.qkv(h, cos, sin)
            attn = F.scaled_dot_product_attention(q, expand_kv(k, q.shape[1]), expand_kv(v, q.shape[1]), is_causal=True)
            h = layer.finish(merge_heads(attn), h)
            kvs.append((k, v))
        return kvs

    def write_pass(self, model, mem: Tensor, start: int, offset, cached: list[tuple[Tensor, Tensor]]) -> Tensor:
        """The write rows of the complete block at ``start`` (input ``mem`` [b, M, d]) through the stack,
        each layer against ``cached`` [read rows' K/V | the block's K/V] (all visible) and the write rows
        causally. Returns the next memory [b, M, d]."""
        M = self.M
        cos, sin = rope_for(self.cfg, self.write_positions(start, mem.device), offset, mem.dtype)
        n_cached, dev = cached[0][0].shape[2], mem.device
        rows = masks.Rows(
            is_token=torch.ones(M, 1, dtype=torch.bool, device=dev), pos=torch.arange(M, device=dev)[:, None]
        )
        cached_keys = masks.Keys(pos=torch.zeros(1, n_cached, device=dev))  # `memory`: all visible
        own = masks.Keys(pos=torch.arange(M, device=dev)[None, :])  # `own_block`: causal
        mask = masks.table_mask(rows, [(masks.memory, cached_keys), (masks.own_block, own)])  # [M, n_cached + M]
        h = mem
        for layer, (ck, cv) in zip(model.layers, cached):
            q, k, v = layer.qkv(h, cos, sin)
            attn = sdpa(q, torch.cat([ck, k], 2), torch.cat([cv, v], 2), mask)  # [b, H, M, D]
            h = layer.finish(merge_heads(attn), h)
        return self.next_memory(model, h)

    # --- the protocol (see famlab.model.memory) ---------------------------------------------

    def initial(self, model, b: int, *, offset, carried, device, dtype) -> list[dict[str, Tensor]]:
        """Each layer's fields before the first token: the K/V of the first block's read rows (from the
        learned memory, or the ``carried`` one); layer 0 also holds the memory."""
        mem = self.initial_memory(model, b, dtype).to(device) if carried is None else carried[0]["rmt_mem"]
        fields = [{"rmt_k": k, "rmt_v": v} for k, v in self.read_pass(model, mem, 0, offset)]
        fields[0]["rmt_mem"] = mem
        return fields

    def read(self, ls, o: int, device) -> tuple[Tensor, Tensor, masks.MaskMod, masks.Keys]:
        """The read rows' K/V: every token of the block sees all of them (just before the block)."""
        return ls.rmt_k, ls.rmt_v, masks.memory, masks.Keys(pos=torch.arange(-self.M, 0, device=device)[None, :])

    def absorb(self, layer, ls, out: Tensor, cos: Tensor, sin: Tensor) -> dict[str, Tensor]:
        """Nothing to keep of a segment's outputs."""
        return {}

    def update(self, layer, ls, blk_k: Tensor, blk_v: Tensor, *, block, offset, fresh, dtype) -> dict[str, Tensor]:
        """After a complete block: keep its K/V (instead of clearing them) for :meth:`after_block`."""
        return {"blk_k": blk_k, "blk_v": blk_v}

    def after_block(self, model, state: FamState) -> FamState:
        """After a complete block has run through all layers (``state.pos`` is the next block's start): the
        write rows make the next memory, whose read rows give each layer's new ``rmt_k``/``rmt_v``."""
        start = state.pos - self.B  # the completed block's first token
        mem = state.layers[0].rmt_mem
        cached = [(torch.cat([ls.rmt_k, ls.blk_k], 2), torch.cat([ls.rmt_v, ls.blk_v], 2)) for ls in state.layers]
        new_mem = self.write_pass(model, mem, start, state.pos_offset, cached)
        new_mem = new_mem.detach() if self.depth == 0 else new_mem
        reads = self.read_pass(model, new_mem, state.pos, state.pos_offset)  # the next block's read rows
        layers = []
        for i, (ls, (k, v)) in enumerate(zip(state.layers, reads)):
            extra = {"rmt_mem": new_mem} if i == 0 else {}
            empty_k, empty_v = ls.blk_k[:, :, :0], ls.blk_v[:, :, :0]
            layers.append(dataclasses.replace(ls, rmt_k=k, rmt_v=v, blk_k=empty_k, blk_v=empty_v, **extra))
        return dataclasses.replace(state, layers=layers)
