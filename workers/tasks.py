"""``workers.run_job``: claim a job, train it with the engine, persist every epoch as it ends.

The task body is ``execute_job``, a plain function of a job id and a session factory, so tests
and the embedded runner call the exact code Celery calls.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from service.db import jobs as job_ops
from service.db.models import JobStatus
from service.db.session import make_engine, make_session_factory
from service.settings import Settings, get_settings
from service.spec_codec import load_spec
from workers.app import GPUS_ENV, app

log = logging.getLogger("optimlab.worker")

OUTCOME_STATUS = {
    "completed": JobStatus.succeeded,
    "early_stopped": JobStatus.succeeded,
    "diverged": JobStatus.diverged,
    "cancelled": JobStatus.cancelled,
}

T = TypeVar("T")


class DatabaseLost(RuntimeError):
    """The database stayed unreachable; the job is left running for the reaper to requeue."""


@cache
def _session_factory(url: str, pid: int) -> sessionmaker[Session]:
    # Keyed by pid: an engine must not cross a fork.
    return make_session_factory(make_engine(url))


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@app.task(name="workers.run_job")
def run_job(job_id: int) -> str:
    """Celery entry point; returns the job's final status (or why nothing ran)."""
    settings = get_settings()
    return execute_job(job_id, _session_factory(settings.resolved_database_url(), os.getpid()), settings)


@dataclass
class _Attempt:
    """What the callbacks share: the job's identity, whether this attempt still owns it, and
    whether the user asked it to stop (learned from the writer's and the heartbeat's writes)."""

    job_id: int
    number: int
    lost: bool = False
    cancel_requested: bool = False
    database_error: DatabaseLost | None = None
    learned_at: float = field(default_factory=time.monotonic)

    def learn(self, ownership: job_ops.Ownership) -> None:
        self.lost = self.lost or not ownership.owned
        self.cancel_requested = self.cancel_requested or ownership.cancel_requested
        self.learned_at = time.monotonic()

    def should_stop(self, sessions: sessionmaker[Session]) -> bool:
        """Called at each epoch boundary. When the flag is older than FRESH_FLAG_S (long epochs)
        it is read from the database now; short epochs rely on the writer's fresh answers."""
        if not (self.lost or self.cancel_requested or self.database_error) and (
            time.monotonic() - self.learned_at > FRESH_FLAG_S
        ):
            try:
                self.learn(_with_db(sessions, partial(job_ops.heartbeat, job_id=self.job_id, attempt=self.number)))
            except DatabaseLost as exc:
                self.database_error = exc
        return self.lost or self.cancel_requested or self.database_error is not None


FRESH_FLAG_S = 1.0


def execute_job(job_id: int, sessions: sessionmaker[Session], settings: Settings) -> str:
    """Run one job to a terminal status, or do nothing if it is not claimable.

    Redelivered and duplicate tasks end here as no-ops: ``claim`` only takes a queued job or a
    running one whose worker stopped heartbeating.
    """
    with sessions() as session, session.begin():
        claimed = job_ops.claim(session, job_id, worker=worker_name(), stale_after_s=settings.stale_after_s)
    if claimed is None:
        log.info("job %s: not claimable (finished, cancelled, missing or owned by a live worker)", job_id)
        return "skipped"
    attempt = _Attempt(job_id, claimed.attempt)
    log.info("job %s: attempt %s starting", job_id, attempt.number)
    checkpoint_dir = settings.resolved_checkpoint_dir() / str(job_id)

    stop_heartbeat = threading.Event()
    beat = threading.Thread(
        target=_heartbeat, args=(sessions, attempt, settings.heartbeat_interval_s, stop_heartbeat), daemon=True
    )
    beat.start()
    try:
        status = _train(claimed.spec, sessions, settings, attempt, checkpoint_dir)
    except DatabaseLost as exc:
        log.error("job %s: %s; leaving it to be requeued", job_id, exc)
        return "database_lost"
    finally:
        stop_heartbeat.set()
        beat.join()
    if attempt.lost:
        log.warning("job %s: attempt %s lost ownership; it wrote no result", job_id, attempt.number)
        return "lost"
    if not settings.keep_checkpoints:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return str(status)


def _train(
    spec_json: dict[str, Any], sessions: sessionmaker[Session], settings: Settings, attempt: _Attempt, ckpt: Path
) -> JobStatus:
    from optim_engine import resolve_device, train  # torch is imported here, in the worker only

    device: str | None = None

    def finish(status: JobStatus, rows: list[dict[str, Any]] | None = None, **kwargs: Any) -> JobStatus:
        def write(session: Session) -> bool:
            if rows or device is not None:  # the last epochs go in the same transaction as the status
                ownership = job_ops.record_epochs(session, attempt.job_id, attempt.number, rows or [], device=device)
                attempt.learn(ownership)
            return job_ops.finish(session, attempt.job_id, attempt.number, status, **kwargs)

        if not _with_db(sessions, write):
            attempt.lost = True
        return status

    try:
        spec = load_spec(spec_json)
        device = str(resolve_device(_pinned(spec.device)))
        spec = spec.model_copy(update={"device": _pinned(spec.device)})
    except Exception as exc:  # the spec validated at submission; its data may have changed since
        log.exception("job %s: spec no longer valid", attempt.job_id)
        return finish(JobStatus.failed, error=f"spec: {exc}")

    writer = _EpochWriter(sessions, attempt, settings.metrics_flush_s, device)
    writer.start()
    try:
        result = train(
            spec,
            on_epoch=lambda metrics: writer.submit(metrics.as_dict()),
            should_stop=partial(attempt.should_stop, sessions),
            checkpoint_dir=ckpt,
            checkpoint_every_s=settings.checkpoint_every_s,
            num_threads=settings.torch_threads,
        )
    except Exception as exc:
        pending = writer.close()
        log.exception("job %s failed", attempt.job_id)
        return finish(JobStatus.failed, pending, error=f"{type(exc).__name__}: {exc}")
    pending = writer.close()
    if attempt.database_error is not None:
        raise attempt.database_error
    if attempt.lost:
        return JobStatus.cancelled
    # Rows from before a resume may be missing (a killed attempt's checkpoint can land before its
    # rows reach the database), so they are written once more with the result.
    resumed = result.resumed_from_epoch or 0
    before_resume = [m.as_dict() for m in result.history if m.epoch <= resumed]
    return finish(
        OUTCOME_STATUS[result.outcome],
        before_resume + pending,
        environment=result.environment,
        diverged_epoch=result.diverged_epoch,
        resumed_from_epoch=result.resumed_from_epoch,
    )


def _write_rows(
    session: Session, *, attempt: _Attempt, rows: list[dict[str, Any]], device: str | None
) -> job_ops.Ownership:
    return job_ops.record_epochs(session, attempt.job_id, attempt.number, rows, device=device)


class _EpochWriter(threading.Thread):
    """Writes epoch rows off the training thread: the next epoch trains while the database
    commits the last one. At most one write per ``flush_s``; rows that arrive in between (fast
    epochs, a slow database) go in one transaction, so per-epoch cost stays off the GIL. Its
    first write, at once, records the device."""

    def __init__(self, sessions: sessionmaker[Session], attempt: _Attempt, flush_s: float, device: str) -> None:
        super().__init__(name=f"epoch-writer-{attempt.job_id}", daemon=True)
        self._sessions = sessions
        self._attempt = attempt
        self._flush_s = flush_s
        self._device: str | None = device
        self._pending: list[dict[str, Any]] = []
        self._closed = False
        self._wake = threading.Condition()

    def submit(self, row: dict[str, Any]) -> None:
        with self._wake:
            self._pending.append(row)
            self._wake.notify()

    def close(self) -> list[dict[str, Any]]:
        """Stop after the write in flight; returns the rows not written yet, for the final write."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self.join()
        pending, self._pending = self._pending, []
        return pending

    def run(self) -> None:
        attempt = self._attempt
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._pending or self._device or self._closed)
                if self._closed:
                    return
                batch, self._pending = self._pending, []
            write = partial(_write_rows, attempt=attempt, rows=batch, device=self._device)
            try:
                ownership = _with_db(self._sessions, write)
            except DatabaseLost as exc:
                with self._wake:  # unwritten rows go back for the final write (if the database returns)
                    self._pending[:0] = batch
                attempt.database_error = exc
                return
            self._device = None
            attempt.learn(ownership)
            with self._wake:  # let rows gather; close() ends the wait at once
                self._wake.wait_for(lambda: self._closed, timeout=self._flush_s)


def _pinned(device: str) -> str:
    """In a pool whose children own one GPU each, ``cuda:N`` means this child's GPU."""
    if os.environ.get(GPUS_ENV) and device.startswith("cuda"):
        return "cuda"
    return device


def _with_db(sessions: sessionmaker[Session], work: Callable[[Session], T], attempts: int = 8) -> T:
    """Run ``work`` in a transaction, retrying connection errors (and SQLite lock timeouts) with
    backoff for about 11 s in all; then ``DatabaseLost``."""
    delay = 0.1
    for attempt in range(attempts):
        try:
            with sessions() as session, session.begin():
                return work(session)
        except OperationalError as exc:
            if attempt == attempts - 1:
                raise DatabaseLost(f"database unreachable: {exc.orig}") from exc
            log.warning("database error (%s); retrying in %.1f s", exc.orig, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


def _heartbeat(sessions: sessionmaker[Session], attempt: _Attempt, interval: float, stop: threading.Event) -> None:
    """Prove the worker lives, and pick up a cancel request during a long epoch."""
    while not stop.wait(interval):
        try:
            with sessions() as session, session.begin():
                attempt.learn(job_ops.heartbeat(session, attempt.job_id, attempt.number))
        except DBAPIError as exc:
            log.warning("heartbeat of job %s failed: %s", attempt.job_id, exc.orig)
        if attempt.lost:
            return
