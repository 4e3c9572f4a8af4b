"""The points of a study and how far each got: complete, pending, failed for good, or lost; queueing
the lost ones again (and, on request, the failed ones); the lines ``famlab sweep`` prints about them.

A point is a grid point (x seed: GridSampler's ``grid_id``, kept by every retry) or a search point (its
first trial: retries carry ``retry_of``). Its trials, in order, tell its state:

* complete: one trial is COMPLETE (for a search, also PRUNED: the pruner decided);
* pending: one is WAITING or RUNNING (a dead worker's RUNNING trial goes stale and comes back);
* failed: its last trial failed by itself (crash, NaN, timeout, an unexpected error) and used up
  ``max_retries``; ``famlab sweep run --retry-failed`` queues it again with a new budget;
* lost: anything else (its last trial went stale or failed with retries left, and nothing was
  queued: the worker that should have queued it died, or an older famlab gave up after 3 stale
  kills). A run queues every lost grid point again before it starts its workers.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from famlab.sweep.spec import SweepSpec


def is_stale(trial: FrozenTrial) -> bool:
    """Failed because its worker died (no heartbeat): marked by the storage (``SweepStorage``)."""
    return bool(trial.user_attrs.get("stale"))


def failed_by_itself(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.FAIL and "fail_reason" in trial.user_attrs and not is_stale(trial)


def tries(trial: FrozenTrial) -> int:
    """How many of the point's own failures came before this trial (its retry number)."""
    return int(trial.user_attrs.get("retry", 0))


@dataclass
class Point:
    key: int
    trials: list[FrozenTrial]  # by number

    @property
    def last(self) -> FrozenTrial:
        return self.trials[-1]

    @property
    def params(self) -> str:
        known = next((t.params for t in reversed(self.trials) if t.params), None)
        return ", ".join(f"{k}={v}" for k, v in known.items()) if known else f"point {self.key}"

    def state(self, spec: SweepSpec) -> str:
        states = {t.state for t in self.trials}
        if TrialState.COMPLETE in states or (spec.grid is None and TrialState.PRUNED in states):
            return "complete"
        if states & {TrialState.WAITING, TrialState.RUNNING}:
            return "pending"
        if failed_by_itself(self.last) and (
            tries(self.last) >= spec.max_retries or self.last.user_attrs.get("deterministic")
        ):
            return "failed"  # no retries left, or a deterministic failure (divergence): never retried unchanged
        return "lost"


def points(study: optuna.Study, spec: SweepSpec) -> list[Point]:
    by_key: dict[int, list[FrozenTrial]] = {}
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if spec.grid is not None:
            key = t.system_attrs.get("grid_id")
            if key is None:
                continue
        else:
            key = int(t.user_attrs.get("retry_of", t.number))
        by_key.setdefault(int(key), []).append(t)
    return [Point(k, ts) for k, ts in sorted(by_key.items())]


def n_points(spec: SweepSpec) -> int:
    return len(spec.grid_points()) if spec.grid is not None else spec.n_trials


def requeue(study: optuna.Study, spec: SweepSpec, *, retry_failed: bool = False) -> list[str]:
    """Queue every lost grid point again (search points: those lost to a dead worker or with retries
    left), and with ``retry_failed`` every failed point with a new budget. One line per point queued.
    Call it from one process before the workers start: two at once would queue a point twice."""
    lines = []
    for point in points(study, spec):
        state, last = point.state(spec), point.last
        if state == "lost" and spec.grid is None and not (is_stale(last) or failed_by_itself(last)):
            continue  # a search trial that failed for an unknown reason (older famlab): not a point to redo
        if state == "failed" and retry_failed:
            retry, why = 0, f"failed {tries(last) + 1} time(s) by itself; --retry-failed"
        elif state == "lost":
            retry = tries(last) + (1 if failed_by_itself(last) else 0)
            why = "lost (" + (last.user_attrs.get("fail_reason") or f"trial {last.number} {last.state.name}") + ")"
        else:
            continue
        system_attrs = {k: v for k, v in last.system_attrs.items() if k != "fixed_params"}
        if last.params:
            system_attrs["fixed_params"] = last.params
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.WAITING,
                params=last.params,
                distributions=last.distributions,
                user_attrs={
                    "retry": retry,
                    "retry_of": point.trials[0].user_attrs.get("retry_of", point.trials[0].number),
                },
                system_attrs=system_attrs,
            )
        )
        lines.append(f"queued again: {point.params}: {why}")
    return lines


def missing_lines(study: optuna.Study, spec: SweepSpec) -> list[str]:
    """Nothing when every point is complete; else one line per point that failed by itself (with its
    reason), then one line saying what is missing."""
    pts = points(study, spec)
    by_state: dict[str, list[Point]] = {}
    for point in pts:
        by_state.setdefault(point.state(spec), []).append(point)
    total, done = n_points(spec), len(by_state.get("complete", []))
    if done >= total:
        return []
    lines = [
        f"FAILED {p.params}: failed {tries(p.last) + 1} time(s) by itself (max_retries={spec.max_retries}), "
        f"last: {p.last.user_attrs.get('fail_reason')}; rerun with `famlab sweep run --retry-failed`"
        for p in by_state.get("failed", [])
    ]
    unstarted = max(0, total - len(pts)) if spec.grid is not None else 0
    parts = [f"{len(by_state[s])} {s}" for s in ("failed", "pending", "lost") if by_state.get(s)]
    parts += [f"{unstarted} never started"] if unstarted else []
    kind = "grid points (x seed)" if spec.grid is not None else "search trials"
    lines.append(f"incomplete: {done} of {total} {kind} complete ({', '.join(parts) or 'stopped early'})")
    return lines
