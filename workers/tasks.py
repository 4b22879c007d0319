"""The Celery tasks: ``workers.run(job_ids)`` runs jobs that train together (or one job).

Messages sent under the task names from before the one job path (``workers.run_job(job_id)``,
``workers.run_pack(pack_id)``) still run, through the same path: a rolling upgrade loses nothing.
"""

from __future__ import annotations

import os

from celery.exceptions import Reject
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.broker import LEGACY_RUN_JOB, LEGACY_RUN_PACK, RUN
from service.db.models import Job
from service.settings import get_settings
from workers import shutdown
from workers.app import app
from workers.database import DatabaseLost, session_factory, with_db
from workers.run import execute


@app.task(name=RUN)
def run(job_ids: list[int]) -> str:
    """Celery entry point; returns what became of the jobs. A claim that could not be written
    (the database is down), or a message that arrives once this worker is stopping, goes back to
    the broker instead of being acknowledged."""
    if shutdown.requested():
        # Delivered while this worker stops (the dispatcher re-sent a job handed back a moment
        # ago): claiming it would only hand it back again and lose the message with this process.
        raise Reject(f"jobs {job_ids}: worker shutting down", requeue=True)
    settings = get_settings()
    sessions = session_factory(settings.resolved_database_url(), os.getpid(), settings.stale_after_s / 2)
    try:
        return execute([int(job_id) for job_id in job_ids], sessions, settings)
    except DatabaseLost as exc:
        raise Reject(f"claim of jobs {job_ids} failed: {exc}", requeue=True) from exc


@app.task(name=LEGACY_RUN_JOB)
def run_job(job_id: int) -> str:
    """A message from before the one job path: one job."""
    return run([job_id])


@app.task(name=LEGACY_RUN_PACK)
def run_pack(pack_id: str) -> str:
    """A message from before the one job path: a pack, named by its id."""
    settings = get_settings()
    sessions = session_factory(settings.resolved_database_url(), os.getpid(), settings.stale_after_s / 2)

    def members(session: Session) -> list[int]:
        return list(session.scalars(select(Job.id).where(Job.pack_id == pack_id).order_by(Job.id)))

    try:
        job_ids = with_db(sessions, members, settings.database_retry_s)
    except DatabaseLost as exc:
        raise Reject(f"pack {pack_id}: {exc}", requeue=True) from exc
    return run(job_ids)
