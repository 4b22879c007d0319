"""What a task writes while its jobs train: epoch rows, final statuses and heartbeats.

A task owns 1..N claimed jobs (one job is a pack of one). ``Attempts`` tracks, per job, whether
this attempt still owns it and whether the user asked it to stop, learned from every write and
from the heartbeat loop's reads. The
``Writer`` writes rows and final statuses off the training thread, one transaction per
flush; a job's final status goes in the same transaction as its last rows, and the summary is
derived from the stored rows (``service.db.epochs``).
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from service import events
from service.db import epochs, transitions
from service.db.models import Job, JobStatus
from workers import shutdown
from workers.database import DatabaseLost, with_db

log = logging.getLogger("optimlab.worker")

OUTCOME_STATUS = {
    "completed": JobStatus.succeeded,
    "early_stopped": JobStatus.succeeded,
    "diverged": JobStatus.diverged,
    "cancelled": JobStatus.cancelled,
    "pruned": JobStatus.pruned,
}

FRESH_FLAG_S = 2.5
"""Default of how old the flags may be before ``Attempts`` reads them again itself (``execute``
passes ``OPTIMLAB_STOP_WITHIN_S / 2``); the heartbeat thread normally keeps them younger."""

RELEASED = "released"
"""A job handed back to the queue (worker shutdown): not a status of its own, it is queued again."""


@dataclass
class _Owned:
    attempt: int
    lost: bool = False
    cancel_requested: bool = False
    finished: bool = False  # its final status is written, or it was handed back
    status: str | None = None  # the final status a read found this attempt wrote (see ``learn``)


class Attempts:
    """This task's claimed jobs, and what the database last said about each.

    The training thread polls ``stopping`` about every second, and asks ``may_checkpoint``
    before each checkpoint; both answer from the flags in memory, which the heartbeat thread
    reads again every few seconds, and read the database themselves only when those flags are
    older than ``fresh_s`` (the heartbeat thread is behind, or the whole process was frozen).
    ``fresh_s`` must stay well under ``stale_after_s`` minus the heartbeat interval: flags that
    young prove no other attempt can have taken a job over.
    """

    def __init__(
        self,
        claims: list[transitions.Claim],
        sessions: sessionmaker[Session],
        budget_s: float,
        *,
        worker: str | None = None,
        fresh_s: float = FRESH_FLAG_S,
    ) -> None:
        self.jobs = {c.job_id: _Owned(c.attempt) for c in claims}
        self.ran_before = {c.job_id: c.ran_before for c in claims}
        self.spec_hashes = {c.job_id: c.spec_hash for c in claims}
        self.sweep_ids = {c.job_id: c.sweep_id for c in claims}
        bind = getattr(sessions, "kw", {}).get("bind")  # a sessionmaker's engine
        self.events_url: URL | None = getattr(bind, "url", None)
        self.database_error: DatabaseLost | None = None
        self.learned_at = time.monotonic()
        self.sessions = sessions
        self.budget_s = budget_s
        self.worker = worker
        self.fresh_s = fresh_s
        self.started = time.monotonic()

    def tell(self, kind: str, job_ids: Iterable[int]) -> None:
        """Tell the API that ``kind`` happened to ``job_ids`` (a committed change): its
        long-polls answer at once (``service.events``)."""
        if self.events_url is not None:
            events.publish(self.events_url, kind, [(self.sweep_ids.get(j), j) for j in job_ids])

    def walls(self, job_ids: Iterable[int]) -> dict[int, float]:
        """Each job's ``wall_seconds`` now: its earlier attempts' running time plus this one's so
        far. Every heartbeat writes it, so an attempt whose worker dies has counted up to its last
        beat, and the time between attempts (a server down) is never counted."""
        ran = time.monotonic() - self.started
        return {job_id: self.ran_before[job_id] + ran for job_id in job_ids}

    def learn(self, ownerships: dict[int, transitions.Ownership]) -> None:
        """Take in what a write or read found; callers pass every live job, so ``learned_at``
        dates all the flags."""
        for job_id, ownership in ownerships.items():
            job = self.jobs[job_id]
            if ownership.finished is not None:
                job.finished = True  # this attempt's own final write, seen before its writer noted it
                job.status = str(ownership.finished)
            elif not job.finished:
                job.lost = job.lost or not ownership.owned
                job.cancel_requested = job.cancel_requested or ownership.cancel_requested
        self.learned_at = time.monotonic()

    def live(self) -> dict[int, int]:
        """Attempt numbers of the jobs still training here."""
        return {job_id: j.attempt for job_id, j in self.jobs.items() if not (j.lost or j.finished)}

    def lost(self) -> list[int]:
        """The jobs another attempt took over (or the reaper requeued) before this one ended them."""
        return [job_id for job_id, job in self.jobs.items() if job.lost and not job.finished]

    def read(self, session: Session, *, beat: bool = False) -> None:
        """Learn every live job's flags in ``session``'s transaction; with ``beat``, by writing
        their heartbeat, else by a read (no write: cheap to do every second or so)."""
        live = self.live()
        if beat:
            self.learn(transitions.heartbeat(session, live, worker=self.worker, walls=self.walls(live)))
        else:
            self.learn(transitions.ownership(session, live, worker=self.worker))

    def refresh(self) -> bool:
        """Read the flags now if they are older than ``fresh_s``; False once the database is lost."""
        if self.database_error is None and time.monotonic() - self.learned_at > self.fresh_s:
            try:
                with_db(self.sessions, self.read, self.budget_s)
            except DatabaseLost as exc:
                self.database_error = exc
        return self.database_error is None

    def stopping(self, job_ids: list[int]) -> set[int]:
        """Positions in ``job_ids`` of the trials to end now: lost or cancel requested; all of
        them when the worker shuts down or the database is gone."""
        if shutdown.requested() or not self.refresh():
            return set(range(len(job_ids)))
        return {i for i, job_id in enumerate(job_ids) if self.jobs[job_id].lost or self.jobs[job_id].cancel_requested}

    def may_checkpoint(self) -> bool:
        """Whether this attempt may still write its jobs' checkpoint: it owns every job it has
        not finished, by flags read just now if they were stale. A checkpoint from an attempt
        that lost a job (a worker frozen past ``stale_after_s``) would overwrite the newer one of
        the attempt that took it over, or litter a folder that attempt already removed."""
        return self.refresh() and not self.lost()

    def heartbeat(self, interval: float, poll_s: float, stop: threading.Event) -> None:
        """The heartbeat thread: every ``poll_s`` read the flags (cancel requests, ownership)
        that ``stopping`` answers from, and every ``interval`` write the heartbeat instead, which
        proves the worker lives."""
        beaten = time.monotonic()
        while not stop.wait(min(poll_s, interval)):
            beat = time.monotonic() - beaten >= interval
            try:
                with self.sessions() as session, session.begin():
                    self.read(session, beat=beat)
            except DBAPIError as exc:
                log.warning("heartbeat of jobs %s failed: %s", sorted(self.live()), exc.orig)
                continue
            if beat:
                beaten = time.monotonic()


def finish_details(result: Any) -> dict[str, Any]:
    """A finished trial's final write: environment, divergence, resume point, artifacts (a range
    test's curve, a 2-D run's path), and its rows from before a resume (a killed attempt's checkpoint can land before its rows reach the database)."""
    resumed = result.resumed_from_epoch or 0
    return {
        "environment": result.environment,
        "diverged_epoch": result.diverged_epoch,
        "resumed_from_epoch": result.resumed_from_epoch,
        "result": getattr(result, "artifacts", None),
        "before_resume": [m.as_dict() for m in result.history if m.epoch <= resumed],
    }


Finish = tuple[JobStatus | None, dict[str, Any]]
"""A job's final write: its status (None: hand it back to the queue) and ``finish``'s details."""

Written = tuple[dict[int, transitions.Ownership], dict[int, str]]
"""What a flush's transaction learned of each job, and the jobs it finished (id → status)."""


class _NotOwned(Exception):
    """A final write found a job this attempt no longer owns (its transaction rolls back)."""


class _Helpers:
    """Daemon threads kept for the process's life that run its tasks' background loops (a task's
    heartbeat, its epoch writer). Starting two threads per task cost a short job ~2 ms on a busy
    2-core host (``Thread.start`` waits until the new thread has run); a helper whose loop
    returned takes the next. Daemon, as the threads they replace: an exiting process does not
    wait for a loop still running."""

    def __init__(self) -> None:
        self._loops: queue.SimpleQueue[tuple[str, Callable[[], None]]] = queue.SimpleQueue()
        self._idle = 0
        self._lock = threading.Lock()

    def run(self, name: str, loop: Callable[[], None]) -> None:
        with self._lock:
            spare = self._idle > 0
            self._idle -= spare
        if not spare:
            threading.Thread(target=self._serve, name="optimlab-helper", daemon=True).start()
        self._loops.put((name, loop))

    def _serve(self) -> None:
        while True:
            name, loop = self._loops.get()
            threading.current_thread().name = name
            try:
                loop()
            except Exception:
                log.exception("%s failed", name)
            with self._lock:
                self._idle += 1


@functools.cache
def _helpers(pid: int) -> _Helpers:
    return _Helpers()  # per pid: a forked child's threads are not its parent's


def in_background(name: str, loop: Callable[[], None]) -> None:
    """Run ``loop`` on one of this process's helper threads (a new one if none is free)."""
    _helpers(os.getpid()).run(name, loop)


class Writer:
    """Writes epoch rows and final statuses of a task's jobs. Rows alone are flushed at most once
    per ``flush_s``: rows that arrive in between (fast epochs, a slow database) go in one
    transaction. A final status is flushed at once, with the rows waiting: a pack's trial that
    ends early, or its last epoch, shows as final within milliseconds, not ``flush_s`` later.
    The start counts as a flush, so the device and the first rows are written at most
    ``flush_s`` after it, and a job shorter than that is written once, with its final status
    (two transactions per job with its claim, not four)."""

    def __init__(self, attempts: Attempts, flush_s: float, device: str | None) -> None:
        self._attempts = attempts
        self._flush_s = flush_s
        self._device = device
        self._rows: dict[int, list[dict[str, Any]]] = {}
        self._finishes: dict[int, Finish] = {}
        self._columns: dict[int, dict[str, Any]] = {}  # job id → columns the next flush sets
        self._reported: set[int] = set()  # jobs that reported an epoch in this attempt
        self._closed = False
        self._wake = threading.Condition()
        self._flushing = threading.Lock()  # held by a flush: the helper's or close()'s
        self.statuses: dict[int, str] = {}

    def start(self) -> None:
        """Flush in the background (``run``, on a helper thread) until ``close``."""
        in_background("epoch-writer", self.run)

    def submit(self, job_id: int, row: dict[str, Any]) -> None:
        """Queue an epoch row. A job's first row in this attempt says where it resumed: the loops
        number epochs on from their checkpoint's, so a first epoch past 1 is a resume after
        epoch - 1, and the flush that writes it sets ``resumed_from_epoch`` too (the final write
        sets it again, from the ``TrainResult``)."""
        with self._wake:
            if job_id not in self._reported:
                self._reported.add(job_id)
                if int(row["epoch"]) > 1:
                    self._columns.setdefault(job_id, {})["resumed_from_epoch"] = int(row["epoch"]) - 1
            if not self._rows:  # the thread waits for a first row; later ones only gather
                self._wake.notify()
            self._rows.setdefault(job_id, []).append(row)

    def set_attrs(self, job_id: int, attrs: dict[str, Any]) -> None:
        """Queue a job's pruner attrs (``workers.pruning``): written with the next flush, whose
        rows they were decided from."""
        with self._wake:
            self._columns.setdefault(job_id, {})["prune_attrs"] = attrs

    def finish(self, job_id: int, status: JobStatus, **details: Any) -> None:
        """Queue a job's final write (status, then ``transitions.finish``'s keyword arguments)."""
        with self._wake:
            self._finishes.setdefault(job_id, (status, details))
            self._wake.notify()

    def hand_back(self, job_id: int, **details: Any) -> None:
        """Queue a job's release to the queue (``transitions.release``) as its final write; a job
        whose cancel was asked meanwhile is finished as cancelled, with ``details``, instead."""
        with self._wake:
            self._finishes.setdefault(job_id, (None, details))
            self._wake.notify()

    def fail_unfinished(self, job_ids: list[int], error: str) -> None:
        with self._wake:
            for job_id in job_ids:
                if job_id not in self.statuses:
                    self._finishes.setdefault(job_id, (JobStatus.failed, {"error": error}))

    def close(self) -> None:
        """Stop the background flushes, then write what is left (rows and final statuses) from
        this thread, once a flush the helper began has ended; not waiting for the helper to wake
        up and see the close (a thread handoff) saves a short job's close ~1 ms."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        with self._flushing:
            with self._wake:
                pending = bool(self._rows or self._finishes or self._device or self._columns)
            if pending and self._attempts.database_error is None:
                self._flush()

    def run(self) -> None:
        last = time.monotonic()  # the start counts as a flush: a short job's only write is its last
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._rows or self._finishes or self._device or self._closed)
                # Let rows gather until flush_s after the last flush; a final status or close()
                # ends the wait at once.
                gather = self._flush_s - (time.monotonic() - last)
                if gather > 0:
                    self._wake.wait_for(lambda: self._closed or bool(self._finishes), timeout=gather)
                if self._closed:
                    return
            with self._flushing:
                if self._closed or not self._flush():  # closed: close() writes what is left
                    return
            last = time.monotonic()

    def _flush(self) -> bool:
        with self._wake:
            rows, self._rows = self._rows, {}
            finishes, self._finishes = self._finishes, {}
            columns, self._columns = self._columns, {}
        write = partial(self._write, rows=rows, finishes=finishes, device=self._device, columns=columns)
        final = None if columns else self._final(rows, finishes, self._device)
        try:
            try:
                ownerships, finished = with_db(self._attempts.sessions, final or write, self._attempts.budget_s)
            except _NotOwned:  # rolled back: written the careful way, which tells what happened
                ownerships, finished = with_db(self._attempts.sessions, write, self._attempts.budget_s)
        except DatabaseLost as exc:
            with self._wake:  # unwritten work goes back for the final flush (if the database returns)
                for job_id, batch in rows.items():
                    self._rows[job_id] = batch + self._rows.get(job_id, [])
                self._finishes = finishes | self._finishes
                self._columns = {j: columns.get(j, {}) | self._columns.get(j, {}) for j in columns | self._columns}
            self._attempts.database_error = exc
            return False
        self._device = None
        self._attempts.learn(ownerships)
        for job_id in finishes.keys() - finished.keys():
            # A write committed, its acknowledgement was lost, and a heartbeat read saw the job
            # finished before the retry, which then left it out: its status is the one read.
            status = self._attempts.jobs[job_id].status
            if status is not None:
                finished[job_id] = status
        for job_id, status in finished.items():
            self.statuses[job_id] = status
            self._attempts.jobs[job_id].finished = True
        self._tell(rows, finished)
        return True

    def _tell(self, rows: dict[int, list[dict[str, Any]]], finished: dict[int, str]) -> None:
        """The committed flush's events: jobs ended (or handed back), and jobs with new rows."""
        ended = [j for j, status in finished.items() if status != RELEASED]
        self._attempts.tell(events.FINISHED, ended)
        self._attempts.tell(events.CHANGED, [j for j, status in finished.items() if status == RELEASED])
        self._attempts.tell(events.PROGRESS, [j for j in rows if rows[j] and j not in finished])

    def _final(
        self, rows: dict[int, list[dict[str, Any]]], finishes: dict[int, Finish], device: str | None
    ) -> Callable[[Session], Written] | None:
        """The write of a flush that ends the one job this attempt still runs (a separate job's
        last epoch, a pack's last trial) as its rows and its final UPDATE alone, or None for
        any other flush. The final UPDATE's guard proves the job is still this attempt's, so the
        heartbeat that ``_write`` starts with is not needed; the rows go first, so the summary is
        derived from them. A guard that fails (another attempt took the job over, or an earlier
        try of this write committed) raises ``_NotOwned``, which rolls it all back for ``_write``
        to do instead: it tells those cases apart. Several jobs are left to ``_write``: updated
        one by one here, they could be locked in another order than a heartbeat's single UPDATE
        locks them (a deadlock on PostgreSQL)."""
        live = self._attempts.live()
        if len(live) != 1:
            return None  # a pack's jobs: its heartbeat locks them all in one statement, in one order
        ((job_id, attempt),) = live.items()
        status, details = finishes.get(job_id, (None, {}))
        if status is None:
            return None  # rows alone, or a hand-back (its release needs the heartbeat's cancel flag)
        extra = {k: v for k, v in details.items() if k != "before_resume"}
        extra |= {"device": device, "spec_hash": self._attempts.spec_hashes[job_id]}

        def final(session: Session) -> Written:
            epochs.record(session, {job_id: details.get("before_resume", []) + rows.get(job_id, [])})
            wall = self._attempts.walls([job_id])[job_id]
            if not transitions.finish(session, job_id, attempt, status, wall_seconds=wall, **extra):
                raise _NotOwned(job_id)
            return {job_id: transitions.Ownership(True)}, {job_id: str(status)}

        return final

    def _write(
        self,
        session: Session,
        *,
        rows: dict[int, list[dict[str, Any]]],
        finishes: dict[int, Finish],
        device: str | None,
        columns: dict[int, dict[str, Any]] | None = None,
    ) -> Written:
        """Heartbeat, rows, summaries and final statuses in the caller's transaction; returns what
        it learned and which jobs it finished, applied by the caller once the transaction
        committed (a retried transaction runs this again)."""
        live = self._attempts.live()
        walls = self._attempts.walls(live)
        ownerships = transitions.heartbeat(session, live, worker=self._attempts.worker, device=device, walls=walls)
        owned = [job_id for job_id, o in ownerships.items() if o.owned]
        before_resume = {j: finishes[j][1].get("before_resume", []) for j in owned if j in finishes}
        epochs.record(session, {j: before_resume.get(j, []) + rows.get(j, []) for j in owned})
        for job_id in (j for j in owned if (columns or {}).get(j)):
            session.execute(update(Job).where(Job.id == job_id).values(**(columns or {})[job_id]))
        finished: dict[int, str] = {}
        for job_id in (j for j in owned if j in finishes):
            status, details = finishes[job_id]
            if status is None:  # a hand-back, unless the user asked to cancel it meanwhile
                # its wall_seconds so far went with the heartbeat above, in this transaction
                if not ownerships[job_id].cancel_requested and transitions.release(session, {job_id: live[job_id]}):
                    finished[job_id] = RELEASED
                    continue
                status = JobStatus.cancelled
            extra = {k: v for k, v in details.items() if k != "before_resume"}
            extra |= {"wall_seconds": walls[job_id], "spec_hash": self._attempts.spec_hashes.get(job_id)}
            if transitions.finish(session, job_id, live[job_id], status, **extra):  # summarizes it too
                finished[job_id] = str(status)
        epochs.refresh_summary(session, [j for j in owned if j in rows and finished.get(j, RELEASED) == RELEASED])
        for job_id, ownership in ownerships.items():
            if ownership.finished is not None and job_id in finishes:  # an earlier try of this one committed
                finished[job_id] = str(ownership.finished)
        return ownerships, finished
