"""A training run: :func:`train` makes the run directory, the datamodule, the module, the loggers and the
Lightning Trainer, and fits.

* **Checkpoints** are written atomically in their folder (:mod:`famlab.train.checkpoint_io`).
* **Run directory** (:class:`famlab.runs.RunDir`): ``config.yaml`` (resolved), ``provenance.json``,
  ``metrics.jsonl``, ``checkpoints/`` (and ``wandb/``), and at the end ``final_metrics.json``.
* **DDP**: the run directory is made once by the launching process and handed to Lightning's
  re-launched workers through ``FAMLAB_RUN_DIR`` (ranks started by ``srun`` are peers: their launcher makes it
  and sets it, :mod:`famlab.sweep.ranks`; they take their ranks from ``SLURMEnvironment``, with
  ``auto_requeue=False``: the job, not Lightning, requeues; ``provenance.json`` records the ``distributed``
  setting); strategies ``ddp*`` use
  ``find_unused_parameters`` when the model has FAM (a step starting from a carried or RSP state
  does not use the FAM prompt). ``use_distributed_sampler=False``: every rank validates on all
  validation batches (the sums are reduced, so the value equals the single-device one, and
  stateful validation keeps its consecutive windows). Training data per rank comes from the
  datamodule: rank r > 0 draws its own batches (rank 0's stream is the single-process one).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import Logger
from pytorch_lightning.plugins.environments import SLURMEnvironment

from famlab import provenance
from famlab.allocator import reuse_freed_memory
from famlab.config import ConfigError, RunConfig, check_trainable, run_config_to_yaml
from famlab.data import build_datamodule
from famlab.runs import RunDir
from famlab.train.callbacks import (
    AdaptiveSeqLen,
    Checkpoints,
    DistributedProvenance,
    FinalMetrics,
    MergeLora,
    stopped_metrics,
)
from famlab.train.checkpoint_io import AtomicCheckpointIO, check_fits
from famlab.train.factory import CKPT_KEY, resolve_pretrained
from famlab.train.loggers import JsonlLogger, check_file_loggers, file_loggers, make_wandb_logger, wandb_mode
from famlab.train.module import FamLightningModule
from famlab.train.progress import progress_callbacks
from famlab.train.quiet import quiet_lightning
from famlab.train.regularizers import upgrade_checkpoint
from famlab.train.signals import CheckpointOnSignal
from famlab.train.stops import Diverged

RUN_DIR_ENV = "FAMLAB_RUN_DIR"


def _strategy(cfg: RunConfig) -> str:
    """Lightning strategy name; DDP flavours get ``find_unused_parameters`` when the model has FAM
    (``auto`` with several devices or nodes becomes ``ddp``, as Lightning would pick)."""
    s = cfg.train.strategy
    if s == "auto" and (cfg.train.devices != 1 or cfg.train.num_nodes > 1) and cfg.model.effective_fam_len:
        s = "ddp"
    if s in ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook") and cfg.model.effective_fam_len:
        return f"{s}_find_unused_parameters_true"
    return s


def global_rank() -> int:
    """This process's global rank from the launcher's environment (0 when not distributed)."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(key):
            return int(os.environ[key])
    return 0


def build_trainer(
    cfg: RunConfig,
    run_dir: Path,
    loggers: list[Logger],
    extra_callbacks: list[Callback] = (),
    checkpoint_io: AtomicCheckpointIO | None = None,
) -> tuple[pl.Trainer, ModelCheckpoint]:
    t = cfg.train
    # periodic step########.ckpt files (all kept) and last.ckpt, which Lightning also writes when
    # training ends; checkpoint_every=0: last.ckpt only
    periodic = Checkpoints(
        dirpath=str(RunDir(run_dir).checkpoint_dir),
        filename="step{step:08d}",
        auto_insert_metric_name=False,
        every_n_train_steps=t.checkpoint_every or None,
        save_top_k=-1 if t.checkpoint_every else 0,
        save_last=True,
        save_on_train_epoch_end=False,
        enable_version_counter=False,
    )
    progress, bar = progress_callbacks(t.log_every)  # a step bar on a terminal, else plain lines
    callbacks: list[Callback] = [*progress, periodic, *extra_callbacks]
    validate = t.val_every > 0 and cfg.data.val_batches > 0
    if t.early_stopping_patience and validate:
        from pytorch_lightning.callbacks import EarlyStopping

        callbacks.append(
            EarlyStopping("val/loss", patience=t.early_stopping_patience, min_delta=t.early_stopping_min_delta)
        )
    plugins: list = [checkpoint_io or AtomicCheckpointIO()]  # atomic saves in the checkpoint folder
    if SLURMEnvironment.detect():  # ranks from srun's tasks; requeueing is the job's (famlab.train.signals)
        plugins.append(SLURMEnvironment(auto_requeue=False))
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
        enable_progress_bar=bar,
        enable_checkpointing=True,
        default_root_dir=str(run_dir),
        deterministic=t.deterministic,
        use_distributed_sampler=False,
        benchmark=False,
        plugins=plugins,
        fast_dev_run=t.fast_dev_run,
    )
    return trainer, periodic


def train(
    cfg: RunConfig, *, argv: list[str] | None = None, on_start: Callable[[Path, str], None] | None = None
) -> Path:
    """Run ``cfg``; returns the run directory. ``on_start(run_dir, wandb_mode)`` is called on global rank 0
    once the run directory exists, before training starts (``famlab train`` prints the directory then).

    The run directory gets ``config.yaml`` (resolved), ``provenance.json``, ``metrics.jsonl``,
    ``checkpoints/`` (and ``wandb/``), and at the end ``final_metrics.json``. With ``cfg.resume``
    the weights, optimizer, LR schedule, step counters, data position and carried state come from
    that checkpoint and training continues to ``train.max_steps``.

    Raises :class:`ConfigError` for bad settings or an unreadable ``resume`` checkpoint (before the run
    directory is made), :class:`~famlab.train.stops.Diverged` at the first non-finite training loss (after
    writing final_metrics.json with ``stopped``) and :class:`~famlab.train.stops.CheckpointSaveFailed` when a
    checkpoint cannot be written (no final_metrics.json); see :mod:`famlab.train.stops` for the exit statuses.
    """
    quiet_lightning()
    t0 = time.time()
    cfg = resolve_pretrained(cfg)
    check_trainable(cfg)  # what a sweep checks on every trial before its first: task fit, sizes
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
    check_file_loggers(cfg)
    ckpt_path = str(RunDir.resolve_checkpoint(cfg.resume)) if cfg.resume else None
    checkpoint_io = AtomicCheckpointIO()
    if ckpt_path:  # an unreadable or foreign checkpoint is a one-line error before any run directory exists
        ckpt = checkpoint_io.preload(ckpt_path, needs=("state_dict", "optimizer_states", CKPT_KEY))
        upgrade_checkpoint(ckpt["state_dict"], module.rsp)  # older RSP buffers, before they are compared
        check_fits(ckpt, module.state_dict(), ckpt_path)

    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited:  # a worker re-launched by Lightning's DDP launcher (or a run dir set by the user)
        run = RunDir(inherited)
        run.path.mkdir(parents=True, exist_ok=True)
    else:
        try:
            run = RunDir.create(cfg.out_dir, cfg.run_name)
        except OSError as e:  # read-only, not a folder, ...: one line, nothing made
            raise ConfigError(
                f"out_dir={cfg.out_dir!r}: cannot make a run directory there: {e.strerror or e}"
            ) from None
    run_dir = run.path
    is_zero = global_rank() == 0
    if is_zero:
        try:
            run.config_path.write_text(run_config_to_yaml(cfg))
            provenance.write(
                run.provenance_path,
                seed=cfg.seed,
                argv=argv,
                extra={"run_dir": str(run_dir), "resume_from": ckpt_path, "malloc": malloc},
            )
        except OSError as e:  # a full disk: no half-made run directory is left behind
            if not inherited:
                shutil.rmtree(run_dir, ignore_errors=True)
            raise ConfigError(f"out_dir={cfg.out_dir!r}: cannot write the run directory: {e.strerror or e}") from None

    loggers: list[Logger] = [JsonlLogger(run_dir), *file_loggers(cfg, run_dir)]
    resume_id = RunDir.of_checkpoint(ckpt_path).wandb_id() if ckpt_path else None  # the same wandb run goes on
    wb = None
    if (is_zero or not inherited) and not cfg.train.fast_dev_run:
        wb = make_wandb_logger(cfg, run_dir, resume_id)
    if wb is not None:
        loggers.append(wb)
    extra: list[Callback] = [FinalMetrics(run, t0), CheckpointOnSignal(run), DistributedProvenance(run)]
    if cfg.lora.rank and cfg.lora.merge:
        extra.append(MergeLora(run))
    if cfg.data.seq_len_adaptive:
        extra.append(AdaptiveSeqLen.from_config(cfg))
    trainer, _ = build_trainer(cfg, run_dir, loggers, extra_callbacks=extra, checkpoint_io=checkpoint_io)
    if on_start is not None and is_zero:
        on_start(run_dir, "disabled" if wb is None else wandb_mode(cfg.logger.wandb))

    set_env = not inherited
    if set_env:
        os.environ[RUN_DIR_ENV] = str(run_dir)
    try:
        with warnings.catch_warnings():
            quiet_lightning()
            trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    except Diverged as stop:  # deterministic: say so in final_metrics.json for sweep workers, then re-raise
        if is_zero:
            run.write_final_metrics(stopped_metrics(module, trainer, run, time.time() - t0, stop))
        raise
    finally:
        if set_env:
            os.environ.pop(RUN_DIR_ENV, None)
        if wb is not None and trainer.is_global_zero:
            with contextlib.suppress(Exception):
                wb.experiment.finish()

    return run_dir
