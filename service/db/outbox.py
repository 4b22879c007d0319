"""The outbox: jobs committed as "not yet sent" (``enqueued_at IS NULL``) until the dispatcher
has handed them to the broker.

A job is created unsent in the same transaction as its row, and every requeue makes it unsent
again, so the database alone says what still needs a message. Only the dispatcher
(``service.dispatcher``) reads this and sends.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import Select, and_, select, update
from sqlalchemy.orm import Session

from service.db.models import Job, JobStatus
from service.db.session import utcnow

BATCH = 2000
SelectT = TypeVar("SelectT", bound=Select)  # type: ignore[type-arg]


@dataclass(frozen=True)
class Task:
    """One message: the jobs that train together (a pack's unsent jobs, or one job) and its queue."""

    job_ids: tuple[int, ...]
    queue: str


def take_unsent(session: Session, limit: int = BATCH) -> list[Task]:
    """The oldest ``limit`` unsent queued jobs as tasks, locked until the transaction ends; a
    pack is taken whole, past ``limit`` if need be (split over two messages, its halves would
    train apart from one checkpoint folder), every pack it touched, not only the last row's:
    a sweep's packs interleave by id.

    On PostgreSQL ``FOR UPDATE SKIP LOCKED`` lets several dispatchers (API replicas) share the
    work without sending a job twice; SQLite's write transaction serializes them anyway.
    """
    unsent = and_(Job.status == JobStatus.queued, Job.enqueued_at.is_(None))
    columns = select(Job.id, Job.queue, Job.pack_id).order_by(Job.id)
    rows = list(session.execute(_locked(session, columns.where(unsent).limit(limit))))
    packs = {row.pack_id for row in rows if row.pack_id is not None}
    if len(rows) == limit and packs:  # a sweep's packs interleave by id: complete each one taken
        rest = columns.where(unsent, Job.pack_id.in_(packs), Job.id > rows[-1].id)
        rows += session.execute(_locked(session, rest))
    tasks: dict[str, tuple[list[int], str]] = {}
    for job_id, queue, pack_id in rows:
        key = pack_id if pack_id is not None else f"job-{job_id}"
        tasks.setdefault(key, ([], queue))[0].append(job_id)
    return [Task(tuple(ids), queue) for ids, queue in tasks.values()]


def _locked(session: Session, query: SelectT) -> SelectT:
    if session.get_bind().dialect.name == "postgresql":
        return query.with_for_update(skip_locked=True, of=Job)
    return query


def mark_sent(session: Session, job_ids: Sequence[int]) -> None:
    """Record that these jobs' message reached the broker."""
    if job_ids:
        session.execute(
            update(Job).where(Job.id.in_(list(job_ids)), Job.enqueued_at.is_(None)).values(enqueued_at=utcnow())
        )


def resend_queued(session: Session) -> int:
    """Make every sent but unclaimed job unsent again: the broker restarted and may have lost
    their messages. A message that survived is delivered twice, and the second is a no-op (the
    worker's claim). Returns how many."""
    result = session.execute(
        update(Job).where(Job.status == JobStatus.queued, Job.enqueued_at.is_not(None)).values(enqueued_at=None)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def resend_stalled(session: Session, *, after_s: float) -> int:
    """Make queued jobs unsent again when they were sent over ``after_s`` ago and the workers
    have been idle that long: their message was lost (the embedded brokers drop a killed
    consumer's message), they are not waiting behind others. A sweep's backlog, with a job
    finishing every few seconds, is never sent again. Returns how many."""
    cutoff = utcnow() - dt.timedelta(seconds=after_s)
    running = select(Job.id).where(Job.status == JobStatus.running, Job.heartbeat_at >= cutoff).limit(1)
    finished = select(Job.id).where(Job.finished_at >= cutoff).limit(1)
    if session.execute(running).first() or session.execute(finished).first():
        return 0
    result = session.execute(
        update(Job).where(Job.status == JobStatus.queued, Job.enqueued_at < cutoff).values(enqueued_at=None)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
