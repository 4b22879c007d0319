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
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from service.db import jobs as job_ops
from service.db.models import JobStatus
from service.db.session import make_engine, make_session_factory
from service.settings import Settings, get_settings
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
    """What the callbacks share: the job's identity and whether this attempt still owns it."""

    job_id: int
    number: int
    lost: bool = False


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
    if status in (JobStatus.succeeded, JobStatus.diverged, JobStatus.cancelled, JobStatus.failed) and not (
        settings.keep_checkpoints
    ):
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return str(status) if not attempt.lost else "lost"


def _train(
    spec_json: dict[str, Any], sessions: sessionmaker[Session], settings: Settings, attempt: _Attempt, ckpt: Path
) -> JobStatus:
    from optim_engine import JobSpec, resolve_device, train  # torch is imported here, in the worker only

    def finish(status: JobStatus, **kwargs: Any) -> JobStatus:
        def write(session: Session) -> bool:
            return job_ops.finish(session, attempt.job_id, attempt.number, status, **kwargs)

        if not _with_db(sessions, write):
            attempt.lost = True
        return status

    try:
        spec = JobSpec.model_validate(spec_json)
        device = str(resolve_device(_pinned(spec.device)))
        spec = spec.model_copy(update={"device": _pinned(spec.device)})
    except Exception as exc:  # the spec validated at submission; its data may have changed since
        log.exception("job %s: spec no longer valid", attempt.job_id)
        return finish(JobStatus.failed, error=f"spec: {exc}")
    _with_db(sessions, lambda s: job_ops.set_device(s, attempt.job_id, attempt.number, device))

    def on_epoch(metrics: Any) -> None:
        row = metrics.as_dict()
        if not _with_db(sessions, lambda s: job_ops.record_epoch(s, attempt.job_id, attempt.number, row)):
            attempt.lost = True

    def should_stop() -> bool:
        # Polled once per epoch: the cancel flag costs one indexed read per epoch.
        if attempt.lost:
            return True
        return _with_db(sessions, lambda s: job_ops.cancel_requested(s, attempt.job_id))

    try:
        result = train(
            spec,
            on_epoch=on_epoch,
            should_stop=should_stop,
            checkpoint_dir=ckpt,
            num_threads=settings.torch_threads,
        )
    except DatabaseLost:
        raise
    except Exception as exc:
        log.exception("job %s failed", attempt.job_id)
        return finish(JobStatus.failed, error=f"{type(exc).__name__}: {exc}")
    if attempt.lost:
        log.warning("job %s: attempt %s lost ownership; not writing a result", attempt.job_id, attempt.number)
        return JobStatus.cancelled
    return finish(
        OUTCOME_STATUS[result.outcome],
        environment=result.environment,
        diverged_epoch=result.diverged_epoch,
        resumed_from_epoch=result.resumed_from_epoch,
    )


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
    while not stop.wait(interval):
        try:
            with sessions() as session, session.begin():
                if not job_ops.heartbeat(session, attempt.job_id, attempt.number):
                    attempt.lost = True  # requeued or finished elsewhere: stop at the next epoch
                    return
        except DBAPIError as exc:
            log.warning("heartbeat of job %s failed: %s", attempt.job_id, exc.orig)
