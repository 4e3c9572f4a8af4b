"""Feedback attention memory (FAM): per layer, L_F rows of hidden state that attend each block and carry
what they keep to the next block; tokens read the keys of the last ``fam_prev_blocks`` (P) FAM states.

SUM FAM (``attention="sum_fam"``, App. C.3: static summary tokens) is this memory with another update
(``Layer.fam_update``): a learned summary S [L_F, d] per layer (``Layer.fam_summary``, initialised like the
FAM prompt) gives the update its queries and its residual, F' = FF(LN(A)) + A with
A = Attn(Q(S), [K(F); K(X)]) + S, so the past FAM F reaches F' only through its keys and values (no copy of F
in the residual). Choices where the paper is silent: S sits at F's RoPE positions (``fam_pos``); the update
reads the keys FAM's update reads ([F; the whole block], not S's own keys); block tokens read the FAM states
as in FAM (never S); the initial F (``fam_init``), ``mem_segment`` and ``fam_prev_blocks`` are FAM's;
``fam_zero_residual`` has no effect (the residual is S)."""

from __future__ import annotations

import torch
from torch import Tensor

from famlab.config import ModelConfig
from famlab.model import masks
from famlab.model.ops import merge_heads, sdpa
from famlab.model.positions import fam_cos_sin
from famlab.model.state import CarriedField


class FamMemory:
    """FAM of one model config (L_F rows, P states read, ``fam_init``, zero-residual rule)."""

    name = "fam"

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        self.L_F, self.P = cfg.effective_fam_len, cfg.fam_prev_blocks

    @staticmethod
    def applies(cfg: ModelConfig) -> bool:
        return cfg.effective_fam_len > 0

    @staticmethod
    def carried(cfg: ModelConfig) -> dict[str, CarriedField]:
        """What a start may carry over (the paper's RSP): every layer's FAM rows ``fam`` [L_F, d]. Their keys
        (``fam_k``/``fam_v``) follow from them at the first block's positions; older FAM states are not
        carried (the start holds one state, as the learned start does)."""
        return {"fam": CarriedField(tuple(range(cfg.n_layers)), (cfg.effective_fam_len, cfg.d_model))}

    # --- the protocol (see famlab.model.memory) ---------------------------------------------

    def initial_fams(self, model, b: int, offset: Tensor | None, dtype) -> list[Tensor]:
        """Per-layer FAM S_0 [b, L_F, d]: the learned prefix, or the prompt passed through the stack."""
        if self.cfg.fam_init == "prefix":
            return list(model.fam_prefix.to(dtype).unsqueeze(1).expand(-1, b, -1, -1))
        return self.prompt_pass(model, b, offset, dtype)

    def prompt_pass(self, model, b: int, offset: Tensor | None, dtype) -> list[Tensor]:
        """Per-layer initial FAM: the layer-l input when the prompt alone runs through the stack,
        its L_F rows attending each other bidirectionally (positions of the first FAM state)."""
        cos, sin = fam_cos_sin(self.cfg, torch.zeros(1, device=model.fam_prompt.device), offset, dtype)
        rows = 1 if offset is None else b
        h = model.fam_prompt.to(dtype).unsqueeze(0).expand(rows, -1, -1)
        fams = []
        for layer in model.layers:
            fams.append(h.expand(b, -1, -1))
            q, k, v = layer.qkv(h, cos, sin)
            h = layer.finish(merge_heads(sdpa(q, k, v)), h)
        return fams

    def initial(self, model, b: int, *, offset, carried, device, dtype) -> list[dict[str, Tensor]]:
        """Each layer's fields before the first token: its FAM S_0 (the carried ``fam`` if ``carried`` is
        given, else the learned initial value) and S_0's keys/values."""
        if carried is None:
            fams = self.initial_fams(model, b, offset, dtype)
        else:
            fams = [fields["fam"] for fields in carried]
        cos, sin = fam_cos_sin(self.cfg, torch.zeros(1, device=device), offset, dtype)
        out = []
        for layer, fam in zip(model.layers, fams):
            _, k, v = layer.qkv(fam, cos, sin)
            out.append({"fam": fam, "fam_k": k, "fam_v": v})
        return out

    def read(self, ls, o: int, device) -> tuple[Tensor, Tensor, masks.MaskMod, masks.Keys]:
        """The FAM keys a token reads (the last P states held, the newest being the block's own F)."""
        n = ls.fam_k.shape[2]
        return ls.fam_k, ls.fam_v, masks.older_fam, masks.Keys(pos=torch.zeros(1, n, device=device))

    def absorb(self, layer, ls, out: Tensor, cos: Tensor, sin: Tensor) -> dict[str, Tensor]:
        """Nothing to keep of a segment's outputs: the FAM updates once the block is complete."""
        return {}

    def update(self, layer, ls, blk_k: Tensor, blk_v: Tensor, *, block, offset, fresh, dtype) -> dict[str, Tensor]:
        """After the complete block ``block`` (absolute index; its keys ``blk_k``/``blk_v``): F' from F and the
        block, and its keys join the last P states (RoPE at the next block's FAM positions)."""
        L_F = self.L_F
        cos, sin = fam_cos_sin(self.cfg, torch.tensor([block, block + 1], device=blk_k.device), offset, dtype)
        zero = fresh and self.cfg.fam_zero_residual
        fam, _, _ = layer.fam_update(ls.fam, cos[:, :, :L_F], sin[:, :, :L_F], blk_k, blk_v, zero)
        _, kn, vn = layer.qkv(fam, cos[:, :, L_F:], sin[:, :, L_F:])
        keep = self.P * L_F
        return {
            "fam": fam,
            "fam_k": torch.cat([ls.fam_k, kn], 2)[:, :, -keep:],
            "fam_v": torch.cat([ls.fam_v, vn], 2)[:, :, -keep:],
        }

    # --- the parallel paths' layouts --------------------------------------------------------

    @staticmethod
    def n_hist(ls, L_F: int) -> int:
        """FAM states a layer's state holds (the last is the next block's F)."""
        return ls.fam_k.shape[2] // L_F

    def history(self, ls, fk: Tensor, fv: Tensor) -> tuple[Tensor, Tensor]:
        """The FAM keys/values S_{-(P-1)} .. S_{n_full}: [zero pad for absent states; the state's older
        states; ``fk``/``fv`` = S_0 .. S_{n_full} of this chunk], each [b, G, (P-1 + n_full+1)*L_F, D]."""
        L_F, P = self.L_F, self.P
        n_hist = self.n_hist(ls, L_F)
        b, G, _, D = fk.shape
        pad = fk.new_zeros(b, G, (P - n_hist) * L_F, D)
        return (
            torch.cat([pad, ls.fam_k[:, :, : (n_hist - 1) * L_F], fk], 2),
            torch.cat([pad, ls.fam_v[:, :, : (n_hist - 1) * L_F], fv], 2),
        )

    def windows(self, hist: Tensor, n_blk: int) -> Tensor:
        """Block i's FAM keys S_{i-P+1} .. S_i from ``history``: [b, G, n_blk, P*L_F, D]."""
        L_F, P = self.L_F, self.P
        return hist[:, :, : (n_blk + P - 1) * L_F].unfold(2, P * L_F, L_F).transpose(-1, -2)

    def kept(self, hist: Tensor, n_hist: int, n_full: int) -> Tensor:
        """The states a state keeps after the chunk: the last min(P, n_hist + n_full)."""
        return hist[:, :, -min(self.P, n_hist + n_full) * self.L_F :]
