"""The Optuna side of a sweep: the store with heartbeats and stale-trial handling, samplers,
pruners, and opening a spec's study.

Storage is an RDB (SQLite file by default, PostgreSQL on clusters) with heartbeats, or a journal file
(``journal:PATH``, no database server; heartbeats as leases: :mod:`famlab.sweep.journal`): a worker killed
mid-trial leaves a RUNNING trial whose heartbeat goes stale; any worker then marks it (``stale`` and a
``fail_reason``: "worker died (no heartbeat since ...)"), fails it, and ``requeue_stale`` queues its
point again, every time: a dead worker is not the point's fault, so it never uses up the point's
``max_retries`` (those count failures of the run itself). A worker killed before its trial's first
heartbeat leaves a RUNNING trial with none; ``SweepStorage`` calls that stale too, after the same
grace period.

Grids use Optuna's ``GridSampler`` with a fixed seed shared by all workers (workers with different
seeds would map trial numbers to different grid points). Trial number k < grid size gets grid point
k, so concurrent workers never collide.
"""

from __future__ import annotations

import contextlib
import datetime
import warnings
from pathlib import Path

import optuna
import sqlalchemy.orm
from optuna.distributions import BaseDistribution, check_distribution_compatibility
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import TrialState

from famlab.sweep.journal import LEASE_ATTR, LeasedJournalStorage, journal_file, mark_stale
from famlab.sweep.spec import SweepSpec

GRID_SAMPLER_SEED = 0  # shared by every worker of every grid study: see the module docstring


class SweepStorage(RDBStorage):
    """Optuna's RDB storage, with one more kind of stale trial: a RUNNING trial that never
    recorded a heartbeat and started more than the grace period ago.

    ``study.optimize`` creates the trial (RUNNING, several writes while the sampler stamps it)
    before it starts the heartbeat thread. A worker killed in that window leaves a trial Optuna
    never calls stale (it skips trials without a heartbeat row), so every other worker would wait
    for it forever and its grid point would never run.

    Optuna has no public hook for this: ``fail_stale_trials`` asks the storage's private
    ``_get_stale_trial_ids``, so that is what this overrides (pyproject allows optuna < 6). If a
    release renames it, ``tests/test_sweep_storage.py::test_trial_killed_before_its_first_heartbeat_goes_stale_and_is_rerun``
    fails: the guarantee is pinned by that test, not by the name."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        stale = super()._get_stale_trial_ids(study_id)
        # datetime_start comes from the creating worker's clock (datetime.now()), not the DB's
        now = datetime.datetime.now()
        cutoff = now - datetime.timedelta(seconds=self.grace_period or 2 * self.heartbeat_interval)
        with _create_scoped_session(self.scoped_session) as session:
            db_now = session.execute(sqlalchemy.func.now()).scalar().replace(tzinfo=None)
            running = (
                session.query(models.TrialModel)
                .options(sqlalchemy.orm.selectinload(models.TrialModel.heartbeats))
                .filter(models.TrialModel.state == TrialState.RUNNING)
                .filter(models.TrialModel.study_id == study_id)
                .all()
            )
            never_beat = [
                t.trial_id
                for t in running
                if not t.heartbeats and t.datetime_start is not None and t.datetime_start < cutoff
            ]
            # the last sign of life on this machine's clock (heartbeats are on the database's)
            last = {t.trial_id: now - (db_now - t.heartbeats[0].heartbeat) for t in running if t.heartbeats}
            last |= {t.trial_id: t.datetime_start for t in running if not t.heartbeats}
        stale += [i for i in never_beat if i not in stale]
        for trial_id in stale:  # marked before fail_stale_trials fails them: a finished trial takes no attrs
            mark_stale(self, trial_id, last.get(trial_id))
        return stale


def requeue_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """The storage's stale-trial callback: queue the point of a dead worker's trial again, always.
    Like ``RetryHeartbeatStaleTrialCallback`` (``failed_trial``, ``retry_history``, the sampler's
    system attrs: GridSampler's grid_id), but the point keeps its count of its own failures."""
    system_attrs = {"failed_trial": trial.number, "retry_history": [], **trial.system_attrs}
    system_attrs.pop(LEASE_ATTR, None)  # the dead worker's lease (journal storage) is not the retry's
    system_attrs["retry_history"] = [*system_attrs["retry_history"], trial.number]
    user_attrs = {
        "retry": int(trial.user_attrs.get("retry", 0)),
        "retry_of": trial.user_attrs.get("retry_of", trial.number),
        "stale_retries": int(trial.user_attrs.get("stale_retries", 0)) + 1,
    }
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=user_attrs,
            system_attrs=system_attrs,
        )
    )


def make_storage(url: str, *, heartbeat: int = 10, grace: int | None = None) -> BaseStorage:
    """A storage with heartbeats: stale RUNNING trials (no heartbeat for ``grace`` seconds,
    or none ever, see ``SweepStorage``) are failed and queued again (``requeue_stale``). ``journal:PATH``
    is a journal file with leases (:class:`~famlab.sweep.journal.LeasedJournalStorage`), anything else
    an SQLAlchemy URL."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats are stable
    journal = journal_file(url)
    if journal is not None:
        journal.parent.mkdir(parents=True, exist_ok=True)
        lease = {"heartbeat": heartbeat, "grace": grace or 3 * heartbeat}
        return LeasedJournalStorage(journal, **lease, stale_callback=requeue_stale)
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    return SweepStorage(
        url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=heartbeat,
        grace_period=grace or 3 * heartbeat,
        heartbeat_stale_trial_callback=requeue_stale,
    )


def make_sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    if spec.grid is not None:
        space = {k: list(v) for k, v in spec.grid.items()}
        space["seed"] = list(spec.seeds)
        return optuna.samplers.GridSampler(space, seed=GRID_SAMPLER_SEED)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.seeds[0])
    return optuna.samplers.TPESampler(seed=spec.seeds[0])


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if spec.pruner == "threshold":  # prune a run whose metric passes the bound (in the bad direction)
        bound = {"upper": spec.prune_above} if spec.direction == "minimize" else {"lower": spec.prune_above}
        return optuna.pruners.ThresholdPruner(**bound)
    return optuna.pruners.NopPruner()


def open_study(spec: SweepSpec, storage: BaseStorage) -> optuna.Study:
    """Create the spec's study, or open it to resume. A study keeps its objective direction and
    (for a grid) its grid and seeds: a spec that changed either is refused with what to do, instead
    of Optuna's error deep inside a trial."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created ..." lines: the sweep says
    study = optuna.create_study(
        study_name=spec.study_name,
        storage=storage,
        sampler=make_sampler(spec),
        pruner=make_pruner(spec),
        direction=spec.direction,
        load_if_exists=True,
    )
    if study.direction.name.lower() != spec.direction:
        raise ValueError(
            f"study {spec.study_name!r} was created to {study.direction.name.lower()} its objective; the spec now "
            f"says direction={spec.direction!r}: use a new study name (the spec's `study:`) or another storage"
        )
    grid = {**spec.grid, "seed": list(spec.seeds)} if spec.grid is not None else None
    stored = study.user_attrs.get("grid")
    if grid is not None and stored is not None and stored != grid:
        raise ValueError(
            f"study {spec.study_name!r} was created with the grid {stored}; the spec now has {grid}. A grid "
            "study cannot grow or change: use a new study name (the spec's `study:`) or another storage, and "
            "combine the studies in the analysis (famlab.analysis.load_studies)"
        )
    if spec.space is not None:
        check_space(study, spec)
    if study.metric_names is None:  # a new study: name its objective (Optuna's dashboards and frames)
        with contextlib.suppress(Exception):
            study.set_metric_names([spec.metric])
    with contextlib.suppress(Exception):  # informational; a concurrent writer may race us
        if "spec" not in study.user_attrs:
            study.set_user_attr("spec", spec.path)
            study.set_user_attr("varied", spec.varied)
            study.set_user_attr("metric", spec.metric)
        if grid is not None and stored is None:
            study.set_user_attr("grid", grid)
    return study


def space_distributions(spec: SweepSpec) -> dict[str, BaseDistribution]:
    """The Optuna distribution of each search parameter, as the worker's ``suggest_*`` calls make them."""
    dists: dict[str, BaseDistribution] = {}
    for key, p in (spec.space or {}).items():
        if p.type == "float":
            dists[key] = optuna.distributions.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
        elif p.type == "int":
            step = int(p.step or 1)
            dists[key] = optuna.distributions.IntDistribution(int(p.low), int(p.high), log=p.log, step=step)
        else:
            dists[key] = optuna.distributions.CategoricalDistribution(p.choices)
    return dists


def check_space(study: optuna.Study, spec: SweepSpec) -> None:
    """Refuse, before any trial, a search space that the study's trials contradict (another kind,
    log scale or set of choices for a parameter): Optuna would refuse it in every trial."""
    new = space_distributions(spec)
    for trial in study.get_trials(deepcopy=False):
        for key, old in trial.distributions.items():
            if key not in new:
                continue
            try:
                check_distribution_compatibility(old, new[key])
            except ValueError:
                raise ValueError(
                    f"study {spec.study_name!r} has trials with search.space.{key} = {old}; the spec now makes it "
                    f"{new[key]}: use a new study name (the spec's `study:`) or another storage"
                ) from None
