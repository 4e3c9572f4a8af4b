"""How checkpoints are written and read: :class:`AtomicCheckpointIO`, the Trainer's ``CheckpointIO`` plugin.

Lightning's own ``TorchCheckpointIO`` writes through an fsspec transaction: a ``mkstemp()`` file in
``$TMPDIR``, then ``shutil.move`` onto the destination. With a node-local ``/tmp`` and a shared run folder
the move is a copy into ``last.ckpt`` itself, so a kill during it leaves a truncated checkpoint (and the
previous one gone) and leaks the temporary file. Here a save streams ``torch.save`` into
``.<name>.partial`` in the destination folder, fsyncs it and renames it over the destination
(:func:`famlab.runs.write_atomically`): the previous checkpoint stays until the new one is complete, and
nothing is written to ``$TMPDIR``. A failed write (disk full) raises :class:`CheckpointSaveFailed`.

``resume=`` reads its checkpoint with :func:`read_checkpoint` before the run directory is made, so an
unreadable file is a one-line error; the Trainer is then handed that same dict (:meth:`preload`), not a
second read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from famlab.config import ConfigError
from famlab.runs import write_atomically
from famlab.train.stops import CheckpointSaveFailed


def _keep_location(storage: Any, location: Any) -> Any:  # Lightning's default map_location
    return storage


def os_error_in(err: BaseException) -> OSError | None:
    """The OSError behind ``err`` (torch.save wraps a failed ``write`` in a RuntimeError), if any."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def read_checkpoint(
    path: str | Path,
    map_location: Any = _keep_location,
    *,
    what: str = "resume",
    needs: tuple[str, ...] = ("state_dict",),
) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` of a training checkpoint; a missing, truncated or foreign file
    (not a mapping, or without the entries ``needs``) raises a one-line :class:`ConfigError` naming it and
    starting with ``what`` (``famlab train`` and ``famlab eval`` exit 2)."""
    try:
        ckpt = torch.load(str(path), map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # EOFError, UnpicklingError, RuntimeError (no zip central directory), ...
        why = " ".join(str(e).split())[:200] or type(e).__name__
        raise ConfigError(
            f"{what}: checkpoint {str(path)!r} is unreadable (truncated or not a checkpoint): {type(e).__name__}: {why}"
        ) from None
    missing = [key for key in needs if not (isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict | list))]
    if missing:
        raise ConfigError(f"{what}: {str(path)!r} is not a famlab training checkpoint (no {missing[0]})")
    return ckpt


def check_fits(ckpt: dict[str, Any], expected: dict[str, Any], path: str | Path, what: str = "resume") -> None:
    """The checkpoint's ``state_dict`` has exactly the tensors ``expected`` (a module's state dict) has, with
    their shapes; else a one-line :class:`ConfigError` naming the first difference."""
    state = ckpt["state_dict"]
    for key, tensor in expected.items():
        have = state.get(key)
        if not isinstance(have, torch.Tensor):
            raise ConfigError(f"{what}: checkpoint {str(path)!r} does not fit this model: no {key}")
        if have.shape != tensor.shape:
            raise ConfigError(
                f"{what}: checkpoint {str(path)!r} does not fit this model: {key} has shape {tuple(have.shape)}, "
                f"the model {tuple(tensor.shape)}"
            )
    extra = [key for key in state if key not in expected]
    if extra:
        raise ConfigError(f"{what}: checkpoint {str(path)!r} does not fit this model: unexpected {extra[0]}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic in the destination folder (see the module doc);
    remote URLs (``s3://``...) keep Lightning's own save."""

    def __init__(self) -> None:
        super().__init__()
        self.preloaded: dict[str, dict[str, Any]] = {}

    def preload(self, path: str | Path, needs: tuple[str, ...] = ("state_dict",)) -> dict[str, Any]:
        """Read ``path`` now (:func:`read_checkpoint`); the Trainer's next load of ``path`` gets this dict."""
        ckpt = read_checkpoint(path, needs=needs)
        self.preloaded[str(path)] = ckpt
        return ckpt

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        try:
            write_atomically(path, lambda f: torch.save(checkpoint, f))
        except Exception as e:
            cause = os_error_in(e)
            if cause is None:
                raise
            why = cause.strerror or str(cause)
            raise CheckpointSaveFailed(
                f"could not write checkpoint {str(path)!r}: {why}; the previous one, if any, is kept"
            ) from e

    def load_checkpoint(self, path: Any, map_location: Any = _keep_location, weights_only: bool | None = None) -> Any:
        ckpt = self.preloaded.pop(str(path), None)
        if ckpt is not None:
            return ckpt
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
