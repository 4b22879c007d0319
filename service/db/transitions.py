"""Job states and the guarded UPDATEs that move jobs between them.

The legal moves are stated once, in ``LEGAL``. Each function below is one of them, written as a
conditional UPDATE that says what it changed, so concurrent API calls, redelivered tasks and the
dispatcher never move a job backwards (optuna's ``set_trial_state_values`` returns False on a
race the same way).
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, case, func, or_, select, update
from sqlalchemy.orm import Session

from service import cache
from service.db.epochs import JOBS, summary_values
from service.db.models import TERMINAL, Job, JobStatus
from service.db.session import utcnow
from service.errors import IllegalTransition, JobNotFound

# Hot statements (a claim, a heartbeat, a final write) go to the table (JOBS), not through the
# ORM's UPDATE, which costs about a third more per statement and syncs no objects here anyway.
Q, R = JobStatus.queued, JobStatus.running
LEGAL: Mapping[JobStatus, frozenset[JobStatus]] = {
    Q: frozenset({R, JobStatus.cancelled}),  # claim; cancel before it ran
    # finish; or back to queued when its worker stopped heartbeating (it resumes from its checkpoint)
    R: TERMINAL | {Q},
}
"""Every legal move: status → the statuses it may become. Terminal statuses go nowhere."""


def _legal(source: JobStatus, target: JobStatus) -> None:
    assert target in LEGAL.get(source, frozenset()), f"{source} → {target} is not a legal move"


@dataclass(frozen=True)
class Claim:
    """A job this attempt now runs: its attempt number, spec and pack, and, for a trial of an
    adaptive sweep, the sweep and trial number (pruning decides per trial)."""

    job_id: int
    attempt: int
    spec: dict[str, Any]
    pack_id: str | None
    sweep_id: int | None = None
    trial_number: int | None = None
    ran_before: float = 0.0  # its earlier attempts' running time (``wall_seconds`` at the claim)
    spec_hash: str | None = None  # what its result-cache key is made of (``finish`` takes it)


@dataclass(frozen=True)
class Ownership:
    """What a worker's write or read learns: whether its attempt still owns the job, whether the
    user asked it to stop, and, for a job it does not own, whether that is because this very
    attempt wrote its final status (``finished``: that status), which is not a lost job: a
    heartbeat can land just after the attempt's own final write."""

    owned: bool
    cancel_requested: bool = False
    finished: JobStatus | None = None


def worker_name(pid: int | None = None) -> str:
    """What a claim records as a job's ``worker``: host and process id (this process's by default)."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def claim(session: Session, job_ids: Sequence[int], *, worker: str, stale_after_s: float) -> list[Claim]:
    """queued → running (or running → running for a new attempt when the old one's heartbeat went
    stale), for every claimable job of ``job_ids`` in one UPDATE; returns the claims in the
    order given. Finished and cancelled jobs, and jobs whose worker lives, are left alone, which
    makes redelivered and duplicate tasks no-ops."""
    _legal(Q, R)
    now = utcnow()
    stale = now - dt.timedelta(seconds=stale_after_s)
    rows = session.execute(_claim_statement(), {"ids": list(job_ids), "now": now, "stale": stale, "who": worker}).all()
    by_id = {
        row.id: Claim(
            row.id,
            row.attempt,
            row.spec,
            row.pack_id,
            row.sweep_id,
            row.trial_number,
            row.wall_seconds or 0.0,
            row.spec_hash,
        )
        for row in rows
    }
    return [by_id[job_id] for job_id in job_ids if job_id in by_id]


@functools.cache
def _claim_statement() -> Any:
    """The claim's UPDATE, built once with its values as parameters (``ids``, ``now``, ``stale``,
    ``who``): building and keying it again cost each claim ~0.5 ms, a third of its time."""
    c = JOBS.c
    now = bindparam("now", type_=c.heartbeat_at.type)
    stale = bindparam("stale", type_=c.heartbeat_at.type)
    claimable = or_(c.status == Q, and_(c.status == R, or_(c.heartbeat_at.is_(None), c.heartbeat_at < stale)))
    return (
        update(JOBS)
        .where(c.id.in_(bindparam("ids", expanding=True)), claimable)
        .values(
            status=R,
            attempt=c.attempt + 1,
            worker=bindparam("who", type_=c.worker.type),
            heartbeat_at=now,
            started_at=func.coalesce(c.started_at, now),
        )
        .returning(c.id, c.attempt, c.spec, c.pack_id, c.sweep_id, c.trial_number, c.wall_seconds, c.spec_hash)
    )


def _owned(attempts: Mapping[int, int]) -> ColumnElement[bool]:
    """The jobs (id → attempt) that these attempts still run."""
    c = JOBS.c
    return and_(
        c.status == R, or_(*(and_(c.id == job_id, c.attempt == attempt) for job_id, attempt in attempts.items()))
    )


def _wall(walls: Mapping[int, float]) -> Any:
    """``wall_seconds`` per job (id → seconds), as one expression of an UPDATE of several."""
    return case(
        {job_id: float(seconds) for job_id, seconds in walls.items()}, value=JOBS.c.id, else_=JOBS.c.wall_seconds
    )


def heartbeat(
    session: Session,
    attempts: Mapping[int, int],
    *,
    worker: str | None = None,
    device: str | None = None,
    walls: Mapping[int, float] | None = None,
) -> dict[int, Ownership]:
    """Refresh the heartbeat (and record the device, and ``walls``: each job's ``wall_seconds``
    so far) of every job (id → attempt) this worker still owns, in one statement; a job requeued
    or finished meanwhile is not owned any more (see ``ownership`` for how one this attempt
    finished itself is told apart, given ``worker``)."""
    if not attempts:
        return {}
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if device is not None:
        values["device"] = device
    if walls:
        values["wall_seconds"] = _wall(walls)
    rows = session.execute(
        update(JOBS).where(_owned(attempts)).values(**values).returning(JOBS.c.id, JOBS.c.cancel_requested)
    ).all()
    found = {row.id: Ownership(True, bool(row.cancel_requested)) for row in rows}
    missing = {job_id: attempt for job_id, attempt in attempts.items() if job_id not in found}
    return found | (ownership(session, missing, worker=worker) if missing else {})


def ownership(session: Session, attempts: Mapping[int, int], *, worker: str | None = None) -> dict[int, Ownership]:
    """What ``heartbeat`` learns, read without writing: cheap enough to poll for cancel requests
    every second or so. A job in a terminal status with the same attempt number and ``worker``
    was finished by this attempt (requeue and release clear ``worker``, a claim raises the
    attempt): ``finished`` says so, rather than calling it lost."""
    if not attempts:
        return {}
    rows = session.execute(
        select(Job.id, Job.status, Job.attempt, Job.worker, Job.cancel_requested).where(Job.id.in_(list(attempts)))
    ).all()
    found = {row.id: row for row in rows}
    learned: dict[int, Ownership] = {}
    for job_id, attempt in attempts.items():
        row = found.get(job_id)
        if row is None or row.attempt != attempt:
            learned[job_id] = Ownership(False)
        elif row.status == R:
            learned[job_id] = Ownership(True, bool(row.cancel_requested))
        else:
            mine = row.status in TERMINAL and worker is not None and row.worker == worker
            learned[job_id] = Ownership(False, finished=JobStatus(row.status) if mine else None)
    return learned


def finish(
    session: Session,
    job_id: int,
    attempt: int,
    status: JobStatus,
    *,
    error: str | None = None,
    environment: Mapping[str, Any] | None = None,
    diverged_epoch: int | None = None,
    resumed_from_epoch: int | None = None,
    result: Mapping[str, Any] | None = None,
    wall_seconds: float | None = None,
    device: str | None = None,
    spec_hash: str | None = None,
) -> bool:
    """running → a terminal status, with the summary derived from the job's stored rows in the
    same UPDATE (and the run's ``result``, its artifacts, when it has one; and the ``device`` it
    ran on, when given); False when this attempt no longer owns the job. ``wall_seconds``: its
    attempts' running time, this one's included (the worker counts it); without it, the time
    since the job first started. A succeeded job gets its result-cache key (``service.cache.of_run``:
    its spec hash and the torch, device and optimlab its ``environment`` reports), so a later
    identical job is served from it instead of trained. A caller that passes ``wall_seconds``
    and the job's ``spec_hash`` (a worker: its claim returned it) finishes it in one statement."""
    _legal(R, status)
    now = utcnow()
    wants_key = status == JobStatus.succeeded
    if wall_seconds is None or (wants_key and spec_hash is None):
        known = session.execute(select(JOBS.c.started_at, JOBS.c.spec_hash).where(JOBS.c.id == job_id)).first()
        if known is None:
            return False
        spec_hash = spec_hash or known.spec_hash
        if wall_seconds is None and known.started_at is not None:
            wall_seconds = (now - known.started_at).total_seconds()
    values: dict[str, Any] = {"status": status, "finished_at": now, "error": error, "wall_seconds": wall_seconds}
    values["cache_key"] = cache.of_run(spec_hash, environment) if wants_key and spec_hash else None
    optional = {
        "environment": dict(environment) if environment is not None else None,
        "diverged_epoch": diverged_epoch,
        "resumed_from_epoch": resumed_from_epoch,
        "result": dict(result) if result is not None else None,
        "device": device,
    }
    values |= {name: value for name, value in optional.items() if value is not None}
    params = {f"v_{name}": value for name, value in values.items()} | {"job_id": job_id, "attempt_was": attempt}
    return session.execute(_finish_statement(tuple(values)), params).first() is not None


@functools.cache
def _finish_statement(columns: tuple[str, ...]) -> Any:
    """``finish``'s UPDATE of ``columns`` (each set from the parameter ``v_<name>``) and the
    summary, guarded by ``job_id`` and ``attempt_was``, built once per set of columns (a handful):
    building and keying it per job cost each final write ~0.5 ms."""
    c = JOBS.c
    return (
        update(JOBS)
        .where(c.status == R, c.id == bindparam("job_id"), c.attempt == bindparam("attempt_was"))
        .values(**{name: bindparam(f"v_{name}", type_=c[name].type) for name in columns}, **summary_values())
        .returning(c.id)
    )


def cancel_job(session: Session, job_id: int) -> None:
    """queued → cancelled at once; a running job is flagged and stops at its next epoch boundary
    (its worker moves it to cancelled). An already cancelled job stays as it is, so a retried
    cancel succeeds; any other finished job is an ``IllegalTransition``."""
    if _cancel(session, Job.id == job_id):
        return
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    if status is None:
        raise JobNotFound(job_id)
    if status == JobStatus.cancelled:
        return
    raise IllegalTransition(f"Job {job_id} is {status}; only queued or running jobs can be cancelled")


def cancel_sweep_jobs(session: Session, sweep_id: int) -> None:
    """``cancel_job`` for every queued or running job of a sweep; finished jobs stay as they are."""
    _cancel(session, Job.sweep_id == sweep_id)


def _cancel(session: Session, which: ColumnElement[bool]) -> int:
    _legal(Q, JobStatus.cancelled)
    queued = session.execute(
        update(Job)
        .where(which, Job.status == Q)
        .values(status=JobStatus.cancelled, cancel_requested=True, finished_at=utcnow())
    )
    running = session.execute(update(Job).where(which, Job.status == R).values(cancel_requested=True))
    session.expire_all()
    return int(queued.rowcount + running.rowcount)  # type: ignore[attr-defined]


def requeue_stale(session: Session, *, stale_after_s: float) -> int:
    """running → queued, not yet sent, for jobs whose worker stopped heartbeating (it died); the
    dispatcher sends them again and they resume from their checkpoint. Returns how many."""
    _legal(R, Q)
    now = utcnow()
    stale = now - dt.timedelta(seconds=stale_after_s)
    # SKIP LOCKED (PostgreSQL): a row locked by a worker frozen inside a transaction is left for
    # a later pass instead of stalling this one, and with it every send.
    candidates = select(Job.id).where(Job.status == R, Job.heartbeat_at < stale).with_for_update(skip_locked=True)
    result = session.execute(
        update(Job)
        .where(Job.id.in_(candidates), Job.status == R, Job.heartbeat_at < stale)
        .values(status=Q, enqueued_at=None, worker=None)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def release(session: Session, attempts: Mapping[int, int]) -> list[int]:
    """running → queued, not yet sent, for the jobs (id → attempt) this attempt still owns and
    whose cancel nobody asked for: a worker that shuts down hands them back, the dispatcher sends
    them again and they resume from their checkpoint (``wall_seconds`` keeps their running time so
    far, which the next attempt counts on from: the wait between is not counted). Returns the ids
    released; a job left out was taken by another attempt, or is to be cancelled instead (the
    caller finishes it)."""
    _legal(R, Q)
    if not attempts:
        return []
    rows = session.execute(
        update(Job)
        .where(_owned(attempts), Job.cancel_requested.is_not(True))
        .values(status=Q, enqueued_at=None, worker=None)
        .returning(Job.id)
    ).all()
    return sorted(row.id for row in rows)
