"""The run configuration: model + data + training + logging + LoRA, one typed dataclass per section.

:class:`RunConfig` holds one section each of :class:`ModelConfig`, :class:`DataConfig`, :class:`TrainConfig`,
:class:`LoggerConfig` and :class:`LoraConfig`, plus the run's own keys (seed, out_dir, name, preset, resume).
Loading it (presets, overrides, merging) is :mod:`famlab.config.loading`; errors name the dotted run key
(``train.lr=...``), because every section's ``__post_init__`` names its section or class.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from famlab.config.data import DataConfig
from famlab.config.errors import (
    ConfigError,
    check_choice,
    check_finite,
    check_flag,
    check_int,
    check_number,
    config_error,
    is_finite,
    is_int,
    is_number,
)
from famlab.config.model import ModelConfig
from famlab.config.schema import build_config, merge_layers

TRAIN_OPTIMIZERS = ("adamw", "adafactor")
TRAIN_SCHEDULES = ("constant", "cosine")
TRAIN_PRECISIONS = ("32-true", "32", "64-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true")
MATMUL_PRECISIONS = ("highest", "high", "medium")
TRAIN_COMPILE = ("none", "fam_scan", "fam_update", "model")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
WANDB_MODES = ("auto", "online", "offline", "disabled")
AUX_LOSS_WEIGHTS = ("diversity_loss_weight", "reconstruction_loss_weight")  # TrainConfig's auxiliary-loss weights
SEED_MAX = 2**32 - 1  # numpy.random.seed's (and so Lightning's seed_everything's) largest seed


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
    * ``fast_dev_run``: Lightning's dry run: ``true`` (1 step) or N steps, one validation batch, no
      checkpoints, no metrics rows, no wandb/CSV/TensorBoard run (the run directory holds its config).
    * ``early_stopping_patience``: N > 0 stops training after N validations (``val_every``) without a
      ``val/loss`` better by more than ``early_stopping_min_delta`` (Lightning's ``EarlyStopping``); 0 = off.
    * ``diversity_loss_weight`` / ``reconstruction_loss_weight``: the paper's auxiliary losses on the FAM
      (App. C.4 and C.5), added to the LM loss with these weights (0 = off; models with FAM only, eager only:
      ``compile`` must be ``none``). Definitions and choices: :mod:`famlab.model.aux_losses`.
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
    fast_dev_run: Any = False  # bool, or an integer number of steps
    early_stopping_patience: int = 0
    early_stopping_min_delta: float = 0.0
    diversity_loss_weight: float = 0.0
    reconstruction_loss_weight: float = 0.0

    def __post_init__(self) -> None:
        o = "train"
        if not (isinstance(self.fast_dev_run, bool) or (is_int(self.fast_dev_run) and self.fast_dev_run >= 0)):
            raise config_error(o, "fast_dev_run", self.fast_dev_run, "true, false or a number of steps >= 0")
        check_int(o, self, "early_stopping_patience", 0, "an integer >= 0 (0 = no early stopping)")
        check_number(o, self, "early_stopping_min_delta", 0.0)
        for key in AUX_LOSS_WEIGHTS:
            check_number(o, self, key, 0.0)
            if getattr(self, key) > 0 and self.compile != "none":
                raise config_error(
                    o, key, getattr(self, key), "0 unless train.compile=none (the auxiliary losses run eagerly)"
                )
        if self.early_stopping_patience and not self.val_every:
            raise config_error(
                o,
                "early_stopping_patience",
                self.early_stopping_patience,
                "0 when train.val_every=0 (it watches val/loss)",
            )
        for key in ("max_steps", "accumulate_grad_batches", "num_nodes", "log_every"):
            check_int(o, self, key, 1)
        for key in ("warmup_steps", "val_every", "checkpoint_every", "rsp_start_step", "rsp_ramp_steps"):
            check_int(o, self, key, 0)
        if not (is_int(self.devices) and (self.devices >= 1 or self.devices == -1)):
            raise config_error(o, "devices", self.devices, "an integer >= 1, or -1 for all")
        check_number(o, self, "lr", 0.0, open_low=True)
        check_number(o, self, "eps", 0.0, 1.0, open_low=True)
        check_number(o, self, "weight_decay", 0.0)
        check_number(o, self, "grad_clip", 0.0)
        check_number(o, self, "min_lr_ratio", 0.0, 1.0)
        betas = list(self.betas) if isinstance(self.betas, list | tuple) else None
        if not (betas and len(betas) == 2 and all(is_number(b) and 0.0 <= b < 1.0 for b in betas)):
            raise config_error(o, "betas", self.betas, "two numbers in [0, 1), e.g. [0.9, 0.95]")
        self.betas = [float(b) for b in betas]
        check_choice(o, self, "optimizer", TRAIN_OPTIMIZERS)
        check_choice(o, self, "schedule", TRAIN_SCHEDULES)
        check_choice(o, self, "precision", TRAIN_PRECISIONS)
        check_choice(o, self, "matmul_precision", MATMUL_PRECISIONS)
        check_choice(o, self, "compile", TRAIN_COMPILE)
        check_choice(o, self, "compile_mode", COMPILE_MODES)
        for key in ("strategy", "accelerator"):
            if not (isinstance(getattr(self, key), str) and getattr(self, key)):
                raise config_error(o, key, getattr(self, key), "a non-empty string (a Lightning name)")
        check_flag(o, self, "deterministic")
        check_finite(o, self)

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
    ``csv``: Lightning's ``CSVLogger`` too (``<run_dir>/csv/metrics.csv``); ``tensorboard``: Lightning's
    ``TensorBoardLogger`` (``<run_dir>/tensorboard``; needs the ``tensorboard`` package).
    """

    wandb: str = "auto"
    project: str = "famlab"
    entity: str = ""
    group: str = ""
    tags: list[str] = dataclasses.field(default_factory=list)
    name: str = ""
    csv: bool = False
    tensorboard: bool = False

    def __post_init__(self) -> None:
        check_choice("logger", self, "wandb", WANDB_MODES)
        check_flag("logger", self, "csv")
        check_flag("logger", self, "tensorboard")
        for key in ("project", "entity", "group", "name"):
            if not isinstance(getattr(self, key), str):
                raise config_error("logger", key, getattr(self, key), "a string")
        if not self.project:
            raise config_error("logger", "project", self.project, "a non-empty string")
        if not (isinstance(self.tags, list | tuple) and all(isinstance(t, str) for t in self.tags)):
            raise config_error("logger", "tags", self.tags, "a list of strings")
        self.tags = list(self.tags)
        check_finite("logger", self)


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
        check_int("lora", self, "rank", 0, "an integer >= 0 (0 = no LoRA)")
        if self.alpha is not None and not (is_finite(self.alpha) and self.alpha > 0):
            raise config_error("lora", "alpha", self.alpha, "a number > 0, or null for alpha = rank")
        if not (is_number(self.dropout) and 0.0 <= self.dropout < 1.0):
            raise config_error("lora", "dropout", self.dropout, "a number in [0, 1)")
        allowed = ("wqkv", "wo", "ff.up", "ff.down", "head")
        targets = list(self.targets) if isinstance(self.targets, list | tuple) else None
        if not targets or any(t not in allowed for t in targets):
            raise config_error("lora", "targets", self.targets, "a non-empty list of " + ", ".join(allowed))
        self.targets = targets
        check_flag("lora", self, "merge")
        check_finite("lora", self)


@dataclass
class RunConfig:
    """Everything a run needs. ``out_dir``/``name`` place the run directory at
    ``<out_dir>/<name>/<YYYYmmdd-HHMMSS>/`` (empty ``name`` = ``<preset>-<attention>``).
    ``resume``: a checkpoint file or a run directory (its ``checkpoints/last.ckpt``) to continue from:
    weights, optimizer, LR schedule, step counters, data stream position and carried state."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    logger: LoggerConfig = dataclasses.field(default_factory=LoggerConfig)
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)
    seed: int = 0
    out_dir: str = "runs"
    name: str = ""
    preset: str = ""
    resume: str | None = None

    def __post_init__(self) -> None:
        if not (is_int(self.seed) and 0 <= self.seed <= SEED_MAX):
            raise config_error(
                "run", "seed", self.seed, f"an integer in [0, {SEED_MAX}] (numpy's and torch's seed range)"
            )
        if not (isinstance(self.out_dir, str) and self.out_dir):
            raise config_error("run", "out_dir", self.out_dir, "a non-empty path")
        if not isinstance(self.name, str) or "/" in self.name or self.name in (".", ".."):
            raise config_error("run", "name", self.name, "a string without '/'")
        if self.resume is not None and not (isinstance(self.resume, str) and self.resume):
            raise config_error("run", "resume", self.resume, "a checkpoint path or run directory")
        check_finite("run", self)
        for key in AUX_LOSS_WEIGHTS:  # losses on the FAM: a model with FAM rows only
            weight = getattr(self.train, key)
            if weight > 0 and not self.model.effective_fam_len:
                raise ConfigError(
                    f"train.{key}={weight!r} is not allowed: expected 0 unless the model has FAM (model.attention "
                    f"fam or sum_fam with model.fam_len > 0; got model.attention={self.model.attention!r}, "
                    f"model.fam_len={self.model.fam_len})"
                )
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
        return build_config(cls, merge_layers(cls, [data]))
