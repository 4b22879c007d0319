"""SQL for /v1/sweeps: atomic creation of a sweep's jobs, reads (limited to what the principal
may see, ``visible_to``) and status counts, and the leaderboard and bulk curves computed in the
database."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import case, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from optim_engine.results import METRIC_NAMES, SUMMARY_METRICS
from service.auth.principal import Principal, visible_to
from service.db.models import Job, JobStatus, JobTag, Sweep
from service.db.session import utcnow
from service.errors import IdempotencyConflict, InvalidFields, InvalidRequest, SweepNotFound, field_error
from service.schemas import MAX_ID


@dataclass(frozen=True)
class NewSweep:
    """A sweep to insert: its owner (its jobs get the same) and its definition, as stored."""

    owner: str
    name: str | None
    template: dict[str, Any]
    search: dict[str, Any]
    execution: str
    tags: Sequence[str] = ()


@dataclass(frozen=True)
class NewJob:
    """One of a new sweep's jobs, as stored (spec and config JSON-safe)."""

    spec: dict[str, Any]
    spec_hash: str
    optimizer: str
    queue: str
    config: dict[str, Any]
    config_hash: str
    pack_id: str | None = None


def create_sweep(
    session: Session, sweep: NewSweep, jobs: Sequence[NewJob], *, idempotency_key: str | None = None
) -> tuple[Sweep, bool]:
    """Insert the sweep and all its jobs (queued, not yet sent) in the session's transaction;
    returns ``(sweep, created)``. Not created: the idempotency key names an existing sweep of the
    same owner with the same definition (a different one is an ``IdempotencyConflict``)."""
    existing = _by_idempotency_key(session, idempotency_key, sweep)
    if existing is not None:
        return existing, False
    now = utcnow()
    row = Sweep(
        owner=sweep.owner,
        name=sweep.name,
        template=sweep.template,
        search=sweep.search,
        created_at=now,
        n_jobs=len(jobs),
        idempotency_key=idempotency_key,
        execution=sweep.execution,
    )
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:  # a concurrent POST with the same key won
        return create_sweep(session, sweep, jobs, idempotency_key=idempotency_key)
    fixed = {"sweep_id": row.id, "owner": sweep.owner, "name": sweep.name, "created_at": now, "enqueued_at": None}
    fixed |= {"status": JobStatus.queued, "attempt": 0, "cancel_requested": False, "epochs_done": 0}
    # One batched INSERT ... RETURNING, not a flush per job.
    ids = session.scalars(
        insert(Job).returning(Job.id, sort_by_parameter_order=True), [fixed | asdict(job) for job in jobs]
    ).all()
    if sweep.tags:
        tags = dict.fromkeys(sweep.tags)
        session.execute(insert(JobTag), [{"job_id": job_id, "tag": tag} for job_id in ids for tag in tags])
    return row, True


def _by_idempotency_key(session: Session, key: str | None, sweep: NewSweep) -> Sweep | None:
    if key is None:
        return None
    existing = session.scalars(
        select(Sweep).where(Sweep.owner == sweep.owner, Sweep.idempotency_key == key)
    ).one_or_none()
    if existing is not None and (existing.template, existing.search, existing.execution) != (
        sweep.template,
        sweep.search,
        sweep.execution,
    ):
        raise IdempotencyConflict(f"Idempotency-Key {key!r} was used for sweep {existing.id}")
    return existing


def get_sweep(session: Session, sweep_id: int, principal: Principal) -> Sweep:
    """The sweep, if ``principal`` may see it; else ``SweepNotFound``, as if it did not exist.
    Its jobs share its owner, so a sweep seen is a sweep whose jobs may be read."""
    query = select(Sweep).where(Sweep.id == sweep_id, visible_to(principal, Sweep.owner))
    sweep = session.scalars(query).one_or_none()
    if sweep is None:
        raise SweepNotFound(sweep_id)
    return sweep


def decode_cursor(cursor: str) -> int:
    """The id a next-page cursor of ``list_sweeps`` carries (the last id of the page before);
    anything else is a 422 naming the cursor, never a query that fails in the database."""
    if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 10 and 1 <= int(cursor) <= MAX_ID):
        raise InvalidFields([field_error(("query", "cursor"), "not a cursor from this list", "invalid_cursor")])
    return int(cursor)


def list_sweeps(
    session: Session, principal: Principal, *, owner: str | None = None, limit: int, before_id: int | None
) -> list[Sweep]:
    """Newest first, those ``principal`` sees (of ``owner`` only, when given)."""
    query = select(Sweep).where(visible_to(principal, Sweep.owner)).order_by(Sweep.id.desc()).limit(limit)
    if owner is not None:
        query = query.where(Sweep.owner == owner)
    if before_id is not None:
        query = query.where(Sweep.id < before_id)
    return list(session.scalars(query))


def status_counts(session: Session, sweep_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """Jobs per status of each sweep, in one grouped query for a whole page of sweeps."""
    rows = session.execute(
        select(Job.sweep_id, Job.status, func.count())
        .where(Job.sweep_id.in_(list(sweep_ids)))
        .group_by(Job.sweep_id, Job.status)
    )
    found = {(sweep_id, status): n for sweep_id, status, n in rows}
    return {
        sweep_id: {status.value: found.get((sweep_id, status.value), 0) for status in JobStatus}
        for sweep_id in sweep_ids
    }


# --- the leaderboard ---------------------------------------------------------------------------

BETTER: Mapping[str, str] = {m.name: m.best for m in SUMMARY_METRICS if m.best is not None}
"""Each summary metric's better direction (min or max): the leaderboard's metrics."""


@dataclass(frozen=True)
class LeaderboardQuery:
    metric: str = "val_loss"
    mode: str | None = None  # default: the metric's better direction
    which: str = "best"  # best epoch's value or final epoch's

    def resolved_mode(self) -> str:
        return self.mode or BETTER[self.metric]


def leaderboard(session: Session, sweep_id: int, query: LeaderboardQuery) -> list[dict[str, Any]]:
    """One row per configuration (jobs that differ only in seed), ranked by the mean.

    The statistics over succeeded jobs come from one GROUP BY over the jobs' summary columns
    (best_* / final_*), never from loading epoch rows. The caller has checked that the sweep
    exists.
    """
    if query.metric not in BETTER or query.which not in ("best", "final"):
        raise InvalidRequest(f"metric: use one of {sorted(BETTER)}, which: best or final")
    column = getattr(Job, f"{query.which}_{query.metric}")
    value = case((Job.status == JobStatus.succeeded, column))
    status = Job.status
    rows = session.execute(
        select(
            Job.config_hash,
            func.min(Job.id).label("first_job"),
            func.count().label("jobs"),
            func.count(value).label("n"),
            func.avg(value).label("mean"),
            func.sum(value * value).label("sum_sq"),
            func.min(value).label("min"),
            func.max(value).label("max"),
            func.sum(case((status == JobStatus.diverged, 1), else_=0)).label("diverged"),
            func.sum(case((status == JobStatus.failed, 1), else_=0)).label("failed"),
            func.sum(case((status.in_([JobStatus.queued, JobStatus.running]), 1), else_=0)).label("pending"),
            func.avg(case((status == JobStatus.succeeded, Job.wall_seconds))).label("mean_wall_seconds"),
        )
        .where(Job.sweep_id == sweep_id)
        .group_by(Job.config_hash)
    ).all()
    first_jobs = session.execute(select(Job.id, Job.config).where(Job.id.in_([r.first_job for r in rows])))
    configs: dict[int, dict[str, Any]] = {job_id: config for job_id, config in first_jobs}
    board = [_statistics(row, configs.get(row.first_job) or {}) for row in rows]
    descending = query.resolved_mode() == "max"
    board.sort(key=lambda r: (r["mean"] is None, -(r["mean"] or 0) if descending else (r["mean"] or 0)))
    for rank, row in enumerate(board, start=1):
        row["rank"] = rank
    return board


def _statistics(row: Any, config: dict[str, Any]) -> dict[str, Any]:
    n, mean = int(row.n), row.mean
    std = ci = None
    if n >= 2 and mean is not None:
        variance = max((float(row.sum_sq) - n * float(mean) ** 2) / (n - 1), 0.0)
        std = math.sqrt(variance)
        ci = student_t_975(n - 1) * std / math.sqrt(n)
    return {
        "config": config,
        "config_hash": row.config_hash,
        "jobs": int(row.jobs),
        "n": n,
        "mean": float(mean) if mean is not None else None,
        "std": std,
        "ci95_low": float(mean) - ci if ci is not None else None,
        "ci95_high": float(mean) + ci if ci is not None else None,
        "min": row.min,
        "max": row.max,
        "diverged": int(row.diverged or 0),
        "failed": int(row.failed or 0),
        "pending": int(row.pending or 0),
        "mean_wall_seconds": float(row.mean_wall_seconds) if row.mean_wall_seconds is not None else None,
    }


@lru_cache(maxsize=1024)
def student_t_975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (two-sided 95% CI)."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


# --- curves in bulk ----------------------------------------------------------------------------


def sweep_metrics(session: Session, sweep_id: int, columns: Sequence[str]) -> tuple[list[str], Sequence[Any]]:
    """Every epoch row of every job in the sweep, ordered by job and epoch, as plain tuples.

    Read through the driver's cursor: for 50,000 rows SQLAlchemy's result processing costs
    three times the query itself, and these columns need no conversion.
    """
    bad = [c for c in columns if c not in METRIC_NAMES]
    if bad:
        raise InvalidRequest(f"columns: unknown {bad}; use {list(METRIC_NAMES)}")
    names = ["job_id", "epoch", *columns]
    connection = session.connection()
    mark = "?" if connection.dialect.name == "sqlite" else "%s"
    # Column names come from the METRIC_NAMES allow-list above; the sweep id is a parameter.
    # IN (subquery) walks epoch_metrics' primary key in order: no sort step.
    sql = (
        f"SELECT {', '.join(names)} FROM epoch_metrics "  # noqa: S608
        f"WHERE job_id IN (SELECT id FROM jobs WHERE sweep_id = {mark}) ORDER BY job_id, epoch"
    )
    cursor = connection.connection.cursor()
    try:
        cursor.execute(sql, (sweep_id,))
        rows = cursor.fetchall()
    finally:
        cursor.close()
    return names, rows


def sweep_jobs(session: Session, sweep_id: int) -> list[dict[str, Any]]:
    """Each job's id, configuration hash, seed-bearing config and status (for labelling curves)."""
    rows = session.execute(
        select(Job.id, Job.config_hash, Job.config, Job.status, Job.spec["seed"].label("seed"))
        .where(Job.sweep_id == sweep_id)
        .order_by(Job.id)
    )
    return [
        {"job_id": r.id, "config_hash": r.config_hash, "config": r.config, "status": r.status, "seed": r.seed}
        for r in rows
    ]
