"""The rules of /v1/jobs: what a job must pass to be created, idempotent creation, the outbox
hand-off to the dispatcher, listing and cancellation, each for one principal: it owns what it
creates and sees only its own jobs unless it is an admin."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from optim_engine.spec import variant_names
from service import broker, cache, events
from service.admission import check_spec
from service.auth.principal import Principal
from service.db import result_cache, transitions
from service.db.models import TERMINAL, Job, JobStatus
from service.dispatcher import Dispatcher
from service.jobs import repository
from service.jobs.schemas import JobCreate
from service.longpoll import TokenReader, job_token
from service.settings import Settings
from service.spec_codec import stored_spec

SORT_KEYS = sorted(repository.SORTABLE)


def create_job(
    session: Session,
    body: JobCreate,
    *,
    principal: Principal,
    settings: Settings,
    dispatcher: Dispatcher,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """Check the spec against this server (caps, host), then commit it as a queued job and wake
    the dispatcher, which sends it; returns ``(job, created)`` (not created: the idempotency
    key's first request by the same owner made it). A result-cache hit (``body.cache`` and
    ``OPTIMLAB_RESULT_CACHE`` on, the same owner's identical run succeeded before) is committed
    succeeded instead, a copy of that run, and never sent."""
    check_spec(body.spec, settings)
    spec_hash = body.spec.spec_hash()
    queue = broker.queue_for(body.spec.device, settings)
    installed = cache.installed() if body.cache and settings.result_cache else None
    key = installed.expected(spec_hash, body.spec.device, queue) if installed is not None else None
    source = result_cache.find_sources(session, principal.owner, [key]).get(key) if key is not None else None
    job, created = repository.create_job(
        session,
        spec=stored_spec(body.spec),
        spec_hash=spec_hash,
        optimizer=variant_names(type(body.spec.optimizer))[0],
        queue=queue,
        owner=principal.owner,
        tags=body.tags,
        name=body.name,
        idempotency_key=idempotency_key,
        cached_from=source,
        cache_key=key if source is not None else None,
    )
    session.commit()  # the row exists, unsent, before anything can send it
    dispatcher.wake()  # a retry too: whatever the first request left unsent goes now
    return job, created


def list_jobs(
    session: Session,
    principal: Principal,
    *,
    statuses: Sequence[JobStatus] = (),
    sweep_id: int | None = None,
    optimizer: str | None = None,
    tag: str | None = None,
    owner: str | None = None,
    sort: str = "-created_at",
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Job], str | None]:
    """One page of the jobs ``principal`` sees that match, sorted by ``sort`` ('-' prefix:
    descending), and the next page's cursor (None on the last page). The router has checked
    the statuses and the sort key against their enums."""
    flt = repository.JobFilter(statuses=statuses, sweep_id=sweep_id, optimizer=optimizer, tag=tag, owner=owner)
    return repository.list_jobs(session, flt, principal, sort=sort, limit=limit, cursor=cursor)


def get_job(session: Session, job_id: int, principal: Principal) -> Job:
    return repository.get_job(session, job_id, principal)


def watch(session: Session, job_id: int, principal: Principal) -> TokenReader:
    """A reader of the job's state token for a long-poll, once ``JobNotFound`` is ruled out. The
    request's session is committed and closed before the wait: it holds no pooled connection
    meanwhile, and the answer after the wait reads fresh rows, not objects loaded before it."""

    def read(each: Session) -> tuple[str, bool, int]:
        state = repository.watched_state(each, job_id, principal)
        done = state[0] in TERMINAL
        return job_token(*state), done, 0 if done else 1

    read(session)
    session.commit()
    session.close()
    return read


def job_metrics(
    session: Session, job_id: int, principal: Principal, since_epoch: int = 0
) -> tuple[str, int, list[dict[str, Any]]]:
    """(status, epochs_done, the epoch rows after ``since_epoch``): two indexed reads, no ORM objects."""
    status, epochs_done = repository.progress(session, job_id, principal)
    return status, epochs_done, repository.epoch_rows(session, job_id, since_epoch)


def cancel_job(session: Session, job_id: int, principal: Principal) -> Job:
    """Queued: it never runs. Running: flagged, it stops at its next epoch boundary. Anything
    else: ``IllegalTransition``. Another owner's job is not found: nothing changes."""
    repository.get_job(session, job_id, principal)
    transitions.cancel_job(session, job_id)
    session.commit()
    job = repository.get_job(session, job_id, principal)
    events.publish(session.get_bind().engine.url, events.CHANGED, [(job.sweep_id, job_id)])  # wakes its long-polls
    return job
