"""The result cache in the database: finding a succeeded run to reuse, and serving a new job
from it.

A served job is created ``succeeded`` with ``cached_from`` naming its source and a copy of the
source's epoch rows, environment, result and device, in the transaction that creates it; its
summary is derived from the copied rows like any job's (``epochs.refresh_summary``), so every
query (lists, leaderboards, curves, analyses) reads it as an ordinary succeeded job. It is never
sent: the outbox takes queued jobs only. The key itself is ``service.cache``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session, aliased

from optim_engine.results import METRIC_NAMES
from service.db.epochs import EPOCHS, refresh_summary
from service.db.models import Job, JobStatus

COPIED = ("environment", "result", "device", "wall_seconds", "diverged_epoch")
"""The source's columns a served job takes as they are (its summary comes from the copied rows)."""


def find_sources(session: Session, owner: str, keys: Iterable[str | None]) -> dict[str, int]:
    """For each key, the job a new job of ``owner`` with that key reuses: the oldest succeeded
    original (trained, not itself served) of the same owner, so chains of reuse all point at the
    run that trained. Keys without one are left out; another owner's runs never match (they
    would show one user another's results)."""
    wanted = sorted({key for key in keys if key is not None})
    if not wanted:
        return {}
    rows = session.execute(
        select(Job.cache_key, func.min(Job.id))
        .where(
            Job.cache_key.in_(wanted),
            Job.owner == owner,
            Job.status == JobStatus.succeeded,
            Job.cached_from.is_(None),
        )
        .group_by(Job.cache_key)
    )
    return {key: source for key, source in rows if key is not None}


def created_state(source: int | None, now: dt.datetime) -> dict[str, Any]:
    """The status and times a new job is inserted with: queued and unsent without a source,
    succeeded (started and finished now, never sent, no attempt) with one."""
    if source is None:
        return {"status": JobStatus.queued, "started_at": None, "finished_at": None}
    return {"status": JobStatus.succeeded, "started_at": now, "finished_at": now}


def copy_results(session: Session, job_ids: Sequence[int]) -> None:
    """Give the just-inserted served jobs ``job_ids`` (``cached_from`` set) their source's
    columns (``COPIED``) and epoch rows, then derive their summary from those rows: one UPDATE,
    one INSERT ... SELECT and the summary UPDATE, in the caller's transaction."""
    if not job_ids:
        return
    source = aliased(Job, name="source")
    copied = {
        name: select(getattr(source, name)).where(source.id == Job.cached_from).scalar_subquery() for name in COPIED
    }
    session.execute(update(Job).where(Job.id.in_(list(job_ids))).values(**copied))
    rows = EPOCHS.c
    names = ["epoch", *METRIC_NAMES, "recorded_at"]
    from_sources = (
        select(Job.id, *(rows[name] for name in names))
        .join(EPOCHS, rows.job_id == Job.cached_from)
        .where(Job.id.in_(list(job_ids)))
    )
    session.execute(insert(EPOCHS).from_select(["job_id", *names], from_sources))
    refresh_summary(session, job_ids)
