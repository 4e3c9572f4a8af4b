"""The feedback memory segment FM_m (TransformerFAM App. C.2, Table 9, Fig. 9; ``attention="fm"``).

Semantics (the spec: "the memory segment holds the previous blocks' layer *outputs* instead of that layer's
inputs", as in ERNIE-Doc's same-layer recurrence and Staircase/Feedback-Transformer-style memories):

* In layer l, the tokens of block tau attend (a) their own block causally, keys/values from layer l's input
  (as in BSWA), and (b) the memory segment: keys/values of blocks tau-m .. tau-1 computed by layer l's own
  norm + K/V projection (``Layer.qkv``) from layer l's *output* for those blocks (= layer l+1's input). So
  layer l's output of block tau depends on layer l's output of block tau-1: the recurrence runs within a
  layer, block by block (like FAM), and the receptive field is unbounded in theory.
* A block sees no memory when tau = 0 (nothing before it), and one block's memory is the last m
  *complete* blocks (a partial last block enters the memory only once complete, as in BSWA).

Choices where the paper is silent (ERNIE-Doc decides where it can):

* RoPE: the memory keys carry the positions of the tokens whose outputs they are (as BSWA's memory keys);
  queries and own-block keys as in BSWA.
* The same projection ``W_kv`` of layer l reads the outputs (no extra parameters; ERNIE-Doc likewise reuses
  the layer's projections on the cached same-layer states).
* Gradients flow through the recurrence across blocks of a training window (backprop through the memory);
  ``stop_grad=True`` detaches the memory keys/values (ERNIE-Doc's / TransformerXL's SG practice), which
  cuts the recurrence's gradient too. Across training windows the state is detached (as for every kind).
  Random state passing carries nothing (``carried`` is SegmentMemory's ``{}``): the state is cached K/V tied
  to the positions of the blocks just before, which a start from another sequence does not take.
* ``fam_len`` is ignored (as by bswa and txl: ``effective_fam_len`` is 0); ``mem_segment`` must be >= 1
  (with m = 0, fm would be plain block attention); there is no per-token window (``txl_window`` ignored).

State: the ring ``mem_k``/``mem_v`` holds the K/V of the last m complete blocks' outputs (m*B keys, constant
in length) and ``fm_k``/``fm_v`` the K/V of the current partial block's outputs (< B keys); ``blk_k``/
``blk_v`` hold the partial block's input K/V as for every kind.
"""

from __future__ import annotations

import torch
from torch import Tensor

from famlab.config import ModelConfig
from famlab.model.memory.segment import SegmentMemory


class FeedbackMemory(SegmentMemory):
    """The memory segment of a layer's outputs (``attention="fm"``): the ring and its layouts are
    :class:`SegmentMemory`'s; what enters it are the K/V of the layer's outputs, not of its inputs."""

    name = "feedback"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)

    @staticmethod
    def applies(cfg: ModelConfig) -> bool:
        return cfg.attention == "fm"

    # --- the protocol (see famlab.model.memory) ---------------------------------------------

    def initial(self, model, b: int, *, offset, carried, device, dtype) -> list[dict[str, Tensor]]:
        """Each layer's fields before the first token: the segment's (empty ring, no partial block) and no
        partial block of outputs. Nothing is carried (``carried`` is SegmentMemory's: the ring and the
        partial block are cached K/V, not a memory a start takes over)."""
        layers = super().initial(model, b, offset=offset, carried=carried, device=device, dtype=dtype)
        return [fields | {"fm_k": fields["mem_k"], "fm_v": fields["mem_v"]} for fields in layers]

    def absorb(self, layer, ls, out: Tensor, cos: Tensor, sin: Tensor) -> dict[str, Tensor]:
        """After a segment of the current block: its outputs ``out`` [b, n, d] (RoPE tables ``cos``/``sin`` of
        their positions) join the partial block of output K/V."""
        k, v = self.outputs_kv(layer, out, cos, sin)
        return {"fm_k": torch.cat([ls.fm_k, k], 2), "fm_v": torch.cat([ls.fm_v, v], 2)}  # [b, G, o+n, D]

    def update(self, layer, ls, blk_k: Tensor, blk_v: Tensor, *, block, offset, fresh, dtype) -> dict[str, Tensor]:
        """After a complete block: its outputs' K/V (``ls.fm_k``, after ``absorb``) join the ring."""
        return {
            "mem_k": self.push(ls.mem_k, ls.fm_k),
            "mem_v": self.push(ls.mem_v, ls.fm_v),
            "fm_k": ls.fm_k[:, :, :0],
            "fm_v": ls.fm_v[:, :, :0],
        }

    # --- shared by the paths ----------------------------------------------------------------

    @staticmethod
    def outputs_kv(layer, out: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        """Layer outputs out [b, n, d] -> the memory's keys and values [b, G, n, D] (layer's norm1, K/V
        projection, RoPE at the outputs' token positions)."""
        _, k, v = layer.qkv(out, cos, sin)  # the queries are unused (a few wasted FLOPs, one fused matmul)
        return k, v
