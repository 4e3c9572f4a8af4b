"""FamLM: a decoder-only transformer with full, BSWA, TransformerXL-style, FAM, feedback-memory or Infini
attention.

The method is specified in ``../shared/spec/transformerfam.md``. Implementations of the same function live
in :mod:`famlab.model.paths`, and the tests hold them equal:

* ``impl="reference"``: a block-by-block loop over ``[F; X]`` through all layers, with a naive
  softmax attention and the spec's mask table. Obviously right, slow.
* ``impl="layer_major"``: per layer, QKV of all tokens at once; a sequential scan over blocks that
  updates only the L_F FAM rows; then every block's attention in one SDPA call.
* ``impl="wave"`` (FAM only): the reference's [F; X] rows, scheduled as a wavefront over (layer,
  block), all active layers as one batch.
* ``impl="fast"`` (default): the wavefront where it applies (FAM, plain linear and norm layers, no
  compiled FAM updates), layer-major otherwise.
* ``step``: streaming, chunks of any length, with a state of constant size (except for ``full``).
* ``attention="fm"`` (feedback memory segment, App. C.2): ``fast`` and ``layer_major`` run
  :mod:`famlab.model.paths.feedback` (per layer, block by block); ``wave`` does not apply.
* ``attention="infini"`` (Infini-attention, arXiv 2404.07143: a compressive linear-attention memory per
  layer, gated with block-local attention): ``fast`` and ``layer_major`` run :mod:`famlab.model.paths.infini`.
* ``attention="rmt"`` (Recurrent Memory Transformer, :mod:`famlab.model.memory.rmt`): ``fast`` and
  ``layer_major`` run :func:`famlab.model.paths.rmt.forward`, ``reference`` its own loop; ``wave`` does not apply.
* ``attention="sum_fam"`` (SUM FAM, App. C.3: ``Layer.fam_update`` with the layer's static summary as
  queries and residual): ``fast`` runs layer-major; ``wave`` does not apply.
* ``attention="block_recurrent"`` (Block-Recurrent Transformer, App. C.1): every impl runs
  :mod:`famlab.model.paths.block_recurrent` (``reference``: its block-by-block loop; ``fast`` and
  ``layer_major``: layer-major, a per-block loop for the recurrent layers' state); ``wave`` does not apply.

Architecture: pre-LN (LayerNorm or RMSNorm), RoPE (rotate-half, base 10,000) on queries and keys,
fused QKV projection with optional grouped-query heads, and a standard feed-forward: GELU MLP with
a 4x hidden width (GPT-2) by default, or SwiGLU (Llama) with ``ff="swiglu"``.

Shapes: b batch, T tokens, d model width, H query heads, G key/value heads, D head size,
B block size, n blocks, m memory blocks, L_F FAM length, P previous FAM states attended.

Training regularisers (random position offset, random state passing) are not part of the model: they
build the state a training call starts from with :meth:`FamLM.initial_state`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from famlab.config import ModelConfig
from famlab.model.init import INIT_SCHEMES
from famlab.model.layer import Layer
from famlab.model.memory import carried_fields, memory_kinds
from famlab.model.ops import make_norm
from famlab.model.paths import block_recurrent, feedback, infini, layer_major, reference, rmt, stream, wavefront
from famlab.model.recurrent_cell import RecurrentCell
from famlab.model.state import FamState, LayerState

IMPLS = ("fast", "wave", "layer_major", "reference")
# buffers older FamLMs held for random state passing (now in famlab.train); dropped when loading
LEGACY_BUFFERS = ("rsp_state", "rsp_valid")


def drop_legacy_buffers(module, state_dict, prefix, *args) -> None:
    """load_state_dict pre-hook: an old checkpoint or converted folder's RSP buffers are not the model's."""
    for name in LEGACY_BUFFERS:
        state_dict.pop(prefix + name, None)


class FamLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.n_layers))
        for i in cfg.recurrent_layers:  # block_recurrent: the recurrent layers' cells
            self.layers[i].brt = RecurrentCell(cfg)
        self.norm_f = make_norm(cfg)
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        L_F = cfg.effective_fam_len
        if L_F:
            if cfg.fam_init == "prompt":  # one prompt at the embedding level, shared by all layers
                self.fam_prompt = nn.Parameter(torch.empty(L_F, cfg.d_model))
            else:  # the ablation: a learned prefix per layer
                self.fam_prefix = nn.Parameter(torch.empty(cfg.n_layers, L_F, cfg.d_model))
        if cfg.attention == "rmt":  # RMT's first memory, [M, d]
            self.rmt_memory = nn.Parameter(torch.empty(cfg.rmt_mem_tokens, cfg.d_model))
        self.register_load_state_dict_pre_hook(drop_legacy_buffers)
        self.reset_parameters()

    def reset_parameters(self, scheme: str | None = None) -> None:
        """Initialise every parameter by a scheme of :data:`famlab.model.init.INIT_SCHEMES` (default:
        ``cfg.init``)."""
        INIT_SCHEMES[scheme or self.cfg.init](self)

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

    # --- state ----------------------------------------------------------------------------------

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> FamState:
        """A fresh inference state: no memory, FAM at its learned initial value, no offset."""
        return self.initial_state(batch_size, device=device, dtype=dtype)

    def initial_state(
        self,
        batch_size: int,
        *,
        pos_offset: Tensor | None = None,
        carried: list[dict[str, Tensor]] | None = None,
        fams: list[Tensor] | None = None,
        device=None,
        dtype=None,
    ) -> FamState:
        """The state before the first token: no cached K/V; positions shifted by ``pos_offset`` [b] (float64;
        None = 0); the memory ``carried`` (per layer a dict of the fields :func:`carried_fields` names for the
        config, each [b, ...], e.g. from :meth:`carried_memory`: a start without the zero-residual rule) or,
        by default, each memory's learned or empty start. ``fams`` (per-layer FAM [b, L_F, d]) is
        ``carried=[{"fam": f} for f in fams]``. :meth:`init_state` is this with no offset and nothing carried."""
        if fams is not None:
            if carried is not None:
                raise ValueError("initial_state takes carried or fams, not both")
            carried = [{"fam": f} for f in fams]
        if carried is not None:
            self.check_carried(carried)
        device = device or self.tok_emb.weight.device
        dtype = dtype or self.tok_emb.weight.dtype
        per_layer = [{} for _ in self.layers]
        for kind in memory_kinds(self.cfg):
            fields = kind.initial(self, batch_size, offset=pos_offset, carried=carried, device=device, dtype=dtype)
            for acc, f in zip(per_layer, fields):
                acc |= f
        layers = [LayerState(**fields) for fields in per_layer]
        return FamState(0, pos_offset, carried is None, layers)

    def carried_memory(self, state: FamState) -> list[dict[str, Tensor]]:
        """The memory of ``state`` that a start may carry over (:meth:`initial_state`'s ``carried``): per layer,
        its fields of :func:`carried_fields` (an empty dict on a layer holding none). Cached K/V, positions and
        partial blocks are left behind."""
        out: list[dict[str, Tensor]] = [{} for _ in self.layers]
        for name, field in carried_fields(self.cfg).items():
            for i in field.layers:
                out[i][name] = getattr(state.layers[i], name)
        return out

    def check_carried(self, carried: list[dict[str, Tensor]]) -> None:
        """``carried`` holds exactly the fields :func:`carried_fields` names, per layer (ValueError otherwise)."""
        fields = carried_fields(self.cfg)
        want = [sorted(name for name, f in fields.items() if i in f.layers) for i in range(len(self.layers))]
        have = [sorted(c) for c in carried]
        if have != want:
            raise ValueError(
                f"carried memory for attention={self.cfg.attention!r} has per layer the fields {want}, got {have}"
            )

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

        ``state=None`` starts from :meth:`init_state` (in training mode too: the training regularisers
        pass the state they draw). A given ``state`` (e.g. from a previous window of the same documents)
        is used as is."""
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
            state = self.initial_state(x.shape[0], dtype=x.dtype)
        return self.path(impl, x.shape[1])(self, x, state)

    def path(self, impl: str, T: int):
        """The path that runs ``impl`` on T tokens (``fast``: the wavefront where it applies)."""
        if self.cfg.attention == "rmt" and impl != "wave":
            return rmt.reference if impl == "reference" else rmt.forward
        if self.cfg.attention == "block_recurrent" and impl != "wave":
            return block_recurrent.reference if impl == "reference" else block_recurrent.forward
        if impl == "reference":
            return reference.forward
        if self.cfg.attention == "fm" and impl != "wave":  # fast and layer_major: the per-layer block loop
            return feedback.forward
        if self.cfg.attention == "infini" and impl != "wave":  # fast and layer_major: the memory by cumsum
            return infini.forward
        if impl == "layer_major":
            return layer_major.forward
        if wavefront.supported(self, T):
            return wavefront.forward
        if impl == "wave":
            raise ValueError(wavefront.UNSUPPORTED)
        return layer_major.forward

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
        h, state = stream.forward(self, self.tok_emb(tokens), state)
        return self.logits(h), state
