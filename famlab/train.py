"""Training runs: a LightningModule around :class:`~famlab.model.FamLM` and :func:`train`.

Choices (each one deliberate; see also :class:`famlab.config.TrainConfig`):

* **Loss**: ``sum(weight * CE) / sum(weight)`` over the batch, computed in fp32 from the logits.
  Validation reports the token-weighted mean over all validation batches (and ranks), not a mean
  of per-batch means, plus the same in bits (``val/bits_per_token``; tokens are bytes).
* **Optimizers**: AdamW with decoupled weight decay on matrices only, never on the token embedding
  or the FAM prompt/prefix (norm gains and biases are 1-D and never decayed either); or
  ``torch.optim.Adafactor`` with the same grouping. LR schedule: ``LambdaLR`` stepped once per
  optimizer step with :meth:`TrainConfig.lr_factor_at` (warm-up, then constant or cosine).
* **Randomness**: the model's own random draws (random position offset, the RSP coin) come from a
  generator reseeded at every training micro-step from ``(seed, micro-step, rank)``, inside
  ``torch.random.fork_rng``. So a run's randomness does not depend on what else touches the global
  RNG (data loading, validation, logging), and a resumed run reproduces the uninterrupted one
  exactly without saving RNG states. The micro-step counter is saved in the checkpoint.
  ``seed_everything(seed, workers=True)`` seeds everything else (initialisation).
* **RPO and RSP** (:mod:`famlab.train_regularizers`) draw the state a training call starts from;
  before each training step ``rsp.prob`` is set from :meth:`TrainConfig.rsp_prob_at` at the current
  optimizer step.
* **Stateful training** (``data.stateful``): the :class:`~famlab.model.FamState` after each window
  is detached (truncated BPTT: gradients never cross a window boundary) and carried to the next
  window; a batch with ``new_episode`` starts from ``state=None`` (a fresh FAM, new random offset,
  the RSP coin). The carried state is saved in checkpoints (as plain tensors) so resuming continues
  the episode. Validation carries its own state the same way, reset at every validation run.
* **Checkpoints**: ``<run_dir>/checkpoints/step########.ckpt`` every ``checkpoint_every`` steps
  (all kept) and ``last.ckpt`` at each of those and at the end of training. Everything in them is
  plain (dicts, lists, tensors, numbers, strings), so ``torch.load(path, weights_only=True)`` works;
  the run config is under ``checkpoint["famlab"]["config"]``.
* **Logging**: ``metrics.jsonl`` (always; one JSON object per logging event with ``step`` = optimizer
  steps done) and wandb through Lightning's ``WandbLogger`` (``logger.wandb``: auto/online/offline/
  disabled; files under ``<run_dir>/wandb``). Train metrics every ``log_every`` steps: ``train/loss``
  (0 for a window without targets, possible when stateful), ``train/weight`` (sum of the loss
  weights), ``train/lr``, ``train/tokens_per_s`` (all ranks, wall time between steps, validation excluded),
  ``train/tokens``, ``train/rsp_prob``, ``train/seq_len``, ``train/grad_norm`` (before clipping);
  ``val/loss`` and ``val/bits_per_token`` every ``val_every`` steps. ``final_metrics.json`` also
  holds a fresh validation loss of the final weights (whenever ``data.val_batches`` > 0).
* **DDP**: the run directory is made once by the launching process and handed to Lightning's
  re-launched workers through ``FAMLAB_RUN_DIR``; strategies ``ddp*`` use
  ``find_unused_parameters`` when the model has FAM (a step starting from a carried or RSP state
  does not use the FAM prompt). ``use_distributed_sampler=False``: every rank validates on all
  validation batches (the sums are reduced, so the value equals the single-device one, and
  stateful validation keeps its consecutive windows). Training data per rank comes from the
  datamodule: rank r > 0 draws its own batches (rank 0's stream is the single-process one). The carried stateful-training state is restored on resume only for single-process runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import logging
import math
import os
import sys
import time
import warnings
from collections import deque
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities import rank_zero_only

from famlab import provenance
from famlab.allocator import reuse_freed_memory
from famlab.config import ConfigError, RunConfig, run_config_to_yaml
from famlab.model import FamLM, FamState, compile_model, state_from_dict, state_to, state_to_dict
from famlab.train_regularizers import RandomStatePassing, training_start, upgrade_checkpoint

RUN_DIR_ENV = "FAMLAB_RUN_DIR"
CKPT_KEY = "famlab"
LN2 = math.log(2.0)

# Lightning messages that say nothing about a famlab run (matched as regular expressions)
NOISY_WARNINGS = [
    r".*does not have many workers which may be a bottleneck.*",
    r".*The number of training batches .* is smaller than the logging interval.*",
    r".*GPU available but not used.*",
    r".*that has Tensor Cores. To properly utilize them.*",
    r".*You're resuming from a checkpoint that ended before the epoch ended.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*`isinstance\(treespec, LeafSpec\)` is deprecated.*",
    r".*Total length of .* across ranks is zero.*",
    r".*The `srun` command is available on your system but is not used.*",
    r".*Your `IterableDataset` has `__len__` defined.*",
    r".*The dirpath has changed from .* won't be reloaded.*",  # resuming into a new run directory
]
NOISY_LOGGERS = [
    "pytorch_lightning.utilities.rank_zero",  # "GPU available: ...", "`Trainer.fit` stopped: ..."
    "pytorch_lightning.accelerators.cuda",  # "LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: ..."
    "lightning.pytorch.utilities.rank_zero",
    "lightning.pytorch.accelerators.cuda",
    "lightning_fabric.utilities.distributed",
]


def quiet_lightning() -> None:
    """Filter Lightning's known noisy warnings and info lines (process-wide, idempotent)."""
    for pattern in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _f64(value: float) -> torch.Tensor:
    return torch.tensor(float(value), dtype=torch.float64)


def weighted_ce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum(weight * CE), sum(weight)) in fp32; the loss is their ratio."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), reduction="none")
    w = weight.float().flatten()
    return (ce * w).sum(), w.sum()


# ----------------------------------------------------------------------------------------------
# the LightningModule


class FamLightningModule(pl.LightningModule):
    """FamLM trained on famlab batches (``input``, ``target``, ``weight``, optional ``new_episode``).

    ``cfg`` is the whole :class:`RunConfig` (model shape, optimiser, schedules, seed)."""

    def __init__(self, cfg: RunConfig):
        super().__init__()
        self.cfg = cfg
        self.model = build_model(cfg)
        self.rsp = RandomStatePassing(cfg.model)  # random state passing: P(RSP) now and the remembered FAM
        compile_model(self.model, cfg.train.compile, cfg.train.compile_mode)
        # CUDA graphs (compile mode reduce-overhead) reuse their output memory at the next step
        self.cuda_graphs = cfg.train.compile != "none" and cfg.train.compile_mode == "reduce-overhead"
        self.carried: FamState | None = None  # stateful training: the state after the last window
        self.val_state: FamState | None = None
        self.micro_step = 0  # training batches seen (keys the per-step RNG; saved in checkpoints)
        self.tokens_seen = 0  # input tokens over all ranks (saved in checkpoints)
        self.recent_losses: deque[float] = deque(maxlen=50)
        self.last_weight = torch.zeros(())  # sum of the loss weights of the last training batch
        # sums over the micro-batches of the optimizer step in progress: (sum w*loss, sum w, its step)
        self._acc_step: tuple[torch.Tensor, torch.Tensor, int] | None = None
        self.skipped_steps = 0  # optimizer steps without any target, which changed no weight
        self._t_last: float | None = None
        self._step_tokens = 0
        self._val_sums: list[torch.Tensor] = []

    # --- helpers ------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        quiet_lightning()  # again in processes that Lightning spawned (filters do not travel)

    def forward(self, tokens: torch.Tensor, **kw: Any) -> Any:
        return self.model(tokens, **kw)

    @contextlib.contextmanager
    def step_rng(self):
        """The model's random draws for this micro-step come from a generator seeded by
        (seed, micro-step, rank); the global RNG state is left as it was."""
        seed = (self.cfg.seed * 1_000_003 + self.micro_step) * 1_009 + self.global_rank
        seed %= 2**63
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.random.default_generator.manual_seed(seed)
            if devices:
                torch.cuda.default_generators[devices[0]].manual_seed(seed)
            yield

    def set_rsp_prob(self) -> float:
        p = self.cfg.train.rsp_prob_at(self.global_step, self.cfg.model.rsp_prob)
        self.rsp.prob = p
        return p

    @staticmethod
    def _new_episode(batch: dict[str, Any]) -> bool:
        flag = batch.get("new_episode")
        if flag is None:
            return True
        return bool(torch.as_tensor(flag).any())

    def _run(self, batch: dict[str, Any], state: FamState | None, stateful: bool):
        """Forward; returns (sum(w*CE), sum(w), state after the window or None)."""
        x = batch["input"]
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # outputs of the last step's graphs may be overwritten
        remember = self.model.training and self.rsp.needs_final_state
        if state is None and self.model.training:  # RPO and RSP draw the start of a training call
            state = training_start(self.model, self.rsp, x.shape[0], x.device)
        if not (stateful or remember):
            logits, new_state = self.model(x, state=state), None
        else:
            logits, new_state = self.model(
                x, state=state if state is None else state_to(state, x.device), return_state=True
            )
            if remember:
                self.rsp.remember(new_state)
            new_state = new_state.detach() if stateful else None
            if self.cuda_graphs and stateful:  # the carried state must outlive the graph's output buffers
                new_state = new_state.clone()
        wce, wsum = weighted_ce(logits, batch["target"], batch["weight"])
        return wce, wsum, new_state

    # --- training -------------------------------------------------------------------------------

    def on_train_start(self) -> None:
        self._t_last = time.perf_counter()
        self.apply_optimizer_config()

    def apply_optimizer_config(self) -> None:
        """Make the optimizer and LR schedule follow this run's config. On a resume Lightning restores
        them from the checkpoint, with the old run's lr, weight decay, betas, eps and the old schedule's
        current LR; ``resume=... train.lr=...`` or a new ``max_steps``/``warmup_steps``/``schedule``
        must take effect from the first resumed step (the moments and the step count are kept)."""
        if self._trainer is None or not self.trainer.optimizers:
            return
        t = self.cfg.train
        opt = self.trainer.optimizers[0]
        step = self.global_step  # optimizer steps done: the next one runs at factor(step)
        for group, wanted in zip(opt.param_groups, self.param_groups(), strict=True):
            group["weight_decay"] = wanted["weight_decay"]
            group["initial_lr"] = t.lr
            group["lr"] = t.lr * t.lr_factor_at(step)
            if t.optimizer == "adamw":
                group["betas"], group["eps"] = tuple(t.betas), t.eps
        for config in self.trainer.lr_scheduler_configs:
            config.scheduler.base_lrs = [t.lr] * len(opt.param_groups)

    def train_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """One training micro-step's loss (no Trainer needed): applies the RSP schedule, draws the
        model's randomness from the step-keyed generator, carries/resets the stateful state."""
        self.set_rsp_prob()
        stateful = self.cfg.data.stateful
        state = None if (not stateful or self._new_episode(batch)) else self.carried
        with self.step_rng():
            wce, wsum, new_state = self._run(batch, state, stateful)
        self.carried = new_state
        self.micro_step += 1
        self.last_weight = wsum.detach()
        return wce / wsum.clamp_min(1e-8)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.train_loss(batch)
        rsp = self.rsp.prob
        n_tok = batch["input"].numel() * self.trainer.world_size
        self.tokens_seen += n_tok
        self._step_tokens += n_tok
        opt = self.optimizers()
        # "step" is Lightning's reserved key for the x-axis: optimizer steps done after this one
        self.log("step", _f64(self.global_step + 1))
        # train/loss is the weighted mean over the optimizer step's micro-batches (gradient
        # accumulation), train/weight their summed weight; a window without targets (possible when
        # stateful) has weight 0
        w = self.last_weight
        if self._acc_step is None or self._acc_step[2] != self.global_step:
            self._acc_step = (torch.zeros_like(w), torch.zeros_like(w), self.global_step)
        lw_sum, w_sum = self._acc_step[0] + loss.detach() * w, self._acc_step[1] + w
        self._acc_step = (lw_sum, w_sum, self.global_step)
        self.log("train/loss", lw_sum / w_sum if w_sum > 0 else loss.detach(), prog_bar=True)
        self.log("train/weight", w_sum)
        if self.last_weight > 0:
            self.recent_losses.append(float(loss.detach()))
        # float64: Lightning would store plain numbers as float32 (token counts > 2**24 would round)
        self.log("train/lr", _f64(opt.param_groups[0]["lr"] if opt else 0.0))
        self.log("train/rsp_prob", _f64(rsp))
        self.log("train/seq_len", _f64(batch["input"].shape[1]))
        self.log("train/tokens", _f64(self.tokens_seen))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._t_last is not None and now > self._t_last:
            self.log("train/tokens_per_s", self._step_tokens / (now - self._t_last), prog_bar=True)
        self._t_last, self._step_tokens = now, 0

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if (self.global_step + 1) % self.cfg.train.log_every == 0:
            grads = [p.grad.detach().float().norm() for p in self.parameters() if p.grad is not None]
            if grads:
                self.log("train/grad_norm", torch.stack(grads).norm())
        # An optimizer step whose micro-batches hold no targets on any rank (stateful training: in
        # stateful recall every window before an episode's last) must change no weight. Its gradients
        # are zeros, but AdamW would still move the weights by its momentum and decay them. Without
        # gradients the optimizers skip every parameter; the LR schedule still counts the step.
        # Only stateful windows can lack targets: other runs pay no extra collective or sync here.
        acc = self._acc_step
        if self.cfg.data.stateful and acc is not None and acc[2] == self.global_step:
            total = self.trainer.strategy.reduce(acc[1].detach().float().clone(), reduce_op="sum")  # all ranks agree
            if float(total) <= 0:
                optimizer.zero_grad(set_to_none=True)
                self.skipped_steps += 1

    # --- validation -----------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        self.val_state = None
        self._val_sums = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        stateful = self.cfg.data.stateful
        state = None if (not stateful or self._new_episode(batch)) else self.val_state
        wce, wsum, self.val_state = self._run(batch, state, stateful)
        self._val_sums.append(torch.stack([wce.detach(), wsum.detach()]))

    def on_validation_epoch_end(self) -> None:
        if not self._val_sums:
            return
        sums = torch.stack(self._val_sums).sum(0)
        sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        loss = sums[0] / sums[1].clamp_min(1e-8)
        # already reduced over ranks: sync_dist averages equal values (and keeps Lightning quiet)
        self.log("step", float(self.global_step), sync_dist=True)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        self.log("val/bits_per_token", loss / LN2, sync_dist=True)
        self._val_sums = []
        self.val_state = None
        self._t_last = time.perf_counter()  # validation time does not count against tokens/s

    @torch.no_grad()
    def evaluate_loss(self, batches: Any) -> float:
        """Token-weighted loss over ``batches`` (eval mode, a carried state when stateful)."""
        was = self.training
        self.eval()
        total, weight, state = 0.0, 0.0, None
        try:
            for batch in batches:
                batch = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
                stateful = self.cfg.data.stateful
                state = None if (not stateful or self._new_episode(batch)) else state
                wce, wsum, state = self._run(batch, state, stateful)
                total, weight = total + float(wce), weight + float(wsum)
        finally:
            self.train(was)
        return total / max(weight, 1e-8)

    # --- optimisation ---------------------------------------------------------------------------

    def param_groups(self) -> list[dict[str, Any]]:
        """Weight decay on matrices except the token embedding and the FAM prompt/prefix."""
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            exempt = p.dim() < 2 or name.startswith(("tok_emb.", "fam_prompt", "fam_prefix"))
            (no_decay if exempt else decay).append(p)
        wd = self.cfg.train.weight_decay
        groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]

    def configure_optimizers(self) -> dict[str, Any]:
        t = self.cfg.train
        if t.optimizer == "adamw":
            opt = torch.optim.AdamW(self.param_groups(), lr=t.lr, betas=tuple(t.betas), eps=t.eps)
        else:
            opt = torch.optim.Adafactor(self.param_groups(), lr=t.lr)
        factor = t.lr_factor_at

        def lr_lambda(step: int) -> float:  # a plain function: LambdaLR saves nothing of it
            return factor(step)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    # --- checkpoints ------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CKPT_KEY] = {
            "version": 1,
            "config": self.cfg.to_dict(),
            "micro_step": int(self.micro_step),
            "tokens_seen": int(self.tokens_seen),
            "carried_state": state_to_dict(self.carried),
            "recent_losses": list(self.recent_losses),
            "skipped_steps": int(self.skipped_steps),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        upgrade_checkpoint(checkpoint.get("state_dict", {}))  # RSP buffers saved under model. before
        extra = checkpoint.get(CKPT_KEY) or {}
        self.micro_step = int(extra.get("micro_step", 0))
        self.tokens_seen = int(extra.get("tokens_seen", 0))
        self.recent_losses.extend(float(x) for x in extra.get("recent_losses", []))
        self.skipped_steps = int(extra.get("skipped_steps", 0))
        single = self._trainer is None or self.trainer.world_size == 1
        self.carried = state_from_dict(extra.get("carried_state")) if single else None


# ----------------------------------------------------------------------------------------------
# logging


class JsonlLogger(Logger):
    """Appends one JSON object per logging event to ``<run_dir>/metrics.jsonl``:
    ``{"step": optimizer steps done, "time": unix time, <metric>: value, ...}``. Rank 0 only."""

    def __init__(self, run_dir: str | Path, filename: str = "metrics.jsonl"):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / filename
        if rank_zero_only.rank == 0:  # there even if nothing is logged (a run shorter than log_every)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()

    @property
    def name(self) -> str:
        return "jsonl"

    @property
    def version(self) -> str:
        return self.run_dir.name

    @property
    def save_dir(self) -> str:
        return str(self.run_dir)

    @property
    def root_dir(self) -> str:
        return str(self.run_dir)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # the resolved config is in config.yaml

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        row: dict[str, Any] = {"step": step, "time": round(time.time(), 3)}
        for key, value in metrics.items():
            value = value.item() if torch.is_tensor(value) else value
            row[key] = value if isinstance(value, int | float | str | bool) or value is None else str(value)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``<run_dir>/metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wandb_api_key_available() -> bool:
    """True if wandb could log in without asking: ``WANDB_API_KEY`` or a netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    paths = [os.environ["NETRC"]] if os.environ.get("NETRC") else []
    paths += [os.path.expanduser("~/.netrc"), os.path.expanduser("~/_netrc")]
    for path in paths:
        try:
            if os.path.isfile(path) and netrc.netrc(path).authenticators(host):
                return True
        except (OSError, netrc.NetrcParseError):
            continue
    return False


def wandb_mode(setting: str) -> str:
    """``logger.wandb`` -> the wandb mode: auto = $WANDB_MODE if set, else online with an API key,
    else offline."""
    if setting != "auto":
        return setting
    env = os.environ.get("WANDB_MODE", "").lower()
    if env in ("online", "offline", "disabled"):
        return env
    if env == "dryrun":
        return "offline"
    return "online" if wandb_api_key_available() else "offline"


def make_wandb_logger(cfg: RunConfig, run_dir: Path) -> Logger | None:
    mode = wandb_mode(cfg.logger.wandb)
    if mode == "disabled":
        return None
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    lc = cfg.logger
    name = lc.name or f"{cfg.run_name}-{run_dir.name}"
    logger = WandbLogger(
        name=name,
        save_dir=str(run_dir),
        project=lc.project,
        entity=lc.entity or None,
        group=lc.group or None,
        tags=list(lc.tags) or None,
        mode=mode,
        config=cfg.to_dict(),
        log_model=False,
        settings=wandb.Settings(silent=True),
    )
    logger._wandb_init.pop("anonymous", None)  # Lightning passes anonymous=None, which wandb warns about
    return logger


class _ProgressBar(TQDMProgressBar):
    """Lightning's bar without the logger version number."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


class _FinalMetrics(Callback):
    """Writes ``final_metrics.json`` when training ends, on global rank 0 of the processes that
    trained (so it also works with ``ddp_spawn``, whose launching process holds no counters)."""

    def __init__(self, run_dir: Path, t0: float):
        self.run_dir, self.t0 = run_dir, t0

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            cfg = pl_module.cfg
            final = final_metrics(cfg, pl_module, trainer, trainer.datamodule, self.run_dir, time.time() - self.t0)
            (self.run_dir / "final_metrics.json").write_text(json.dumps(final, indent=2) + "\n")


class _MergeLora(Callback):
    """Writes ``<run_dir>/merged`` (a famlab.hf converted folder) when training ends: a copy of the model
    with its LoRA adapters merged (the trained module and its checkpoints keep the adapters)."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            import copy

            from famlab import hf

            merged = hf.merge_lora(copy.deepcopy(pl_module.model)).eval()
            hf.save_converted(merged, self.run_dir / "merged", extra_files_from=pl_module.cfg.model.init_from)


class _Checkpoints(ModelCheckpoint):
    """ModelCheckpoint whose ``last.ckpt`` is always the final state (Lightning's own end-of-training
    save skips it when an earlier periodic save already wrote a ``last.ckpt``)."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._last_global_step_saved != trainer.global_step or not self._last_checkpoint_saved:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


# ----------------------------------------------------------------------------------------------
# runs


def make_run_dir(cfg: RunConfig) -> Path:
    """``<out_dir>/<name>/<YYYYmmdd-HHMMSS>`` (with ``-1``, ``-2``... if that exists)."""
    base = Path(cfg.out_dir).expanduser() / cfg.run_name
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        run_dir = base / (stamp if i == 0 else f"{stamp}-{i}")
        try:
            run_dir.mkdir(parents=True, exist_ok=False)
            return run_dir
        except FileExistsError:
            continue
    raise RuntimeError(f"could not make a run directory under {base}")


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, a run directory (its ``checkpoints/last.ckpt``) or a run-name directory
    (the newest run in it) -> the checkpoint file."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if (p / "checkpoints" / "last.ckpt").is_file():
        return p / "checkpoints" / "last.ckpt"
    if p.is_dir():
        runs = sorted(d for d in p.iterdir() if (d / "checkpoints" / "last.ckpt").is_file())
        if runs:
            return runs[-1] / "checkpoints" / "last.ckpt"
    raise FileNotFoundError(f"resume={str(path)!r}: no checkpoint there (expected a .ckpt file or a run directory)")


def resolve_run_dir(path: str | Path) -> Path:
    """A run directory, or a run-name directory (its newest run) -> a directory with config.yaml."""
    p = Path(path).expanduser()
    if (p / "config.yaml").is_file():
        return p
    if p.is_dir():
        runs = sorted(d for d in p.iterdir() if (d / "config.yaml").is_file())
        if runs:
            return runs[-1]
    raise FileNotFoundError(f"{str(path)!r} is not a run directory (no config.yaml)")


def _strategy(cfg: RunConfig) -> str:
    """Lightning strategy name; DDP flavours get ``find_unused_parameters`` when the model has FAM
    (``auto`` with several devices or nodes becomes ``ddp``, as Lightning would pick)."""
    s = cfg.train.strategy
    if s == "auto" and (cfg.train.devices != 1 or cfg.train.num_nodes > 1) and cfg.model.effective_fam_len:
        s = "ddp"
    if s in ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook") and cfg.model.effective_fam_len:
        return f"{s}_find_unused_parameters_true"
    return s


def _global_rank() -> int:
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(key):
            return int(os.environ[key])
    return 0


def build_trainer(
    cfg: RunConfig, run_dir: Path, loggers: list[Logger], extra_callbacks: list[Callback] = ()
) -> tuple[pl.Trainer, ModelCheckpoint]:
    t = cfg.train
    # periodic step########.ckpt files (all kept) and last.ckpt, which Lightning also writes when
    # training ends; checkpoint_every=0: last.ckpt only
    periodic = _Checkpoints(
        dirpath=str(run_dir / "checkpoints"),
        filename="step{step:08d}",
        auto_insert_metric_name=False,
        every_n_train_steps=t.checkpoint_every or None,
        save_top_k=-1 if t.checkpoint_every else 0,
        save_last=True,
        save_on_train_epoch_end=False,
        enable_version_counter=False,
    )
    callbacks: list[Callback] = [_ProgressBar(refresh_rate=max(1, min(t.log_every, 10))), periodic, *extra_callbacks]
    validate = t.val_every > 0 and cfg.data.val_batches > 0
    trainer = pl.Trainer(
        max_steps=t.max_steps,
        max_epochs=-1,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=_strategy(cfg),
        precision=t.precision,
        gradient_clip_val=t.grad_clip or None,
        gradient_clip_algorithm="norm",
        accumulate_grad_batches=t.accumulate_grad_batches,
        val_check_interval=t.val_every * t.accumulate_grad_batches if validate else None,
        check_val_every_n_epoch=None,
        limit_val_batches=None if validate else 0,
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every,
        logger=loggers,
        callbacks=callbacks,
        enable_model_summary=False,
        enable_progress_bar=True,
        enable_checkpointing=True,
        default_root_dir=str(run_dir),
        deterministic=t.deterministic,
        use_distributed_sampler=False,
        benchmark=False,
    )
    return trainer, periodic


def train(cfg: RunConfig, *, argv: list[str] | None = None) -> Path:
    """Run ``cfg``; returns the run directory.

    The run directory gets ``config.yaml`` (resolved), ``provenance.json``, ``metrics.jsonl``,
    ``checkpoints/`` (and ``wandb/``), and at the end ``final_metrics.json``. With ``cfg.resume``
    the weights, optimizer, LR schedule, step counters, data position and carried state come from
    that checkpoint and training continues to ``train.max_steps``.
    """
    quiet_lightning()
    from famlab.data import build_datamodule

    t0 = time.time()
    cfg = resolve_pretrained(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision(cfg.train.matmul_precision)
    malloc = "default"
    if cfg.train.accelerator == "cpu" or (cfg.train.accelerator == "auto" and not torch.cuda.is_available()):
        malloc = reuse_freed_memory()  # freed activations are reused instead of page-faulted in every step
    module = FamLightningModule(cfg)
    try:  # checks that need the model (e.g. a passkey prompt longer than seq_len) fail here, early
        dm = build_datamodule(cfg.data, vocab_size=cfg.model.vocab_size, block_size=cfg.model.block_size, seed=cfg.seed)
    except ValueError as e:
        msg = " ".join(str(e).split())
        raise ConfigError("data." + msg[len("DataConfig.") :] if msg.startswith("DataConfig.") else msg) from None
    ckpt_path = str(resolve_checkpoint(cfg.resume)) if cfg.resume else None

    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited:  # a worker re-launched by Lightning's DDP launcher (or a run dir set by the user)
        run_dir = Path(inherited)
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        run_dir = make_run_dir(cfg)
    is_zero = _global_rank() == 0
    if is_zero:
        (run_dir / "config.yaml").write_text(run_config_to_yaml(cfg))
        provenance.write(
            run_dir / "provenance.json",
            seed=cfg.seed,
            argv=argv,
            extra={"run_dir": str(run_dir), "resume_from": ckpt_path, "malloc": malloc},
        )

    loggers: list[Logger] = [JsonlLogger(run_dir)]
    wb = make_wandb_logger(cfg, run_dir) if is_zero or not inherited else None
    if wb is not None:
        loggers.append(wb)
    extra: list[Callback] = [_FinalMetrics(run_dir, t0)]
    if cfg.lora.rank and cfg.lora.merge:
        extra.append(_MergeLora(run_dir))
    trainer, _ = build_trainer(cfg, run_dir, loggers, extra_callbacks=extra)

    set_env = not inherited
    if set_env:
        os.environ[RUN_DIR_ENV] = str(run_dir)
    try:
        with warnings.catch_warnings():
            quiet_lightning()
            trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    finally:
        if set_env:
            os.environ.pop(RUN_DIR_ENV, None)
        if wb is not None and trainer.is_global_zero:
            with contextlib.suppress(Exception):
                wb.experiment.finish()

    return run_dir


def resolve_pretrained(cfg: RunConfig) -> RunConfig:
    """With ``model.init_from`` (a famlab.hf converted folder): the shape keys of ``cfg.model`` taken from it,
    and ``data.tokenizer=init_from`` replaced by that folder."""
    if cfg.data.tokenizer == "init_from":
        if not cfg.model.init_from:
            raise ConfigError(
                "data.tokenizer='init_from' is not allowed without model.init_from: expected 'bytes' or a folder "
                "with HF tokenizer files"
            )
        cfg = dataclasses.replace(cfg, data=cfg.data.replace(tokenizer=str(cfg.model.init_from)))
    if not cfg.model.init_from:
        return cfg
    from famlab import hf

    try:
        model_cfg = hf.resolve_model_config(cfg.model)
    except (ValueError, OSError) as e:
        raise ConfigError(f"model.init_from={cfg.model.init_from!r}: {' '.join(str(e).split())}") from None
    return dataclasses.replace(cfg, model=model_cfg)


def build_model(cfg: RunConfig, *, load_init: bool = True) -> FamLM:
    """The FamLM of a run: pretrained weights from ``model.init_from`` (if ``load_init``), then LoRA adapters
    (``lora.rank`` > 0; only adapters and the FAM prompt/prefix train)."""
    model = FamLM(cfg.model)
    if cfg.model.init_from:
        from famlab import hf

        if load_init:
            hf.init_weights_from(model, cfg.model.init_from)
        else:  # the weights come from a checkpoint; the base folder still holds the tokenizer files
            hf.remember_base(model, cfg.model.init_from)
    if cfg.lora.rank:
        from famlab import hf

        lc = cfg.lora
        hf.add_lora(model, lc.rank, lc.alpha, lc.dropout, lc.targets)
    return model


def final_metrics(cfg: RunConfig, module: FamLightningModule, trainer: pl.Trainer, dm: Any, run_dir: Path, wall: float):
    """What ``final_metrics.json`` holds: step counters, the last and recent mean train loss, the
    last logged validation loss and a fresh validation loss of the final weights."""
    cb = {k: (float(v) if torch.is_tensor(v) else v) for k, v in trainer.callback_metrics.items()}
    out: dict[str, Any] = {
        "step": int(trainer.global_step),
        "tokens": int(module.tokens_seen),
        "skipped_steps": int(module.skipped_steps),  # optimizer steps without targets: no weight changed
        "train/loss": cb.get("train/loss"),
        "train/loss_recent_mean": (sum(module.recent_losses) / len(module.recent_losses))
        if module.recent_losses
        else None,
        "val/loss_last_logged": cb.get("val/loss"),
        "wall_time_s": round(wall, 3),
        "checkpoint": str(run_dir / "checkpoints" / "last.ckpt"),
        "run_dir": str(run_dir),
    }
    if cfg.data.val_batches > 0:
        dm.setup("validate")
        with trainer.precision_plugin.forward_context():
            val = module.evaluate_loss(dm.val_dataloader())
        out["val/loss"] = val
        out["val/bits_per_token"] = val / LN2
    return out


# ----------------------------------------------------------------------------------------------
# loading trained runs


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)``: famlab checkpoints hold plain data only."""
    return torch.load(str(path), map_location=map_location, weights_only=True)


def load_model(run_dir_or_ckpt: str | Path, map_location: Any = "cpu") -> tuple[FamLM, RunConfig]:
    """The FamLM (eval mode) and RunConfig of a run directory or checkpoint file."""
    ckpt_path = resolve_checkpoint(run_dir_or_ckpt)
    ckpt = load_checkpoint(ckpt_path, map_location)
    cfg = RunConfig.from_dict(ckpt[CKPT_KEY]["config"])
    model = build_model(cfg, load_init=False)  # the checkpoint holds every weight
    prefix = "model."
    model.load_state_dict({k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)})
    if cfg.lora.rank:  # adapters folded into the weights: a plain FamLM
        from famlab import hf

        hf.merge_lora(model)
    return model.eval(), cfg


def _main() -> None:  # pragma: no cover - `python -m famlab.train` == `famlab train`
    from famlab.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))


if __name__ == "__main__":  # pragma: no cover
    _main()
