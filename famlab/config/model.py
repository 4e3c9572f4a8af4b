"""ModelConfig: every switch of the method as a plain field.

Every switch of the method (see ``../shared/spec/transformerfam.md``) is a plain field of
:class:`ModelConfig`; defaults follow the paper (B=1024, m=3, L_F=64, RPO on, P(RSP)=0.8) except
the model shape, which defaults to a small CPU-sized model.

Choice-valued fields are ``str`` (not ``Literal``) so the dataclass also works as an OmegaConf
structured config; :meth:`ModelConfig.__post_init__` checks them.
"""

from __future__ import annotations

from dataclasses import dataclass

from famlab.config.errors import (
    CheckedDataclass,
    check_choice,
    check_finite,
    check_int,
    check_number,
    config_error,
    is_int,
)

ATTENTION_KINDS = ("full", "bswa", "txl", "fam", "fm", "sum_fam", "infini", "rmt", "block_recurrent")
FAM_POSITIONS = ("last", "float", "zero")
FAM_INITS = ("prompt", "prefix")
INIT_SCHEMES = ("scaled", "gpt2", "torch")  # famlab.model.init holds them under these names
FF_KINDS = ("gelu", "swiglu")
NORM_KINDS = ("layernorm", "rmsnorm")
BRT_GATES = ("fixed", "lstm")  # block_recurrent: the state's gate (famlab.model.recurrent_cell)


@dataclass
class ModelConfig(CheckedDataclass):
    # --- shape ---
    vocab_size: int = 256
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # grouped-query attention; None = n_heads
    d_ff: int | None = None  # None = 4 * d_model (gelu) or 8/3 * d_model rounded to 64 (swiglu)
    ff: str = "gelu"  # gelu: Linear-GELU-Linear (GPT-2); swiglu: gated SiLU (Llama)
    norm: str = "layernorm"  # layernorm | rmsnorm (pre-LN either way)
    norm_eps: float = 1e-5
    bias: bool = False
    tie_embeddings: bool = True
    rope_base: float = 10000.0
    # --- attention ---
    attention: str = "fam"  # full | bswa | txl | fam | fm (feedback memory segment, App. C.2) | sum_fam (App. C.3)
    # | infini (Infini-attention, arXiv 2404.07143: a compressive linear-attention memory per layer)
    # | rmt (Recurrent Memory Transformer, arXiv 2207.06881; needs mem_segment=0)
    # | block_recurrent (Block-Recurrent Transformer, App. C.1: a gated state per recurrent layer)
    # defaults: a small run whose sequence (data.seq_len 256) has 4 blocks, so blocks 3 and 4 see block 1
    # only through FAM (the paper's B=1024, m=3, L_F=64 are preset=paper; L_F = B/16 as there)
    block_size: int = 64  # B: tokens per block
    mem_segment: int = 1  # m: cached previous blocks each block attends (no per-token window)
    fam_len: int = 4  # L_F: FAM rows per layer (0 makes `fam` identical to `bswa`; ignored by other kinds)
    stop_grad: bool = False  # detach the memory-segment keys/values (TransformerXL practice; not `full`)
    txl_window: int | None = None  # txl: per-token window over the memory; None = mem_segment*block_size
    # --- FAM switches ---
    fam_pos: str = "last"  # last | float | zero: RoPE positions of the FAM rows
    fam_init: str = "prompt"  # prompt: one learned prompt run through the stack; prefix: per-layer
    fam_prev_blocks: int = 1  # how many previous FAM states block tokens attend
    fam_zero_residual: bool = True  # first update from the initial FAM uses a zero residual
    # --- Block-Recurrent Transformer switches (attention="block_recurrent"; ignored by other kinds) ---
    brt_layers: list[int] | None = None  # indices of the recurrent layers; None = [n_layers // 2]
    brt_state_len: int | None = None  # S: state vectors per recurrent layer; None = block_size (the paper's S = W)
    brt_gate: str = "fixed"  # fixed: c' = c*sigmoid(b) + z*(1 - sigmoid(b)); lstm: input/forget projections
    # --- Infini-attention (attention="infini", famlab.model.memory.infini) ---
    infini_delta_rule: bool = False  # the compressive memory's update: linear (False) or the delta rule (True)
    # --- Recurrent Memory Transformer (attention="rmt", famlab.model.memory.rmt) ---
    rmt_mem_tokens: int = 4  # memory tokens read before and written after each block
    rmt_bptt_depth: int = -1  # memory transitions the gradient crosses (last ones of a window); -1 = all
    # --- training-only extras ---
    random_pos_offset: bool = True  # RPO: random offset added to every position, per sequence
    rsp_prob: float = 0.8  # random state passing: P(start from the saved memory of the last step; no effect
    # for kinds without carried memory: full, bswa, txl, fm)
    # --- parameters ---
    init: str = "scaled"  # init scheme: scaled (width-aware) | gpt2 (N(0, 0.02)) | torch (PyTorch defaults)
    init_from: str | None = None  # a converted folder (famlab.hf): weights and shape keys come from it

    def __post_init__(self) -> None:
        name = type(self).__name__
        for key in ("vocab_size", "d_model", "n_layers", "n_heads", "block_size", "fam_prev_blocks"):
            check_int(name, self, key, 1, "an integer > 0")
        for key in ("mem_segment", "fam_len"):
            check_int(name, self, key, 0)
        check_int(name, self, "rmt_mem_tokens", 1, "an integer > 0")
        check_int(name, self, "rmt_bptt_depth", -1, "-1 (full backprop through the memory) or an integer >= 0")
        for key in ("n_kv_heads", "d_ff"):  # None = derived (see the fields)
            if getattr(self, key) is not None:
                check_int(name, self, key, 1, "an integer > 0")
        if self.txl_window is not None:
            check_int(name, self, "txl_window", 0)
        check_choice(name, self, "attention", ATTENTION_KINDS)
        check_choice(name, self, "fam_pos", FAM_POSITIONS)
        check_choice(name, self, "fam_init", FAM_INITS)
        check_choice(name, self, "init", INIT_SCHEMES)
        check_choice(name, self, "ff", FF_KINDS)
        check_choice(name, self, "norm", NORM_KINDS)
        check_choice(name, self, "brt_gate", BRT_GATES)
        if self.brt_state_len is not None:
            check_int(name, self, "brt_state_len", 1, "an integer > 0 or null (= block_size)")
        self.check_brt_layers(name)
        if self.d_model % self.n_heads:
            raise config_error(name, "n_heads", self.n_heads, f"a divisor of d_model={self.d_model}")
        if (self.d_model // self.n_heads) % 2:
            raise config_error(
                name, "n_heads", self.n_heads, f"a value giving an even head size (d_model={self.d_model})"
            )
        if self.attention == "fm" and self.mem_segment < 1:  # fm's memory is its only way past the block
            raise config_error(name, "mem_segment", self.mem_segment, "an integer >= 1 for attention='fm'")
        if self.attention == "sum_fam" and self.fam_len < 1:  # no FAM rows: no summary either
            raise config_error(name, "fam_len", self.fam_len, "an integer >= 1 for attention='sum_fam'")
        if not isinstance(self.infini_delta_rule, bool):
            raise config_error(name, "infini_delta_rule", self.infini_delta_rule, "true or false")
        if self.attention == "rmt" and self.mem_segment != 0:  # rmt blocks meet only through the memory tokens
            raise config_error(name, "mem_segment", self.mem_segment, "0 for attention='rmt'")
        if self.n_kv_heads is not None and self.n_heads % self.n_kv_heads:
            raise config_error(name, "n_kv_heads", self.n_kv_heads, f"a divisor of n_heads={self.n_heads}")
        if not (isinstance(self.rsp_prob, int | float) and 0.0 <= self.rsp_prob <= 1.0):
            raise config_error(name, "rsp_prob", self.rsp_prob, "a probability in [0, 1]")
        check_number(name, self, "rope_base", 1.0, open_low=True)  # base <= 1: no (or inverted) frequency range
        check_number(name, self, "norm_eps", 0.0, 1.0, open_low=True, open_high=True)
        if self.init_from is not None and not (isinstance(self.init_from, str) and self.init_from):
            raise config_error(name, "init_from", self.init_from, "a converted folder (famlab.hf) or null")
        check_finite(name, self)

    def check_brt_layers(self, name: str) -> None:
        """``brt_layers``: null or a non-empty list of distinct layer indices in [0, n_layers)."""
        layers = self.brt_layers
        if layers is None:
            return
        allowed = f"null or a non-empty list of distinct layer indices in [0, n_layers={self.n_layers})"
        ok = isinstance(layers, list | tuple) and len(layers) > 0 and len(set(layers)) == len(layers)
        if not (ok and all(is_int(i) and 0 <= i < self.n_layers for i in layers)):
            raise config_error(name, "brt_layers", layers, allowed)

    # --- derived values ---
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def ff_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        if self.ff == "swiglu":
            return 64 * ((8 * self.d_model // 3 + 63) // 64)
        return 4 * self.d_model

    @property
    def effective_fam_len(self) -> int:
        """FAM rows actually used: only the `fam` and `sum_fam` attention kinds have any."""
        return self.fam_len if self.attention in ("fam", "sum_fam") else 0

    @property
    def recurrent_layers(self) -> tuple[int, ...]:
        """The Block-Recurrent layers' indices, sorted (none unless ``attention="block_recurrent"``)."""
        if self.attention != "block_recurrent":
            return ()
        return tuple(sorted(self.brt_layers)) if self.brt_layers is not None else (self.n_layers // 2,)

    @property
    def state_len(self) -> int:
        """S, the Block-Recurrent state vectors per recurrent layer."""
        return self.block_size if self.brt_state_len is None else self.brt_state_len

    @property
    def detach_memory(self) -> bool:
        """stop_grad acts on the memory segment, which `full` attention does not have."""
        return self.stop_grad and self.attention != "full"

    @property
    def window(self) -> int | None:
        """Per-token window over the memory segment (txl only); None means no window."""
        if self.attention != "txl":
            return None
        return self.mem_segment * self.block_size if self.txl_window is None else self.txl_window
