"""Typed configuration for famlab models.

Every switch of the method (see ``../shared/spec/transformerfam.md``) is a plain field of
:class:`ModelConfig`; defaults follow the paper (B=1024, m=3, L_F=64, RPO on, P(RSP)=0.8) except
the model shape, which defaults to a small CPU-sized model.

Choice-valued fields are ``str`` (not ``Literal``) so the dataclass also works as an OmegaConf
structured config; :meth:`ModelConfig.__post_init__` checks them.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from famlab.data.config import DataConfig

ATTENTION_KINDS = ("full", "bswa", "txl", "fam")
FAM_POSITIONS = ("last", "float", "zero")
FAM_INITS = ("prompt", "prefix")
FF_KINDS = ("gelu", "swiglu")
NORM_KINDS = ("layernorm", "rmsnorm")


def config_error(owner: str, key: str, value: Any, allowed: str) -> ValueError:
    """The one error format for bad config values: names the key, the value and what is allowed."""
    return ValueError(f"{owner}.{key}={value!r} is not allowed: expected {allowed}")


def unknown_key_error(owner: str, key: str, valid: list[str]) -> ValueError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"{owner} has no key {key!r}{hint}; valid keys: {', '.join(valid)}")


def check_keys(cls: type, data: dict[str, Any]) -> None:
    """Reject keys that are not fields of dataclass ``cls``, suggesting the closest valid one."""
    valid = [f.name for f in fields(cls)]
    for key in data:
        if key not in valid:
            raise unknown_key_error(cls.__name__, key, valid)


@dataclass
class ModelConfig:
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
    attention: str = "fam"  # full | bswa | txl | fam
    block_size: int = 1024  # B: tokens per block
    mem_segment: int = 3  # m: cached previous blocks each block attends (no per-token window)
    fam_len: int = 64  # L_F: FAM rows per layer (0 makes `fam` identical to `bswa`)
    stop_grad: bool = False  # detach the memory-segment keys/values (TransformerXL practice; not `full`)
    txl_window: int | None = None  # txl: per-token window over the memory; None = mem_segment*block_size
    # --- FAM switches ---
    fam_pos: str = "last"  # last | float | zero: RoPE positions of the FAM rows
    fam_init: str = "prompt"  # prompt: one learned prompt run through the stack; prefix: per-layer
    fam_prev_blocks: int = 1  # how many previous FAM states block tokens attend
    fam_zero_residual: bool = True  # first update from the initial FAM uses a zero residual
    # --- training-only extras ---
    random_pos_offset: bool = True  # RPO: random offset added to every position, per sequence
    rsp_prob: float = 0.8  # random state passing: P(start from the saved FAM of the last step)
    # --- pretrained weights ---
    init_from: str | None = None  # a converted folder (famlab.hf): weights and shape keys come from it

    def __post_init__(self) -> None:
        name = type(self).__name__

        def positive(key: str, allow_zero: bool = False) -> None:
            value = getattr(self, key)
            ok = isinstance(value, int) and not isinstance(value, bool)
            ok = ok and (value >= 0 if allow_zero else value > 0)
            if not ok:
                raise config_error(name, key, value, "an integer >= 0" if allow_zero else "an integer > 0")

        def choice(key: str, allowed: tuple[str, ...]) -> None:
            if getattr(self, key) not in allowed:
                raise config_error(name, key, getattr(self, key), "one of " + ", ".join(allowed))

        for key in ("vocab_size", "d_model", "n_layers", "n_heads", "block_size", "fam_prev_blocks"):
            positive(key)
        for key in ("mem_segment", "fam_len"):
            positive(key, allow_zero=True)
        if self.n_kv_heads is not None:
            positive("n_kv_heads")
        if self.d_ff is not None:
            positive("d_ff")
        if self.txl_window is not None:
            positive("txl_window", allow_zero=True)
        choice("attention", ATTENTION_KINDS)
        choice("fam_pos", FAM_POSITIONS)
        choice("fam_init", FAM_INITS)
        choice("ff", FF_KINDS)
        choice("norm", NORM_KINDS)
        if self.d_model % self.n_heads:
            raise config_error(name, "n_heads", self.n_heads, f"a divisor of d_model={self.d_model}")
        if (self.d_model // self.n_heads) % 2:
            raise config_error(
                name, "n_heads", self.n_heads, f"a value giving an even head size (d_model={self.d_model})"
            )
        if self.n_kv_heads is not None and self.n_heads % self.n_kv_heads:
            raise config_error(name, "n_kv_heads", self.n_kv_heads, f"a divisor of n_heads={self.n_heads}")
        if not (isinstance(self.rsp_prob, int | float) and 0.0 <= self.rsp_prob <= 1.0):
            raise config_error(name, "rsp_prob", self.rsp_prob, "a probability in [0, 1]")
        if not self.rope_base > 0:
            raise config_error(name, "rope_base", self.rope_base, "a number > 0")
        if self.init_from is not None and not (isinstance(self.init_from, str) and self.init_from):
            raise config_error(name, "init_from", self.init_from, "a converted folder (famlab.hf) or null")

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
        """FAM rows actually used: only the `fam` attention kind has any."""
        return self.fam_len if self.attention == "fam" else 0

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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a mapping, rejecting unknown keys with a suggestion."""
        check_keys(cls, data)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> ModelConfig:
        check_keys(type(self), changes)
        return dataclasses.replace(self, **changes)


# ==============================================================================================
# run configuration: model + data + training + logging, merged with OmegaConf
#
# Choices:
# * One typed dataclass per section (ModelConfig, DataConfig, TrainConfig, LoggerConfig) under
#   RunConfig. Merge order: the structured schema (dataclass defaults) <- the preset YAML
#   (famlab/presets/<name>.yaml, or a path) <- dotlist overrides (``train.lr=1e-3``).
# * Every key the user gives is checked against the schema *before* merging, so an unknown key
#   gives one line naming the full dotted key and the closest valid one. Type errors from
#   OmegaConf and range errors from the dataclasses' ``__post_init__`` are re-raised as one-line
#   ``ValueError``s naming the dotted key (``ConfigError``; the CLI prints it and exits 2).
# * ``DataConfig`` lives in ``famlab.data.config`` and is imported lazily (``famlab.data`` may import
#   this module); ``data_config_cls()`` puts it in this module's namespace for the type hints.

TRAIN_OPTIMIZERS = ("adamw", "adafactor")
TRAIN_SCHEDULES = ("constant", "cosine")
TRAIN_PRECISIONS = ("32-true", "32", "64-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true")
MATMUL_PRECISIONS = ("highest", "high", "medium")
TRAIN_COMPILE = ("none", "fam_scan", "fam_update", "model")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
WANDB_MODES = ("auto", "online", "offline", "disabled")
RUN_SECTIONS = ("model", "data", "train", "logger", "lora")
PRESET_DIR = Path(__file__).with_name("presets")


class ConfigError(ValueError):
    """A bad run configuration: the message is one line naming the dotted key."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class TrainConfig:
    """Optimisation and Trainer settings.

    * ``optimizer``: ``adamw`` (decoupled weight decay on matrices except embeddings/FAM prompt;
      ``betas``, ``eps``) or ``adafactor`` (``torch.optim.Adafactor``: factored second moment, no
      first moment, step-dependent beta2 = 1 - t^-0.8, and ``lr`` is a *relative* step size scaled
      by each parameter's RMS, so ``betas``/``eps`` are ignored; the paper's Adafactor is T5X's).
    * ``schedule``: ``constant`` (the paper's) or ``cosine`` to ``min_lr_ratio * lr`` at ``max_steps``;
      both start with ``warmup_steps`` of linear warm-up from lr/(warmup_steps+1). Stepped per optimizer step.
    * ``grad_clip``: global-norm clipping by the Trainer; 0 disables.
    * ``val_every``/``log_every``/``checkpoint_every``: in optimizer steps; 0 disables validation /
      periodic checkpoints (``last.ckpt`` is always written at the end and at every periodic save).
    * ``rsp_start_step``/``rsp_ramp_steps``: random state passing schedule. ``model.rsp_prob`` is 0
      before ``rsp_start_step``, then rises linearly to ``model.rsp_prob`` of the config over
      ``rsp_ramp_steps`` steps (0 = at once).
    * ``compile``: ``none``; ``fam_scan`` compiles each layer's FAM scan (the sequential part of the
      fast path; nothing to compile without FAM; compile time grows with the number of blocks);
      ``fam_update`` compiles each layer's single FAM update instead (one graph per layer whatever
      the length; the scan calls it once per block); ``model`` compiles the model's forward
      (``nn.Module.compile``: checkpoints keep their keys). ``compile_mode`` is ``torch.compile``'s
      mode: ``reduce-overhead`` replays the compiled code as CUDA graphs on a GPU (on an H200 it made
      the FAM training step 3.3x faster with ``fam_scan``, see the README).
    * ``devices``/``strategy``/``accelerator``/``precision``/``num_nodes``: passed to the Trainer
      (``devices=-1``: all). DDP with FAM uses ``find_unused_parameters`` (a step that starts from
      the carried/RSP state does not touch the FAM prompt).
    """

    max_steps: int = 1000
    lr: float = 3e-4
    optimizer: str = "adamw"
    weight_decay: float = 0.1
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    schedule: str = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    accumulate_grad_batches: int = 1
    precision: str = "32-true"
    matmul_precision: str = "highest"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    accelerator: str = "auto"
    deterministic: bool = False
    val_every: int = 200
    log_every: int = 10
    checkpoint_every: int = 500
    rsp_start_step: int = 0
    rsp_ramp_steps: int = 0
    compile: str = "none"
    compile_mode: str = "default"

    def __post_init__(self) -> None:
        o = "train"

        def integer(key: str, minimum: int) -> None:
            if not (_is_int(getattr(self, key)) and getattr(self, key) >= minimum):
                raise config_error(o, key, getattr(self, key), f"an integer >= {minimum}")

        def number(key: str, lo: float, hi: float | None = None, open_lo: bool = False) -> None:
            v = getattr(self, key)
            ok = _is_num(v) and (v > lo if open_lo else v >= lo) and (hi is None or v <= hi)
            if not ok:
                rng = f"{'>' if open_lo else '>='} {lo}" + (f" and <= {hi}" if hi is not None else "")
                raise config_error(o, key, v, f"a number {rng}")

        def choice(key: str, allowed: tuple[str, ...]) -> None:
            if getattr(self, key) not in allowed:
                raise config_error(o, key, getattr(self, key), "one of " + ", ".join(allowed))

        for key in ("max_steps", "accumulate_grad_batches", "num_nodes", "log_every"):
            integer(key, 1)
        for key in ("warmup_steps", "val_every", "checkpoint_every", "rsp_start_step", "rsp_ramp_steps"):
            integer(key, 0)
        if not (_is_int(self.devices) and (self.devices >= 1 or self.devices == -1)):
            raise config_error(o, "devices", self.devices, "an integer >= 1, or -1 for all")
        number("lr", 0.0, open_lo=True)
        number("eps", 0.0, open_lo=True)
        number("weight_decay", 0.0)
        number("grad_clip", 0.0)
        number("min_lr_ratio", 0.0, 1.0)
        betas = list(self.betas) if isinstance(self.betas, list | tuple) else None
        if not (betas and len(betas) == 2 and all(_is_num(b) and 0.0 <= b < 1.0 for b in betas)):
            raise config_error(o, "betas", self.betas, "two numbers in [0, 1), e.g. [0.9, 0.95]")
        self.betas = [float(b) for b in betas]
        choice("optimizer", TRAIN_OPTIMIZERS)
        choice("schedule", TRAIN_SCHEDULES)
        choice("precision", TRAIN_PRECISIONS)
        choice("matmul_precision", MATMUL_PRECISIONS)
        choice("compile", TRAIN_COMPILE)
        choice("compile_mode", COMPILE_MODES)
        for key in ("strategy", "accelerator"):
            if not (isinstance(getattr(self, key), str) and getattr(self, key)):
                raise config_error(o, key, getattr(self, key), "a non-empty string (a Lightning name)")
        if not isinstance(self.deterministic, bool):
            raise config_error(o, "deterministic", self.deterministic, "true or false")

    def rsp_prob_at(self, step: int, target: float) -> float:
        """P(RSP) at optimizer step ``step``: 0 before rsp_start_step, then a linear ramp to ``target``
        reached at step ``rsp_start_step + rsp_ramp_steps - 1`` (at once if rsp_ramp_steps is 0)."""
        if step < self.rsp_start_step:
            return 0.0
        if self.rsp_ramp_steps == 0:
            return float(target)
        return float(target) * min(1.0, (step - self.rsp_start_step + 1) / self.rsp_ramp_steps)

    def lr_factor_at(self, step: int) -> float:
        """LR multiplier at optimizer step ``step`` (0-based): linear warm-up from 1/(warmup+1),
        then 1 (constant) or a cosine from 1 to ``min_lr_ratio`` at ``max_steps``."""
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if self.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps))
        cos = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cos


@dataclass
class LoggerConfig:
    """Experiment tracking. ``metrics.jsonl`` in the run directory is always written; wandb is extra.

    ``wandb``: ``auto`` (online if an API key is configured: ``WANDB_API_KEY`` or a netrc entry
    for the wandb host; otherwise offline), ``online``, ``offline`` (files under
    ``<run_dir>/wandb``, sync later with ``wandb sync``) or ``disabled`` (no wandb at all).
    Empty ``name`` = the run name plus its timestamp; empty ``group``/``entity`` = none.
    """

    wandb: str = "auto"
    project: str = "famlab"
    entity: str = ""
    group: str = ""
    tags: list[str] = dataclasses.field(default_factory=list)
    name: str = ""

    def __post_init__(self) -> None:
        if self.wandb not in WANDB_MODES:
            raise config_error("logger", "wandb", self.wandb, "one of " + ", ".join(WANDB_MODES))
        for key in ("project", "entity", "group", "name"):
            if not isinstance(getattr(self, key), str):
                raise config_error("logger", key, getattr(self, key), "a string")
        if not self.project:
            raise config_error("logger", "project", self.project, "a non-empty string")
        if not (isinstance(self.tags, list | tuple) and all(isinstance(t, str) for t in self.tags)):
            raise config_error("logger", "tags", self.tags, "a list of strings")
        self.tags = list(self.tags)


@dataclass
class LoraConfig:
    """LoRA fine-tuning through ``peft`` (``famlab.hf.add_lora``), for a pretrained base (``model.init_from``).

    ``rank`` 0 = off (every weight trains). Otherwise adapters of that rank on the linear layers named by
    ``targets`` (module-name suffixes), scale ``alpha / rank`` (``alpha`` null = rank); only the adapters and
    the FAM prompt/prefix train. Checkpoints keep the adapters; at the end of training the merged model is
    written to ``<run_dir>/merged`` (a converted folder) when ``merge`` is true, and ``load_model`` merges.
    """

    rank: int = 0
    alpha: float | None = None
    dropout: float = 0.0
    targets: list[str] = dataclasses.field(default_factory=lambda: ["wqkv", "wo", "ff.up", "ff.down"])
    merge: bool = True

    def __post_init__(self) -> None:
        if not (_is_int(self.rank) and self.rank >= 0):
            raise config_error("lora", "rank", self.rank, "an integer >= 0 (0 = no LoRA)")
        if self.alpha is not None and not (_is_num(self.alpha) and self.alpha > 0):
            raise config_error("lora", "alpha", self.alpha, "a number > 0, or null for alpha = rank")
        if not (_is_num(self.dropout) and 0.0 <= self.dropout < 1.0):
            raise config_error("lora", "dropout", self.dropout, "a number in [0, 1)")
        allowed = ("wqkv", "wo", "ff.up", "ff.down", "head")
        targets = list(self.targets) if isinstance(self.targets, list | tuple) else None
        if not targets or any(t not in allowed for t in targets):
            raise config_error("lora", "targets", self.targets, "a non-empty list of " + ", ".join(allowed))
        self.targets = targets
        if not isinstance(self.merge, bool):
            raise config_error("lora", "merge", self.merge, "true or false")


def data_config_cls() -> type:
    """``famlab.data.config.DataConfig``, imported on first use (see the module notes above)."""
    from famlab.data.config import DataConfig

    globals()["DataConfig"] = DataConfig
    return DataConfig


def _default_data_config() -> Any:
    return data_config_cls()()


@dataclass
class RunConfig:
    """Everything a run needs. ``out_dir``/``name`` place the run directory at
    ``<out_dir>/<name>/<YYYYmmdd-HHMMSS>/`` (empty ``name`` = ``<preset>-<attention>``).
    ``resume``: a checkpoint file or a run directory (its ``checkpoints/last.ckpt``) to continue from:
    weights, optimizer, LR schedule, step counters, data stream position and carried state."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=_default_data_config)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    logger: LoggerConfig = dataclasses.field(default_factory=LoggerConfig)
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)
    seed: int = 0
    out_dir: str = "runs"
    name: str = ""
    preset: str = ""
    resume: str | None = None

    def __post_init__(self) -> None:
        if not (_is_int(self.seed) and self.seed >= 0):
            raise config_error("run", "seed", self.seed, "an integer >= 0")
        if not (isinstance(self.out_dir, str) and self.out_dir):
            raise config_error("run", "out_dir", self.out_dir, "a non-empty path")
        if not isinstance(self.name, str) or "/" in self.name or self.name in (".", ".."):
            raise config_error("run", "name", self.name, "a string without '/'")
        if self.resume is not None and not (isinstance(self.resume, str) and self.resume):
            raise config_error("run", "resume", self.resume, "a checkpoint path or run directory")
        data = self.data
        if getattr(data, "stateful", False):
            B = self.model.block_size
            lengths = [data.seq_len] + [p[1] for p in getattr(data, "seq_len_schedule", [])]
            bad = [n for n in lengths if n % B]
            if bad:
                raise ConfigError(
                    f"data.seq_len={bad[0]} is not allowed: expected a multiple of model.block_size={B} when "
                    "data.stateful=true (the carried state must sit at a block boundary)"
                )

    @property
    def run_name(self) -> str:
        return self.name or f"{self.preset or 'run'}-{self.model.attention}"

    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML/JSON/``torch.load(weights_only=True)``-safe dict of the whole config."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """From :meth:`to_dict` output (e.g. a run's ``config.yaml``), checked like user input."""
        return _build_run_config(_merge([data]))


# ----------------------------------------------------------------------------------------------
# loading and merging


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split("\n")[0].split())


def _schema():
    from omegaconf import OmegaConf

    data_config_cls()
    return OmegaConf.structured(RunConfig)


def _leaf_keys(node: Any, prefix: str = "") -> list[str]:
    from omegaconf import DictConfig

    out = []
    for key in node:
        full = f"{prefix}{key}"
        child = node._get_node(key)
        if isinstance(child, DictConfig) and child._metadata.object_type is not None and key in RUN_SECTIONS:
            out += _leaf_keys(child, full + ".")
        else:
            out.append(full)
    return out


def _check_user_keys(schema: Any, data: Any, source: str) -> None:
    """Reject keys of ``data`` (a nested mapping) that the schema lacks, suggesting the closest."""
    all_keys = _leaf_keys(schema)
    sections = [k for k in RUN_SECTIONS if k in schema]

    def walk(node: Any, prefix: str) -> None:
        if not isinstance(node, dict):
            return
        for key, value in node.items():
            full = f"{prefix}{key}"
            if prefix == "" and key in sections:
                if value is None:
                    continue
                if not isinstance(value, dict):
                    raise ConfigError(f"{full}: expected a mapping of {key} settings, got {value!r}{source}")
                walk(value, full + ".")
            elif full not in all_keys:
                pool = [k for k in all_keys if k.startswith(prefix)] if prefix else all_keys + sections
                # a section's key given without its section ("lr=1" -> train.lr) before spelling matches
                close = [] if prefix else [k for k in all_keys if k.endswith(f".{key}")][:1]
                close = close or difflib.get_close_matches(full, pool, n=1, cutoff=0.6)
                if not close and prefix:
                    close = difflib.get_close_matches(full, all_keys, n=1, cutoff=0.6)
                if close and close[0] in sections and isinstance(value, dict) and value:
                    sub = next(iter(value))  # "modl.fam_len" -> "did you mean model.fam_len?"
                    if f"{close[0]}.{sub}" in all_keys:
                        full, close = f"{full}.{sub}", [f"{close[0]}.{sub}"]
                hint = f"; did you mean {close[0]}?" if close else ""
                raise ConfigError(f"{full}: unknown key{hint}{source}")

    walk(data, "")


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(preset: str) -> Any:
    """A preset name (``famlab/presets/<name>.yaml``) or a path to a YAML file."""
    path = Path(preset).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    named = PRESET_DIR / f"{preset}.yaml"
    if named.is_file():
        return named
    close = difflib.get_close_matches(str(preset), preset_names(), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise ConfigError(f"preset={preset!r}: no such preset (available: {', '.join(preset_names())}){hint}")


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["train.lr=1e-3", "model.attention=fam"]`` -> nested dict (values parsed as YAML)."""
    from omegaconf import OmegaConf

    for item in overrides:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(f"override {item!r}: expected key=value (e.g. train.max_steps=300)")
    try:
        parsed = OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))
    except Exception as e:  # a malformed value (e.g. an unclosed bracket)
        raise ConfigError(f"overrides {overrides!r}: {_one_line(e)}") from None
    # YAML reads yes/no/on/off as booleans; a text-valued key keeps the text (name=yes, logger.wandb=off)
    schema = _schema()
    for item in overrides:
        key, raw = (part.strip() for part in item.split("=", 1))
        path = key.split(".")
        parent = parsed
        for part in path[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and isinstance(parent.get(path[-1]), bool) and _is_text_key(schema, key):
            parent[path[-1]] = raw
    return parsed


def _is_text_key(schema: Any, key: str) -> bool:
    from omegaconf import OmegaConf
    from omegaconf.nodes import StringNode

    try:
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(schema, parent_key) if parent_key else schema
        return isinstance(parent._get_node(leaf), StringNode)
    except Exception:  # not a schema key: the unknown-key check reports it
        return False


def _merge(layers: list[tuple[dict[str, Any], str]] | list[dict[str, Any]]) -> Any:
    """schema <- each layer (checked for unknown keys first) -> merged DictConfig."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    schema = _schema()
    merged = schema
    for layer in layers:
        data, source = layer if isinstance(layer, tuple) else (layer, "")
        if not data:
            continue
        _check_user_keys(schema, data, source)
        try:
            merged = OmegaConf.merge(merged, data)
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", None) or "config"
            value = getattr(e, "value", None)
            raise ConfigError(f"{key}={value!r}: {_one_line(getattr(e, 'msg', e))}{source}") from None
    return merged


def _build_run_config(merged: Any) -> RunConfig:
    """Merged DictConfig -> RunConfig, every section validated; errors name the dotted key."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        plain = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "config"
        raise ConfigError(f"{key}: {_one_line(getattr(e, 'msg', e))}") from None
    classes = {
        "model": ModelConfig,
        "data": data_config_cls(),
        "train": TrainConfig,
        "logger": LoggerConfig,
        "lora": LoraConfig,
    }
    sections = {}
    for name, cls in classes.items():
        try:
            sections[name] = cls(**plain.pop(name))
        except (ValueError, TypeError) as e:
            msg = _one_line(e)
            for prefix in (f"{cls.__name__}.", f"{name}."):
                if msg.startswith(prefix):
                    msg = f"{name}." + msg[len(prefix) :]
                    break
            else:
                msg = f"{name}: {msg}"
            raise ConfigError(msg) from None
    try:
        return RunConfig(**sections, **plain)
    except (ValueError, TypeError) as e:
        msg = _one_line(e)
        raise ConfigError(msg[4:] if msg.startswith("run.") else msg) from None


def load_run_config(preset: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """schema <- preset YAML <- dotlist overrides -> a validated :class:`RunConfig`.

    ``preset``: a name in ``famlab/presets`` (``tiny``, ``small``, ``paper``), a YAML path, or None
    (dataclass defaults). Raises :class:`ConfigError` (a ``ValueError``) with a one-line message.
    """
    from omegaconf import OmegaConf

    overrides = list(overrides)
    picked = [o for o in overrides if o.startswith("preset=")]
    if picked:  # "preset=NAME" among the overrides selects the preset (the last one wins)
        overrides = [o for o in overrides if not o.startswith("preset=")]
        preset = picked[-1].split("=", 1)[1] or None
    layers: list[tuple[dict[str, Any], str]] = []
    name = ""
    if preset:
        path = preset_path(preset)
        name = path.stem
        try:
            data = OmegaConf.to_container(OmegaConf.load(path)) or {}
        except Exception as e:
            raise ConfigError(f"preset {str(path)!r}: {_one_line(e)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"preset {str(path)!r}: expected a mapping at the top level")
        layers.append((data, f" (in preset {name})"))
    user = parse_overrides(list(overrides))
    if name and "preset" not in user:
        layers.append(({"preset": name}, ""))
    layers.append((user, ""))
    return _build_run_config(_merge(layers))


def run_config_to_yaml(cfg: RunConfig) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(cfg.to_dict()))


def load_run_config_dict(
    data: dict[str, Any], overrides: list[str] | tuple[str, ...] = (), source: str = ""
) -> RunConfig:
    """A config mapping (e.g. a checkpoint's ``["famlab"]["config"]``) + overrides -> RunConfig."""
    layers = [(data, f" (in {source})" if source else ""), (parse_overrides(list(overrides)), "")]
    return _build_run_config(_merge(layers))


def load_run_config_file(path: Any, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """A run's resolved ``config.yaml`` (+ overrides) -> RunConfig."""
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(OmegaConf.load(path)) or {}
    return load_run_config_dict(data, overrides, str(path))
