"""/v1/jobs: submit, list, read, follow the metrics of and cancel jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from optim_engine.results import METRIC_NAMES
from service.db.session import utcnow
from service.deps import DispatcherDep, IdempotencyKey, SessionDep, SettingsDep
from service.jobs import service as job_service
from service.jobs.schemas import JobCreate, JobMetrics, JobOut, JobPage
from service.responses import csv_response

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post("", status_code=201, response_model=JobOut)
def create_job(
    body: JobCreate,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    idempotency_key: IdempotencyKey = None,
) -> JobOut:
    """Validate a spec and queue it. With an `Idempotency-Key` header, a retried POST returns
    the job the first one created (200) instead of creating a second."""
    job, created = job_service.create_job(
        session, body, settings=settings, dispatcher=dispatcher, idempotency_key=idempotency_key
    )
    response.status_code = 201 if created else 200
    return JobOut.of(job, utcnow())


@router.get("")
def list_jobs(
    session: SessionDep,
    status: Annotated[list[str] | None, Query(description="Repeat for several.")] = None,
    sweep_id: int | None = None,
    optimizer: str | None = None,
    tag: str | None = None,
    sort: Annotated[str, Query(description=f"One of {job_service.SORT_KEYS}; '-' for descending.")] = "-created_at",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> JobPage:
    """Jobs, filtered and sorted, one page at a time."""
    jobs, next_cursor = job_service.list_jobs(
        session,
        statuses=status or (),
        sweep_id=sweep_id,
        optimizer=optimizer,
        tag=tag,
        sort=sort,
        limit=limit,
        cursor=cursor,
    )
    now = utcnow()
    return JobPage(items=[JobOut.of(job, now) for job in jobs], next_cursor=next_cursor)


@router.get("/{job_id}")
def get_job(job_id: int, session: SessionDep) -> JobOut:
    """Status, spec, summary, error, attempt, worker, device and timings of one job."""
    return JobOut.of(job_service.get_job(session, job_id), utcnow())


@router.get(
    "/{job_id}/metrics",
    response_model=JobMetrics,
    responses={200: {"content": {"text/csv": {}}, "description": "JSON, or CSV with ?format=csv"}},
)
def job_metrics(
    job_id: int,
    session: SessionDep,
    since_epoch: Annotated[int, Query(ge=0, description="Only epochs after this one (live polling).")] = 0,
    format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
) -> Response:
    """Every epoch's metrics; `?since_epoch=N` returns only newer epochs."""
    status, epochs_done, rows = job_service.job_metrics(session, job_id, since_epoch)
    if format == "csv":
        return csv_response(["epoch", *METRIC_NAMES], ([row["epoch"], *(row[m] for m in METRIC_NAMES)] for row in rows))
    return JSONResponse({"job_id": job_id, "status": status, "epochs_done": epochs_done, "rows": rows})


@router.post("/{job_id}/cancel")
def cancel_job(job_id: int, session: SessionDep) -> JobOut:
    """Queued: it never runs. Running: it stops at its next epoch boundary. Finished: 409."""
    return JobOut.of(job_service.cancel_job(session, job_id), utcnow())
