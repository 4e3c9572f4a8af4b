"""The memory segment of BSWA and TransformerXL (and the growing KV cache of ``full``): the keys and values
of the last m complete blocks, with stop-gradient (``stop_grad``) cutting the gradient into them.

One ring, in the two layouts the paths hold it in: a tensor along the key axis (streaming state,
layer-major) or a list of per-block (k, v) pairs (reference, wavefront)."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from famlab.config import ModelConfig
from famlab.model import masks
from famlab.model.state import CarriedField


class SegmentMemory:
    """The memory segment of one model config. ``capacity``: keys kept (m*B; None = all, for ``full``)."""

    name = "segment"

    def __init__(self, cfg: ModelConfig):
        self.B, self.m = cfg.block_size, cfg.mem_segment
        self.full = cfg.attention == "full"
        self.stop_grad = cfg.detach_memory
        self.window = cfg.window
        self.capacity = None if self.full else self.m * self.B

    @staticmethod
    def within_reach(cfg: ModelConfig, n_blk: int, mem_len: int) -> ModelConfig:
        """``cfg`` with ``mem_segment`` cut to the blocks a chunk of ``n_blk`` blocks after ``mem_len`` memory
        keys holds (the state's and the chunk's own): no block can read more, and the state after the chunk
        keeps as many, so the results are the same while a memory segment longer than the sequence costs
        nothing more (no padding for blocks that cannot exist). A txl window keeps its width."""
        most = -(-mem_len // cfg.block_size) + n_blk
        if cfg.attention == "full" or cfg.mem_segment <= most:
            return cfg
        return dataclasses.replace(cfg, mem_segment=most, txl_window=cfg.window)

    @staticmethod
    def applies(cfg: ModelConfig) -> bool:
        return cfg.attention != "fm"  # m = 0 is an empty segment; fm's segment holds outputs (feedback.py)

    @staticmethod
    def carried(cfg: ModelConfig) -> dict[str, CarriedField]:
        """Nothing: the ring is the cached K/V of the blocks just before, tied to their positions, which a
        start from another sequence's state (random state passing) does not take (as in the paper)."""
        return {}

    # --- the protocol (see famlab.model.memory) ---------------------------------------------

    def initial(self, model, b: int, *, offset, carried, device, dtype) -> list[dict[str, Tensor]]:
        """Each layer's fields before the first token: no memory, no partial block."""
        cfg = model.cfg
        empty = torch.zeros(b, cfg.kv_heads, 0, cfg.head_dim, device=device, dtype=dtype)
        return [{"mem_k": empty, "mem_v": empty, "blk_k": empty, "blk_v": empty} for _ in range(cfg.n_layers)]

    def read(self, ls, o: int, device) -> tuple[Tensor, Tensor, masks.MaskMod, masks.Keys]:
        """The memory a token of the current block (at offset ``o``) reads: K, V, the mask rule and its keys
        (positions relative to the block's start)."""
        k, v = self.cut(ls.mem_k, ls.mem_v)
        n = k.shape[2]
        return k, v, masks.memory, masks.Keys(pos=torch.arange(-n, 0, device=device)[None, :])

    def absorb(self, layer, ls, out: Tensor, cos: Tensor, sin: Tensor) -> dict[str, Tensor]:
        """Nothing to keep of a segment's outputs: the memory holds the block's input K/V."""
        return {}

    def update(self, layer, ls, blk_k: Tensor, blk_v: Tensor, *, block, offset, fresh, dtype) -> dict[str, Tensor]:
        """After a complete block (keys ``blk_k``/``blk_v``): it joins the ring, the oldest block leaves."""
        return {"mem_k": self.push(ls.mem_k, blk_k), "mem_v": self.push(ls.mem_v, blk_v)}

    # --- the ring ---------------------------------------------------------------------------

    def cut(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Memory K/V as attention reads them: stop-gradient cuts the gradient into the memory segment."""
        return (k.detach(), v.detach()) if self.stop_grad else (k, v)

    def push(self, mem: Tensor, new: Tensor) -> Tensor:
        """mem [b, G, M, D] with ``new`` keys appended, the oldest dropped beyond the capacity."""
        if self.capacity is None:
            return torch.cat([mem, new], 2)
        if not self.capacity:
            return mem
        return torch.cat([mem, new], 2)[:, :, -self.capacity :]

    def push_block(self, blocks: list[tuple[Tensor, Tensor]], kv: tuple[Tensor, Tensor]):
        """The list layout: ``blocks`` (oldest first) with the block ``kv`` appended, the oldest dropped."""
        if self.full:
            return [*blocks, kv]
        return [*blocks, kv][max(0, len(blocks) + 1 - self.m) :] if self.m else []

    def padded_blocks(self, mem_k: Tensor, mem_v: Tensor) -> list[tuple[Tensor, Tensor]]:
        """The list layout of a state's memory: m blocks, absent ones zeros (the masks hide them)."""
        if not self.m:
            return []
        b, G, mem_len, D = mem_k.shape
        pad = mem_k.new_zeros(b, G, self.m * self.B - mem_len, D)
        mk, mv = torch.cat([pad, mem_k], 2), torch.cat([pad, mem_v], 2)  # [b, G, m*B, D]
        return list(zip(mk.split(self.B, 2), mv.split(self.B, 2)))

    def windows(self, mem: Tensor, new: Tensor, n_blk: int) -> tuple[Tensor, Tensor | None]:
        """The layer-major layout: ``ext`` = [zero pad; state memory mem; chunk keys new] [b, G, m*B + T, D] and
        each of the n_blk blocks' memory window [b, G, n, m*B, D] over it (None without memory)."""
        b, G, mem_len, D = mem.shape
        ext = torch.cat([mem.new_zeros(b, G, self.m * self.B - mem_len, D), mem, new], dim=2)
        if not self.m:
            return ext, None
        mB = self.m * self.B
        return ext, ext[:, :, : (n_blk - 1) * self.B + mB].unfold(2, mB, self.B).transpose(-1, -2)

    def after_chunk(self, ext: Tensor, mem_len: int, n_full: int) -> Tensor:
        """The state's memory after a chunk of n_full complete blocks, from its ``windows`` ext: the last m
        complete blocks."""
        pad, keep = self.m * self.B - mem_len, mem_len + n_full * self.B
        return ext[:, :, pad : pad + keep][:, :, max(0, keep - self.m * self.B) :]
