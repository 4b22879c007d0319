"""Recovery of jobs whose worker or broker message was lost: the database is the record.

Runs in the API process (every replica; the guarded UPDATEs let exactly one win per job).
"""

from __future__ import annotations

import logging
import threading
import time

from celery import Celery
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from service import broker
from service.db import jobs as job_ops
from service.settings import Settings

log = logging.getLogger("optimlab.reaper")


class Reaper:
    """Requeues running jobs whose heartbeat went stale (they resume from their checkpoint) and,
    when enabled, queued jobs whose message the broker lost."""

    def __init__(self, session_factory: sessionmaker[Session], celery: Celery, settings: Settings) -> None:
        self._sessions = session_factory
        self._celery = celery
        self._settings = settings
        self._database_down = False
        self._outage_ended: float | None = None

    def _heartbeats_meaningful(self) -> bool:
        # While the database was down, live workers could not heartbeat either: a heartbeat
        # missed then says nothing, so wait a full stale period after an outage.
        if self._outage_ended is None:
            return True
        return time.monotonic() - self._outage_ended >= self._settings.stale_after_s

    def run_once(self) -> list[int]:
        """One pass; returns the ids it enqueued again (a pack's first job stands for its pack)."""
        try:
            with self._sessions() as session, session.begin():
                jobs = job_ops.claim_unsent(session)
                if self._database_down:  # reachable again: the outage ends now
                    self._database_down, self._outage_ended = False, time.monotonic()
                if self._heartbeats_meaningful():
                    jobs += job_ops.requeue_stale_running(session, stale_after_s=self._settings.stale_after_s)
                if self._settings.requeue_queued_after_s > 0:
                    jobs += job_ops.requeue_stalled_queued(session, after_s=self._settings.requeue_queued_after_s)
        except OperationalError:
            self._database_down = True
            raise
        sent = []
        for job_id, queue, pack_id in broker.one_per_task(jobs):
            what = f"pack {pack_id}" if pack_id is not None else f"job {job_id}"
            log.warning("re-enqueueing %s on %s", what, queue)
            try:
                broker.enqueue(self._celery, job_id, queue, pack_id)
            except Exception as exc:  # the broker is down: leave the job marked unsent for the next pass
                log.warning("enqueue of %s failed: %s", what, exc)
                with self._sessions() as session, session.begin():
                    job_ops.mark_unsent(session, job_id, pack_id)
            else:
                sent.append(job_id)
        return sent

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.wait(self._settings.reaper_interval_s):
            try:
                self.run_once()
            except Exception as exc:  # a database or broker outage: try again next round
                log.warning("reaper pass failed: %s", exc)
