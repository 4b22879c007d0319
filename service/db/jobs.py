"""Job operations shared by the API and the workers.

Every status change is a conditional UPDATE that returns whether it won, so concurrent API
calls, redelivered tasks and the reaper never move a job backwards or clobber each other.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import ColumnElement, and_, case, delete, exists, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db.models import METRIC_COLUMNS, TERMINAL, EpochMetric, Job, JobStatus, JobTag
from service.db.session import utcnow
from service.errors import IdempotencyConflict, IllegalTransition, InvalidRequest, JobNotFound


def create_job(
    session: Session,
    *,
    spec: Mapping[str, Any],
    spec_hash: str,
    optimizer: str,
    queue: str,
    tags: Sequence[str] = (),
    name: str | None = None,
    idempotency_key: str | None = None,
    sweep_id: int | None = None,
    config: Mapping[str, Any] | None = None,
    config_hash: str | None = None,
) -> tuple[Job, bool]:
    """Insert a queued job and flush it; returns ``(job, created)``.

    With an idempotency key already used for the same spec, the existing job is returned with
    ``created=False``; used for a different spec, it is an ``IdempotencyConflict``.
    """
    if idempotency_key is not None:
        existing = _by_idempotency_key(session, idempotency_key, spec_hash)
        if existing is not None:
            return existing, False
    now = utcnow()
    job = Job(
        sweep_id=sweep_id,
        config=dict(config) if config is not None else None,
        config_hash=config_hash,
        name=name,
        spec=dict(spec),
        spec_hash=spec_hash,
        optimizer=optimizer,
        queue=queue,
        status=JobStatus.queued,
        attempt=0,
        cancel_requested=False,
        idempotency_key=idempotency_key,
        created_at=now,
        enqueued_at=now,
        epochs_done=0,
        tags=[JobTag(tag=tag) for tag in dict.fromkeys(tags)],
    )
    if idempotency_key is None:
        session.add(job)
        session.flush()
        return job, True
    try:
        with session.begin_nested():  # a concurrent POST with the same key loses the race here
            session.add(job)
            session.flush()
    except IntegrityError:
        existing = _by_idempotency_key(session, idempotency_key, spec_hash)
        if existing is None:
            raise
        return existing, False
    return job, True


def _by_idempotency_key(session: Session, key: str, spec_hash: str) -> Job | None:
    job = session.scalars(select(Job).where(Job.idempotency_key == key)).one_or_none()
    if job is not None and job.spec_hash != spec_hash:
        raise IdempotencyConflict(f"Idempotency-Key {key!r} was already used for job {job.id} with a different spec")
    return job


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job


# --- listing ---------------------------------------------------------------------------------

SORTABLE = {
    "created_at": Job.created_at,
    "best_loss": Job.best_loss,
    "final_train_loss": Job.final_train_loss,
    "final_val_loss": Job.final_val_loss,
    "final_val_accuracy": Job.final_val_accuracy,
    "best_train_loss": Job.best_train_loss,
    "best_val_loss": Job.best_val_loss,
    "best_val_accuracy": Job.best_val_accuracy,
    "wall_seconds": Job.wall_seconds,
    "epochs_done": Job.epochs_done,
}


@dataclass(frozen=True)
class JobFilter:
    statuses: Sequence[str] = ()
    sweep_id: int | None = None
    optimizer: str | None = None
    tag: str | None = None


def list_jobs(
    session: Session, flt: JobFilter, *, sort: str = "-created_at", limit: int = 50, cursor: str | None = None
) -> tuple[list[Job], str | None]:
    """One page of jobs and the cursor of the next page (None on the last page).

    Keyset pagination on (sort column, id): stable while jobs are added, with NULL summary
    values (jobs without epochs yet) last in either direction.
    """
    descending = sort.startswith("-")
    key = sort.lstrip("-+")
    if key not in SORTABLE:
        raise InvalidRequest(f"sort: unknown key {key!r}; use one of {sorted(SORTABLE)}, '-' prefix for descending")
    column = SORTABLE[key]
    query = select(Job)
    if flt.statuses:
        query = query.where(Job.status.in_(list(flt.statuses)))
    if flt.sweep_id is not None:
        query = query.where(Job.sweep_id == flt.sweep_id)
    if flt.optimizer is not None:
        query = query.where(Job.optimizer == flt.optimizer)
    if flt.tag is not None:
        query = query.where(exists().where(JobTag.job_id == Job.id, JobTag.tag == flt.tag))
    if cursor is not None:
        query = query.where(_after(column, descending, *_decode_cursor(cursor, key)))
    order: list[Any] = [
        column.is_(None),
        column.desc() if descending else column.asc(),
        Job.id.desc() if descending else Job.id,
    ]
    jobs = list(session.scalars(query.order_by(*order).limit(limit + 1)))
    if len(jobs) <= limit:
        return jobs, None
    jobs = jobs[:limit]
    last = jobs[-1]
    return jobs, _encode_cursor(key, getattr(last, key), last.id)


def _after(column: Any, descending: bool, value: Any, last_id: int) -> ColumnElement[bool]:
    if value is None:  # already among the NULLs, which come last
        return and_(column.is_(None), Job.id < last_id if descending else Job.id > last_id)
    beyond = column < value if descending else column > value
    tie = and_(column == value, Job.id < last_id if descending else Job.id > last_id)
    return or_(beyond, tie, column.is_(None))


def _encode_cursor(key: str, value: Any, last_id: int) -> str:
    if isinstance(value, dt.datetime):
        value = value.isoformat()
    raw = json.dumps({"k": key, "v": value, "id": last_id}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, key: str) -> tuple[Any, int]:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        value, last_id = data["v"], int(data["id"])
        if data["k"] != key:
            raise ValueError("sort changed")
        if key == "created_at":
            value = dt.datetime.fromisoformat(value)
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidRequest(f"cursor: not a cursor from a page sorted by {key!r}") from exc
    return value, last_id


# --- cancellation ----------------------------------------------------------------------------


def request_cancel(session: Session, job_id: int) -> Job:
    """Cancel a queued job outright, or flag a running one to stop at its next epoch boundary."""
    now = utcnow()
    queued = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued)
        .values(status=JobStatus.cancelled, cancel_requested=True, finished_at=now)
    )
    if queued.rowcount == 0:  # type: ignore[attr-defined]
        running = session.execute(
            update(Job).where(Job.id == job_id, Job.status == JobStatus.running).values(cancel_requested=True)
        )
        if running.rowcount == 0:  # type: ignore[attr-defined]
            job = get_job(session, job_id)
            raise IllegalTransition(f"Job {job_id} is {job.status}; only queued or running jobs can be cancelled")
    session.expire_all()
    return get_job(session, job_id)


# --- the worker's side -----------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    job_id: int
    attempt: int
    spec: dict[str, Any]


def claim(session: Session, job_id: int, *, worker: str, stale_after_s: float) -> Claim | None:
    """Move a job to ``running`` for this worker, or return None when it is not ours to run.

    A queued job is claimed; so is a running one whose heartbeat went stale (its worker died
    and the broker redelivered). A finished job, a cancelled one, or one whose worker is alive
    is left alone, which makes redelivered and duplicate tasks no-ops.
    """
    now = utcnow()
    stale = now - dt.timedelta(seconds=stale_after_s)
    claimable = or_(
        Job.status == JobStatus.queued,
        and_(Job.status == JobStatus.running, or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale)),
    )
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, claimable)
        .values(
            status=JobStatus.running,
            attempt=Job.attempt + 1,
            worker=worker,
            heartbeat_at=now,
            started_at=func.coalesce(Job.started_at, now),
        )
        .returning(Job.attempt, Job.spec)
    ).first()
    if row is None:
        return None
    return Claim(job_id, row.attempt, row.spec)


def _owned(job_id: int, attempt: int) -> ColumnElement[bool]:
    return and_(Job.id == job_id, Job.attempt == attempt, Job.status == JobStatus.running)


@dataclass(frozen=True)
class Ownership:
    """What a worker's write learns: whether its attempt still owns the job, and whether the
    user asked it to stop."""

    owned: bool
    cancel_requested: bool = False


def heartbeat(session: Session, job_id: int, attempt: int) -> Ownership:
    """Refresh the heartbeat; not owned when the job is no longer this attempt's (requeued, finished)."""
    row = session.execute(
        update(Job).where(_owned(job_id, attempt)).values(heartbeat_at=utcnow()).returning(Job.cancel_requested)
    ).first()
    return Ownership(row is not None, bool(row and row[0]))


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


BEST_OF = (
    ("train_loss", Job.best_train_loss, min),
    ("val_loss", Job.best_val_loss, min),
    ("val_accuracy", Job.best_val_accuracy, max),
)


def record_epochs(
    session: Session, job_id: int, attempt: int, rows: Sequence[Mapping[str, Any]], *, device: str | None = None
) -> Ownership:
    """Upsert epoch rows and refresh the job's summary, heartbeat (and device) in one transaction.

    With no rows it is a heartbeat. Writes nothing when this attempt no longer owns the job.
    Rows may arrive in batches, and the same epoch may be written again (a resumed attempt, the final full-history write): the
    (job, epoch) key makes every write an upsert, never a duplicate.
    """
    now = utcnow()
    cleaned: list[dict[str, Any]] = []
    best: tuple[float, int] | None = None
    for metrics in sorted(rows, key=lambda m: int(m["epoch"])):
        values = {name: _finite(metrics.get(name)) for name in METRIC_COLUMNS}
        epoch = int(metrics["epoch"])
        cleaned.append({"job_id": job_id, "epoch": epoch, "recorded_at": now, **values})
        monitored = values["val_loss"] if metrics.get("val_loss") is not None else values["train_loss"]
        if monitored is not None and (best is None or monitored < best[0]):
            best = (monitored, epoch)
    summary: dict[str, Any] = {"heartbeat_at": now}
    if device is not None:
        summary["device"] = device
    if cleaned:
        last = cleaned[-1]
        summary["epochs_done"] = last["epoch"]
        summary["final_train_loss"] = last["train_loss"]
        summary["final_val_loss"] = last["val_loss"]
        summary["final_val_accuracy"] = last["val_accuracy"]
    if best is not None:  # both CASEs read the row's old best_loss
        improves = or_(Job.best_loss.is_(None), Job.best_loss > best[0])
        summary["best_loss"] = case((improves, best[0]), else_=Job.best_loss)
        summary["best_epoch"] = case((improves, best[1]), else_=Job.best_epoch)
    for name, column, pick in BEST_OF:
        seen: list[float] = [row[name] for row in cleaned if row[name] is not None]
        if seen:
            value = pick(seen)
            better = column > value if pick is min else column < value
            summary[column.key] = case((or_(column.is_(None), better), value), else_=column)
    row = session.execute(
        update(Job).where(_owned(job_id, attempt)).values(**summary).returning(Job.cancel_requested)
    ).first()
    if row is None:
        return Ownership(False)
    if cleaned:  # one cached statement, executed for many rows (SQLAlchemy batches the VALUES)
        session.execute(_upsert_epochs(session.get_bind().dialect.name), cleaned)
    return Ownership(True, bool(row[0]))


@cache
def _upsert_epochs(dialect: str) -> Any:
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(EpochMetric)
    return statement.on_conflict_do_update(
        index_elements=["job_id", "epoch"],
        set_={name: statement.excluded[name] for name in (*METRIC_COLUMNS, "recorded_at")},
    )


def finish(
    session: Session,
    job_id: int,
    attempt: int,
    status: JobStatus,
    *,
    error: str | None = None,
    environment: Mapping[str, Any] | None = None,
    diverged_epoch: int | None = None,
    resumed_from_epoch: int | None = None,
) -> bool:
    """Move a running job to a terminal status; False when this attempt no longer owns it."""
    assert status in TERMINAL
    values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error": error}
    if environment is not None:
        values["environment"] = dict(environment)
    if diverged_epoch is not None:
        values["diverged_epoch"] = diverged_epoch
    if resumed_from_epoch is not None:
        values["resumed_from_epoch"] = resumed_from_epoch
    row = session.execute(update(Job).where(_owned(job_id, attempt)).values(**values).returning(Job.started_at)).first()
    if row is None:
        return False
    if row.started_at is not None:
        wall = (values["finished_at"] - row.started_at).total_seconds()
        session.execute(update(Job).where(Job.id == job_id).values(wall_seconds=wall))
    return True


# --- metrics ---------------------------------------------------------------------------------


def progress(session: Session, job_id: int) -> tuple[str, int]:
    """(status, epochs_done) of a job, without loading it: the live-polling path."""
    row = session.execute(select(Job.status, Job.epochs_done).where(Job.id == job_id)).first()
    if row is None:
        raise JobNotFound(job_id)
    return row.status, row.epochs_done


def epoch_rows(session: Session, job_id: int, since_epoch: int = 0) -> list[dict[str, Any]]:
    """A job's epochs after ``since_epoch`` as plain dicts (epoch and the metric columns)."""
    columns = [EpochMetric.epoch, *(getattr(EpochMetric, name) for name in METRIC_COLUMNS)]
    query = (
        select(*columns)
        .where(EpochMetric.job_id == job_id, EpochMetric.epoch > since_epoch)
        .order_by(EpochMetric.epoch)
    )
    return [dict(row._mapping) for row in session.execute(query)]


# --- the reaper's side -----------------------------------------------------------------------


Delivery = tuple[int, str, str | None]
"""A job to send to the broker: (id, queue, pack_id); a pack is sent once, as one task."""


def requeue_stale_running(session: Session, *, stale_after_s: float) -> list[Delivery]:
    """Put running jobs whose worker stopped heartbeating back to queued; returns their deliveries."""
    now = utcnow()
    stale = now - dt.timedelta(seconds=stale_after_s)
    candidates = session.execute(
        select(Job.id, Job.queue, Job.attempt, Job.pack_id).where(
            Job.status == JobStatus.running, Job.heartbeat_at < stale
        )
    ).all()
    requeued: list[Delivery] = []
    for job_id, queue, attempt, pack_id in candidates:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.attempt == attempt, Job.status == JobStatus.running, Job.heartbeat_at < stale)
            .values(status=JobStatus.queued, enqueued_at=now, worker=None)
        )
        if result.rowcount:  # type: ignore[attr-defined]
            requeued.append((job_id, queue, pack_id))
    return requeued


def requeue_stalled_queued(session: Session, *, after_s: float) -> list[Delivery]:
    """Re-enqueue jobs queued for longer than ``after_s`` while the workers are idle.

    Idle means no job has run or finished for ``after_s``: then an old queued job's message was
    lost, it is not waiting behind others. A sweep's backlog, with a job finishing every few
    seconds, is never sent again.
    """
    now = utcnow()
    cutoff = now - dt.timedelta(seconds=after_s)
    running = select(Job.id).where(Job.status == JobStatus.running, Job.heartbeat_at >= cutoff)
    finished = select(Job.id).where(Job.finished_at >= cutoff)
    if session.execute(running.limit(1)).first() or session.execute(finished.limit(1)).first():
        return []
    rows = session.execute(
        select(Job.id, Job.queue, Job.pack_id)
        .where(Job.status == JobStatus.queued, Job.enqueued_at < cutoff)
        .order_by(Job.id)
    ).all()
    if rows:
        session.execute(update(Job).where(Job.id.in_([r.id for r in rows])).values(enqueued_at=now))
    return [(r.id, r.queue, r.pack_id) for r in rows]


def delete_job(session: Session, job_id: int) -> None:
    """Remove a job that could not be enqueued (the broker was down), so a retry starts clean."""
    session.execute(delete(Job).where(Job.id == job_id, Job.status == JobStatus.queued))


def claim_unsent(session: Session) -> list[Delivery]:
    """Queued jobs whose enqueue failed (``enqueued_at`` is NULL), stamped as sent now."""
    rows = session.execute(
        select(Job.id, Job.queue, Job.pack_id)
        .where(Job.status == JobStatus.queued, Job.enqueued_at.is_(None))
        .order_by(Job.id)
    ).all()
    if rows:
        session.execute(
            update(Job).where(Job.id.in_([r.id for r in rows]), Job.enqueued_at.is_(None)).values(enqueued_at=utcnow())
        )
    return [(r.id, r.queue, r.pack_id) for r in rows]


def mark_unsent(session: Session, job_id: int, pack_id: str | None = None) -> None:
    """Record that a queued job's (or a whole pack's) message did not reach the broker, so the
    next pass sends it."""
    which = Job.pack_id == pack_id if pack_id is not None else Job.id == job_id
    session.execute(update(Job).where(which, Job.status == JobStatus.queued).values(enqueued_at=None))


# --- packs -----------------------------------------------------------------------------------


def claim_pack(session: Session, pack_id: str, *, worker: str, stale_after_s: float) -> list[Claim]:
    """Claim every claimable job of a pack (see ``claim``); the others (finished, cancelled,
    owned by a live worker) stay out of this attempt."""
    ids = session.scalars(select(Job.id).where(Job.pack_id == pack_id).order_by(Job.id)).all()
    claims = (claim(session, job_id, worker=worker, stale_after_s=stale_after_s) for job_id in ids)
    return [c for c in claims if c is not None]


def heartbeat_many(session: Session, attempts: Mapping[int, int]) -> dict[int, Ownership]:
    """``heartbeat`` for many jobs (id → attempt) in one statement."""
    if not attempts:
        return {}
    rows = session.execute(
        update(Job)
        .where(or_(*(_owned(job_id, attempt) for job_id, attempt in attempts.items())))
        .values(heartbeat_at=utcnow())
        .returning(Job.id, Job.cancel_requested)
    ).all()
    found = {row.id: bool(row.cancel_requested) for row in rows}
    return {job_id: Ownership(job_id in found, found.get(job_id, False)) for job_id in attempts}
