"""An adaptive sweep's search in the database: the lease of the controller that creates its trials,
the trials themselves (``sweep_trials``), and what their jobs say of them (statuses, the
objective's summary column, per-epoch values). ``service.search.controller`` turns these rows into
Optuna's trials; nothing here knows Optuna.

A sweep is adaptive when it has a budget (``sweeps.budget IS NOT NULL``): grid and random sweeps
never do."""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.orm import Session

from optim_engine.results import METRIC_NAMES
from service.db.epochs import EPOCHS
from service.db.models import SUMMARY_COLUMNS, Job, JobStatus, Sweep, SweepTrial
from service.db.session import utcnow
from service.spec_codec import decode, encode

IN_FLIGHT = (JobStatus.queued, JobStatus.running)

TrialState = Literal["running", "complete", "pruned", "failed"]
"""A trial's state as its jobs give it (``outcome``); ``service.search.study.RecordState`` is the same."""


@dataclass(frozen=True)
class ActiveSearch:
    """An adaptive sweep that may still create trials: its bounds and where it stands."""

    sweep_id: int
    budget: int
    parallelism: int
    trials: int
    in_flight: int

    @property
    def wanted(self) -> int:
        """Trials a pass would create now: the free slots, within what is left of the budget."""
        return max(0, min(self.parallelism - self.in_flight, self.budget - self.trials))


def active_searches(session: Session) -> list[ActiveSearch]:
    """Every adaptive sweep not stopped and short of its budget, with its trials created and its
    trials in flight (a job queued or running), in one query: what a controller pass reads when
    nothing is free."""
    trials = select(func.count()).where(SweepTrial.sweep_id == Sweep.id).scalar_subquery()
    in_flight = (
        select(func.count(func.distinct(Job.trial_number)))
        .where(Job.sweep_id == Sweep.id, Job.status.in_(IN_FLIGHT))
        .scalar_subquery()
    )
    rows = session.execute(
        select(Sweep.id, Sweep.budget, Sweep.parallelism, trials, in_flight)
        .where(Sweep.budget.is_not(None), Sweep.search_stopped_at.is_(None))
        .order_by(Sweep.id)
    ).all()
    found = [ActiveSearch(row[0], row[1], row[2] or 1, int(row[3]), int(row[4])) for row in rows]
    return [search for search in found if search.trials < search.budget]


def take_lease(session: Session, sweep_id: int, controller: str, ttl_s: float) -> bool:
    """Take or renew the lease on a sweep's search for ``controller`` until ``ttl_s`` from now, in
    one guarded UPDATE: won when nobody holds it, ``controller`` does, or the holder's lapsed
    (its process died). A stopped search is never leased."""
    now = utcnow()
    result = session.execute(
        update(Sweep)
        .where(
            Sweep.id == sweep_id,
            Sweep.budget.is_not(None),
            Sweep.search_stopped_at.is_(None),
            or_(Sweep.controller.is_(None), Sweep.controller == controller, Sweep.lease_until < now),
        )
        .values(controller=controller, lease_until=now + dt.timedelta(seconds=ttl_s))
    )
    return int(result.rowcount) == 1  # type: ignore[attr-defined]


def extend(session: Session, sweep_id: int, n_jobs: int) -> bool:
    """Count a pass's new jobs into the sweep, unless its search was stopped meanwhile (False: the
    caller creates nothing). On PostgreSQL the UPDATE locks the sweep's row until the pass
    commits, so a cancel (``stop``, then its jobs) either comes first and this finds the search
    stopped, or waits and then cancels the jobs this pass created too."""
    result = session.execute(
        update(Sweep)
        .where(Sweep.id == sweep_id, Sweep.search_stopped_at.is_(None))
        .values(n_jobs=Sweep.n_jobs + n_jobs)
    )
    return int(result.rowcount) == 1  # type: ignore[attr-defined]


def stop(session: Session, sweep_id: int) -> None:
    """Stop a sweep's search (a cancel): no controller creates a trial of it after this commits."""
    session.execute(
        update(Sweep).where(Sweep.id == sweep_id, Sweep.search_stopped_at.is_(None)).values(search_stopped_at=utcnow())
    )


def progress(session: Session, sweep_id: int) -> tuple[int, bool]:
    """A sweep's trials created so far, and whether its search was stopped."""
    trials = select(func.count()).where(SweepTrial.sweep_id == sweep_id).scalar_subquery()
    row = session.execute(select(trials, Sweep.search_stopped_at.is_not(None)).where(Sweep.id == sweep_id)).one()
    return int(row[0]), bool(row[1])


def trial_counts(session: Session, sweep_ids: Sequence[int]) -> dict[int, int]:
    """Trials created per sweep, in one grouped query for a page of sweeps."""
    rows = session.execute(
        select(SweepTrial.sweep_id, func.count())
        .where(SweepTrial.sweep_id.in_(list(sweep_ids)))
        .group_by(SweepTrial.sweep_id)
    )
    found = {sweep_id: int(n) for sweep_id, n in rows}
    return {sweep_id: found.get(sweep_id, 0) for sweep_id in sweep_ids}


@dataclass(frozen=True)
class StoredTrial:
    """A trial as ``sweep_trials`` holds it (``system_attrs`` with non-finite numbers restored)."""

    number: int
    params: dict[str, Any]
    system_attrs: dict[str, Any]
    error: str | None = None


def stored_trials(session: Session, sweep_id: int) -> list[StoredTrial]:
    """The sweep's trials, by number."""
    rows = session.execute(
        select(SweepTrial.number, SweepTrial.params, SweepTrial.system_attrs, SweepTrial.error)
        .where(SweepTrial.sweep_id == sweep_id)
        .order_by(SweepTrial.number)
    )
    return [StoredTrial(number, params, dict(decode(attrs)), error) for number, params, attrs, error in rows]


def insert_trials(session: Session, sweep_id: int, trials: Sequence[StoredTrial]) -> None:
    """Insert a pass's trials. A number another controller stored first raises ``IntegrityError``
    (the primary key), which must roll back the whole pass, its jobs included."""
    if trials:
        now = utcnow()
        session.execute(
            insert(SweepTrial),
            [
                {
                    "sweep_id": sweep_id,
                    "number": trial.number,
                    "params": trial.params,
                    "system_attrs": encode(trial.system_attrs),  # JSONB takes no bare Infinity
                    "error": trial.error,
                    "created_at": now,
                }
                for trial in trials
            ],
        )


@dataclass(frozen=True)
class TrialJob:
    """One job of a trial: its id, status and its value of the objective's summary column."""

    job_id: int
    status: str
    value: float | None


def outcome(error: str | None, jobs: Sequence[TrialJob], direction: str) -> tuple[TrialState, float | None]:
    """A trial's state and value from its jobs: running while any is queued or running; pruned
    when the sweep's pruner stopped one (the study gives it its last intermediate value, as
    Optuna's ``tell`` does); complete when each succeeded with a value or diverged, its value the
    mean over them with a diverged one the worst (inf minimizing, -inf maximizing: a NaN would
    make the trial failed and the sampler blind to it); failed otherwise (invalid, a job failed
    or was cancelled, or a succeeded job has no value of the metric, such as val_loss without a
    validation set)."""
    if error is not None or not jobs:
        return "failed", None
    if any(job.status in IN_FLIGHT for job in jobs):
        return "running", None
    if any(job.status == JobStatus.pruned for job in jobs):
        return "pruned", None
    worst = math.inf if direction == "minimize" else -math.inf
    values = []
    for job in jobs:
        if job.status == JobStatus.diverged:
            values.append(worst)
        elif job.status == JobStatus.succeeded and job.value is not None:
            values.append(float(job.value))
        else:
            return "failed", None
    return "complete", sum(values) / len(values)


def trial_jobs(session: Session, sweep_id: int, column: str) -> dict[int, list[TrialJob]]:
    """Each trial's jobs (trial number → jobs, by id) with their ``column``, one of the summary
    columns (``final_val_loss``, ``best_train_loss``, ...)."""
    if column not in SUMMARY_COLUMNS:
        raise ValueError(f"{column} is not a summary column; use one of {', '.join(SUMMARY_COLUMNS)}")
    rows = session.execute(
        select(Job.trial_number, Job.id, Job.status, getattr(Job, column))
        .where(Job.sweep_id == sweep_id, Job.trial_number.is_not(None))
        .order_by(Job.trial_number, Job.id)
    )
    found: dict[int, list[TrialJob]] = defaultdict(list)
    for number, job_id, status, value in rows:
        found[number].append(TrialJob(job_id, status, value))
    return found


def intermediate(
    session: Session, sweep_id: int, metric: str, *, number: int | None = None
) -> Mapping[int, dict[int, float]]:
    """Each trial's curve of ``metric`` (trial number → epoch → the mean over its seeds' rows that
    have a value at that epoch: a non-finite value is stored as NULL and left out); of trial
    ``number`` only, when given."""
    if metric not in METRIC_NAMES:
        raise ValueError(f"{metric} is not a metric; use one of {', '.join(METRIC_NAMES)}")
    rows, value = EPOCHS.c, EPOCHS.c[metric]
    trials = Job.trial_number.is_not(None) if number is None else Job.trial_number == number
    found: dict[int, dict[int, float]] = defaultdict(dict)
    for trial, epoch, mean in session.execute(
        select(Job.trial_number, rows.epoch, func.avg(value))
        .join(Job, Job.id == rows.job_id)
        .where(Job.sweep_id == sweep_id, trials, value.is_not(None))
        .group_by(Job.trial_number, rows.epoch)
        .order_by(Job.trial_number, rows.epoch)
    ):
        found[trial][int(epoch)] = float(mean)
    return found
