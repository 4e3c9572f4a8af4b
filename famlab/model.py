"""FamLM: a decoder-only transformer with full, BSWA, TransformerXL-style or FAM attention.

The method is specified in ``../shared/spec/transformerfam.md``. These implementations of the same
function live here, and the tests hold them equal:

* ``impl="reference"``: a block-by-block loop over ``[F; X]`` through all layers, with a naive
  softmax attention and masks written cell by cell from the spec's table. Obviously right, slow.
* ``impl="layer_major"``: per layer, QKV of all tokens at once; a sequential scan over blocks that
  updates only the L_F FAM rows; then every block's attention in one SDPA call (each block against
  [its FAM keys | its memory segment | itself]).
* ``impl="wave"`` (FAM only): the reference's [F; X] rows, scheduled as a wavefront over (layer,
  block): at wave w layer l runs block w - l, and all active layers run as one batch (``bmm`` over
  stacked weights, one SDPA call). n + L - 1 sequential steps of full-size work instead of the
  layer-major scan's L * n updates of batch x L_F rows.
* ``impl="fast"`` (default): the wavefront where it applies (FAM, plain linear and norm layers, no
  compiled FAM updates), layer-major otherwise.
* ``step``: streaming. Chunks of any length; per layer the state holds the memory-segment ring
  of K/V, the current partial block's K/V and the FAM hidden state, so memory does not grow with
  the number of tokens consumed (except for ``full``, whose KV cache grows by design).

Architecture: pre-LN (LayerNorm or RMSNorm), RoPE (rotate-half, base 10,000) on queries and keys,
fused QKV projection with optional grouped-query heads, and a standard feed-forward: GELU MLP with
a 4x hidden width (GPT-2) by default, or SwiGLU (Llama) with ``ff="swiglu"``.

Shapes: b batch, T tokens, d model width, H query heads, G key/value heads, D head size,
B block size, n blocks, m memory blocks, L_F FAM length, P previous FAM states attended.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from famlab.config import ModelConfig

IMPLS = ("fast", "wave", "layer_major", "reference")


# ----------------------------------------------------------------------------------------------
# building blocks


def rope_cos_sin(positions: Tensor, head_dim: int, base: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """RoPE tables for float ``positions`` [b|1, T] -> ``cos2`` = [cos, cos] and ``sin2`` = [-sin, sin],
    each [b|1, 1, T, D] (full head width, so :func:`apply_rope` is three kernels).

    Angles are computed in fp32 (fp64 for fp64 models), as common implementations do; this is
    where a random position offset can make a difference at all (a shared offset cancels in q.k
    under exact arithmetic).
    """
    calc = torch.float64 if dtype == torch.float64 else torch.float32
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=calc) / head_dim)
    angles = positions.to(calc)[:, None, :, None] * inv_freq  # [b|1, 1, T, D/2]
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    return torch.cat((cos, cos), -1), torch.cat((-sin, sin), -1)  # [b|1, 1, T, D] each


def apply_rope(x: Tensor, cos2: Tensor, sin2: Tensor) -> Tensor:
    """Rotate-half RoPE on x [b, heads, T, D]: with x = [x1, x2] (halves), returns
    [x1 cos - x2 sin, x2 cos + x1 sin] = x * cos2 + [x2, x1] * sin2 (``roll`` swaps the halves)."""
    return torch.addcmul(x * cos2, x.roll(x.shape[-1] // 2, dims=-1), sin2)


def expand_kv(x: Tensor, n_heads: int) -> Tensor:
    """Repeat G key/value heads (dim 1) to H query heads for grouped-query attention."""
    groups = n_heads // x.shape[1]
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Scaled dot-product attention; q [b, H, ..., Tq, D], k/v [b, G, ..., Tk, D], mask True=attend."""
    return F.scaled_dot_product_attention(q, expand_kv(k, q.shape[1]), expand_kv(v, q.shape[1]), mask)


def merge_heads(x: Tensor) -> Tensor:
    """[b, H, T, D] -> [b, T, H*D]."""
    b, H, T, D = x.shape
    return x.transpose(1, 2).reshape(b, T, H * D)


def naive_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """The textbook softmax attention, for the reference path."""
    k, v = expand_kv(k, q.shape[1]), expand_kv(v, q.shape[1])
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # [b, H, Tq, Tk]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v


def linear_plus(linear: nn.Module, x: Tensor, residual: Tensor | None) -> Tensor:
    """``linear(x) + residual``; for a bias-free ``nn.Linear`` one ``addmm`` (the add rides on the matmul
    instead of another pass over memory). Wrapped layers (e.g. peft's LoRA) take the plain path."""
    if residual is None:
        return linear(x)
    if type(linear) is not nn.Linear or linear.bias is not None or residual.shape[-1] != linear.out_features:
        return linear(x) + residual
    out_shape = torch.broadcast_shapes(residual.shape, (*x.shape[:-1], linear.out_features))
    if tuple(out_shape) != tuple(x.shape[:-1]) + (linear.out_features,):
        return linear(x) + residual
    flat = torch.addmm(
        residual.expand(out_shape).reshape(-1, out_shape[-1]), x.reshape(-1, x.shape[-1]), linear.weight.t()
    )
    return flat.view(out_shape)


def _bmm(x: Tensor, w: Tensor, bias: Tensor | None, residual: Tensor | None = None) -> Tensor:
    """x [L, rows, in] @ w [L, in, out] (+ bias [L, 1, out]) (+ residual [L, rows, out]): the layers'
    linears of the wavefront path as one batched matmul, additions riding on it."""
    add = residual if bias is None else (bias if residual is None else residual + bias)
    return torch.bmm(x, w) if add is None else torch.baddbmm(add, x, w)


def _cat(parts: list[Tensor], dim: int) -> Tensor:
    """``torch.cat`` that does not copy a single part."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


def _norm(x: Tensor, eps: float, rms: bool) -> Tensor:
    """RMSNorm or LayerNorm over the last dim without the affine part (the wavefront path folds that
    into the next matmul, see ``FamLM._stacked_params``)."""
    return F.rms_norm(x, x.shape[-1:], eps=eps) if rms else F.layer_norm(x, x.shape[-1:], eps=eps)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swiglu = cfg.ff == "swiglu"
        self.up = nn.Linear(cfg.d_model, cfg.ff_dim * (2 if self.swiglu else 1), bias=cfg.bias)
        self.down = nn.Linear(cfg.ff_dim, cfg.d_model, bias=cfg.bias)

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """FF(x), plus ``residual`` if given (added inside the output matmul when it is a plain Linear)."""
        h = self.up(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h)
        return linear_plus(self.down, h, residual)


class Layer(nn.Module):
    """One pre-LN transformer layer, split into the two halves the attention variants need:
    ``qkv`` (norm, projections, RoPE) and ``finish`` (output projection, residual, FF)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.norm1, self.norm2 = make_norm(cfg), make_norm(cfg)
        self.wqkv = nn.Linear(cfg.d_model, (cfg.n_heads + 2 * cfg.kv_heads) * cfg.head_dim, bias=cfg.bias)
        self.wo = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.ff = FeedForward(cfg)

    def qkv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [b, T, d] -> q [b, H, T, D], k and v [b, G, T, D], RoPE applied to q and k."""
        b, T, _ = x.shape
        H, G, D = self.cfg.n_heads, self.cfg.kv_heads, self.cfg.head_dim
        qkv = self.wqkv(self.norm1(x)).view(b, T, H + 2 * G, D).transpose(1, 2)  # [b, H+2G, T, D]
        qk, v = qkv.split((H + G, G), dim=1)
        q, k = apply_rope(qk, cos, sin).split((H, G), dim=1)  # one RoPE call for q and k together
        return q, k, v

    def fam_update(
        self, fam: Tensor, cos: Tensor, sin: Tensor, k_blk: Tensor, v_blk: Tensor, zero_residual: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One FAM update: the L_F rows of ``fam`` [b, L_F, d] (RoPE tables for their positions)
        attend [themselves; the whole block] (k_blk/v_blk [b, G, B, D]); A_F = Attn + F (or + 0);
        F' = FF(LN(A_F)) + A_F. Returns F' and the keys/values of ``fam`` ([b, G, L_F, D] each).
        One step of ``fam_scan``; streaming runs it once per completed block."""
        q, k, v = self.qkv(fam, cos, sin)
        attn = sdpa(q, torch.cat([k, k_blk], 2), torch.cat([v, v_blk], 2))
        return self.finish(merge_heads(attn), 0.0 if zero_residual else fam), k, v

    def fam_scan(
        self, fam: Tensor, cos: Tensor, sin: Tensor, k_own: Tensor, v_own: Tensor, n_full: int, zero_first: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The sequential part of the fast path: for each complete block i, ``fam_update`` of S_i
        with block i (k_own/v_own [b, G, n, B, D]; cos/sin for S_0..S_{n_full} [., ., (n_full+1)*L_F, D]).

        Returns the final FAM state and the keys/values of S_0..S_{n_full}, each [b, G, (n_full+1)*L_F, D].
        ``FamLM.compile_fam_updates`` may compile it."""
        L_F = fam.shape[1]
        fks, fvs = [], []
        # slice the blocks once: indexing inside the loop would make backward zero-fill and sum a
        # full-size gradient per block
        k_blocks, v_blocks = k_own.unbind(2), v_own.unbind(2)
        for i in range(n_full):
            rows = slice(i * L_F, (i + 1) * L_F)
            zero = i == 0 and zero_first
            fam, kf, vf = self.fam_update(fam, cos[:, :, rows], sin[:, :, rows], k_blocks[i], v_blocks[i], zero)
            fks.append(kf)  # keys/values of S_i, [b, G, L_F, D]
            fvs.append(vf)
        _, kf, vf = self.qkv(fam, cos[:, :, n_full * L_F :], sin[:, :, n_full * L_F :])  # of S_{n_full}
        fks.append(kf)
        fvs.append(vf)
        return fam, torch.cat(fks, 2), torch.cat(fvs, 2)

    def finish(self, attn: Tensor, residual: Tensor | float) -> Tensor:
        """attn [b, T, H*D] (heads merged) -> layer output [b, T, d]: A = Wo(attn) + residual;
        O = FF(LN(A)) + A."""
        a = linear_plus(self.wo, attn, residual if isinstance(residual, Tensor) else None)
        return self.ff(self.norm2(a), residual=a)


# ----------------------------------------------------------------------------------------------
# streaming state


def _own_storage(t: Tensor) -> Tensor:
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


@dataclass
class FamState:
    pos: int  # tokens consumed so far
    pos_offset: Tensor | None  # [b] random position offset (training only), None = 0
    fam_fresh: bool  # True until the first FAM update: that update uses a zero residual
    layers: list[LayerState]

    def detach(self) -> FamState:
        """The same state cut from the autograd graph (for stateful training across steps)."""
        return self._map(Tensor.detach)

    def clone(self) -> FamState:
        """A copy of the state in memory of its own."""
        return self._map(Tensor.clone)

    @torch.compiler.disable  # storage sizes are not traceable: a compiled forward breaks its graph here
    def compact(self) -> FamState:
        """The same state, each tensor that is a view into larger storage copied (autograd keeps
        its graph). The parallel paths slice the state out of per-layer K/V of the whole chunk;
        without this, a kept state (a prefill, a carried training window) would hold those alive."""
        return self._map(_own_storage)

    def _map(self, fn) -> FamState:
        def f(t: Tensor | None) -> Tensor | None:
            return None if t is None else fn(t)

        layers = [LayerState(*(f(getattr(ls, fl.name)) for fl in dataclasses.fields(ls))) for ls in self.layers]
        return FamState(self.pos, f(self.pos_offset), self.fam_fresh, layers)


# ----------------------------------------------------------------------------------------------
# the model


class FamLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.n_layers))
        self.norm_f = make_norm(cfg)
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        L_F = cfg.effective_fam_len
        if L_F:
            if cfg.fam_init == "prompt":  # one prompt at the embedding level, shared by all layers
                self.fam_prompt = nn.Parameter(torch.empty(L_F, cfg.d_model))
            else:  # the ablation: a learned prefix per layer
                self.fam_prefix = nn.Parameter(torch.empty(cfg.n_layers, L_F, cfg.d_model))
            # random state passing: the final FAM of batch item 0 from the last training step
            self.register_buffer("rsp_state", torch.zeros(cfg.n_layers, L_F, cfg.d_model))
            self.register_buffer("rsp_valid", torch.zeros((), dtype=torch.bool))
        # P(RSP) in use now: a training schedule (start step, ramp) may change it between steps
        self.rsp_prob = cfg.rsp_prob
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02); residual output projections scaled by 1/sqrt(2 n_layers); norms
        keep their own init (ones, zeros). The FAM prompt/prefix lives at the embedding scale."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                residual_out = name.endswith((".wo", ".down"))
                nn.init.normal_(module.weight, std=0.02 / math.sqrt(2 * self.cfg.n_layers) if residual_out else 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
        for name in ("fam_prompt", "fam_prefix"):
            if hasattr(self, name):
                nn.init.normal_(getattr(self, name), std=0.02)

    def compile_fam_updates(self, unit: str = "scan", **compile_kwargs) -> FamLM:
        """Compile the FAM updates with ``torch.compile``: many small ops, which compilation fuses
        (and with ``mode="reduce-overhead"`` replays as CUDA graphs on a GPU).

        ``unit="scan"``: each layer's whole scan over the blocks, one graph per layer and sequence
        length, whose compile time grows with the number of blocks. ``unit="update"``: each layer's
        single FAM update (``Layer.fam_update``, also what streaming runs per block), one graph per
        layer whatever the length. Equal to the eager path within float tolerance (tested)."""
        if unit not in ("scan", "update"):
            raise ValueError(f"unit={unit!r} is not allowed: expected scan or update")
        for layer in self.layers:
            name = "fam_scan" if unit == "scan" else "fam_update"
            setattr(layer, name, torch.compile(getattr(layer, name), dynamic=False, **compile_kwargs))
        return self

    @property
    def fam_len(self) -> int:
        return self.cfg.effective_fam_len

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # --- positions ----------------------------------------------------------------------------

    def _fam_cos_sin(self, blocks: Tensor, offset: Tensor | None, dtype) -> tuple[Tensor, Tensor]:
        """RoPE tables for the FAM states feeding ``blocks`` [k] (absolute block indices) ->
        each [b|1, 1, k*L_F, D].

        last: the last L_F positions of the previous block (block 0: the L_F positions before the
        first token); float: L_F fractional positions evenly spaced between the previous block's
        last token and this block's first; zero: all 0."""
        B, L_F = self.cfg.block_size, self.fam_len
        r = torch.arange(L_F, device=blocks.device, dtype=torch.float64)
        start = blocks.to(torch.float64)[:, None] * B  # [k, 1]: first token of each block
        pos = {
            "last": start - L_F + r,
            "float": start - 1 + (r + 1) / (L_F + 1),
            "zero": 0 * start + 0 * r,
        }[self.cfg.fam_pos].reshape(1, -1)  # [1, k*L_F]
        if offset is not None:
            pos = pos + offset.to(torch.float64)[:, None]
        return rope_cos_sin(pos, self.cfg.head_dim, self.cfg.rope_base, dtype)

    def _tok_cos_sin(self, start: int, n: int, offset: Tensor | None, device, dtype):
        pos = torch.arange(n, device=device, dtype=torch.float64).unsqueeze(0) + start
        if offset is not None:
            pos = pos + offset.to(torch.float64)[:, None]
        return rope_cos_sin(pos, self.cfg.head_dim, self.cfg.rope_base, dtype)

    # --- state ----------------------------------------------------------------------------------

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> FamState:
        """A fresh inference state: no memory, FAM at its learned initial value, no offset."""
        return self._initial_state(batch_size, train_extras=False, device=device, dtype=dtype)

    def _initial_state(self, b: int, *, train_extras: bool, device=None, dtype=None) -> FamState:
        cfg = self.cfg
        ref = self.tok_emb.weight
        device = device or ref.device
        dtype = dtype or ref.dtype
        offset = None
        if train_extras and cfg.random_pos_offset:
            # RPO: u * 2*pi*1e4 * round(v), u, v ~ U(0, 1): half the sequences keep offset 0
            u, v = torch.rand(2, b, device=device, dtype=torch.float64)
            offset = u * 2 * math.pi * 1e4 * v.round()
        empty = torch.zeros(b, cfg.kv_heads, 0, cfg.head_dim, device=device, dtype=dtype)
        layers = [LayerState(empty, empty, empty, empty) for _ in range(cfg.n_layers)]
        state = FamState(0, offset, True, layers)
        if not self.fam_len:
            return state
        use_saved = train_extras and self.rsp_prob > 0 and bool(self.rsp_valid) and bool(torch.rand(()) < self.rsp_prob)
        if use_saved:  # random state passing: no zero-residual rule for this start
            fams = list(self.rsp_state.to(dtype).unsqueeze(1).expand(-1, b, -1, -1).clone())
            state.fam_fresh = False
        elif cfg.fam_init == "prefix":
            fams = list(self.fam_prefix.to(dtype).unsqueeze(1).expand(-1, b, -1, -1))
        else:
            fams = self._prompt_pass(b, offset, dtype)
        cos, sin = self._fam_cos_sin(torch.zeros(1, device=device), offset, dtype)
        for ls, layer, fam in zip(layers, self.layers, fams):
            ls.fam = fam
            _, ls.fam_k, ls.fam_v = layer.qkv(fam, cos, sin)
        return state

    def _prompt_pass(self, b: int, offset: Tensor | None, dtype) -> list[Tensor]:
        """Per-layer initial FAM: the layer-l input when the prompt alone runs through the stack,
        its L_F rows attending each other bidirectionally (positions of the first FAM state)."""
        cos, sin = self._fam_cos_sin(torch.zeros(1, device=self.fam_prompt.device), offset, dtype)
        rows = 1 if offset is None else b
        h = self.fam_prompt.to(dtype).unsqueeze(0).expand(rows, -1, -1)
        fams = []
        for layer in self.layers:
            fams.append(h.expand(b, -1, -1))
            q, k, v = layer.qkv(h, cos, sin)
            h = layer.finish(merge_heads(sdpa(q, k, v)), h)
        return fams

    # --- public API -----------------------------------------------------------------------------

    def forward(
        self,
        tokens: Tensor,
        *,
        impl: str = "fast",
        state: FamState | None = None,
        return_state: bool = False,
    ) -> Tensor | tuple[Tensor, FamState]:
        """tokens [b, T] -> logits [b, T, vocab] (and the state after them if ``return_state``).

        In training mode and with ``state=None``, each call draws the random position offset and
        (with probability ``rsp_prob``) starts from the FAM saved by the previous training call.
        A given ``state`` (e.g. from a previous window of the same documents) is used as is. Every
        training call (with ``rsp_prob > 0``) ends by saving the final FAM of batch item 0 for RSP.
        """
        if impl not in IMPLS:
            raise ValueError(f"impl={impl!r} is not allowed: expected one of {', '.join(IMPLS)}")
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [batch, T], got shape {tuple(tokens.shape)}")
        x = self.tok_emb(tokens)  # [b, T, d]
        h, new_state = self.forward_embeds(x, impl=impl, state=state)
        logits = self.logits(h)
        if not return_state:
            return logits
        return logits, None if new_state is None else new_state.compact()

    def forward_embeds(
        self, x: Tensor, *, impl: str = "fast", state: FamState | None = None
    ) -> tuple[Tensor, FamState | None]:
        """Layer stack on embeddings x [b, T, d] -> final hidden states [b, T, d] (before the last
        norm) and the state after them (None for the reference path)."""
        if state is None:
            state = self._initial_state(x.shape[0], train_extras=self.training, dtype=x.dtype)
        if impl == "reference":
            if state.pos:
                raise ValueError("impl='reference' runs from a fresh state only (state.pos must be 0)")
            h, final_fams = self._reference(x, state)
            new_state = None
        else:
            wave = impl == "wave" or (impl == "fast" and self._wave_supported(x.shape[1]))
            if impl == "wave" and not self._wave_supported(x.shape[1]):
                raise ValueError(
                    "impl='wave' needs FAM (fam_len > 0), T > 0, the layers as FamLM builds them (plain "
                    "nn.Linear/norm modules without hooks) and no compiled FAM updates; use impl='fast' or "
                    "'layer_major'"
                )
            h, new_state = self._wave(x, state) if wave else self._fast(x, state)
            final_fams = [ls.fam for ls in new_state.layers] if self.fam_len else []
        # random state passing: every training call ends by keeping the final FAM of batch item 0, also
        # a call that continued a carried state (stateful training) and before a schedule turns RSP on
        if self.training and self.fam_len and self.cfg.rsp_prob > 0:
            with torch.no_grad():
                self.rsp_state.copy_(torch.stack([f[0] for f in final_fams]))
                self.rsp_valid.fill_(True)
        return h, new_state

    def logits(self, h: Tensor) -> Tensor:
        h = self.norm_f(h)
        return h @ self.tok_emb.weight.T if self.head is None else self.head(h)

    @torch.no_grad()
    def step(self, tokens: Tensor, state: FamState) -> tuple[Tensor, FamState]:
        """Streaming inference: consume a chunk tokens [b, t] of any length, return its logits
        [b, t, vocab] and the new state. Equal to ``forward`` on the concatenated chunks."""
        return self.step_with_grad(tokens, state)

    def step_with_grad(self, tokens: Tensor, state: FamState) -> tuple[Tensor, FamState]:
        """``step`` without ``no_grad`` (for tests and stateful fine-tuning)."""
        B = self.cfg.block_size
        x_all = self.tok_emb(tokens)
        outs, start, T = [], 0, tokens.shape[1]
        while start < T:  # segments never cross a block boundary
            n = min(B - state.pos % B, T - start)
            x = x_all[:, start : start + n]
            new_layers = []
            for layer, ls in zip(self.layers, state.layers):
                x, ls = self._stream_layer(layer, ls, x, state)
                new_layers.append(ls)
            completed = (state.pos + n) % B == 0
            state = FamState(state.pos + n, state.pos_offset, state.fam_fresh and not completed, new_layers)
            outs.append(x)
            start += n
        h = torch.cat(outs, dim=1) if outs else x_all
        return self.logits(h), state

    # --- the fast, layer-major path -------------------------------------------------------------

    def _check_block_aligned(self, state: FamState) -> None:
        """The parallel paths start at a block boundary; a state inside a block continues with ``step``."""
        if state.pos % self.cfg.block_size or state.layers[0].blk_k.shape[2]:
            raise ValueError(
                f"the parallel forward starts at a block boundary; state.pos={state.pos} is inside "
                f"a block of {self.cfg.block_size}: use step() to continue from it"
            )

    def _fast(self, x: Tensor, state: FamState) -> tuple[Tensor, FamState]:
        if self.cfg.attention == "full":
            return self._fast_full(x, state)
        cfg = self.cfg
        b, T, d = x.shape
        B, m, L_F, P = cfg.block_size, cfg.mem_segment, self.fam_len, cfg.fam_prev_blocks
        self._check_block_aligned(state)
        g0 = state.pos // B  # absolute index of the first block
        n_blk = -(-T // B)  # blocks, the last one possibly partial
        n_full = T // B  # complete blocks: only these update the FAM
        Tp = n_blk * B
        x = F.pad(x, (0, 0, 0, Tp - T))  # zero rows after the end; causal masking hides them
        cos, sin = self._tok_cos_sin(state.pos, Tp, state.pos_offset, x.device, x.dtype)
        mem_len = state.layers[0].mem_k.shape[2]
        n_hist = state.layers[0].fam_k.shape[2] // L_F if L_F else 0  # FAM states in the state
        mask = self._block_mask(n_blk, mem_len, n_hist, x.device)  # [n, B, Lk], shared by layers
        # [b*n, 1, B, Lk], additive (0 / -inf) once here rather than converted in every layer's SDPA
        mask = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill(~mask, float("-inf"))
        mask = mask.repeat(b, 1, 1).unsqueeze(1)
        if L_F:
            fam_cos, fam_sin = self._fam_cos_sin(
                torch.arange(g0, g0 + n_full + 1, device=x.device), state.pos_offset, x.dtype
            )  # [b|1, 1, (n_full+1)*L_F, D]
        new_layers = []
        for layer, ls in zip(self.layers, state.layers):
            q, k, v = layer.qkv(x, cos, sin)  # [b, H, Tp, D], [b, G, Tp, D]
            G, D = k.shape[1], k.shape[3]
            # keys/values of [memory | own] per block: windows of (m+1)B over [state memory; k]
            mem_pad = m * B - mem_len
            k_ext = torch.cat([ls.mem_k.new_zeros(b, G, mem_pad, D), ls.mem_k, k], dim=2)  # [b,G,mB+Tp,D]
            v_ext = torch.cat([ls.mem_v.new_zeros(b, G, mem_pad, D), ls.mem_v, v], dim=2)
            k_own, v_own = k.view(b, G, n_blk, B, D), v.view(b, G, n_blk, B, D)
            parts_k, parts_v = [], []
            if L_F:
                zero_first = state.fam_fresh and cfg.fam_zero_residual
                fam, fk, fv = layer.fam_scan(ls.fam, fam_cos, fam_sin, k_own, v_own, n_full, zero_first)
                # FAM keys per block: states S_{i-P+1} .. S_i, from [history (padded) ; this scan]
                hist_pad = (P - n_hist) * L_F
                fk_all = torch.cat([fk.new_zeros(b, G, hist_pad, D), ls.fam_k[:, :, : (n_hist - 1) * L_F], fk], 2)
                fv_all = torch.cat([fv.new_zeros(b, G, hist_pad, D), ls.fam_v[:, :, : (n_hist - 1) * L_F], fv], 2)
                parts_k.append(fk_all[:, :, : (n_blk + P - 1) * L_F].unfold(2, P * L_F, L_F).transpose(-1, -2))
                parts_v.append(fv_all[:, :, : (n_blk + P - 1) * L_F].unfold(2, P * L_F, L_F).transpose(-1, -2))
            if m:
                mem_k = k_ext[:, :, : (n_blk - 1) * B + m * B].unfold(2, m * B, B).transpose(-1, -2)  # [b,G,n,mB,D]
                mem_v = v_ext[:, :, : (n_blk - 1) * B + m * B].unfold(2, m * B, B).transpose(-1, -2)
                if cfg.detach_memory:
                    mem_k, mem_v = mem_k.detach(), mem_v.detach()
                parts_k.append(mem_k)
                parts_v.append(mem_v)
            # one SDPA call, blocks as batch: [b*n, heads, B, D] against [b*n, G, Lk, D]
            # (4-D inputs with a boolean mask reach the fused CPU kernel; 5-D ones do not)
            keys = torch.cat([t.transpose(1, 2) for t in (*parts_k, k_own)], dim=3).flatten(0, 1)
            vals = torch.cat([t.transpose(1, 2) for t in (*parts_v, v_own)], dim=3).flatten(0, 1)
            q_blk = q.reshape(b, -1, n_blk, B, D).transpose(1, 2).flatten(0, 1)  # [b*n, H, B, D]
            attn = sdpa(q_blk, keys, vals, mask)  # [b*n, H, B, D]
            attn = attn.view(b, n_blk, -1, B, D).permute(0, 1, 3, 2, 4).reshape(b, Tp, -1)  # [b, Tp, H*D]
            x = layer.finish(attn, x)
            # the state after the last token: memory = last m complete blocks, partial block, FAM
            keep = mem_len + n_full * B
            new = LayerState(
                mem_k=k_ext[:, :, mem_pad : mem_pad + keep][:, :, max(0, keep - m * B) :],
                mem_v=v_ext[:, :, mem_pad : mem_pad + keep][:, :, max(0, keep - m * B) :],
                blk_k=k[:, :, n_full * B : T],
                blk_v=v[:, :, n_full * B : T],
            )
            if L_F:
                new.fam = fam
                new.fam_k = fk_all[:, :, -min(P, n_hist + n_full) * L_F :]
                new.fam_v = fv_all[:, :, -min(P, n_hist + n_full) * L_F :]
            new_layers.append(new)
        fresh = state.fam_fresh and n_full == 0
        return x[:, :T], FamState(state.pos + T, state.pos_offset, fresh, new_layers)

    # --- the wavefront path: layers pipelined over blocks -----------------------------------------

    def _wave_supported(self, T: int) -> bool:
        """The wavefront path reads the layers' weights and stacks them instead of calling the
        modules, so it needs every layer built as ``FamLM`` builds it: plain ``nn.Linear`` and norm
        modules (not peft's LoRA wrappers or parametrizations), no hooks on them (pruning and weight
        norm recompute ``weight`` in a pre-hook; global hooks, which tools such as FlopCounterMode
        register to observe every module, are not looked at), norms with weights and
        ``cfg.norm_eps``, and biases on all layers or none. Compiled FAM updates
        (``compile_fam_updates``) belong to the layer-major path, which then runs instead."""
        if not (self.fam_len and T):
            return False
        norm = nn.RMSNorm if self.cfg.norm == "rmsnorm" else nn.LayerNorm
        hook_dicts = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
        has_bias: set[bool] = set()
        for layer in self.layers:
            if "fam_scan" in vars(layer) or "fam_update" in vars(layer):
                return False
            linears = (layer.wqkv, layer.wo, layer.ff.up, layer.ff.down)
            norms = (layer.norm1, layer.norm2)
            if any(type(lin) is not nn.Linear for lin in linears) or any(type(nm) is not norm for nm in norms):
                return False
            for module in (layer, layer.ff, *linears, *norms):
                if any(getattr(module, name, None) for name in hook_dicts):
                    return False
            if any(nm.weight is None or nm.eps != self.cfg.norm_eps for nm in norms):
                return False
            has_bias.update(lin.bias is not None for lin in linears)
            has_bias.update(getattr(nm, "bias", None) is not None for nm in norms if isinstance(nm, nn.LayerNorm))
        return len(has_bias) <= 1

    def _stacked_params(self) -> dict[str, Tensor | None]:
        """Every layer's weights stacked on a leading layer axis, matrices as [L, in, out] for ``bmm``,
        biases as [L, 1, out] (None without biases). Built each call, so autograd routes the gradients
        back to the layers' own parameters. The norms' affine parts are folded into the matmul that
        follows them: (n(x) * g + c) @ W + b = n(x) @ (g W) + (c W + b), so the loop over waves runs a
        plain normalization and no per-row scaling."""

        def stack(path: str, attr: str) -> Tensor | None:
            ts = [getattr(layer.get_submodule(path), attr, None) for layer in self.layers]
            return None if ts[0] is None else torch.stack(ts)

        out: dict[str, Tensor | None] = {}
        for key, lin, norm in (
            ("qkv", "wqkv", "norm1"),
            ("o", "wo", None),
            ("up", "ff.up", "norm2"),
            ("down", "ff.down", None),
        ):
            weight = stack(lin, "weight").transpose(1, 2)  # [L, in, out]
            bias = stack(lin, "bias")  # [L, out]
            bias = None if bias is None else bias.unsqueeze(1)  # [L, 1, out]
            if norm is not None:
                norm_bias = stack(norm, "bias")  # RMSNorm and bias-free LayerNorm: none
                if norm_bias is not None:  # c @ W, [L, 1, out]
                    shift = torch.bmm(norm_bias.unsqueeze(1), weight)
                    bias = shift if bias is None else bias + shift
                weight = stack(norm, "weight").unsqueeze(2) * weight  # g W
            out[key], out[key + "_b"] = weight, bias
        return out

    def _wave(self, x: Tensor, state: FamState) -> tuple[Tensor, FamState]:
        """The same function as the reference, scheduled as a wavefront: at wave w, every layer l
        with 0 <= w - l < n runs block i = w - l on [F; X] (its FAM input, then the block's tokens:
        X is layer l-1's output for block i from wave w-1, F is layer l's own FAM output from wave
        w-1). The L active layers run as one batch (``bmm`` over stacked weights, one SDPA call),
        so the sequential chain is n + L - 1 waves of full-size work, where the layer-major path
        has L * n small FAM updates. A partial last block is zero-padded (causal masking hides the
        padding from its tokens) and produces no FAM, as everywhere else."""
        cfg = self.cfg
        b, T, d = x.shape
        B, m, L_F, P = cfg.block_size, cfg.mem_segment, self.fam_len, cfg.fam_prev_blocks
        H, G, D = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        L, Q = len(self.layers), L_F + B  # Q rows per block: [F; X]
        self._check_block_aligned(state)
        g0, n, n_full = state.pos // B, -(-T // B), T // B
        x = F.pad(x, (0, 0, 0, n * B - T))  # [b, n*B, d]
        # RoPE tables per block for the rows [F; X]: [b|1, n, Q, D]
        tok_cos, tok_sin = self._tok_cos_sin(state.pos, n * B, state.pos_offset, x.device, x.dtype)
        fam_cos, fam_sin = self._fam_cos_sin(torch.arange(g0, g0 + n + 1, device=x.device), state.pos_offset, x.dtype)
        cos = torch.cat([fam_cos[:, 0, : n * L_F].unflatten(1, (n, L_F)), tok_cos[:, 0].unflatten(1, (n, B))], 2)
        sin = torch.cat([fam_sin[:, 0, : n * L_F].unflatten(1, (n, L_F)), tok_sin[:, 0].unflatten(1, (n, B))], 2)
        mem_len = state.layers[0].mem_k.shape[2]
        n_hist = state.layers[0].fam_k.shape[2] // L_F  # FAM states in the state (the last is F's)
        masks = self._wave_masks(n, mem_len, n_hist, x.dtype, x.device)  # [n, Q, K] additive
        # tables in reverse block order: a wave's layers lo..hi run blocks w-lo down to w-hi, which
        # is then the slice [n-1-(w-lo), n-(w-hi)) in layer order (a view, no gather)
        cos, sin, masks_rev = cos.flip(1), sin.flip(1), masks.flip(0)
        # from block `steady` on, every older FAM state and memory block exists: one broadcast mask
        steady = max(P - n_hist if P > 1 else 0, -(-(m * B - mem_len) // B) if m else 0, 0)
        w_ = self._stacked_params()
        # per layer: FAM input, pending block input, memory blocks (k, v), older FAM keys (k, v)
        fams = [ls.fam for ls in state.layers]
        xin: list[Tensor | None] = [None] * L
        mems: list[list[tuple[Tensor, Tensor]]] = []
        olds: list[list[tuple[Tensor, Tensor]]] = []
        for ls in state.layers:
            pad = ls.mem_k.new_zeros(b, G, m * B - mem_len, D)  # absent memory: zeros, masked out
            mk, mv = torch.cat([pad, ls.mem_k], 2), torch.cat([pad, ls.mem_v], 2)  # [b, G, m*B, D]
            mems.append(list(zip(mk.split(B, 2), mv.split(B, 2))) if m else [])
            hk, hv = ls.fam_k[:, :, : (n_hist - 1) * L_F], ls.fam_v[:, :, : (n_hist - 1) * L_F]
            fpad = hk.new_zeros(b, G, (P - n_hist) * L_F, D)  # absent older states, masked out
            hk, hv = torch.cat([fpad, hk], 2), torch.cat([fpad, hv], 2)  # [b, G, (P-1)*L_F, D]
            olds.append(list(zip(hk.split(L_F, 2), hv.split(L_F, 2))) if P > 1 else [])
        blocks_in = x.unflatten(1, (n, B)).unbind(1)  # n x [b, B, d]
        outs: list[Tensor | None] = [None] * n
        zero_first = state.fam_fresh and cfg.fam_zero_residual
        rms = cfg.norm == "rmsnorm"
        part: list[tuple[Tensor, Tensor]] = [(x.new_zeros(b, G, 0, D),) * 2] * L  # partial block's k/v
        for w in range(n + L - 1):
            lo, hi = max(0, w - n + 1), min(L - 1, w)  # active layers; layer l runs block w - l
            nl, act = hi - lo + 1, range(lo, hi + 1)
            p = w_ if nl == L else {k: None if t is None else t[lo : hi + 1] for k, t in w_.items()}
            blocks = list(range(w - lo, w - hi - 1, -1))  # the block each active layer runs
            rev = slice(n - 1 - (w - lo), n - (w - hi))  # those blocks in the reversed tables
            xin[0] = blocks_in[w] if lo == 0 else None
            f_in = torch.stack([fams[l] for l in act])  # [nl, b, L_F, d]
            z = torch.cat([f_in, torch.stack([xin[l] for l in act])], 2).flatten(1, 2)  # [nl, b*Q, d]
            # --- attention: the layer's Q rows against [older FAM | memory | F | X]
            qkv = _bmm(_norm(z, cfg.norm_eps, rms), p["qkv"], p["qkv_b"])
            qkv = qkv.view(nl, b, Q, H + 2 * G, D).transpose(2, 3)  # [nl, b, H+2G, Q, D]
            qk, v = qkv.split((H + G, G), dim=2)
            c, s = cos[:, rev].transpose(0, 1).unsqueeze(2), sin[:, rev].transpose(0, 1).unsqueeze(2)  # [nl,b|1,1,Q,D]
            q, k = apply_rope(qk, c, s).split((H, G), dim=2)
            keys, vals = [], []
            if P > 1:  # [nl, b, G, (P-1)*L_F, D]
                keys.append(torch.stack([_cat([kv[0] for kv in olds[l]], 2) for l in act]))
                vals.append(torch.stack([_cat([kv[1] for kv in olds[l]], 2) for l in act]))
            if m:  # [nl, b, G, m*B, D]
                mk = torch.stack([_cat([kv[0] for kv in mems[l]], 2) for l in act])
                mv = torch.stack([_cat([kv[1] for kv in mems[l]], 2) for l in act])
                if cfg.detach_memory:
                    mk, mv = mk.detach(), mv.detach()
                keys.append(mk)
                vals.append(mv)
            keys = torch.cat([*keys, k], 3).flatten(0, 1)  # [nl*b, G, K, D]
            vals = torch.cat([*vals, v], 3).flatten(0, 1)
            if blocks[-1] >= steady:
                mask = masks[-1]  # [Q, K], broadcast over layers, batch and heads
            else:
                mask = masks_rev[rev].unsqueeze(1).expand(nl, b, Q, -1).flatten(0, 1).unsqueeze(1)  # [nl*b,1,Q,K]
            attn = sdpa(q.flatten(0, 1), keys, vals, mask)  # [nl*b, H, Q, D]
            attn = attn.view(nl, b, H, Q, D).permute(0, 1, 3, 2, 4).reshape(nl, b * Q, d)  # heads merged
            # --- output projection and FF; the first update from a fresh FAM has a zero residual
            resid = z
            if zero_first and w <= hi:  # layer w runs block 0 now
                f_res = torch.stack([torch.zeros_like(fams[l]) if l == w else fams[l] for l in act])
                resid = torch.cat([f_res, z.view(nl, b, Q, d)[:, :, L_F:]], 2).flatten(1, 2)
            a = _bmm(attn, p["o"], p["o_b"], resid)
            h = _bmm(_norm(a, cfg.norm_eps, rms), p["up"], p["up_b"])
            if cfg.ff == "swiglu":
                gate, up = h.chunk(2, dim=-1)
                h = F.silu(gate) * up
            else:
                h = F.gelu(h)
            out = _bmm(h, p["down"], p["down_b"], a).view(nl, b, Q, d)
            # --- hand the results on: F to this layer's next wave, X to the next layer
            f_out, x_out = out.split((L_F, B), dim=2)
            kf, kx = k.split((L_F, B), dim=3)
            vf, vx = v.split((L_F, B), dim=3)
            for l, i, fo, xo, kfl, vfl, kxl, vxl in zip(
                act, blocks, f_out.unbind(0), x_out.unbind(0), kf.unbind(0), vf.unbind(0), kx.unbind(0), vx.unbind(0)
            ):
                if i < n_full:  # only a complete block produces the next FAM and becomes memory
                    fams[l] = fo
                    if m:
                        mems[l] = [*mems[l][1:], (kxl, vxl)]
                    if P > 1:
                        olds[l] = [*olds[l][1:], (kfl, vfl)]
                else:
                    part[l] = (kxl[:, :, : T - n_full * B], vxl[:, :, : T - n_full * B])
                if l + 1 < L:
                    xin[l + 1] = xo
                else:
                    outs[i] = xo
        # the state after the last token, as the layer-major path leaves it
        keep = min(m * B, mem_len + n_full * B)
        n_states = min(P, n_hist + n_full)
        new_layers = []
        fc, fs = fam_cos[:, :, n_full * L_F : (n_full + 1) * L_F], fam_sin[:, :, n_full * L_F : (n_full + 1) * L_F]
        for l, layer in enumerate(self.layers):
            mk = torch.cat([kv[0] for kv in mems[l]], 2) if m else x.new_zeros(b, G, 0, D)
            mv = torch.cat([kv[1] for kv in mems[l]], 2) if m else x.new_zeros(b, G, 0, D)
            _, fk, fv = layer.qkv(fams[l], fc, fs)  # keys of the final FAM state
            ok = [kv[0] for kv in olds[l]] + [fk]
            ov = [kv[1] for kv in olds[l]] + [fv]
            new = LayerState(
                mem_k=mk[:, :, m * B - keep :],
                mem_v=mv[:, :, m * B - keep :],
                blk_k=part[l][0],
                blk_v=part[l][1],
                fam=fams[l],
                fam_k=torch.cat(ok, 2)[:, :, -n_states * L_F :],
                fam_v=torch.cat(ov, 2)[:, :, -n_states * L_F :],
            )
            new_layers.append(new)
        fresh = state.fam_fresh and n_full == 0
        return torch.cat(outs, 1)[:, :T], FamState(state.pos + T, state.pos_offset, fresh, new_layers)

    def _wave_masks(self, n: int, mem_len: int, n_hist: int, dtype, device) -> Tensor:
        """Additive masks [n, Q, K] (0 = attend, -inf = not) of the wavefront path: block i's rows
        [F (L_F) | X (B)] against keys [older FAM ((P-1)*L_F) | memory (m*B) | F | X], by the spec's
        table (as in the reference): FAM rows see F and all of X; tokens see the older FAM states
        and memory that exist, F, and X causally."""
        cfg = self.cfg
        B, m, L_F, P = cfg.block_size, cfg.mem_segment, self.fam_len, cfg.fam_prev_blocks
        blk = torch.arange(n, device=device)[:, None, None]  # [n, 1, 1]
        row = torch.arange(L_F + B, device=device)[None, :, None]  # [1, Q, 1]
        is_tok = row >= L_F
        parts = []
        if P > 1:  # slot s holds S_{i-P+1+s}; the state holds S_{-(n_hist-1)} .. S_0
            slot = torch.arange((P - 1) * L_F, device=device)[None, None, :] // L_F
            parts.append(is_tok & (blk - P + 1 + slot >= -(n_hist - 1)))
        if m:  # key j of block i sits at i*B + j of [zero pad; state memory; tokens]
            j = torch.arange(m * B, device=device)[None, None, :]
            parts.append(is_tok & (blk * B + j >= m * B - mem_len))
        parts.append(torch.ones(1, 1, L_F, dtype=torch.bool, device=device))
        j = torch.arange(B, device=device)[None, None, :]
        parts.append(~is_tok | (j <= row - L_F))
        ok = torch.cat([p.expand(n, L_F + B, -1) for p in parts], dim=-1)
        return torch.zeros(ok.shape, dtype=dtype, device=device).masked_fill(~ok, float("-inf"))

    def _block_mask(self, n_blk: int, mem_len: int, n_hist: int, device) -> Tensor:
        """Boolean mask [n, B, Lk] for keys [FAM states (P*L_F) | memory (m*B) | own block (B)].

        Block i's FAM slot s holds S_{i-P+1+s}; it exists if that index is >= -(n_hist-1) (states
        before the chunk come from ``state``). Memory key j of block i sits at index i*B + j of
        [zero pad; state memory; tokens]; it exists if past the pad. txl adds a per-token window."""
        cfg = self.cfg
        B, m, L_F, P = cfg.block_size, cfg.mem_segment, self.fam_len, cfg.fam_prev_blocks
        blk = torch.arange(n_blk, device=device)[:, None, None]  # [n, 1, 1]
        qi = torch.arange(B, device=device)[None, :, None]  # [1, B, 1]
        parts = []
        if L_F:
            slot = torch.arange(P * L_F, device=device)[None, None, :] // L_F
            parts.append((blk - P + 1 + slot >= -(n_hist - 1)).expand(n_blk, B, P * L_F))
        if m:
            j = torch.arange(m * B, device=device)[None, None, :]
            ok = blk * B + j >= m * B - mem_len
            if cfg.window is not None:
                ok = ok & (qi + m * B - j <= cfg.window)  # distance t - s from query to memory key
            parts.append(ok.expand(n_blk, B, m * B))
        j = torch.arange(B, device=device)[None, None, :]
        parts.append((j <= qi).expand(n_blk, B, B))
        return torch.cat(parts, dim=-1)

    def _fast_full(self, x: Tensor, state: FamState) -> tuple[Tensor, FamState]:
        b, T, _ = x.shape
        # the KV cache: memory plus any partial block left by step()
        past = state.layers[0].mem_k.shape[2] + state.layers[0].blk_k.shape[2]
        cos, sin = self._tok_cos_sin(state.pos, T, state.pos_offset, x.device, x.dtype)
        mask = None
        if past:  # causal with a KV-cache prefix: query i sees keys 0 .. past+i
            mask = torch.arange(past + T, device=x.device)[None, :] <= past + torch.arange(T, device=x.device)[:, None]
        new_layers = []
        for layer, ls in zip(self.layers, state.layers):
            q, k, v = layer.qkv(x, cos, sin)
            k_all, v_all = torch.cat([ls.mem_k, ls.blk_k, k], 2), torch.cat([ls.mem_v, ls.blk_v, v], 2)
            if mask is None:
                k_g, v_g = expand_kv(k_all, q.shape[1]), expand_kv(v_all, q.shape[1])
                attn = F.scaled_dot_product_attention(q, k_g, v_g, is_causal=True)
            else:
                attn = sdpa(q, k_all, v_all, mask)
            x = layer.finish(merge_heads(attn), x)
            new_layers.append(LayerState(k_all, v_all, k[:, :, :0], v[:, :, :0]))
        return x, FamState(state.pos + T, state.pos_offset, state.fam_fresh, new_layers)

    # --- streaming ----------------------------------------------------------------------------

    def _stream_layer(self, layer: Layer, ls: LayerState, x: Tensor, state: FamState):
        """One layer on a segment x [b, n, d] that lies inside one block. Returns (out, new ls)."""
        cfg = self.cfg
        B, m, L_F = cfg.block_size, cfg.mem_segment, self.fam_len
        n, o = x.shape[1], state.pos % B  # o tokens of this block came before
        o_k = ls.blk_k.shape[2]  # their keys held here (== o, except for `full` after a parallel forward)
        cos, sin = self._tok_cos_sin(state.pos, n, state.pos_offset, x.device, x.dtype)
        q, k, v = layer.qkv(x, cos, sin)
        blk_k, blk_v = torch.cat([ls.blk_k, k], 2), torch.cat([ls.blk_v, v], 2)  # [b, G, o+n, D]
        mem_k, mem_v = ls.mem_k, ls.mem_v
        if cfg.detach_memory:
            mem_k, mem_v = mem_k.detach(), mem_v.detach()
        keys, vals = [mem_k, blk_k], [mem_v, blk_v]
        M = mem_k.shape[2]
        qi = torch.arange(n, device=x.device)[:, None]
        j_mem = torch.arange(M, device=x.device)[None, :]
        mem_ok = torch.ones(n, M, dtype=torch.bool, device=x.device)
        if cfg.window is not None:  # query at o+i, memory key j at -M+j (block-relative)
            mem_ok = (o + qi) - (j_mem - M) <= cfg.window
        own_ok = torch.arange(o_k + n, device=x.device)[None, :] <= o_k + qi
        masks = [mem_ok, own_ok]
        if L_F:
            keys.insert(0, ls.fam_k)
            vals.insert(0, ls.fam_v)
            masks.insert(0, torch.ones(n, ls.fam_k.shape[2], dtype=torch.bool, device=x.device))
        attn = sdpa(q, torch.cat(keys, 2), torch.cat(vals, 2), torch.cat(masks, 1))
        out = layer.finish(merge_heads(attn), x)
        new = dataclasses.replace(ls, blk_k=blk_k, blk_v=blk_v)
        if o + n < B:
            return out, new
        # the block is complete: update the FAM from it, then it becomes memory
        g = state.pos // B
        if L_F:
            fam_cos, fam_sin = self._fam_cos_sin(torch.tensor([g, g + 1], device=x.device), state.pos_offset, x.dtype)
            zero = state.fam_fresh and cfg.fam_zero_residual
            new.fam, _, _ = layer.fam_update(ls.fam, fam_cos[:, :, :L_F], fam_sin[:, :, :L_F], blk_k, blk_v, zero)
            _, kn, vn = layer.qkv(new.fam, fam_cos[:, :, L_F:], fam_sin[:, :, L_F:])
            keep = cfg.fam_prev_blocks * L_F
            new.fam_k = torch.cat([ls.fam_k, kn], 2)[:, :, -keep:]
            new.fam_v = torch.cat([ls.fam_v, vn], 2)[:, :, -keep:]
        if cfg.attention == "full":
            new.mem_k, new.mem_v = torch.cat([ls.mem_k, blk_k], 2), torch.cat([ls.mem_v, blk_v], 2)
        elif m:
            new.mem_k = torch.cat([ls.mem_k, blk_k], 2)[:, :, -m * B :]
            new.mem_v = torch.cat([ls.mem_v, blk_v], 2)[:, :, -m * B :]
        new.blk_k, new.blk_v = blk_k[:, :, :0], blk_v[:, :, :0]
        return out, new

    # --- the reference: block by block over [F; X] ----------------------------------------------

    def _reference(self, x: Tensor, state: FamState) -> tuple[Tensor, list[Tensor]]:
        """For each block, for each layer: run the layer on [F; X] with the spec's mask table.

        Keys are [older FAM states | memory blocks | F | X]:
          FAM row:      older FAM no,  memory no,  F all,  X all
          block token:  older FAM yes, memory yes (txl: within the window), F all, X causal
        """
        cfg = self.cfg
        B, m, L_F, P = cfg.block_size, cfg.mem_segment, self.fam_len, cfg.fam_prev_blocks
        b, T, _ = x.shape
        fams = [ls.fam for ls in state.layers]
        mem: list[list[tuple[Tensor, Tensor]]] = [[] for _ in self.layers]  # per layer, per block
        old_fam: list[list[tuple[Tensor, Tensor]]] = [[] for _ in self.layers]
        outs = []
        for blk, start in enumerate(range(0, T, B)):
            h = x[:, start : start + B]
            nb = h.shape[1]
            tok_pos = torch.arange(start, start + nb, dtype=torch.float64, device=x.device)
            for li, layer in enumerate(self.layers):
                if cfg.attention == "full":
                    mem_blocks = mem[li]
                else:
                    mem_blocks = mem[li][max(0, len(mem[li]) - m) :] if m else []
                older = old_fam[li][max(0, len(old_fam[li]) - (P - 1)) :] if P > 1 else []
                z = torch.cat([fams[li], h], 1) if L_F else h  # [b, L_F + nb, d]
                if L_F:
                    fam_pos = self._fam_positions_ref(blk)
                    pos = torch.cat([fam_pos, tok_pos])[None, :]
                else:
                    pos = tok_pos[None, :]
                if state.pos_offset is not None:
                    pos = pos + state.pos_offset[:, None]
                cos, sin = rope_cos_sin(pos, cfg.head_dim, cfg.rope_base, x.dtype)
                q, k, v = layer.qkv(z, cos, sin)
                ks = [kv[0] for kv in older + mem_blocks]
                vs = [kv[1] for kv in older + mem_blocks]
                if cfg.detach_memory:  # detach memory blocks only, never FAM
                    n_old = len(older)
                    ks = ks[:n_old] + [t.detach() for t in ks[n_old:]]
                    vs = vs[:n_old] + [t.detach() for t in vs[n_old:]]
                keys = torch.cat([*ks, k], 2)
                vals = torch.cat([*vs, v], 2)
                n_older, n_mem = len(older) * L_F, sum(kv[0].shape[2] for kv in mem_blocks)
                # the spec's mask table, one region of keys at a time
                i = torch.arange(L_F + nb, device=x.device)[:, None]  # query rows: FAM rows, then tokens
                j = torch.arange(n_older + n_mem + L_F + nb, device=x.device)[None, :]
                is_tok = i >= L_F
                t = start + (i - L_F)  # a token row's position (meaningless for FAM rows)
                s = start - n_mem + (j - n_older)  # a memory key's position
                in_window = (t - s <= cfg.window) if cfg.window is not None else True
                jj = j - (n_older + n_mem + L_F)  # index inside the current block
                mask = torch.where(
                    j < n_older,
                    is_tok,  # older FAM states: block tokens only
                    torch.where(
                        j < n_older + n_mem,
                        is_tok & in_window,  # memory blocks: block tokens only (txl: within the window)
                        torch.where(
                            j < n_older + n_mem + L_F,
                            True,  # current FAM: everyone
                            ~is_tok | (jj <= i - L_F),  # current block: FAM rows all, tokens causal
                        ),
                    ),
                )
                attn = naive_attention(q, keys, vals, mask)
                fresh = blk == 0 and state.fam_fresh and cfg.fam_zero_residual
                residual = torch.cat([torch.zeros_like(fams[li]) if fresh else fams[li], h], 1) if L_F else h
                out = layer.finish(merge_heads(attn), residual)
                if L_F and nb == B:  # only a complete block produces the next FAM
                    old_fam[li].append((k[:, :, :L_F], v[:, :, :L_F]))
                    fams[li] = out[:, :L_F]
                mem[li].append((k[:, :, L_F:], v[:, :, L_F:]))
                h = out[:, L_F:]
            outs.append(h)
        return torch.cat(outs, 1), fams

    def _fam_positions_ref(self, blk: int) -> Tensor:
        """Positions of the FAM state feeding block ``blk``, written out per mode."""
        B, L_F = self.cfg.block_size, self.fam_len
        r = torch.arange(L_F, dtype=torch.float64, device=self.tok_emb.weight.device)
        if self.cfg.fam_pos == "last":  # the last L_F positions of the previous block
            return blk * B - L_F + r
        if self.cfg.fam_pos == "float":  # evenly spaced between the previous block's end and ours
            return blk * B - 1 + (r + 1) / (L_F + 1)
        return 0 * r


def compile_model(model: FamLM, what: str, mode: str = "default") -> FamLM:
    """``train.compile``: ``none``, ``fam_scan`` / ``fam_update`` (each layer's FAM scan / single FAM
    update, :meth:`FamLM.compile_fam_updates`; a no-op without FAM) or ``model`` (the forward, in place:
    ``nn.Module.compile`` keeps the state-dict keys), with ``torch.compile`` mode ``mode``."""
    if what == "none":
        return model
    kwargs = {} if mode == "default" else {"mode": mode}
    # one compiled entry per layer x sequence length x grad mode: keep dynamo from giving up and
    # silently running eager after its default limit of 8
    dynamo_config = torch._dynamo.config
    limit_key = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    setattr(dynamo_config, limit_key, max(getattr(dynamo_config, limit_key), 64))
    if what in ("fam_scan", "fam_update"):
        if model.fam_len:
            model.compile_fam_updates(unit=what.removeprefix("fam_"), **kwargs)
    else:
        model.compile(**kwargs)
    return model
