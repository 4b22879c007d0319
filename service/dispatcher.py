"""The dispatcher: the one place that sends work to the broker, and the recovery of lost work.

Each pass (a few times a second, and at once when a request commits new jobs) it
- makes running jobs whose worker stopped heartbeating queued and unsent again (they resume
  from their checkpoint), queued jobs whose messages a restarted broker lost (Redis without
  persistence), and, when enabled, queued jobs whose message the embedded broker dropped;
- creates the next trials of adaptive sweeps with a free slot (``service.search.controller``);
- sends every unsent job (a pack's jobs as one task) and marks it sent in the same transaction.
A crash between send and commit sends a job twice at worst, and a duplicate delivery is a no-op
(the worker's claim). Runs in every API process; replicas share the work safely (see
``service.db.outbox.take_unsent``).
"""

from __future__ import annotations

import logging
import threading
import time

from celery import Celery
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from service import broker, metrics
from service.db import outbox, transitions
from service.search.controller import Controller
from service.settings import Settings

log = logging.getLogger("optimlab.dispatcher")

FIRST_BATCH = 2
"""Jobs in a pass's first send (see ``Dispatcher.send``)."""


class Dispatcher:
    """Sends unsent jobs and requeues lost ones, on a daemon thread (``start``/``stop``/``wake``)."""

    def __init__(self, sessions: sessionmaker[Session], celery: Celery, settings: Settings) -> None:
        self._sessions = sessions
        self._celery = celery
        self._settings = settings
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._database_down = False
        self._outage_ended: float | None = None
        self._last_recovery = 0.0
        self.controller = Controller(sessions, settings)

    def start(self) -> None:
        """Start the thread, unless this process does not dispatch (``dispatch_interval_s`` 0)."""
        if self._settings.dispatch_interval_s > 0:
            self._thread = threading.Thread(target=self._run, name="optimlab-dispatcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def halt(self) -> None:
        """Send nothing more, returning at once (a signal handler calls it): `optimlab up` halts
        its dispatcher before its workers hand their jobs back, so those stay unsent for the next
        start instead of being sent to workers that are stopping."""
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        """Send what is unsent now (returns at once; the thread sends)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._settings.dispatch_interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.run_once()
            except Exception as exc:  # a database or broker outage: try again next round
                log.warning("dispatcher pass failed: %s", exc)

    def run_once(self) -> list[int]:
        """One pass: recover (at most every ``reaper_interval_s``), create adaptive sweeps' next
        trials, then send; returns the ids sent."""
        interval = self._settings.reaper_interval_s
        if interval > 0 and time.monotonic() - self._last_recovery >= interval:
            self._last_recovery = time.monotonic()
            try:
                self.recover()
            except Exception as exc:  # recovery waits for the next pass; sending must not
                log.warning("recovery pass failed: %s", exc)
        try:
            self.controller.run_once()
        except Exception as exc:  # the search waits for the next pass; sending must not
            log.warning("search pass failed: %s", exc)
        return self.send()

    def recover(self) -> int:
        """Make lost jobs unsent again; returns how many."""
        settings = self._settings
        lost_messages = broker.messages_lost(settings)  # outside the transaction: a network call
        try:
            with self._sessions() as session, session.begin():
                if session.get_bind().dialect.name == "postgresql":  # never wait long on a row lock
                    session.execute(text("SET LOCAL lock_timeout = '2s'"))
                if self._database_down:  # reachable again: the outage ends now
                    self._database_down, self._outage_ended = False, time.monotonic()
                requeued: dict[str, int] = {}
                if self._heartbeats_meaningful():
                    stale = transitions.requeue_stale(session, stale_after_s=settings.stale_after_s)
                    requeued["stale_heartbeat"] = stale
                if settings.requeue_queued_after_s > 0:
                    stalled = outbox.resend_stalled(session, after_s=settings.requeue_queued_after_s)
                    requeued["stalled_message"] = stalled
                if lost_messages:
                    lost = requeued["lost_messages"] = outbox.resend_queued(session)
                    log.warning("the broker lost its messages; sending %s queued job(s) again", lost)
                count = sum(requeued.values())
        except OperationalError:
            self._database_down = True
            raise
        metrics.count_requeued(requeued)  # committed: counted once
        if lost_messages:
            broker.mark_messages_kept(settings)  # only once the resend committed
        if count:
            log.warning("requeued %s job(s) whose worker or message was lost", count)
        return count

    def _heartbeats_meaningful(self) -> bool:
        # While the database was down, live workers could not heartbeat either: a heartbeat
        # missed then says nothing, so wait a full stale period after an outage.
        if self._outage_ended is None:
            return True
        return time.monotonic() - self._outage_ended >= self._settings.stale_after_s

    def send(self) -> list[int]:
        """Send every unsent job, batch by batch; at the first broker error the rest stay unsent
        for the next pass (what was sent before it is marked sent).

        The batches grow from ``FIRST_BATCH`` (x4 each) to ``outbox.BATCH``: a batch's
        transaction holds SQLite's write lock while it sends, and workers that got the first
        messages would wait that long to claim them (a 60-job sweep's one batch held it ~40 ms)."""
        sent: list[int] = []
        limit = FIRST_BATCH
        while True:
            failure: Exception | None = None
            with self._sessions() as session, session.begin():
                tasks = outbox.take_unsent(session, limit)
                batch: list[int] = []
                for task in tasks:
                    try:
                        broker.send(self._celery, task.job_ids, task.queue)
                    except Exception as exc:
                        failure = exc
                        break
                    batch.extend(task.job_ids)
                outbox.mark_sent(session, batch)
            sent += batch
            metrics.JOBS_SENT.inc(len(batch))
            if failure is not None:
                metrics.SEND_FAILURES.inc()
                log.warning("broker unreachable (%s); %s job(s) wait to be sent", failure, len(tasks) - len(batch))
                return sent
            if len(batch) < limit:
                return sent
            limit = min(limit * 4, outbox.BATCH)
