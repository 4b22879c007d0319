"""SQL for /v1/jobs: create (with an idempotency key), get, keyset-paginated lists, progress and
epoch rows, each read limited to what the principal may see (``visible_to``). Status changes are
not here: they are ``service.db.transitions``."""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from optim_engine.results import METRIC_NAMES, SUMMARY_METRICS
from service.auth.principal import Principal, visible_to
from service.db import result_cache
from service.db.epochs import EPOCHS
from service.db.models import Job, JobTag
from service.db.session import utcnow
from service.errors import IdempotencyConflict, InvalidFields, InvalidRequest, JobNotFound, field_error
from service.schemas import MAX_ID


def create_job(
    session: Session,
    *,
    spec: Mapping[str, Any],
    spec_hash: str,
    optimizer: str,
    queue: str,
    owner: str,
    tags: Sequence[str] = (),
    name: str | None = None,
    idempotency_key: str | None = None,
    cached_from: int | None = None,
    cache_key: str | None = None,
) -> tuple[Job, bool]:
    """Insert a queued, not yet sent job (``enqueued_at`` NULL: the dispatcher sends it) and flush
    it; returns ``(job, created)``. With ``cached_from`` (a result-cache hit, ``cache_key`` its
    key) the job is inserted succeeded with a copy of that job's results instead, never sent.

    With an idempotency key ``owner`` already used for the same spec, the existing job is returned
    with ``created=False``; used for a different spec, it is an ``IdempotencyConflict``. Keys are
    per owner: another owner's key of the same value is another key.
    """
    if idempotency_key is not None:
        existing = _by_idempotency_key(session, owner, idempotency_key, spec_hash)
        if existing is not None:
            return existing, False
    now = utcnow()
    job = Job(
        owner=owner,
        name=name,
        spec=dict(spec),
        spec_hash=spec_hash,
        optimizer=optimizer,
        queue=queue,
        attempt=0,
        cancel_requested=False,
        idempotency_key=idempotency_key,
        created_at=now,
        enqueued_at=None,
        epochs_done=0,
        cached_from=cached_from,
        cache_key=cache_key,
        tags=[JobTag(tag=tag) for tag in dict.fromkeys(tags)],
        **result_cache.created_state(cached_from, now),
    )
    inserted = _insert(session, job)
    if inserted is not job:
        return inserted, False
    if cached_from is not None:
        result_cache.copy_results(session, [job.id])
        session.refresh(job)  # the copied columns and summary, written by SQL
    return job, True


def _insert(session: Session, job: Job) -> Job:
    """Add and flush ``job``; returns it, or the job of a concurrent POST with the same
    idempotency key that won the race."""
    if job.idempotency_key is None:
        session.add(job)
        session.flush()
        return job
    try:
        with session.begin_nested():  # a concurrent POST with the same key loses the race here
            session.add(job)
            session.flush()
    except IntegrityError:
        existing = _by_idempotency_key(session, job.owner, job.idempotency_key, job.spec_hash)
        if existing is None:
            raise
        return existing
    return job


def _by_idempotency_key(session: Session, owner: str, key: str, spec_hash: str) -> Job | None:
    job = session.scalars(select(Job).where(Job.owner == owner, Job.idempotency_key == key)).one_or_none()
    if job is not None and job.spec_hash != spec_hash:
        raise IdempotencyConflict(f"Idempotency-Key {key!r} was already used for job {job.id} with a different spec")
    return job


def get_job(session: Session, job_id: int, principal: Principal) -> Job:
    """The job, if ``principal`` may see it; else ``JobNotFound``, as if it did not exist."""
    job = session.scalars(select(Job).where(Job.id == job_id, visible_to(principal, Job.owner))).one_or_none()
    if job is None:
        raise JobNotFound(job_id)
    return job


# --- listing ---------------------------------------------------------------------------------

SORTABLE: dict[str, Any] = {
    "created_at": Job.created_at,
    "best_loss": Job.best_loss,
    **{f"{kind}_{m.name}": getattr(Job, f"{kind}_{m.name}") for kind in ("final", "best") for m in SUMMARY_METRICS},
    "wall_seconds": Job.wall_seconds,
    "epochs_done": Job.epochs_done,
}
"""The sort keys of a job list: its time, its summary columns and its progress."""


@dataclass(frozen=True)
class JobFilter:
    statuses: Sequence[str] = ()
    sweep_id: int | None = None
    optimizer: str | None = None
    tag: str | None = None
    owner: str | None = None  # an admin's filter; other principals see only their own anyway


def list_jobs(
    session: Session,
    flt: JobFilter,
    principal: Principal,
    *,
    sort: str = "-created_at",
    limit: int = 50,
    cursor: str | None = None,
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
    query = select(Job).where(visible_to(principal, Job.owner))
    if flt.owner is not None:
        query = query.where(Job.owner == flt.owner)
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
    """The (sort value, last id) of a cursor ``_encode_cursor`` wrote for this sort. Anything else
    (not base64 JSON, another sort, an id or value its column cannot be compared with) is a 422
    naming the cursor: a crafted cursor must never reach the database as a failing query."""
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(data, dict) or data.get("k") != key or "v" not in data:
            raise ValueError("not this sort's cursor")
        last_id = data.get("id")
        if not isinstance(last_id, int) or isinstance(last_id, bool) or not 1 <= last_id <= MAX_ID:
            raise ValueError("no such id")
        return _cursor_value(key, data["v"]), last_id
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        msg = f"not a cursor from a page sorted by {key!r}; pass next_cursor as it came"
        raise InvalidFields([field_error(("query", "cursor"), msg, "invalid_cursor")]) from exc


def _cursor_value(key: str, value: Any) -> Any:
    """A cursor's sort value, checked against its column: NULL, a UTC time, an int4, a finite float."""
    if value is None:
        return None
    if key == "created_at":
        return dt.datetime.fromisoformat(value).astimezone(dt.UTC)  # what the column compares: UTC
    number_types = (int,) if key == "epochs_done" else (int, float)
    if isinstance(value, bool) or not isinstance(value, number_types) or not math.isfinite(value):
        raise ValueError(f"not a {key} value")
    if isinstance(value, int) and abs(value) > MAX_ID:
        raise ValueError(f"{key} out of range")
    return value


# --- metrics ---------------------------------------------------------------------------------


def progress(session: Session, job_id: int, principal: Principal) -> tuple[str, int]:
    """(status, epochs_done) of a job ``principal`` may see, without loading it: the live-polling path."""
    row = session.execute(
        select(Job.status, Job.epochs_done).where(Job.id == job_id, visible_to(principal, Job.owner))
    ).first()
    if row is None:
        raise JobNotFound(job_id)
    return row.status, row.epochs_done


def watched_state(session: Session, job_id: int, principal: Principal) -> tuple[str, int, int, bool]:
    """(status, epochs_done, attempt, cancel_requested) of a job ``principal`` may see: what a
    long-poll compares, read by primary key every few tens of ms per waiter, no ORM object."""
    row = session.execute(
        select(Job.status, Job.epochs_done, Job.attempt, Job.cancel_requested).where(
            Job.id == job_id, visible_to(principal, Job.owner)
        )
    ).first()
    if row is None:
        raise JobNotFound(job_id)
    return row.status, row.epochs_done, row.attempt, row.cancel_requested


def epoch_rows(session: Session, job_id: int, since_epoch: int = 0) -> list[dict[str, Any]]:
    """A job's epochs after ``since_epoch`` as plain dicts (epoch and the metric columns); the
    caller has checked that the principal sees the job (``progress``)."""
    rows = EPOCHS.c
    query = (
        select(rows.epoch, *(rows[name] for name in METRIC_NAMES))
        .where(rows.job_id == job_id, rows.epoch > since_epoch)
        .order_by(rows.epoch)
    )
    return [dict(row._mapping) for row in session.execute(query)]
