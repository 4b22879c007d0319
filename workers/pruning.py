"""Pruning on the worker: whether a trial of an adaptive sweep stops after the epoch it just ended.

The decision is made where the epochs land, between two epochs of the training loop, not by a
controller that would learn of them a flush later: a 15-epoch job of 75 ms would be over before
anyone else could stop it. ``Pruning.should_prune`` is the loops' ``should_prune`` hook. It sees
the sweep as the database held it at most ``OPTIMLAB_PRUNE_REFRESH_S`` ago (other trials'
per-epoch means over their seeds, states, values and the rung attrs their own decisions wrote),
with this task's trials as they are now: all seeds of a trial that train in this task (a pack
holds a trial's seeds together) report an epoch before any is asked about it, so the trial's value
at that epoch is their mean. The decision itself is Optuna's pruner's (``service.search.pruners``);
the attrs it wrote go to the trial's jobs with the next flush (``Writer.set_attrs``).
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from optim_engine.results import EpochMetrics
from service.db import trials
from service.db.epochs import EPOCHS
from service.db.models import Job, JobStatus, Sweep, SweepTrial
from service.search.pruners import PrunerConfig, PruneState, PruneTrial, decide, make_pruner
from workers.database import DatabaseLost, with_db

log = logging.getLogger("optimlab.worker")

Curve = dict[int, float]  # epoch → the objective metric


@dataclass(frozen=True)
class _Sweep:
    pruner: PrunerConfig
    metric: str
    which: str
    direction: str
    epochs: int


@dataclass(frozen=True)
class _Stored:
    """A trial as the database said: its state, value and attrs, and each job's (seed's) curve,
    jobs in id order (the order of the sweep's seeds)."""

    number: int
    state: PruneState
    value: float | None
    attrs: dict[str, Any]
    curves: dict[int, Curve]
    sibling_pruned: bool = False  # a job of it is pruned (its seeds train in separate tasks)


class Pruning:
    """The ``should_prune`` hook of one task whose jobs are trials of one pruned adaptive sweep.

    A trial's value at an epoch is the mean over its seeds; for the Wilcoxon pruner its
    intermediate values are its seeds' values at the epoch decided, keyed by the seed's place,
    so that the test pairs each seed with the same seed of the best configuration."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        sweep: _Sweep,
        sweep_id: int,
        trial_of: Sequence[int],
        job_ids: Sequence[int],
        refresh_s: float,
        set_attrs: Any,
    ) -> None:
        self._sessions, self._sweep, self._sweep_id = sessions, sweep, sweep_id
        self._trial_of, self._job_ids = list(trial_of), list(job_ids)
        self._refresh_s, self._set_attrs = refresh_s, set_attrs
        self._curves: dict[int, Curve] = defaultdict(dict)  # this task's jobs, as they train
        self._decided: dict[tuple[int, int], bool] = {}
        self._attrs: dict[int, dict[str, Any]] = {}
        self._final: dict[int, _Stored] = {}  # trials already final: they never change
        self._snapshot: list[_Stored] = []
        self._read_at = -math.inf

    def on_epoch(self, position: int, metrics: EpochMetrics) -> None:
        """Note a job's epoch (the loops' ``on_epoch``, called for every trial of a pack before
        any ``should_prune`` of that epoch)."""
        value = getattr(metrics, self._sweep.metric, None)
        if value is not None:
            self._curves[self._job_ids[position]][metrics.epoch] = (
                float(value) if math.isfinite(value) else _worst(self._sweep)
            )

    def should_prune(self, position: int, metrics: EpochMetrics) -> bool:
        """Whether the trial of ``position`` stops after ``metrics.epoch``: decided once per
        trial and epoch, for all its seeds here, and for every trial of this task that has
        reported the epoch at once (one study per epoch, not one per trial). A database that
        cannot be read prunes nothing."""
        key = (self._trial_of[position], metrics.epoch)
        if key not in self._decided:
            try:
                self._decided |= self._decide(metrics.epoch)
            except DatabaseLost as exc:
                log.warning("sweep %s: no pruning decision (%s)", self._sweep_id, exc)
            except Exception:  # a pruner's failure must not fail the training it would only shorten
                log.exception("sweep %s: pruning trial %s at epoch %s failed; it trains on", self._sweep_id, *key)
        return self._decided.setdefault(key, False)

    def _decide(self, epoch: int) -> dict[tuple[int, int], bool]:
        """Decide every trial of this task that reported ``epoch`` and is not decided yet."""
        asked = sorted(
            {
                trial
                for trial, job_id in zip(self._trial_of, self._job_ids, strict=True)
                if epoch in self._curves.get(job_id, {}) and (trial, epoch) not in self._decided
            }
        )
        if time.monotonic() - self._read_at >= self._refresh_s or max(asked, default=-1) >= len(self._snapshot):
            self._snapshot = with_db(self._sessions, self._read, 5.0)  # stale, or a trial created since
            self._read_at = time.monotonic()
        decided: dict[tuple[int, int], bool] = {}
        for trial in asked:
            if trial >= len(self._snapshot):  # not stored as far as this read goes
                decided[(trial, epoch)] = False
            elif self._snapshot[trial].sibling_pruned:  # a seed training elsewhere was: they stop together
                decided[(trial, epoch)] = True
        asked = [trial for trial in asked if (trial, epoch) not in decided]
        if not asked:
            return decided
        mine = set(self._trial_of)
        trials = [self._as_asked(stored, epoch, stored.number in mine) for stored in self._snapshot]
        pruner = make_pruner(self._sweep.pruner, max_resource=self._sweep.epochs)
        for trial, (prune, attrs) in decide(pruner, self._sweep.direction, trials, asked).items():  # type: ignore[arg-type]
            decided[(trial, epoch)] = prune
            if attrs != trials[trial].attrs:
                self._attrs[trial] = attrs
                for job_id in (j for t, j in zip(self._trial_of, self._job_ids, strict=True) if t == trial):
                    self._set_attrs(job_id, attrs)
        return decided

    def _as_asked(self, stored: _Stored, epoch: int, mine: bool) -> PruneTrial:
        """A trial as the pruner sees it when asked at ``epoch``: a trial of this task running,
        with its jobs' curves as they are now."""
        curves = {job: self._curves.get(job, curve) for job, curve in stored.curves.items()}
        if mine:
            curves |= {
                job: self._curves[job]
                for position, job in enumerate(self._job_ids)
                if self._trial_of[position] == stored.number
            }
        ordered = [curves[job] for job in sorted(curves)]
        if self._sweep.pruner.name == "wilcoxon":  # instances: the seeds, paired by their place
            intermediate = {seed: curve[epoch] for seed, curve in enumerate(ordered) if epoch in curve}
        else:
            steps = sorted({step for curve in ordered for step in curve})
            intermediate = {s: statistics.fmean(c[s] for c in ordered if s in c) for s in steps}
        state: PruneState = "running" if mine else stored.state
        attrs = self._attrs.get(stored.number, stored.attrs)
        return PruneTrial(stored.number, state, stored.value if not mine else None, intermediate, attrs)

    def _read(self, session: Session) -> list[_Stored]:
        """Every trial of the sweep, numbered 0..n-1, from its jobs and their epoch rows (rows
        read again only for trials not final at the last read)."""
        n = session.scalar(select(func.count()).where(SweepTrial.sweep_id == self._sweep_id)) or 0
        summary = getattr(Job, f"{self._sweep.which}_{self._sweep.metric}")
        jobs = session.execute(
            select(Job.id, Job.trial_number, Job.status, Job.prune_attrs, summary.label("value"))
            .where(Job.sweep_id == self._sweep_id, Job.trial_number.is_not(None))
            .order_by(Job.id)
        ).all()
        by_trial: dict[int, list[Any]] = defaultdict(list)
        for job in jobs:
            by_trial[job.trial_number].append(job)
        fresh = [job.id for number, trial_jobs in by_trial.items() if number not in self._final for job in trial_jobs]
        curves: dict[int, Curve] = defaultdict(dict)
        if fresh:
            column = EPOCHS.c[self._sweep.metric]
            query = select(EPOCHS.c.job_id, EPOCHS.c.epoch, column).where(
                EPOCHS.c.job_id.in_(fresh), column.is_not(None)
            )
            for job_id, epoch, value in session.execute(query):
                curves[job_id][epoch] = float(value)
        trials = []
        for number in range(n):
            stored = self._final.get(number) or self._stored(number, by_trial.get(number, []), curves)
            if stored.state != "running":
                self._final[number] = stored
            trials.append(stored)
        return trials

    def _stored(self, number: int, jobs: list[Any], curves: dict[int, Curve]) -> _Stored:
        """A trial as the controller sees it (``trials.outcome``: a diverged seed the worst
        value), with its jobs' curves and the attrs of its most advanced decision."""
        found = [trials.TrialJob(job.id, job.status, job.value) for job in jobs]
        state, value = trials.outcome(None, found, self._sweep.direction)
        attrs = max((job.prune_attrs or {} for job in jobs), key=len, default={})
        curves_of = {job.id: curves.get(job.id, {}) for job in jobs}
        return _Stored(number, state, value, attrs, curves_of, any(job.status == JobStatus.pruned for job in jobs))


def _worst(sweep: _Sweep) -> float:
    return math.inf if sweep.direction == "minimize" else -math.inf


def pruning_for(
    sessions: sessionmaker[Session],
    sweep_id: int,
    trials: Sequence[int],
    job_ids: Sequence[int],
    specs: Sequence[Any],
    *,
    refresh_s: float,
    set_attrs: Any,
) -> Pruning | None:
    """The hook for a task whose jobs (``job_ids``) are the trials ``trials`` of the adaptive
    sweep ``sweep_id``, when it has a pruner; None when it has none."""

    def read(session: Session) -> Any:
        return session.execute(select(Sweep.pruner, Sweep.objective).where(Sweep.id == sweep_id)).one_or_none()

    row = with_db(sessions, read, 5.0)
    if row is None or not row.pruner or not row.objective:
        return None
    objective = row.objective
    sweep = _Sweep(
        PrunerConfig.model_validate(row.pruner),
        objective["metric"],
        objective["which"],
        objective["direction"],
        max(spec.epochs for spec in specs),
    )
    return Pruning(sessions, sweep, sweep_id, trials, job_ids, refresh_s, set_attrs)
