"""/v1/jobs: submit, list, read, follow the metrics of and cancel jobs."""

from __future__ import annotations

import re
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import AfterValidator
from starlette.concurrency import run_in_threadpool

from optim_engine.results import METRIC_NAMES
from service import longpoll
from service.db.models import JobStatus
from service.db.session import utcnow
from service.deps import DispatcherDep, IdempotencyKey, PrincipalDep, SessionDep, SettingsDep
from service.jobs import service as job_service
from service.jobs.schemas import JobCreate, JobMetrics, JobOut, JobPage, Tag
from service.responses import csv_response
from service.schemas import MAX_ID, Id, Text, error_responses, replayed

router = APIRouter(prefix="/jobs", tags=["jobs"])

SORT_PATTERN = f"^[-+]?({'|'.join(job_service.SORT_KEYS)})$"


def _sort_key(value: str) -> str:
    """A 422 at ``sort`` that lists the keys (the pattern alone would answer with a regex)."""
    if re.fullmatch(SORT_PATTERN, value) is None:
        keys = ", ".join(job_service.SORT_KEYS)
        raise ValueError(f"unknown sort key {value!r}; use one of {keys}, with a '-' prefix for descending")
    return value


SortKey = Annotated[
    str,
    AfterValidator(_sort_key),
    Query(description="A sort key; '-' prefix for descending.", json_schema_extra={"pattern": SORT_PATTERN}),
]


@router.post("", status_code=201, response_model=JobOut, responses=error_responses(409) | replayed(JobOut, "job"))
def create_job(
    body: JobCreate,
    response: Response,
    session: SessionDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    idempotency_key: IdempotencyKey = None,
) -> JobOut:
    """Validate a spec and queue it. With an `Idempotency-Key` header, a retried POST returns
    the job the first one created (200) instead of creating a second (keys are per owner)."""
    job, created = job_service.create_job(
        session, body, principal=principal, settings=settings, dispatcher=dispatcher, idempotency_key=idempotency_key
    )
    response.status_code = 201 if created else 200
    return JobOut.of(job, utcnow())


@router.get("")
def list_jobs(
    session: SessionDep,
    principal: PrincipalDep,
    status: Annotated[
        list[JobStatus] | None, Query(max_length=len(JobStatus), description="Repeat for several.")
    ] = None,
    sweep_id: Id | None = None,
    optimizer: Text | None = None,
    tag: Tag | None = None,
    owner: Annotated[
        Text | None, Query(max_length=64, description="Admins: only this owner's ('' : created with auth off).")
    ] = None,
    sort: SortKey = "-created_at",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> JobPage:
    """Your jobs (an admin's: everyone's), filtered and sorted, one page at a time."""
    jobs, next_cursor = job_service.list_jobs(
        session,
        principal,
        statuses=status or (),
        sweep_id=sweep_id,
        optimizer=optimizer,
        tag=tag,
        owner=owner,
        sort=sort,
        limit=limit,
        cursor=cursor,
    )
    now = utcnow()
    return JobPage(items=[JobOut.of(job, now) for job in jobs], next_cursor=next_cursor)


@router.get("/{job_id}", responses=error_responses(404) | longpoll.ETAG_HEADER)
async def get_job(
    job_id: Id,
    request: Request,
    response: Response,
    session: SessionDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    wait_s: longpoll.WaitSeconds = 0,
    since: longpoll.Since = None,
    until: longpoll.Until = "change",
) -> JobOut:
    """Status, spec, summary, error, attempt, worker, device and timings of one job.

    Long-poll: with `since` (an earlier answer's `state_token`) and `wait_s`, the answer waits
    until the job's status, epochs_done, attempt or cancel_requested differ from that answer's,
    or `wait_s` seconds pass; it comes at once if they already differ. Either way it is a 200
    with the job as it is then, its `state_token` also in the `ETag` header. With `until=done`,
    it waits until the job is finished instead (no `since` needed)."""
    watch = partial(job_service.watch, session, job_id, principal)
    scope = ("job", job_id)
    await longpoll.hold(request, settings, watch, scope=scope, since=since, wait_s=wait_s, until=until)
    job = await run_in_threadpool(job_service.get_job, session, job_id, principal)
    out = JobOut.of(job, utcnow())
    response.headers["ETag"] = longpoll.etag(out.state_token)
    return out


@router.get(
    "/{job_id}/metrics",
    response_model=JobMetrics,
    responses=error_responses(404)
    | {200: {"content": {"text/csv": {}}, "description": "JSON, or CSV with ?format=csv"}},
)
def job_metrics(
    job_id: Id,
    session: SessionDep,
    principal: PrincipalDep,
    since_epoch: Annotated[int, Query(ge=0, le=MAX_ID, description="Only epochs after this one (live polling).")] = 0,
    format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
) -> Response:
    """Every epoch's metrics; `?since_epoch=N` returns only newer epochs."""
    status, epochs_done, rows = job_service.job_metrics(session, job_id, principal, since_epoch)
    if format == "csv":
        return csv_response(["epoch", *METRIC_NAMES], ([row["epoch"], *(row[m] for m in METRIC_NAMES)] for row in rows))
    return JSONResponse({"job_id": job_id, "status": status, "epochs_done": epochs_done, "rows": rows})


@router.post("/{job_id}/cancel", responses=error_responses(404, 409))
def cancel_job(job_id: Id, session: SessionDep, principal: PrincipalDep) -> JobOut:
    """Queued: it never runs. Running: it stops at its next epoch boundary. Already cancelled: the
    job as it is (a retried cancel succeeds). Succeeded, failed or diverged: 409."""
    return JobOut.of(job_service.cancel_job(session, job_id, principal), utcnow())
