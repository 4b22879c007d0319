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
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    finished: bool = False  # in a pack: its final status is written

    @property
    def stopping(self) -> bool:
        """Whether its trial should end now (in a pack, the others go on)."""
        return self.lost or self.cancel_requested

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

    try:
        with _beating(partial(_heartbeat, sessions, attempt, settings.heartbeat_interval_s)):
            status = _train(claimed.spec, sessions, settings, attempt, checkpoint_dir)
    except DatabaseLost as exc:
        log.error("job %s: %s; leaving it to be requeued", job_id, exc)
        return "database_lost"
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
    return finish(
        OUTCOME_STATUS[result.outcome],
        _rows_before_resume(result) + pending,
        environment=result.environment,
        diverged_epoch=result.diverged_epoch,
        resumed_from_epoch=result.resumed_from_epoch,
    )


def _rows_before_resume(result: Any) -> list[dict[str, Any]]:
    """Rows from before a resume, to write once more with the result: a killed attempt's
    checkpoint can land before its rows reach the database."""
    resumed = result.resumed_from_epoch or 0
    return [m.as_dict() for m in result.history if m.epoch <= resumed]


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


@contextmanager
def _beating(beat: Callable[[threading.Event], None]) -> Iterator[None]:
    """Run ``beat(stop)`` on a daemon thread for the duration of the block."""
    stop = threading.Event()
    thread = threading.Thread(target=beat, args=(stop,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


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


# --- packs ------------------------------------------------------------------------------------


@app.task(name="workers.run_pack")
def run_pack(pack_id: str) -> str:
    """Celery entry point for a pack of a sweep's jobs trained together; returns a summary."""
    settings = get_settings()
    return execute_pack(pack_id, _session_factory(settings.resolved_database_url(), os.getpid()), settings)


class _PackAttempts:
    """The attempts of a pack's claimed jobs, in the order the engine sees them."""

    def __init__(self, claims: list[job_ops.Claim]) -> None:
        self.by_job = {c.job_id: _Attempt(c.job_id, c.attempt) for c in claims}
        self.database_error: DatabaseLost | None = None

    def learn(self, ownerships: dict[int, job_ops.Ownership]) -> None:
        for job_id, ownership in ownerships.items():
            if not self.by_job[job_id].finished:
                self.by_job[job_id].learn(ownership)

    def numbers(self) -> dict[int, int]:
        """Attempt numbers of the jobs still training here."""
        return {job_id: a.number for job_id, a in self.by_job.items() if not (a.lost or a.finished)}

    def refresh(self, sessions: sessionmaker[Session]) -> None:
        """One statement re-reads every job's flags (when the writer's answers are stale)."""
        try:
            self.learn(_with_db(sessions, partial(job_ops.heartbeat_many, attempts=self.numbers())))
        except DatabaseLost as exc:
            self.database_error = exc


def execute_pack(pack_id: str, sessions: sessionmaker[Session], settings: Settings) -> str:
    """Run a pack's claimable jobs to terminal statuses as one ``train_packed`` call.

    Each job keeps its own attempt, cancel flag, epoch rows and final status; the pack shares
    one heartbeat, one writer and one checkpoint (keyed by job, so a later attempt resumes the
    jobs that are still unfinished). A redelivered pack whose jobs are all finished or owned by a
    live worker is a no-op.
    """
    with sessions() as session, session.begin():
        claims = job_ops.claim_pack(session, pack_id, worker=worker_name(), stale_after_s=settings.stale_after_s)
    if not claims:
        log.info("pack %s: nothing claimable", pack_id)
        return "skipped"
    attempts = _PackAttempts(claims)
    log.info("pack %s: %s jobs starting (%s)", pack_id, len(claims), ", ".join(str(c.job_id) for c in claims))
    checkpoint_dir = settings.resolved_checkpoint_dir() / f"pack-{pack_id}"
    try:
        with _beating(partial(_pack_heartbeat, sessions, attempts, settings.heartbeat_interval_s)):
            statuses = _train_pack(claims, sessions, settings, attempts, checkpoint_dir)
    except DatabaseLost as exc:
        log.error("pack %s: %s; leaving its jobs to be requeued", pack_id, exc)
        return "database_lost"
    if not settings.keep_checkpoints and not any(a.lost for a in attempts.by_job.values()):
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    lost = [job_id for job_id, a in attempts.by_job.items() if a.lost and not a.finished]
    if lost:
        log.warning("pack %s: jobs %s lost ownership; they wrote no result", pack_id, lost)
    counts = Counter(statuses.values()) + Counter({"lost": len(lost)} if lost else {})
    return " ".join(f"{name}={n}" for name, n in sorted(counts.items()))


def _train_pack(
    claims: list[job_ops.Claim],
    sessions: sessionmaker[Session],
    settings: Settings,
    attempts: _PackAttempts,
    ckpt: Path,
) -> dict[int, str]:
    from optim_engine import TrainResult, resolve_device, train_packed  # torch is imported here only

    statuses: dict[int, str] = {}
    specs, job_ids = [], []
    for claim in claims:
        try:
            spec = load_spec(claim.spec)
            spec = spec.model_copy(update={"device": _pinned(spec.device)})
        except Exception as exc:  # the spec validated at submission; its data may have changed since
            log.exception("job %s: spec no longer valid", claim.job_id)
            attempt = attempts.by_job[claim.job_id]
            write = partial(job_ops.finish, job_id=claim.job_id, attempt=attempt.number, status=JobStatus.failed)
            if _with_db(sessions, partial(write, error=f"spec: {exc}")):
                statuses[claim.job_id] = JobStatus.failed
            attempt.finished = True  # out of this pack either way: no more heartbeats for it
            continue
        specs.append(spec)
        job_ids.append(claim.job_id)
    if not specs:
        return statuses
    device: str | None = None
    failure: str | None = None
    try:
        device = str(resolve_device(specs[0].device))
    except Exception as exc:
        failure = f"{type(exc).__name__}: {exc}"

    writer = _PackWriter(sessions, attempts, settings.metrics_flush_s, device)
    writer.start()
    last_refresh = [time.monotonic()]

    def should_stop() -> set[int]:
        # Long epochs: re-read the flags when the writer's answers are older than FRESH_FLAG_S.
        if time.monotonic() - writer.answered_at > FRESH_FLAG_S and time.monotonic() - last_refresh[0] > FRESH_FLAG_S:
            last_refresh[0] = time.monotonic()
            attempts.refresh(sessions)
        if attempts.database_error is not None:
            return set(range(len(job_ids)))
        return {i for i, job_id in enumerate(job_ids) if attempts.by_job[job_id].stopping}

    def on_finish(i: int, result: TrainResult) -> None:
        writer.finish(job_ids[i], result)

    try:
        if failure is not None:
            raise RuntimeError(failure)
        train_packed(
            specs,
            keys=[str(job_id) for job_id in job_ids],
            on_epoch=lambda i, metrics: writer.submit(job_ids[i], metrics.as_dict()),
            on_finish=on_finish,
            should_stop=should_stop,
            checkpoint_dir=ckpt,
            checkpoint_every_s=settings.checkpoint_every_s,
            num_threads=settings.torch_threads,
        )
    except Exception as exc:
        log.exception("pack of jobs %s failed", job_ids)
        writer.fail_unfinished(job_ids, f"{type(exc).__name__}: {exc}")
    writer.close()
    if attempts.database_error is not None:
        raise attempts.database_error
    statuses.update(writer.statuses)
    return statuses


class _PackWriter(threading.Thread):
    """The pack's ``_EpochWriter``: epoch rows of many jobs, and each job's final status as
    soon as its trial ends, written off the training thread in one transaction per flush. A
    job's final status follows its last rows, in the same transaction."""

    def __init__(
        self, sessions: sessionmaker[Session], attempts: _PackAttempts, flush_s: float, device: str | None
    ) -> None:
        super().__init__(name="pack-writer", daemon=True)
        self._sessions = sessions
        self._attempts = attempts
        self._flush_s = flush_s
        self._device = device
        self._rows: dict[int, list[dict[str, Any]]] = {}
        self._finishes: list[tuple[int, JobStatus, dict[str, Any]]] = []
        self._closed = False
        self._wake = threading.Condition()
        self.statuses: dict[int, str] = {}
        self.answered_at = time.monotonic()

    def submit(self, job_id: int, row: dict[str, Any]) -> None:
        with self._wake:
            self._rows.setdefault(job_id, []).append(row)
            self._wake.notify()

    def finish(self, job_id: int, result: Any) -> None:
        """Queue a job's final write: its status, environment and rows from before a resume."""
        details = {
            "environment": result.environment,
            "diverged_epoch": result.diverged_epoch,
            "resumed_from_epoch": result.resumed_from_epoch,
            "before_resume": _rows_before_resume(result),
        }
        with self._wake:
            self._finishes.append((job_id, OUTCOME_STATUS[result.outcome], details))
            self._wake.notify()

    def fail_unfinished(self, job_ids: list[int], error: str) -> None:
        with self._wake:
            done = {job_id for job_id, _, _ in self._finishes} | set(self.statuses)
            for job_id in job_ids:
                if job_id not in done:
                    self._finishes.append((job_id, JobStatus.failed, {"error": error}))

    def close(self) -> None:
        """Stop the thread, then write what is left (rows and final statuses) from this one."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self.join()
        if self._attempts.database_error is None:
            self._flush()

    def run(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._rows or self._finishes or self._device or self._closed)
                if self._closed:
                    return
            if not self._flush():
                return
            with self._wake:  # let rows gather; close() ends the wait at once
                self._wake.wait_for(lambda: self._closed, timeout=self._flush_s)

    def _flush(self) -> bool:
        with self._wake:
            rows, self._rows = self._rows, {}
            finishes, self._finishes = self._finishes, []
        device = self._device
        try:
            ownerships, finished = _with_db(
                self._sessions, partial(self._write, rows=rows, finishes=finishes, device=device)
            )
        except DatabaseLost as exc:
            with self._wake:  # unwritten work goes back for the final flush (if the database returns)
                for job_id, batch in rows.items():
                    self._rows[job_id] = batch + self._rows.get(job_id, [])
                self._finishes[:0] = finishes
            self._attempts.database_error = exc
            return False
        self._device = None
        for job_id, status in finished.items():
            self.statuses[job_id] = status
            self._attempts.by_job[job_id].finished = True
        self._attempts.learn(ownerships)
        self.answered_at = time.monotonic()
        return True

    def _write(
        self,
        session: Session,
        *,
        rows: dict[int, list[dict[str, Any]]],
        finishes: list[tuple[int, JobStatus, dict[str, Any]]],
        device: str | None,
    ) -> tuple[dict[int, job_ops.Ownership], dict[int, str]]:
        """Rows, device and final statuses in the caller's transaction; returns what each write
        learned and the jobs it finished (applied by the caller once the transaction committed:
        a retried transaction runs this again)."""
        by_job = self._attempts.by_job
        ownerships = {}
        finishing: dict[int, tuple[JobStatus | None, dict[str, Any]]] = {
            job_id: (status, details) for job_id, status, details in finishes
        }
        finished: dict[int, str] = {}
        for job_id in sorted(set(rows) | set(finishing) | (set(by_job) if device else set())):
            attempt = by_job[job_id]
            if attempt.lost or attempt.finished:
                continue
            status, details = finishing.get(job_id, (None, {}))
            batch = details.get("before_resume", []) + rows.get(job_id, [])
            ownership = job_ops.record_epochs(session, job_id, attempt.number, batch, device=device)
            ownerships[job_id] = ownership
            if ownership.owned and status is not None:
                extra = {key: value for key, value in details.items() if key != "before_resume"}
                if job_ops.finish(session, job_id, attempt.number, status, **extra):
                    finished[job_id] = str(status)
        return ownerships, finished


def _pack_heartbeat(
    sessions: sessionmaker[Session], attempts: _PackAttempts, interval: float, stop: threading.Event
) -> None:
    while not stop.wait(interval):
        try:
            with sessions() as session, session.begin():
                attempts.learn(job_ops.heartbeat_many(session, attempts.numbers()))
        except DBAPIError as exc:
            log.warning("heartbeat of a pack failed: %s", exc.orig)
