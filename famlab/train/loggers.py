"""Loggers of a training run: ``metrics.jsonl`` (always, :class:`JsonlLogger`) and wandb through Lightning's
``WandbLogger`` (``logger.wandb``: auto/online/offline/disabled; files under ``<run_dir>/wandb``).

``metrics.jsonl`` holds one JSON object per logging event with ``step`` = optimizer steps done; train
metrics every ``log_every`` steps, ``val/loss`` and ``val/bits_per_token`` every ``val_every`` steps.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities import rank_zero_only

from famlab.config import ConfigError, RunConfig
from famlab.runs import RunDir, flatten_metrics


class JsonlLogger(Logger):
    """Appends one JSON object per logging event to ``<run_dir>/metrics.jsonl``:
    ``{"step": optimizer steps done, "time": unix time, <metric>: value, ...}``. Rank 0 only."""

    def __init__(self, run_dir: str | Path):
        super().__init__()
        self.run = RunDir(run_dir)
        self.run_dir = self.run.path
        self.path = self.run.metrics_path
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
        self.run.append_metrics(row)


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


def make_wandb_logger(cfg: RunConfig, run_dir: Path, resume_id: str | None = None) -> Logger | None:
    """Lightning's ``WandbLogger`` for ``logger.wandb`` (None when disabled). ``resume_id``: the wandb run id of
    the run that ``resume=`` continues: the same wandb run goes on (``resume="allow"``), not a new one."""
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
        **({"id": resume_id, "resume": "allow"} if resume_id else {}),
    )
    logger._wandb_init.pop("anonymous", None)  # Lightning passes anonymous=None, which wandb warns about
    return logger


def file_loggers(cfg: RunConfig, run_dir: Path) -> list[Logger]:
    """Lightning's CSV (``logger.csv``: ``<run_dir>/csv/metrics.csv``) and TensorBoard (``logger.tensorboard``:
    ``<run_dir>/tensorboard``) loggers, as asked; none under ``train.fast_dev_run``."""
    if cfg.train.fast_dev_run:
        return []
    out: list[Logger] = []
    if cfg.logger.csv:
        from pytorch_lightning.loggers import CSVLogger

        out.append(CSVLogger(str(run_dir), name="csv", version=""))
    if cfg.logger.tensorboard:
        check_file_loggers(cfg)
        from pytorch_lightning.loggers import TensorBoardLogger

        out.append(TensorBoardLogger(str(run_dir), name="tensorboard", version="", default_hp_metric=False))
    return out


def check_file_loggers(cfg: RunConfig) -> None:
    """A one-line :class:`ConfigError` when ``logger.tensorboard`` is on without the ``tensorboard`` package
    (``train()`` checks before it makes the run directory)."""
    import importlib.util

    if cfg.logger.tensorboard and not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
        raise ConfigError(
            "logger.tensorboard=True is not allowed here: it needs the tensorboard package (pip install tensorboard)"
        )


def log_eval_to_wandb(cfg: RunConfig, run: RunDir, table: Any, summary: dict[str, float]) -> str | None:
    """Add an evaluation (``famlab eval``) to the run's own wandb run: the table as ``eval/table`` and each
    summary number as ``eval/<metric>`` in its summary. Resumes the run's wandb id (``resume="allow"``) in
    the mode ``logger.wandb`` gives; nothing when the run had no wandb run or wandb is disabled. Returns
    the wandb id used."""
    return log_to_run_wandb(cfg, run, {"eval/table": table}, {f"eval/{k}": v for k, v in summary.items()})


def log_suite_to_wandb(
    cfg: RunConfig, run: RunDir, suite: str, table: Any, sections: dict[str, Any], heatmap: str | Path | None
) -> str | None:
    """Add a suite evaluation (``famlab eval --suite``) to the run's own wandb run, like :func:`log_eval_to_wandb`:
    the suite's table as ``eval/<suite>/table``, its needle heatmap PNG as the image ``eval/<suite>/heatmap``, and
    every number of its ``final_metrics.json`` sections in the summary under the names a sweep reads
    (``eval/ruler/effective_length``, ``eval/ruler/tasks/vt/score``, ...)."""
    logged: dict[str, Any] = {f"eval/{suite}/table": table}
    if heatmap is not None:
        logged[f"eval/{suite}/heatmap"] = Path(heatmap)
    flat = flatten_metrics({"eval": sections})
    return log_to_run_wandb(cfg, run, logged, {k: v for k, v in flat.items() if isinstance(v, int | float)})


def log_to_run_wandb(cfg: RunConfig, run: RunDir, logged: dict[str, Any], summary: dict[str, Any]) -> str | None:
    """Log ``logged`` (DataFrames as tables, paths as images) in one step of the run's own wandb run and set
    ``summary``; the run's wandb id resumed (``resume="allow"``) in the mode ``logger.wandb`` gives. Nothing
    (None) when the run had no wandb run or wandb is disabled; else the wandb id used."""
    run_id = run.wandb_id()
    mode = wandb_mode(cfg.logger.wandb)
    if run_id is None or mode == "disabled":
        return None
    import wandb

    lc = cfg.logger
    with wandb.init(
        id=run_id,
        resume="allow",
        dir=str(run.path),
        project=lc.project,
        entity=lc.entity or None,
        group=lc.group or None,
        mode=mode,
        settings=wandb.Settings(silent=True),
    ) as wb:
        media = {
            key: wandb.Image(str(value)) if isinstance(value, Path) else wandb.Table(dataframe=value)
            for key, value in logged.items()
        }
        wb.log(media)
        for key, value in summary.items():
            wb.summary[key] = value
    return run_id
