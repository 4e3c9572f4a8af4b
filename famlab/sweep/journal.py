"""A study store without a database server: Optuna's journal file (``--storage journal:PATH``), with leases.

A journal is one append-only file of operations (``JournalFileBackend``: locked appends, fsynced, safe on
NFS), read by every worker: right for one machine without a database server, and for a cluster whose
nodes share a file system. Optuna's journal storage has no heartbeats, so famlab adds a lease: while a
trial runs, its worker's heartbeat thread (Optuna's, started by ``study.optimize``) renews the trial's
system attribute ``famlab_lease`` (the time, ``time.time()`` of the worker's clock) every ``heartbeat``
seconds. A RUNNING trial whose last sign of life (its lease, else its start) is older than ``grace``
seconds is stale: any worker marks it (``stale``, ``fail_reason``), fails it and queues its point again
through the same callback as the RDB store (:func:`famlab.sweep.storage.requeue_stale`). Leases compare
clocks of different machines: keep them synchronised (NTP) to well under the grace period.

This module is also what the analysis uses to recognise and read a journal (it never writes one).
"""

from __future__ import annotations

import contextlib
import datetime
import time
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages._heartbeat import BaseHeartbeat  # what fail_stale_trials and study.optimize look for
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

JOURNAL_PREFIX = "journal:"
LEASE_ATTR = "famlab_lease"  # a trial's system attribute: when its worker last said it was alive


def journal_file(url: str) -> Path | None:
    """The journal file of a ``journal:PATH`` storage URL (relative paths from the current folder), else None."""
    if not url.startswith(JOURNAL_PREFIX):
        return None
    return Path(url.removeprefix(JOURNAL_PREFIX)).expanduser().resolve()


def read_journal(url: str) -> JournalStorage | None:
    """A journal storage to read (no leases), or None when its file does not exist (opening it would create it)."""
    path = journal_file(url)
    if path is None or not path.is_file():
        return None
    return JournalStorage(JournalFileBackend(str(path)))


def mark_stale(storage: BaseStorage, trial_id: int, since: datetime.datetime | None) -> None:
    """Say why a stale trial is failed, before it is (a finished trial takes no attributes)."""
    when = f"{since:%Y-%m-%d %H:%M:%S}" if since is not None else "its start"
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_user_attr(trial_id, "stale", True)
        storage.set_trial_user_attr(trial_id, "fail_reason", f"worker died (no heartbeat since {when})")


def last_sign_of_life(trial: FrozenTrial) -> float | None:
    """The newest of the trial's lease and its start, as a ``time.time()`` value (None: neither).

    A retry copies its dead predecessor's system attributes (the grid point's), lease included: its
    own start, later than that lease, then counts."""
    times = []
    lease = trial.system_attrs.get(LEASE_ATTR)
    if isinstance(lease, int | float):
        times.append(float(lease))
    if trial.datetime_start is not None:
        times.append(trial.datetime_start.timestamp())  # naive local time, as Optuna replays it
    return max(times) if times else None


class LeasedJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal storage with heartbeats as leases (see the module docstring)."""

    def __init__(
        self,
        path: str | Path,
        *,
        heartbeat: int,
        grace: int,
        stale_callback: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    ):
        super().__init__(JournalFileBackend(str(path)))
        self.heartbeat_interval, self.grace_period = heartbeat, grace
        self.stale_callback = stale_callback

    def record_heartbeat(self, trial_id: int) -> None:
        # a trial another worker already failed as stale takes no attribute: this worker learns it
        # when it tells the trial's result (see famlab.sweep.worker)
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError, KeyError):
            self.set_trial_system_attr(trial_id, LEASE_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        cutoff = time.time() - self.grace_period
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            alive = last_sign_of_life(trial)
            if alive is not None and alive < cutoff:
                mark_stale(self, trial._trial_id, datetime.datetime.fromtimestamp(alive))
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self.stale_callback
