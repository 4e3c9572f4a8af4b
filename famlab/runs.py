"""RunDir: the one owner of a run directory and the files in it.

``famlab train`` makes ``<out_dir>/<name>/<YYYYmmdd-HHMMSS>/`` holding::

    config.yaml          the resolved RunConfig
    provenance.json      git commit, packages, machine, command line
    metrics.jsonl        one JSON object per logging event (``step`` = optimizer steps)
    final_metrics.json   written when training ends; ``famlab eval`` adds an ``eval`` section; a run stopped
                         early (non-finite loss) has it too, with ``stopped`` (the reason) and ``stop_kind``
    eval.csv             ``famlab eval``'s table
    checkpoints/last.ckpt (and periodic ones)

Everything that reads or writes these files (training, ``famlab eval``, sweep workers, analysis) goes
through :class:`RunDir`, so the layout is written down once. No torch here: analysis and sweeps import it.

Every JSON file is strict JSON: a non-finite float (NaN, inf) is written as ``null``. Files that replace an
earlier version (final_metrics.json, checkpoints) are written by :func:`write_atomically`: a hidden
``.<name>.partial`` next to the destination, fsynced, then renamed over it, so a reader or a kill never
leaves half a file and the previous version stays until the new one is complete.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

CONFIG_FILE = "config.yaml"
PROVENANCE_FILE = "provenance.json"
METRICS_FILE = "metrics.jsonl"
FINAL_METRICS_FILE = "final_metrics.json"
EVAL_FILE = "eval.csv"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
PARTIAL_SUFFIX = ".partial"  # write_atomically's temporary file: .<name>.partial next to <name>
STOPPED_KEY = "stopped"  # final_metrics.json of a run stopped before max_steps: the one-line reason


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by None, in nested dicts and lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def dumps(value: Any, **kw: Any) -> str:
    """Strict JSON (non-finite floats as null; ``allow_nan=False`` guards the rest)."""
    return json.dumps(json_safe(value), allow_nan=False, **kw)


def partial_path(path: str | Path) -> Path:
    """The temporary file :func:`write_atomically` writes before renaming it to ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}{PARTIAL_SUFFIX}")


def write_atomically(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through ``write(file)`` on ``.<name>.partial`` in the same folder (so the rename never
    crosses filesystems), fsync it, then ``os.replace`` it over ``path`` and fsync the folder. Until the
    rename, the previous ``path`` is untouched; on an error the partial file is removed and the error raised.
    A process killed mid-write leaves only the partial file, which the next write to ``path`` replaces."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):  # the rename itself survives a crash (not every filesystem allows this)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def flatten_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"eval": {"accuracy": 1}}`` -> ``{"eval/accuracy": 1}``; only scalars (and None) are kept."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, f"{prefix}{key}/"))
        elif isinstance(value, int | float | str | bool) or value is None:
            flat[f"{prefix}{key}"] = value
    return flat


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"fam_len": 4}}`` -> ``{"model.fam_len": 4}``; lists become tuples (hashable, so
    they can group rows)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return flat


@dataclass(frozen=True)
class RunDir:
    """One run directory. ``RunDir(path)`` wraps an existing or future directory; the class methods find one."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path).expanduser())

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    # --- the files --------------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def provenance_path(self) -> Path:
        return self.path / PROVENANCE_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def final_metrics_path(self) -> Path:
        return self.path / FINAL_METRICS_FILE

    @property
    def eval_path(self) -> Path:
        return self.path / EVAL_FILE

    @property
    def eval_dir(self) -> Path:
        """``eval/``: ``famlab eval --suite``'s tables (``<suite>.csv``) and heatmaps."""
        return self.path / "eval"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint_dir / LAST_CHECKPOINT

    def newest_periodic_checkpoint(self) -> tuple[int, Path] | None:
        """The periodic checkpoint (``checkpoints/step########.ckpt``) of the highest step, and that step."""
        found = []
        for path in self.checkpoint_dir.glob("step*.ckpt"):
            digits = path.stem.removeprefix("step")
            if digits.isdigit():
                found.append((int(digits), path))
        return max(found) if found else None

    def is_run(self) -> bool:
        """A run directory is one that holds its config.yaml."""
        return self.config_path.is_file()

    def is_complete(self) -> bool:
        """Training finished: final_metrics.json exists and does not say the run was stopped early."""
        return self.final_metrics_path.is_file() and self.stop_reason() is None

    def stop_reason(self) -> str | None:
        """Why training stopped before ``max_steps`` (final_metrics.json's ``stopped``), None otherwise."""
        with contextlib.suppress(OSError, ValueError):
            return self.read_final_metrics().get(STOPPED_KEY)
        return None

    def wandb_id(self) -> str | None:
        """The id of the run's wandb run (its newest ``wandb/[offline-]run-<time>-<id>`` folder), None without one."""
        found = sorted(
            (p for p in (self.path / "wandb").glob("*run-*-*") if p.is_dir()), key=lambda p: p.name.split("run-", 1)[1]
        )
        if not found:
            return None
        # the id is in the log file's name (run-<id>.wandb); the folder may carry a suffix (-1) when two
        # runs of one id started in the same second (a resume, famlab eval)
        logs = sorted(found[-1].glob("run-*.wandb"))
        return logs[0].stem.removeprefix("run-") if logs else found[-1].name.split("-")[3]

    # --- finding runs -------------------------------------------------------------------------------

    @classmethod
    def create(cls, out_dir: str | Path, run_name: str) -> RunDir:
        """A new ``<out_dir>/<run_name>/<YYYYmmdd-HHMMSS>`` (with ``-1``, ``-2``... if that exists)."""
        base = Path(out_dir).expanduser() / run_name
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        for i in range(1000):
            path = base / (stamp if i == 0 else f"{stamp}-{i}")
            try:
                path.mkdir(parents=True, exist_ok=False)
                return cls(path)
            except FileExistsError:
                continue
        raise RuntimeError(f"could not make a run directory under {base}")

    @classmethod
    def resolve(cls, path: str | Path) -> RunDir:
        """A run directory, or a run-name directory (its newest run) -> that run."""
        p = Path(path).expanduser()
        if (p / CONFIG_FILE).is_file():
            return cls(p)
        if p.is_dir():
            runs = sorted(d for d in p.iterdir() if (d / CONFIG_FILE).is_file())
            if runs:
                return cls(runs[-1])
        raise FileNotFoundError(f"{str(path)!r} is not a run directory (no config.yaml)")

    @staticmethod
    def resolve_checkpoint(path: str | Path) -> Path:
        """A checkpoint file, a run directory (its ``checkpoints/last.ckpt``) or a run-name directory
        (the newest run in it) -> the checkpoint file."""
        p = Path(path).expanduser()
        if p.is_file():
            return p
        last = Path(CHECKPOINT_DIR) / LAST_CHECKPOINT
        if (p / last).is_file():
            return p / last
        if p.is_dir():
            runs = sorted(d for d in p.iterdir() if (d / last).is_file())
            if runs:
                return runs[-1] / last
        raise FileNotFoundError(f"resume={str(path)!r}: no checkpoint there (expected a .ckpt file or a run directory)")

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> RunDir:
        """The run a checkpoint file belongs to (``<run>/checkpoints/<file>``)."""
        return cls(Path(checkpoint).expanduser().parent.parent)

    @classmethod
    def newest_under(cls, root: str | Path) -> RunDir | None:
        """The newest run directory anywhere below ``root`` (a sweep trial's folder holds exactly one)."""
        found = sorted(Path(root).glob(f"**/{CONFIG_FILE}"))
        return cls(found[-1].parent) if found else None

    @classmethod
    def all_under(cls, root: str | Path) -> list[RunDir]:
        """``root`` itself if it is a run, else every run below it that started logging (has metrics.jsonl)."""
        root = Path(root)
        if (root / CONFIG_FILE).exists():
            return [cls(root)]
        found = {p.parent for p in root.glob(f"**/{CONFIG_FILE}") if (p.parent / METRICS_FILE).exists()}
        return [cls(p) for p in sorted(found)]

    # --- reading and writing ----------------------------------------------------------------------

    def read_config(self) -> dict[str, Any]:
        """config.yaml as a nested dict ({} if missing); an unreadable or non-mapping file raises a one-line
        ``ValueError`` naming it."""
        if not self.config_path.exists():
            return {}
        from omegaconf import OmegaConf

        try:
            data = OmegaConf.to_container(OmegaConf.load(self.config_path), resolve=True)
        except Exception as e:  # YAML syntax, undecodable bytes, a bad interpolation, ...
            why = " ".join(str(e).split("\n")[0].split())
            raise ValueError(
                f"{str(self.config_path)!r}: not a readable run config: {type(e).__name__}: {why}"
            ) from None
        if not isinstance(data, dict):
            raise ValueError(f"{str(self.config_path)!r}: a run config must be a mapping, got {type(data).__name__}")
        return data

    @staticmethod
    def writable_problem(folder: str | Path, flag: str) -> str | None:
        """None when files can be written in ``folder``, else one line naming ``flag`` (``out_dir``,
        ``--out-root``) and why. Creates nothing: a probe file is written and removed in ``folder`` or, when
        it does not exist yet, in its nearest existing parent (where a run would make it)."""
        path = Path(folder).expanduser().absolute()
        existing = next((p for p in (path, *path.parents) if p.exists()), None)
        if existing is None or not existing.is_dir():
            what = "a file is in the way" if existing is not None else "no existing parent"
            return f"{flag}={str(folder)!r}: cannot write there: {what} ({existing})"
        probe = existing / f".famlab-probe-{os.getpid()}"
        try:
            with open(probe, "wb") as f:
                f.write(b"0")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            return f"{flag}={str(folder)!r}: cannot write there: {e.strerror or e}"
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()
        return None

    def read_flat_config(self) -> dict[str, Any]:
        """config.yaml flattened to dotted keys (``model.fam_len``); {} if missing."""
        return flatten_config(self.read_config())

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every row of metrics.jsonl ([] if missing)."""
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def read_new_metrics(self, offset: int) -> tuple[list[dict[str, Any]], int]:
        """The complete rows of metrics.jsonl after byte ``offset`` and the offset after them, for
        following a run while it writes (a half-written last line waits for the next call)."""
        if not self.metrics_path.exists():
            return [], offset
        with self.metrics_path.open() as f:
            f.seek(offset)
            data = f.read()
        complete = data[: data.rfind("\n") + 1]
        rows = []
        for line in complete.splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
        return rows, offset + len(complete)

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Append one JSON row to metrics.jsonl."""
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        with self.metrics_path.open("a") as f:
            f.write(dumps(row) + "\n")

    def read_final_metrics(self) -> dict[str, Any]:
        """final_metrics.json as written ({} if missing)."""
        if not self.final_metrics_path.exists():
            return {}
        return json.loads(self.final_metrics_path.read_text())

    def read_flat_final_metrics(self) -> dict[str, Any]:
        """final_metrics.json flattened the way sweeps store it (``eval/accuracy``)."""
        return flatten_metrics(self.read_final_metrics())

    def write_final_metrics(self, metrics: dict[str, Any]) -> None:
        """Replace final_metrics.json (strict JSON, :func:`write_atomically`: a reader never sees half of it)."""
        text = dumps(metrics, indent=2) + "\n"
        write_atomically(self.final_metrics_path, lambda f: f.write(text.encode()))

    def update_final_metrics(self, **sections: Any) -> dict[str, Any]:
        """Set top-level entries of final_metrics.json (e.g. ``eval={...}``), keeping the rest."""
        metrics = self.read_final_metrics()
        metrics.update(sections)
        self.write_final_metrics(metrics)
        return metrics


def merge_eval(old: Any, *, plain: dict | None = None, suite: dict | None = None) -> dict:
    """final_metrics.json's ``eval`` section after one evaluation: ``famlab eval``'s numbers (``plain``: the
    section's plain entries) replace the earlier plain entries and keep the suite's sections (the mappings
    ``famlab eval --suite`` writes, one per member); a suite's sections replace those members' and keep the rest."""
    old = dict(old) if isinstance(old, dict) else {}
    if plain is not None:
        old = {k: v for k, v in old.items() if isinstance(v, dict)} | plain
    return old | (suite or {})


def csv_records(csv: str | Path) -> list[dict[str, Any]]:
    """A CSV's rows as a trial attribute: JSON records, a missing value as null (strict JSON for every storage)."""
    import pandas as pd

    df = pd.read_csv(csv)
    return df.astype(object).where(df.notna(), None).to_dict(orient="records")
